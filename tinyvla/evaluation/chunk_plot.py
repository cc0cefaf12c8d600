"""What a robot owner looks at before trusting a policy on hardware: per-joint error in the data's own units, and the
predicted action chunks drawn over the demonstrated ones for a few held-out frames.

The scatter of offline.py shows the first step of every chunk; this shows whole chunks (H steps) so a lag, an
overshoot or a gripper that closes late is visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def action_names(reader, dim: int) -> list[str]:
    """The dataset's names for the action dimensions (SO-101: shoulder_pan.pos ... gripper.pos), else dim 0..D-1."""
    feature = (getattr(reader, "info", {}) or {}).get("features", {}).get(getattr(reader, "action_key", ""), {})
    names = feature.get("names") if isinstance(feature, dict) else None
    if isinstance(names, dict):  # lerobot once wrote {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == dim:
        return [str(n) for n in names]
    return [f"dim {d}" for d in range(dim)]


def per_dimension_line(names: list[str], l1: list[float], baseline: list[float]) -> str:
    """One line: each dimension's mean absolute error (the dataset's units), with predict-the-mean in brackets."""
    parts = [f"{n} {e:.3g} ({b:.3g})" for n, e, b in zip(names, l1, baseline)]
    return "per-dimension L1 in the data's units (predict-the-mean): " + ", ".join(parts)


def plot_chunks(pred: np.ndarray, true: np.ndarray, names: list[str], out_png: Path, frames: int = 4,
                fps: float | None = None) -> None:
    """A grid: one row per chosen frame (spread over the scored ones), one column per dimension; true chunk solid,
    predicted dashed, x in steps (or seconds when fps is known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, horizon, dims = pred.shape
    rows = np.unique(np.linspace(0, n - 1, min(frames, n)).round().astype(int))
    x = np.arange(horizon) / fps if fps else np.arange(horizon)
    fig, axes = plt.subplots(len(rows), dims, figsize=(2.2 * dims, 1.8 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        for d in range(dims):
            ax = axes[r][d]
            ax.plot(x, true[i, :, d], "k-", linewidth=1.4, label="true")
            ax.plot(x, pred[i, :, d], "C1--", linewidth=1.4, label="predicted")
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(names[d], fontsize=8)
            if d == 0:
                ax.set_ylabel(f"frame {i}", fontsize=7)
    axes[0][0].legend(fontsize=6)
    axes[-1][0].set_xlabel("seconds" if fps else "step", fontsize=7)
    fig.suptitle("predicted vs true action chunks (held-out frames)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
