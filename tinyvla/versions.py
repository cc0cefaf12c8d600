"""Versions of everything that changes a result, recorded in policy.json and results.json (one definition for both)."""

from __future__ import annotations

import importlib.metadata
import platform


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    """None where a package is not installed. Read from package metadata, so nothing heavy is imported."""
    import tinyvla

    return {
        "tinyvla": tinyvla.__version__,
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "mujoco": _version("mujoco"),
        "robosuite": _version("robosuite"),
        "libero": _version("hf-libero", "libero"),
    }
