"""The policy interface: what eval, the training probe, the bench and a policy server call, and nothing more.

Implemented by `tinyvla.Policy` (a model), the baselines (`tinyvla.evaluation.baselines`) and any remote policy.
Episodes run on K env slots at once; a slot index `i` names one env for the whole run, and a new episode on it is
announced with `reset_env(i)` (then `seed_env(i, seed)`) before its first `act_batch`.

    policy.bind(slots)                 # once per run (privileged baselines read the envs; others ignore it)
    policy.reset(num_envs)             # once per run: forget everything, size per-env state for K slots
    policy.reset_env(i); policy.seed_env(i, seed)       # each new episode on slot i
    actions = policy.act_batch(observations, instructions, env_ids)   # (len(env_ids), D) float32, one per env

Observations are env observations (`{"image", "wrist_image", ...}` uint8, dataset orientation). `act_batch` must
change no state when it raises, so the loop can retry each env alone. `config` describes the policy for
results.json: a `tinyvla.policy_dir.PolicyConfig` for a model policy, a plain dict for a baseline.
Pure: importing this module imports nothing heavy.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class PolicyInterface(Protocol):
    config: Any

    def reset(self, num_envs: int = 1) -> None:
        """Start a run of `num_envs` env slots: drop every stored chunk / random state."""

    def reset_env(self, i: int) -> None:
        """A new episode starts on slot i."""

    def seed_env(self, i: int, seed: int) -> None:
        """The episode on slot i draws its random numbers from `seed` (a no-op for deterministic policies), so an
        episode's actions do not depend on which slot runs it."""

    def bind(self, slots: Sequence) -> None:
        """The run's env slots (a no-op unless the policy reads env state, like the scripted expert)."""

    def act_batch(self, observations: Sequence[dict], instructions: Sequence[str],
                  env_ids: Sequence[int] | None = None) -> np.ndarray:
        """One action (D,) per observation, for the envs `env_ids` (default 0..n-1)."""
