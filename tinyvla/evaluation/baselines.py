"""Baseline policies for `tinyvla eval random|expert`: the same interface as tinyvla.Policy (tinyvla.interface)."""

from __future__ import annotations

import numpy as np

from tinyvla.errors import UserError
from tinyvla.evaluation.slots import LocalSlot


class _SeededBaseline:
    """What both baselines share: one random generator per env slot, re-seeded per episode (`seed_env`) so an
    episode's actions do not depend on which slot runs it; nothing to forget between episodes."""

    rngs: list[np.random.Generator]

    def bind(self, slots) -> None:
        pass

    def reset_env(self, i: int) -> None:
        pass

    def seed_env(self, i: int, seed: int) -> None:
        self.rngs[i] = np.random.default_rng(seed)

    @staticmethod
    def _env_ids(observations, env_ids) -> list[int]:
        return list(range(len(observations))) if env_ids is None else list(env_ids)


class RandomPolicy(_SeededBaseline):
    """Uniform random actions in [-1, 1] (the normalised range both simulators clip to), gripper -1 or +1.
    Seeded per episode (`seed_env`), so an episode's actions do not depend on which slot runs it."""

    name = "random"

    def __init__(self, dim: int = 7, seed: int = 0):
        self.dim, self.seed = dim, seed
        self.rngs: list[np.random.Generator] = []
        self.config = {"baseline": "random", "low": -1.0, "high": 1.0}

    def reset(self, num_envs: int = 1) -> None:
        self.rngs = [np.random.default_rng([self.seed, i]) for i in range(num_envs)]

    def act_batch(self, observations, instructions, env_ids=None) -> np.ndarray:
        env_ids = self._env_ids(observations, env_ids)
        out = np.stack([self.rngs[i].uniform(-1.0, 1.0, size=self.dim) for i in env_ids]).astype(np.float32)
        out[:, -1] = np.where(out[:, -1] > 0, 1.0, -1.0)
        return out


class ExpertPolicy(_SeededBaseline):
    """BlockFind's scripted expert. It reads the env's true state (privileged), so `bind(slots)` hands it the envs;
    it works only with in-process BlockFind envs. noise=0: the plain script, an upper bound to compare against."""

    name = "expert"

    def __init__(self, noise: float = 0.0):
        self.noise = noise
        self.slots = None
        self.rngs: list[np.random.Generator] = []
        self.config = {"baseline": "expert", "noise": noise}

    def bind(self, slots) -> None:
        if not all(isinstance(s, LocalSlot) for s in slots):
            raise UserError("the expert baseline needs in-process BlockFind envs")
        self.slots = slots

    def reset(self, num_envs: int = 1) -> None:
        self.rngs = [np.random.default_rng(i) for i in range(num_envs)]

    def act_batch(self, observations, instructions, env_ids=None) -> np.ndarray:
        from tinyvla.envs.blockfind import expert_action

        env_ids = self._env_ids(observations, env_ids)
        return np.stack([expert_action(self.slots[i].env, self.rngs[i], noise=self.noise) for i in env_ids])

