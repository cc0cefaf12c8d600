"""A quick closed-loop success probe used during training (FACTS §6: the loss falls smoothly while success jumps
late, so the loss alone cannot tell you when a run is done). Uses the same rollout code as `tinyvla eval`, on a
different seed than the eval protocol's, so watching the probe does not tune on the test episodes."""

from __future__ import annotations

import math

from tinyvla.interface import PolicyInterface

PROBE_SEED = 1000


def probe_success(policy: PolicyInterface, suite: str, episodes: int = 20, num_envs: int = 10,
                  seed: int = PROBE_SEED) -> float:
    from tinyvla.envs.suites import setup_suite
    from tinyvla.evaluation.episodes import episode_list
    from tinyvla.evaluation.rollout import run_episodes
    from tinyvla.evaluation.slots import make_slots

    setup = setup_suite(suite, seed=seed)
    per_task = max(1, math.ceil(episodes / len(setup.tasks)))
    specs = episode_list(setup, list(range(len(setup.tasks))), per_task)
    slots = make_slots(setup, min(num_envs, len(specs)), processes=False)
    records: list[dict] = []
    run_episodes(specs, policy, slots, records.append)
    return sum(bool(r.get("success")) for r in records) / max(1, len(records))
