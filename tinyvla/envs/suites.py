"""Suites in one place: their names, how each one is set up for evaluation, and the factory that builds its envs.

    setup = setup_suite("blockfind-reach")   # tasks (instruction per id), the recorded protocol, an env factory
    env = setup.factory(task_id=0)

Every other module (recipe validation, training data, eval, bench, the probe) reads suite names from here. Importing
this module is cheap: BlockFind is numpy, and `tinyvla.envs.libero` imports its simulator only on first use.
"""

from __future__ import annotations

import dataclasses

from tinyvla.envs import blockfind, libero
from tinyvla.errors import UserError

BLOCKFIND_SUITES = tuple(blockfind.SUITES)  # ("blockfind-reach", "blockfind"): data generated on first use
LIBERO_SUITES = tuple(libero.LIBERO_SUITES)  # the five benchmark suites (per-suite step budgets in envs/libero.py)
# "libero_all" = the four suites VLA-0 trains one policy on (libero_90 is a separate pre-training suite). A data suite
# only: evaluation runs each of the four in turn.
LIBERO_ALL = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
EVAL_SUITES = BLOCKFIND_SUITES + LIBERO_SUITES  # what `tinyvla eval --suite` takes
DATA_SUITES = EVAL_SUITES + ("libero_all",)  # what a recipe's data.suite takes

DEFAULT_SEED = 7  # openpi / VLA-0's LIBERO seed; BlockFind uses it too so one number describes a run
BLOCKFIND_RESOLUTION = 64  # BlockFind's default render size: what `generate_dataset` trains on


def is_libero(suite: str | None) -> bool:
    return suite is not None and suite.startswith("libero")


def is_blockfind(suite: str | None) -> bool:
    return suite in BLOCKFIND_SUITES


def check_suite(suite: str) -> None:
    """Refuse anything `tinyvla eval` cannot run."""
    if suite not in EVAL_SUITES:
        raise UserError(f"unknown suite {suite!r}; valid suites: {', '.join(EVAL_SUITES)}")


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
            return libero.LiberoEnv(self.suite, int(task_id), libero.LiberoProtocol(**self.kwargs))
        return blockfind.make_env(self.suite, **self.kwargs)


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
    """Resolve a suite name and the protocol overrides into tasks + a recorded protocol + an env factory.
    `seeding` (LIBERO): per_task = the official VLA-0 / openpi order, per_episode = re-seed before every episode."""
    check_suite(suite)
    if seeding not in libero.SEEDINGS:
        raise UserError(f"--seeding {seeding!r}: choose per_task (the official protocol) or per_episode")
    seed = DEFAULT_SEED if seed is None else int(seed)
    if not is_libero(suite):
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
