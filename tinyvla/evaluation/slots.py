"""Env slots: where an env lives, and the tiny protocol the rollout loop speaks to it.

  * BlockFind is numpy and fast: its envs run in this process (`LocalSlot`).
  * LIBERO envs run one per worker process (`WorkerSlot`): MuJoCo stepping and software rendering then run in
    parallel, a crashing or leaking simulator takes down only its worker, and a worker can be killed and replaced.
    Each one holds ~2.2 GB (FACTS §4), so K workers need K times that.
Both speak the same protocol (`send(cmd, arg)` then `recv()`), so the loop does not care which it drives.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from typing import Callable

from tinyvla.envs.suites import SuiteSetup
from tinyvla.errors import UserError

WORKER_TIMEOUT_S = 900.0  # a fresh LIBERO worker imports the simulator and builds a scene (~30 s cold, more when busy)


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
            return "error", describe_error(err)

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


def describe_error(err: BaseException) -> str:
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


def _worker_main(conn, factory, parent: int) -> None:
    """A worker process: one env, commands in, answers out, until "close" or the pipe breaks. It dies with the eval
    process (`parent`): a kill -9 of `tinyvla eval` leaves no simulator rendering for nobody."""
    from tinyvla.lifetime import die_with_parent

    die_with_parent(parent)
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
        self.proc = self._ctx.Process(target=_worker_main, args=(child, self.factory, os.getpid()), daemon=True,
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

