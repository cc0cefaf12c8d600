"""Which episodes an evaluation runs: task lists, episode specs (seeds, init states), shards.

Episodes are deterministic in their ids, whatever env slot or shard runs them and whatever ran before: BlockFind
episodes reset with a seed derived from (protocol seed, task, episode); LIBERO episodes use stored init state
`episode` and start from the simulator RNG state of the official order (seeded once per task, init states in order;
envs/libero.py replays it when a worker runs them otherwise), or re-seed at every reset (`seeding=per_episode`). That
is what makes `--shard` and resuming give the same table as one uninterrupted run.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tinyvla.envs import blockfind
from tinyvla.envs.suites import SuiteSetup
from tinyvla.errors import UserError


def episode_seed(seed: int, task_id: int, episode: int) -> int:
    """A 31-bit seed that depends only on the ids (not on order): mixing through SeedSequence keeps nearby ids apart."""
    return int(np.random.SeedSequence([int(seed), int(task_id), int(episode)]).generate_state(1)[0] >> 1)



def parse_tasks(text: str | None, n_tasks: int) -> list[int]:
    """'0,2,5-7' -> [0, 2, 5, 6, 7]; None -> every task."""
    if text is None or not str(text).strip() or str(text).strip() == "all":
        return list(range(n_tasks))
    ids: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                ids.extend(range(lo, hi + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise UserError(f"--tasks {text!r}: expected task ids like 0,2,5-7") from None
    bad = sorted({i for i in ids if not 0 <= i < n_tasks})
    if bad or not ids:
        raise UserError(f"--tasks {text!r}: this suite has tasks 0..{n_tasks - 1}" + (f", not {bad}" if bad else ""))
    return sorted(set(ids))


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected i/n, e.g. 0/4 for the first of four shards") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: need 0 <= i < n, e.g. 0/4 ... 3/4")
    return i, n


@dataclasses.dataclass
class EpisodeSpec:
    task_id: int
    task: str
    episode: int  # index within the task
    reset_seed: int | None  # passed to env.reset(seed=...)
    reset_options: dict | None  # passed to env.reset(options=...)
    policy_seed: int  # for baselines that draw random numbers: the same actions whichever slot runs the episode
    init_state_index: int | None = None  # LIBERO
    seed: int | None = None  # BlockFind

    @property
    def key(self) -> tuple[int, int]:
        return (self.task_id, self.episode)

    def record(self) -> dict:
        """The episode's identity as written to episodes.jsonl."""
        out = {"task_id": self.task_id, "task": self.task, "episode": self.episode}
        if self.init_state_index is not None:
            out["init_state_index"] = self.init_state_index
        if self.seed is not None:
            out["seed"] = self.seed
        return out


def episode_list(setup: SuiteSetup, task_ids: list[int], episodes_per_task: int) -> list[EpisodeSpec]:
    """tasks x episodes, task-major (so a LIBERO worker keeps its scene for a while)."""
    if episodes_per_task < 1:
        raise UserError(f"--episodes-per-task must be >= 1, got {episodes_per_task}")
    n_init = setup.init_states_per_task
    if n_init is not None and episodes_per_task > n_init:
        raise UserError(f"{setup.suite} stores {n_init} init states per task; --episodes-per-task must be <= {n_init}")

    seed = setup.protocol["seed"]
    out = []
    for t in task_ids:
        for e in range(episodes_per_task):
            pseed = episode_seed(seed, t, e)
            if setup.libero:
                # per_episode: re-seeded at every reset; per_task (official): the env replays the official order
                # itself (envs/libero.py), so either way an episode does not depend on what its worker ran before.
                reset_seed = seed if setup.protocol.get("seeding") == "per_episode" else None
                out.append(EpisodeSpec(t, setup.tasks[t], e, reset_seed=reset_seed,
                                       reset_options={"init_state_index": e}, policy_seed=pseed, init_state_index=e))
            else:
                options = None
                if setup.suite == "blockfind":
                    options = {"target_color": blockfind.color_named_in(setup.tasks[t])}
                out.append(EpisodeSpec(t, setup.tasks[t], e, reset_seed=pseed, reset_options=options,
                                       policy_seed=pseed, seed=pseed))
    return out


def shard_episodes(episodes: list[EpisodeSpec], shard: tuple[int, int]) -> list[EpisodeSpec]:
    """Every n-th episode starting at i: shards are disjoint, their union is the whole list, tasks spread evenly."""
    i, n = shard
    return episodes[i::n]

