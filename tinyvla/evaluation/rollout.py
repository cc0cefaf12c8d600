"""Closed-loop rollouts: K environments stepped in lock-step, one batched policy call per step.

    setup = setup_suite("blockfind-reach")                    # tasks, protocol, how to build an env
    episodes = episode_list(setup, task_ids=[0], episodes_per_task=10)
    slots = make_slots(setup, num_envs=3)
    stats = run_episodes(episodes, policy, slots, on_done=print)

Where the envs live:
  * BlockFind is numpy and fast: its envs run in this process (`LocalSlot`).
  * LIBERO envs run one per worker process (`WorkerSlot`): MuJoCo stepping and software rendering then run in
    parallel, a crashing or leaking simulator takes down only its worker, and a worker can be killed and replaced.
    Each one holds ~2.2 GB (FACTS §4), so K workers need K times that.
Both speak the same tiny protocol (`send(cmd, arg)` then `recv()`), so the loop below does not care which it drives.

Episodes are deterministic in their ids, whatever env slot or shard runs them and whatever ran before: BlockFind
episodes reset with a seed derived from (protocol seed, task, episode); LIBERO episodes use stored init state
`episode` and start from the simulator RNG state of the official order (seeded once per task, init states in order;
envs/libero.py replays it when a worker runs them otherwise), or re-seed at every reset (`seeding=per_episode`).
That is what makes `--shard` and resuming give the same table as one uninterrupted run.

Nothing here imports torch: a policy is anything with `reset(n)`, `reset_env(i)` and
`act_batch(observations, instructions, env_ids)` (tinyvla.Policy, or the baselines below).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
import traceback
from collections import deque
from typing import Callable

import numpy as np

from tinyvla.errors import UserError

BLOCKFIND_SUITES = ("blockfind-reach", "blockfind")
DEFAULT_SEED = 7  # openpi / VLA-0's LIBERO seed; BlockFind uses it too so one number describes a run
BLOCKFIND_RESOLUTION = 64  # BlockFind's default render size: what `generate_dataset` trains on
WORKER_TIMEOUT_S = 900.0  # a fresh LIBERO worker imports the simulator and builds a scene (~30 s cold, more when busy)


def all_suites() -> tuple[str, ...]:
    from tinyvla.envs.libero import LIBERO_SUITES

    return BLOCKFIND_SUITES + tuple(LIBERO_SUITES)


def check_suite(suite: str) -> None:
    if suite not in all_suites():
        raise UserError(f"unknown suite {suite!r}; valid suites: {', '.join(all_suites())}")


def is_libero(suite: str) -> bool:
    return suite.startswith("libero")


def episode_seed(seed: int, task_id: int, episode: int) -> int:
    """A 31-bit seed that depends only on the ids (not on order): mixing through SeedSequence keeps nearby ids apart."""
    return int(np.random.SeedSequence([int(seed), int(task_id), int(episode)]).generate_state(1)[0] >> 1)


# ----------------------------------------------------------------------------------------------------------------------
# Suites, tasks, episodes


@dataclasses.dataclass
class EnvFactory:
    """Builds the env for a task. Picklable (plain fields), so a worker process can call it."""

    suite: str
    kwargs: dict

    def key(self, task_id: int):
        """Envs with the same key can be reused across tasks: BlockFind takes the task at reset, LIBERO cannot."""
        return int(task_id) if is_libero(self.suite) else None

    def __call__(self, task_id: int):
        if is_libero(self.suite):
            from tinyvla.envs.libero import LiberoEnv, LiberoProtocol

            return LiberoEnv(self.suite, int(task_id), LiberoProtocol(**self.kwargs))
        from tinyvla.envs.blockfind import make_env

        return make_env(self.suite, **self.kwargs)


@dataclasses.dataclass
class SuiteSetup:
    suite: str
    tasks: list[str]  # instruction per task id
    protocol: dict  # every setting that changes what an episode is; recorded in results.json
    factory: EnvFactory
    init_states_per_task: int | None = None  # LIBERO only
    fps: int = 10  # video frame rate: LIBERO's control rate is 20 Hz, BlockFind has none; 10 is easy to watch

    @property
    def libero(self) -> bool:
        return is_libero(self.suite)


def setup_suite(suite: str, seed: int | None = None, max_steps: int | None = None, wait_steps: int | None = None,
                resolution: int | None = None, rotate_180: bool = True, snap_gripper: bool = True,
                seeding: str = "per_task") -> SuiteSetup:
    """Resolve a suite name and the protocol overrides into tasks + a recorded protocol + an env factory."""
    check_suite(suite)
    if seeding not in ("per_task", "per_episode"):
        raise UserError(f"--seeding {seeding!r}: choose per_task (the official protocol) or per_episode")
    seed = DEFAULT_SEED if seed is None else int(seed)
    if not is_libero(suite):
        from tinyvla.envs import blockfind

        if wait_steps:
            raise UserError("--wait-steps applies to LIBERO only (BlockFind has nothing to settle)")
        if not (rotate_180 and snap_gripper):
            raise UserError("--no-rotate / --no-snap-gripper apply to LIBERO only")
        protocol = {"seed": seed, "max_steps": int(max_steps or blockfind.DEFAULT_MAX_STEPS), "wait_steps": 0,
                    "resolution": int(resolution or BLOCKFIND_RESOLUTION), "n_blocks": 3}
        if protocol["max_steps"] < 1:
            raise UserError(f"--max-steps must be >= 1, got {max_steps}")
        if suite == "blockfind-reach":
            tasks = [blockfind.INSTRUCTION.format(color="red")]
        else:
            tasks = [blockfind.INSTRUCTION.format(color=c) for c in blockfind.COLORS]
        kwargs = {"image_size": protocol["resolution"], "max_steps": protocol["max_steps"],
                  "n_blocks": protocol["n_blocks"]}
        # make_env validates the sizes: fail here, in the main process, not in every episode.
        blockfind.make_env(suite, **kwargs)
        return SuiteSetup(suite, tasks, protocol, EnvFactory(suite, kwargs))

    from tinyvla.envs import libero

    p = libero.LiberoProtocol(seed=seed, max_steps=max_steps,
                              wait_steps=libero.LiberoProtocol.wait_steps if wait_steps is None else int(wait_steps),
                              resolution=int(resolution or libero.LiberoProtocol.resolution),
                              rotate_180=rotate_180, snap_gripper=snap_gripper, seeding=seeding).resolved(suite)
    tasks = libero.list_tasks(suite)  # imports the simulator: a missing install fails here with the install hint
    n_init = libero.num_init_states(suite, 0)
    protocol = {k: v for k, v in p.to_dict().items() if k != "init_state_indices"}
    kwargs = {k: v for k, v in p.to_dict().items() if k != "init_state_indices"}
    # Videos at LIBERO's 20 Hz control rate play in real time.
    return SuiteSetup(suite, tasks, protocol, EnvFactory(suite, kwargs), init_states_per_task=n_init, fps=20)


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
    from tinyvla.envs import blockfind  # numpy only: cheap to import even for a LIBERO suite

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


# ----------------------------------------------------------------------------------------------------------------------
# Env slots: where an env lives, and the protocol the rollout loop speaks to it


class _WorkerFatal(Exception):
    """Building the env failed with a UserError: a configuration problem that every episode would hit."""


class EnvHost:
    """Runs commands against one env; the same code runs in-process (LocalSlot) and in a worker (WorkerSlot).

    Commands: ("reset", (task_id, seed, options)) -> (obs, info, instruction); ("step", action) -> step tuple.
    Answers: ("ok", payload) | ("error", message) — the episode failed | ("fatal", message) — stop the run.
    """

    def __init__(self, factory: Callable):
        self.factory = factory
        self.env = None
        self.env_key = ("none",)  # matches no task until an env is built


    def run(self, cmd: str, arg):
        try:
            if cmd == "reset":
                task_id, seed, options = arg
                key = _task_key(self.factory, task_id)
                if self.env is None or key != self.env_key:
                    self.close()
                    try:
                        self.env = self.factory(task_id)
                    except UserError as err:
                        raise _WorkerFatal(str(err)) from err
                    self.env_key = key
                obs, info = self.env.reset(seed=seed, options=options)
                return "ok", (obs, info, self.env.instruction)
            if cmd == "step":
                return "ok", self.env.step(arg)
            raise ValueError(f"unknown env command {cmd!r}")
        except _WorkerFatal as err:
            return "fatal", str(err)
        except Exception as err:  # noqa: BLE001 - any env failure ends this episode, never the run
            self.close()  # a half-stepped simulator is not trusted again
            return "error", _describe(err)

    def close(self):
        if self.env is not None:
            try:
                if hasattr(self.env, "close"):
                    self.env.close()
            except Exception:  # noqa: BLE001 - closing a broken env may fail too; it is discarded either way
                pass
            self.env = None
            self.env_key = ("none",)


def _task_key(factory, task_id: int):
    """Which env a task needs: equal keys share an env (an EnvFactory says; any other callable: one env per task)."""
    key = getattr(factory, "key", None)
    return key(task_id) if key is not None else int(task_id)


def _describe(err: BaseException) -> str:
    """One line: the exception and where it was raised (the innermost frame), for episodes.jsonl."""
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return " ".join(f"{type(err).__name__}: {err}{where}".split())


class LocalSlot:
    """An env in this process. `send` does the work at once; `recv` hands back the answer."""

    def __init__(self, factory: Callable):
        self.host = EnvHost(factory)
        self._answer = None

    @property
    def env(self):
        return self.host.env

    def task_key(self, task_id: int):
        return _task_key(self.host.factory, task_id)

    @property
    def env_key(self):
        return self.host.env_key

    def send(self, cmd: str, arg) -> None:
        self._answer = self.host.run(cmd, arg)

    def poll(self) -> bool:
        return self._answer is not None

    def recv(self, timeout: float = WORKER_TIMEOUT_S):
        answer, self._answer = self._answer, None
        return answer

    def restart(self) -> None:
        self.host.close()

    def close(self) -> None:
        self.host.close()


def _worker_main(conn, factory) -> None:
    """A worker process: one env, commands in, answers out, until "close" or the pipe breaks."""
    host = EnvHost(factory)
    try:
        while True:
            try:
                cmd, arg = conn.recv()
            except (EOFError, OSError):
                break
            if cmd == "close":
                break
            conn.send(host.run(cmd, arg))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent decides what happens
        pass
    finally:
        host.close()


class WorkerSlot:
    """An env in its own process (spawned: a fork would copy the parent's torch threads and CUDA state)."""

    def __init__(self, factory: Callable, timeout: float = WORKER_TIMEOUT_S):
        self.factory, self.timeout = factory, timeout
        self._ctx = multiprocessing.get_context("spawn")
        self.env_key = ("none",)  # mirrors the worker's env (tracked here: the scheduler prefers same-task episodes)
        self._task = None
        self._startup_deaths = 0
        self._start()

    def _start(self):
        self.conn, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(target=_worker_main, args=(child, self.factory), daemon=True,
                                      name="tinyvla-env-worker")
        self.proc.start()
        child.close()
        self._broken: str | None = None
        self._answered = False  # has this worker process ever answered?

    def task_key(self, task_id: int):
        return _task_key(self.factory, task_id)

    def send(self, cmd: str, arg) -> None:
        if cmd == "reset":
            self._task = self.task_key(arg[0])
        try:
            self.conn.send((cmd, arg))
        except (BrokenPipeError, OSError) as err:
            self._broken = f"env worker is gone ({type(err).__name__}, exit code {self.proc.exitcode})"

    def poll(self) -> bool:
        return self._broken is not None or self.conn.poll()

    def recv(self, timeout: float | None = None):
        if self._broken is not None:
            return "error", self._broken
        timeout = self.timeout if timeout is None else timeout
        try:
            if not self.conn.poll(timeout):
                return "error", f"env worker gave no answer in {timeout:.0f} s"
            answer = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(timeout=5)
            if not self._answered:
                self._startup_deaths += 1
                msg = (f"env worker died at start-up (exit code {self.proc.exitcode}); when tinyvla is called from a "
                       "Python script, guard the call with `if __name__ == '__main__':` (workers are spawned)")
                # Twice in a row means every worker will: stop the run rather than record it all as errors.
                return ("fatal" if self._startup_deaths >= 2 else "error"), msg
            return "error", f"env worker died (exit code {self.proc.exitcode})"
        self._answered = True
        self._startup_deaths = 0
        if answer[0] == "ok":
            self.env_key = self._task
        return answer

    def restart(self) -> None:
        """Kill the worker and start a fresh one (a failed simulator is not trusted again)."""
        self._stop(kill=True)
        self.env_key = ("none",)
        self._start()

    def _stop(self, kill: bool) -> None:
        if self.proc.is_alive() and not kill:
            try:
                self.conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=10)
        self.conn.close()

    def close(self) -> None:
        self._stop(kill=False)


def make_slots(setup: SuiteSetup, num_envs: int, factory: Callable | None = None, processes: bool | None = None):
    """num_envs env slots for a suite: worker processes for LIBERO, in-process for BlockFind (unless overridden)."""
    if num_envs < 1:
        raise UserError(f"--num-envs must be >= 1, got {num_envs}")
    factory = factory or setup.factory
    processes = setup.libero if processes is None else processes
    return [WorkerSlot(factory) if processes else LocalSlot(factory) for _ in range(num_envs)]


# ----------------------------------------------------------------------------------------------------------------------
# Baseline policies: the same small interface as tinyvla.Policy


class RandomPolicy:
    """Uniform random actions in [-1, 1] (the normalised range both simulators clip to), gripper -1 or +1.
    Seeded per episode (`seed_env`), so an episode's actions do not depend on which slot runs it."""

    name = "random"

    def __init__(self, dim: int = 7, seed: int = 0):
        self.dim, self.seed = dim, seed
        self.rngs: list[np.random.Generator] = []

    def reset(self, num_envs: int = 1) -> None:
        self.rngs = [np.random.default_rng([self.seed, i]) for i in range(num_envs)]

    def reset_env(self, i: int) -> None:
        pass

    def seed_env(self, i: int, seed: int) -> None:
        self.rngs[i] = np.random.default_rng(seed)

    def act_batch(self, observations, instructions, env_ids=None) -> np.ndarray:
        env_ids = list(range(len(observations))) if env_ids is None else env_ids
        out = np.stack([self.rngs[i].uniform(-1.0, 1.0, size=self.dim) for i in env_ids]).astype(np.float32)
        out[:, -1] = np.where(out[:, -1] > 0, 1.0, -1.0)
        return out

    def config(self) -> dict:
        return {"baseline": "random", "low": -1.0, "high": 1.0}


class ExpertPolicy:
    """BlockFind's scripted expert. It reads the env's true state (privileged), so `bind(slots)` hands it the envs;
    it works only with in-process BlockFind envs. noise=0: the plain script, an upper bound to compare against."""

    name = "expert"

    def __init__(self, noise: float = 0.0):
        self.noise = noise
        self.slots = None
        self.rngs: list[np.random.Generator] = []

    def bind(self, slots) -> None:
        if not all(isinstance(s, LocalSlot) for s in slots):
            raise UserError("the expert baseline needs in-process BlockFind envs")
        self.slots = slots

    def reset(self, num_envs: int = 1) -> None:
        self.rngs = [np.random.default_rng(i) for i in range(num_envs)]

    def reset_env(self, i: int) -> None:
        pass

    def seed_env(self, i: int, seed: int) -> None:
        self.rngs[i] = np.random.default_rng(seed)

    def act_batch(self, observations, instructions, env_ids=None) -> np.ndarray:
        from tinyvla.envs.blockfind import expert_action

        env_ids = list(range(len(observations))) if env_ids is None else env_ids
        return np.stack([expert_action(self.slots[i].env, self.rngs[i], noise=self.noise) for i in env_ids])

    def config(self) -> dict:
        return {"baseline": "expert", "noise": self.noise}


# ----------------------------------------------------------------------------------------------------------------------
# The loop


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
            return [None], [f"policy: {_describe(err)}"]
    actions, errors = [], []
    for obs, ins, i in zip(observations, instructions, env_ids):
        try:
            actions.append(policy.act_batch([obs], [ins], [i])[0])
            errors.append(None)
        except Exception as err:  # noqa: BLE001
            actions.append(None)
            errors.append(f"policy: {_describe(err)}")
    return actions, errors


def run_episodes(episodes: list[EpisodeSpec], policy, slots: list, on_done: Callable[[dict], None],
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
    if hasattr(policy, "bind"):
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
        if hasattr(policy, "seed_env"):
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
                a.video_error = _describe(err)
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
                        a.video_error = _describe(err)
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
