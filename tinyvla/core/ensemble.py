"""Temporal ensembling of action chunks.

The policy predicts a chunk of H future actions at a query step s: row k is the action for step s + k. When chunks
are predicted more often than every H steps they overlap, and the action executed at step t averages every stored
chunk that covers t (row t - s of each), weighted by how recent the chunk is. VLA-0 queries every step and averages
up to 8 chunks with weight 1.0 for the newest and 0.5 for each older one (ablation: without it, -2.0 points).

What happens at each execute horizon e (query every e steps, 1 <= e <= H), at step t with offset o = t mod e inside
the current chunk:
  * chunks covering t: the newest plus every older chunk with o + k*e < H (k = its age in chunks), i.e.
    1 + floor((H - 1 - o) / e) of them (fewer at the start of an episode, at most max_chunks).
  * e = 1: up to H chunks are averaged at every step (VLA-0's setting).
  * 1 < e < H: rows near the start of a chunk are averaged with older chunks, rows at o > H - 1 - e are not.
  * e = H: exactly one chunk covers each step, so the result is that chunk's row: there is nothing to average, by
    construction. `covering(step)` reports how many chunks were used so callers can log it.
  * e > H: steps would be left without any chunk; rejected at construction.
The weighting is applied in one place (`action`) for every e; there is no separate "open-loop" path that skips it.

Weightings (age = 0 for the newest covering chunk, 1 for the one before, ... counted in chunks, not steps):
  vla0: 1.0 for age 0, 0.5 for every older one      exp: exp_w ** age
  uniform: 1.0 for all                               none: the newest chunk only

Pure: numpy + stdlib.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

from tinyvla.errors import UserError

WEIGHTINGS = ("vla0", "exp", "uniform", "none")


@dataclasses.dataclass
class EnsembleConfig:
    """How a policy blends chunks, as policy.json's "ensemble" and results.json's protocol record it. The defaults are
    VLA-0's and live only here (the recipe's eval section and the ensembler take them from this class). The recipe
    names these eval.ensemble (= weighting), eval.ensemble_size (= max_chunks), eval.exp_w, eval.execute_horizon."""

    weighting: str = "vla0"
    max_chunks: int = 8
    exp_w: float = 0.5
    execute_horizon: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def chunk_weights(weighting: str, n: int, exp_w: float = 0.5) -> np.ndarray:
    """Weights for n covering chunks ordered newest first (age 0, 1, ...)."""
    ages = np.arange(n, dtype=np.float64)
    if weighting == "vla0":
        return np.where(ages == 0, 1.0, 0.5)
    if weighting == "exp":
        return exp_w**ages
    if weighting == "uniform":
        return np.ones(n)
    if weighting == "none":
        return (ages == 0).astype(np.float64)
    raise UserError(f"unknown ensembling weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


class ChunkEnsembler:
    """Keeps the recent chunks of one episode and blends them into one action per step."""

    def __init__(
        self,
        horizon: int,
        dim: int,
        weighting: str = EnsembleConfig.weighting,
        max_chunks: int = EnsembleConfig.max_chunks,
        exp_w: float = EnsembleConfig.exp_w,
        execute_horizon: int = EnsembleConfig.execute_horizon,
    ):
        if weighting not in WEIGHTINGS:
            raise UserError(f"unknown ensembling weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if not (isinstance(horizon, int) and horizon >= 1 and isinstance(dim, int) and dim >= 1):
            raise UserError(f"ensembling needs a positive horizon and dim, got horizon={horizon!r} dim={dim!r}")
        if not (isinstance(execute_horizon, int) and 1 <= execute_horizon <= horizon):
            raise UserError(
                f"execute_horizon must be an integer in 1..{horizon} (the chunk horizon), got {execute_horizon!r}; "
                "a larger value would leave steps that no chunk covers"
            )
        if not (isinstance(max_chunks, int) and max_chunks >= 1):
            raise UserError(f"max_chunks must be a positive integer, got {max_chunks!r}")
        if weighting == "exp" and not (0.0 < exp_w <= 1.0):
            raise UserError(f"exp_w must be in (0, 1], got {exp_w!r}")
        self.horizon, self.dim = horizon, dim
        self.weighting, self.max_chunks, self.exp_w = weighting, max_chunks, exp_w
        self.execute_horizon = execute_horizon
        self.chunks: deque[tuple[int, np.ndarray]] = deque()  # (query step, chunk (H, D)), oldest first

    def reset(self) -> None:
        """Forget every chunk: call at the start of each episode."""
        self.chunks.clear()

    def add(self, chunk, step: int) -> None:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape != (self.horizon, self.dim):
            raise ValueError(f"chunk has shape {chunk.shape}, expected ({self.horizon}, {self.dim})")
        step = int(step)
        if self.chunks and step <= self.chunks[-1][0]:
            raise ValueError(f"chunk step {step} is not after the previous chunk's step {self.chunks[-1][0]}; "
                             "call reset() between episodes")
        self.chunks.append((step, chunk.copy()))
        self._drop_stale(step)
        while len(self.chunks) > self.max_chunks:
            self.chunks.popleft()

    def _drop_stale(self, step: int) -> None:
        # A chunk predicted at s covers s..s+H-1; from `step` on (steps only move forward within an episode), one
        # with s <= step - H covers nothing any more.
        while self.chunks and self.chunks[0][0] <= step - self.horizon:
            self.chunks.popleft()

    def needs_query(self, step: int) -> bool:
        """True when a new chunk should be predicted at `step`: at the first step, then every execute_horizon steps
        after the last query (and always once the newest chunk stops covering `step`)."""
        if not self.chunks:
            return True
        elapsed = int(step) - self.chunks[-1][0]
        return elapsed >= self.execute_horizon or elapsed >= self.horizon

    def _covering(self, step: int) -> list[tuple[int, np.ndarray]]:
        # Newest first, so position in this list is the age in chunks.
        return [(s, c) for s, c in reversed(self.chunks) if 0 <= step - s < self.horizon]

    def covering(self, step: int) -> int:
        """How many stored chunks cover `step` (how many `action(step)` averages before weighting)."""
        return len(self._covering(int(step)))

    def action(self, step: int) -> np.ndarray:
        """The blended action (D,) float32 for `step`."""
        step = int(step)
        self._drop_stale(step)
        cover = self._covering(step)
        if not cover:
            raise RuntimeError(f"no stored chunk covers step {step}; add a chunk when needs_query(step) is True")
        rows = np.stack([c[step - s] for s, c in cover])
        w = chunk_weights(self.weighting, len(cover), self.exp_w)
        # Blend in float64, hand back float32 like every other action array in the project.
        return ((w[:, None] * rows).sum(axis=0) / w.sum()).astype(np.float32)


class BatchEnsembler:
    """One ChunkEnsembler per environment slot, for batched rollouts where episodes end at different times."""

    def __init__(self, n_envs: int, horizon: int, dim: int, **kwargs):
        if not (isinstance(n_envs, int) and n_envs >= 1):
            raise UserError(f"n_envs must be a positive integer, got {n_envs!r}")
        self.slots = [ChunkEnsembler(horizon, dim, **kwargs) for _ in range(n_envs)]

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> ChunkEnsembler:
        return self.slots[i]

    def reset(self, i: int | None = None) -> None:
        """Reset one slot (a new episode started there), or all of them."""
        for slot in self.slots if i is None else [self.slots[i]]:
            slot.reset()

    def needs_query(self, steps) -> np.ndarray:
        """steps: (n_envs,) current step of each slot -> bool mask of the slots that need a new chunk."""
        return np.array([slot.needs_query(int(t)) for slot, t in zip(self.slots, steps, strict=True)], dtype=bool)

    def add(self, env_ids, chunks, steps) -> None:
        """Store chunks (k, H, D) predicted for the slots env_ids (k,) at steps (k,)."""
        for i, c, t in zip(env_ids, chunks, steps, strict=True):
            self.slots[int(i)].add(c, int(t))

    def action(self, env_ids, steps) -> np.ndarray:
        """(k, D) blended actions for the slots env_ids at steps."""
        return np.stack([self.slots[int(i)].action(int(t)) for i, t in zip(env_ids, steps, strict=True)])


class EnsembledActor:
    """Acting with temporal ensembling, shared by every policy that predicts whole chunks (tinyvla.Policy, and
    serving.RemotePolicy whose chunks come from a server): a step counter and a ChunkEnsembler per env slot, and a
    model query only for the envs whose ensembler asks for a new chunk.

    A subclass has `config` (a PolicyConfig: `.prompt` horizon/dim, `.ensemble`) and implements
    `predict_for(env_ids, observations, instructions, steps) -> (k, H, D)` chunks; `_forget(env)` drops what it keeps
    per env (None = every env) when episodes start."""

    _ensembler: BatchEnsembler | None = None
    _steps: list[int]

    def predict_for(self, env_ids: list[int], observations: list[dict], instructions: list[str],
                    steps: list[int]) -> np.ndarray:
        raise NotImplementedError

    def _forget(self, env: int | None) -> None:
        """Per-env state beyond the ensembler (drafts, connections' episode flags); nothing by default."""

    def reset(self, num_envs: int = 1) -> None:
        """Start new episodes in `num_envs` slots: forget every stored chunk."""
        prompt = self.config.prompt
        self._ensembler = BatchEnsembler(num_envs, prompt.horizon, prompt.dim, **self.config.ensemble.to_dict())
        self._steps = [0] * num_envs
        self._forget(None)

    def reset_env(self, i: int) -> None:
        self._ensembler.reset(i)
        self._steps[i] = 0
        self._forget(i)

    def act_batch(self, observations: list[dict], instructions: list[str], env_ids: list[int] | None = None) -> np.ndarray:
        """One action per observation; queries the model only for envs whose ensembler asks for a new chunk."""
        if self._ensembler is None:
            self.reset(len(observations))
        env_ids = list(range(len(observations))) if env_ids is None else list(env_ids)
        steps = [self._steps[e] for e in env_ids]
        need = [k for k, (e, t) in enumerate(zip(env_ids, steps)) if self._ensembler[e].needs_query(t)]
        if need:
            chunks = self.predict_for([env_ids[k] for k in need], [observations[k] for k in need],
                                      [instructions[k] for k in need], [steps[k] for k in need])
            self._ensembler.add([env_ids[k] for k in need], chunks, [steps[k] for k in need])
        actions = self._ensembler.action(env_ids, steps)
        for e in env_ids:
            self._steps[e] += 1
        return np.asarray(actions, dtype=np.float32)

    def act(self, observation: dict, instruction: str) -> np.ndarray:
        return self.act_batch([observation], [instruction])[0]
