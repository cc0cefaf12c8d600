"""Closed-loop rollouts: K environments stepped in lock-step, one batched policy call per step.

    setup = setup_suite("blockfind-reach")                    # tinyvla.envs.suites: tasks, protocol, env factory
    episodes = episode_list(setup, task_ids=[0], episodes_per_task=10)   # tinyvla.evaluation.episodes
    slots = make_slots(setup, num_envs=3)                     # tinyvla.evaluation.slots
    stats = run_episodes(episodes, policy, slots, on_done=print)

Nothing here imports torch: a policy is anything that implements `tinyvla.interface.PolicyInterface`
(tinyvla.Policy, the baselines in tinyvla.evaluation.baselines, a remote policy).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Callable

import numpy as np

from tinyvla.errors import UserError
from tinyvla.evaluation.episodes import EpisodeSpec
from tinyvla.evaluation.slots import describe_error
from tinyvla.interface import PolicyInterface




@dataclasses.dataclass
class _Active:
    spec: EpisodeSpec
    t0: float
    obs: dict | None = None
    instruction: str = ""
    steps: int = 0
    video: object = None
    video_error: str | None = None


def _act(policy, observations, instructions, env_ids):
    """Actions for every ready env, or an error message per env whose call failed.

    One batched call normally. If it raises, each env is retried alone, so one bad observation fails one episode,
    not the whole batch (Policy.act_batch changes no state before its model call, so a retry is clean)."""
    try:
        actions = policy.act_batch(observations, instructions, env_ids)
        return list(actions), [None] * len(env_ids)
    except Exception as err:  # noqa: BLE001
        if len(env_ids) == 1:
            return [None], [f"policy: {describe_error(err)}"]
    actions, errors = [], []
    for obs, ins, i in zip(observations, instructions, env_ids):
        try:
            actions.append(policy.act_batch([obs], [ins], [i])[0])
            errors.append(None)
        except Exception as err:  # noqa: BLE001
            actions.append(None)
            errors.append(f"policy: {describe_error(err)}")
    return actions, errors


def run_episodes(episodes: list[EpisodeSpec], policy: PolicyInterface, slots: list, on_done: Callable[[dict], None],
                 video: Callable[[EpisodeSpec], object] | None = None, timeout: float | None = None,
                 close_slots: bool = True) -> dict:
    """Run every episode on the slots; call `on_done(record)` as each one finishes. Returns timing totals.

    Lock-step: all envs that are mid-episode step together, then ONE policy call covers every env waiting for an
    action. An env being reset (LIBERO: seconds) does not hold the others back: its reset is collected when it is done.
    `video(spec)` may return a recorder with add(obs, step, instruction) and close(success, error) for an episode.
    close_slots=False keeps the envs (and worker processes) for another call, e.g. after a warm-up.
    """
    queue = deque(episodes)
    n = len(slots)
    policy.bind(slots)
    policy.reset(n)
    active: list[_Active | None] = [None] * n
    resetting, stepping = set(), set()
    stats = {"episodes": 0, "steps": 0, "policy_calls": 0, "policy_s": 0.0, "env_wait_s": 0.0, "wall_s": 0.0}
    start = time.perf_counter()

    def take_for(i: int) -> EpisodeSpec:
        # Prefer an episode whose env the slot already has: a LIBERO scene rebuild costs seconds.
        for k, spec in enumerate(queue):
            if slots[i].task_key(spec.task_id) == slots[i].env_key:
                del queue[k]
                return spec
        return queue.popleft()

    def start_next(i: int) -> None:
        active[i] = None
        if not queue:
            return
        spec = take_for(i)
        policy.reset_env(i)
        policy.seed_env(i, spec.policy_seed)
        active[i] = _Active(spec, time.perf_counter())
        slots[i].send("reset", (spec.task_id, spec.reset_seed, spec.reset_options))
        resetting.add(i)

    def finish(i: int, success: bool, error: str | None = None) -> None:
        a = active[i]
        record = {**a.spec.record(), "success": bool(success) and error is None, "steps": a.steps,
                  "seconds": round(time.perf_counter() - a.t0, 3)}
        if error is not None:
            record["error"] = error
        if a.video is not None:
            try:
                a.video.close(success=record["success"], error=error)
            except Exception as err:  # noqa: BLE001 - a broken video must not lose the episode's result
                a.video_error = describe_error(err)
        if a.video_error:
            record["video_error"] = a.video_error
        stats["episodes"] += 1
        on_done(record)
        start_next(i)

    try:
        for i in range(n):
            start_next(i)
        while resetting or stepping:
            t = time.perf_counter()
            answers = {}
            for i in sorted(stepping):  # lock-step: wait for every stepping env
                answers[i] = ("step", slots[i].recv(timeout))
            stepping.clear()
            done_resets = [i for i in sorted(resetting) if slots[i].poll()]
            if not answers and not done_resets:  # nothing steps: block on one reset rather than spin
                done_resets = [min(resetting)]
            for i in done_resets:
                answers[i] = ("reset", slots[i].recv(timeout))
                resetting.discard(i)
            stats["env_wait_s"] += time.perf_counter() - t

            for i, (kind, (status, payload)) in sorted(answers.items()):
                a = active[i]
                if status == "fatal":
                    raise UserError(payload)
                if status == "error":
                    slots[i].restart()
                    finish(i, False, f"env {kind}: {payload}")
                    continue
                if kind == "reset":
                    obs, info, a.instruction = payload
                    if a.instruction != a.spec.task:  # the env decides; a mismatch would mean a mislabelled table
                        a.spec.task = a.instruction
                    if video is not None:
                        a.video = video(a.spec)
                else:
                    obs, _, terminated, truncated, info = payload
                    a.steps += 1
                    stats["steps"] += 1
                if a.video is not None:
                    try:
                        a.video.add(obs, a.steps, a.instruction)
                    except Exception as err:  # noqa: BLE001 - e.g. ffmpeg missing: keep evaluating, say why
                        a.video_error = describe_error(err)
                        a.video.abort()
                        a.video = None
                if kind == "step" and (terminated or truncated):
                    finish(i, bool(info.get("success", False)))
                else:
                    a.obs = obs

            ready = [i for i in range(n) if active[i] is not None and active[i].obs is not None
                     and i not in resetting and i not in stepping]
            if not ready:
                continue
            t = time.perf_counter()
            observations = [active[i].obs for i in ready]
            actions, errors = _act(policy, observations, [active[i].instruction for i in ready], ready)
            stats["policy_s"] += time.perf_counter() - t
            stats["policy_calls"] += 1
            for i, action, error in zip(ready, actions, errors):
                active[i].obs = None
                if error is not None:
                    finish(i, False, error)
                    continue
                slots[i].send("step", np.asarray(action, dtype=np.float32))
                stepping.add(i)
    finally:
        for a in active:
            if a is not None and a.video is not None:
                try:
                    a.video.abort()
                except Exception:  # noqa: BLE001
                    pass
        if close_slots:
            for slot in slots:
                slot.close()
    stats["wall_s"] = time.perf_counter() - start
    return stats
