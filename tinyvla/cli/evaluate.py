"""`tinyvla eval`: closed-loop success of a policy in BlockFind or LIBERO (or `--offline` action error on a dataset).
The options of `tinyvla.evaluate.evaluate`, which does the work.

    tinyvla eval runs/tiny-cpu/final --suite blockfind-reach --episodes-per-task 50 --num-envs 4
    tinyvla eval runs/libero/final --suite libero_object --num-envs 8 --shard 0/4 --out evals/object
    tinyvla eval expert --suite blockfind              # baselines: random, expert (BlockFind only)
    tinyvla eval runs/tiny-cpu/final --offline --repo data/blockfind-reach

Rerunning into the same --out resumes: finished episodes (OUT/episodes.jsonl) are skipped and the summary covers them
all. Shards (--shard i/n) may share one --out, in turn or at the same time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def evaluate(
    ckpt: Annotated[str, typer.Argument(help="Policy directory (runs/NAME/final or an export), or a baseline: random, expert.")],
    suite: Annotated[Optional[str], typer.Option(help="blockfind-reach, blockfind, libero_spatial, libero_object, libero_goal, libero_10, libero_90.")] = None,
    episodes_per_task: Annotated[int, typer.Option(help="Episodes per task (LIBERO: init states 0..N-1).")] = 50,
    tasks: Annotated[Optional[str], typer.Option(help="Task ids, e.g. 0,2,5-7 (default: all).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Policy steps per episode (default: the suite's protocol).")] = None,
    num_envs: Annotated[int, typer.Option(help="Environments stepped together; LIBERO runs one worker process (~2.2 GB) each.")] = 1,
    shard: Annotated[str, typer.Option(help="i/n: run every n-th episode starting at i.")] = "0/1",
    video: Annotated[int, typer.Option(help="Save MP4s of the first K episodes of each task.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: runs/eval/NAME-SUITE).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Protocol seed (default 7, as openpi and VLA-0).")] = None,
    ensemble: Annotated[Optional[str], typer.Option(help="vla0 | exp | uniform | none (default: the policy's).")] = None,
    ensemble_size: Annotated[Optional[int], typer.Option(help="Chunks kept for ensembling (default: the policy's).")] = None,
    execute_horizon: Annotated[Optional[int], typer.Option(help="Steps between model queries, 1..H (default: the policy's).")] = None,
    wait_steps: Annotated[Optional[int], typer.Option(help="LIBERO no-op steps after reset (default 10).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Render size (default: LIBERO 256, BlockFind 64).")] = None,
    rotate: Annotated[bool, typer.Option("--rotate/--no-rotate", help="LIBERO: rotate renders 180 degrees to dataset orientation.")] = True,
    snap_gripper: Annotated[bool, typer.Option("--snap-gripper/--no-snap-gripper", help="LIBERO: gripper action to -1/+1.")] = True,
    device: Annotated[Optional[str], typer.Option(help="Policy device (default: cuda if available, else cpu).")] = None,
    num_threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's). On a busy CPU, 1 can be many times faster.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Action error on held-out dataset episodes instead of rollouts.")] = False,
    repo: Annotated[Optional[str], typer.Option(help="--offline: the dataset (LeRobot dir or raw LIBERO HDF5 folder).")] = None,
    offline_frames: Annotated[int, typer.Option(help="--offline: frames to score (sampled from the held-out episodes).")] = 256,
    seeding: Annotated[str, typer.Option(help="LIBERO: per_task (seed once per task, init states in order: the official VLA-0 / openpi protocol) or per_episode (re-seed before every episode).")] = "per_task",
    speculative: Annotated[Optional[bool], typer.Option("--speculative/--no-speculative", help="Chunk-shift speculative decoding: the same actions with far fewer forward passes (default: the recipe's eval.speculative).")] = None,
):
    """Closed-loop success in BlockFind or LIBERO, with a per-task table, results.json, resumable episodes.jsonl."""
    from tinyvla.evaluate import evaluate as run

    return run(ckpt, suite=suite, episodes_per_task=episodes_per_task, tasks=tasks, max_steps=max_steps,
               num_envs=num_envs, shard=shard, video=video, out=out, seed=seed, ensemble=ensemble,
               ensemble_size=ensemble_size, execute_horizon=execute_horizon, wait_steps=wait_steps,
               resolution=resolution, rotate=rotate, snap_gripper=snap_gripper, device=device, num_threads=num_threads,
               offline=offline, repo=repo, offline_frames=offline_frames, speculative=speculative, seeding=seeding)
