"""Actions <-> integers 0..B <-> text, the VLA-0 way.

Each action dimension is scaled with one global min/max taken from the dataset statistics:

    code = round((a - min) / (max - min) * B)        a = min + code / B * (max - min)

so the round trip is off by at most half a bin, (max - min) / (2B). Optionally the bounds are looked up per task
(keyed by the instruction text), which gives finer bins for tasks that move little.

A dimension that is constant in the data (min == max) encodes to the middle value B // 2 and decodes back to that
constant exactly: there is nothing to learn there, and dividing by zero would poison the whole chunk.

The gripper keeps whatever convention the data holds (LIBERO: -1 open, +1 closed); `gripper_dim` only tells consumers
which dimension it is, so an environment wrapper can snap it to +-1.

Parsing model output is tolerant, following the official VLA-0 code: split on whitespace, keep what parses as an int,
truncate to a multiple of D, pad missing timesteps by repeating the last one, and fall back to the middle of the range
when nothing parses at all. It never raises.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinyvla.core.atomic import write_json_atomic
from tinyvla.errors import UserError


@dataclass
class ActionStats:
    """Per-dimension statistics of a dataset's actions. `min` and `max` drive the codec; the rest is reporting."""

    min: list[float]
    max: list[float]
    mean: list[float] | None = None
    std: list[float] | None = None
    q01: list[float] | None = None
    q99: list[float] | None = None
    # instruction -> {"min": [...], "max": [...]}; used only when the codec is asked for per-task bounds.
    per_task: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.min) != len(self.max):
            raise UserError(f"action stats: min has {len(self.min)} values but max has {len(self.max)}; regenerate them")
        for lo, hi in zip(self.min, self.max):
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise UserError(f"action stats: bounds must be finite with min <= max, got [{lo}, {hi}]")

    @property
    def dim(self) -> int:
        return len(self.min)

    def to_dict(self) -> dict:
        out = {"min": list(map(float, self.min)), "max": list(map(float, self.max))}
        for key in ("mean", "std", "q01", "q99"):
            if getattr(self, key) is not None:
                out[key] = list(map(float, getattr(self, key)))
        if self.per_task:
            out["per_task"] = self.per_task
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ActionStats":
        if not isinstance(data, dict) or "min" not in data or "max" not in data:
            raise UserError("action stats need 'min' and 'max' lists (one value per action dimension)")
        keys = ("min", "max", "mean", "std", "q01", "q99")
        kwargs = {k: [float(x) for x in data[k]] for k in keys if data.get(k) is not None}
        return cls(**kwargs, per_task=dict(data.get("per_task") or {}))

    @classmethod
    def from_actions(cls, actions: np.ndarray, tasks: list[str] | None = None) -> "ActionStats":
        """Stats of an (N, D) action array; `tasks` (N instructions) adds per-task bounds."""
        actions = np.asarray(actions, dtype=np.float64)
        stats = cls(
            min=actions.min(0).tolist(),
            max=actions.max(0).tolist(),
            mean=actions.mean(0).tolist(),
            std=actions.std(0).tolist(),
            q01=np.quantile(actions, 0.01, axis=0).tolist(),
            q99=np.quantile(actions, 0.99, axis=0).tolist(),
        )
        if tasks is not None:
            tasks_arr = np.asarray(tasks)
            for name in sorted(set(tasks_arr.tolist())):
                sel = actions[tasks_arr == name]
                stats.per_task[name] = {"min": sel.min(0).tolist(), "max": sel.max(0).tolist()}
        return stats

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ActionStats":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"action stats file not found: {path} (write one with `tinyvla data stats --save-stats`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"action stats file {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
        return cls.from_dict(data)


class ActionCodec:
    """Continuous (H, D) action chunks <-> (H, D) ints in 0..bins <-> "i i i ..." text."""

    def __init__(
        self,
        stats: ActionStats,
        horizon: int = 8,
        bins: int = 1000,
        per_task_bounds: bool = False,
        gripper_dim: int | None = 6,
    ):
        if horizon < 1 or bins < 1:
            raise UserError(f"horizon and bins must be >= 1, got horizon={horizon}, bins={bins}")
        self.stats = stats
        self.horizon = horizon
        self.dim = stats.dim
        self.bins = bins
        self.per_task_bounds = per_task_bounds
        self.gripper_dim = gripper_dim if gripper_dim is not None and gripper_dim < self.dim else None

    # -- bounds -----------------------------------------------------------------------------------------------------
    def bounds(self, task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) arrays for a task; global bounds when per-task bounds are off or the task is unknown."""
        src = self.stats.per_task.get(task) if (self.per_task_bounds and task is not None) else None
        src = src or {"min": self.stats.min, "max": self.stats.max}
        return np.asarray(src["min"], dtype=np.float64), np.asarray(src["max"], dtype=np.float64)

    # -- floats <-> ints --------------------------------------------------------------------------------------------
    def encode(self, actions: np.ndarray, task: str | None = None) -> np.ndarray:
        """(..., D) floats -> (..., D) int64 codes in 0..bins. Values outside the bounds are clipped."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape[-1] != self.dim:
            raise UserError(f"actions have {actions.shape[-1]} dimensions but the stats have {self.dim}")
        lo, hi = self.bounds(task)
        span = hi - lo
        constant = span <= 0
        unit = (actions - lo) / np.where(constant, 1.0, span)
        codes = np.rint(np.clip(unit, 0.0, 1.0) * self.bins)
        codes = np.where(constant, self.bins // 2, codes)
        return codes.astype(np.int64)

    def decode(self, codes: np.ndarray, task: str | None = None) -> np.ndarray:
        """(..., D) codes -> (..., D) float32 actions. A constant dimension decodes to its constant."""
        codes = np.clip(np.asarray(codes, dtype=np.float64), 0, self.bins)
        lo, hi = self.bounds(task)
        return (lo + codes / self.bins * (hi - lo)).astype(np.float32)

    # -- ints <-> text ----------------------------------------------------------------------------------------------
    @staticmethod
    def to_text(codes: np.ndarray) -> str:
        return " ".join(str(int(c)) for c in np.asarray(codes).reshape(-1))

    def parse(self, text: str) -> np.ndarray:
        """Model output -> (H, D) int codes, never raising (see the module docstring for the rules)."""
        values = []
        for piece in str(text).split():
            try:
                values.append(min(max(int(piece), 0), self.bins))
            except ValueError:
                continue  # a stray token ("?", "1.5", "abc") is skipped, not fatal
        steps = min(len(values) // self.dim, self.horizon)
        if steps == 0:
            return np.full((self.horizon, self.dim), self.bins // 2, dtype=np.int64)
        codes = np.asarray(values[: steps * self.dim], dtype=np.int64).reshape(steps, self.dim)
        if steps < self.horizon:
            codes = np.concatenate([codes, np.repeat(codes[-1:], self.horizon - steps, axis=0)])
        return codes

    # -- the two directions in one call -----------------------------------------------------------------------------
    def actions_to_text(self, actions: np.ndarray, task: str | None = None) -> str:
        return self.to_text(self.encode(actions, task))

    def text_to_actions(self, text: str, task: str | None = None) -> np.ndarray:
        return self.decode(self.parse(text), task)

    def max_error(self, task: str | None = None) -> np.ndarray:
        """Worst round-trip error per dimension: half a bin."""
        lo, hi = self.bounds(task)
        return (hi - lo) / (2 * self.bins)
