"""Time `tinyvla data stats` on a LIBERO-sized LeRobot v2.0 dataset (1,693 episodes, 273,465 frames).

The stats read only the action columns, so the images are 8x8 to keep generation quick; the dataset is written once
with tinyvla's own v2.0 writer to /tmp/tinyvla_bench_v20 and reused on later runs.

    /work/venv/bin/python scripts/bench_stats.py [--out /tmp/tinyvla_bench_v20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EPISODES, FRAMES, TASKS = 1693, 273_465, 40


def episode_lengths(rng) -> np.ndarray:
    """LIBERO-like lengths (100..222 frames) scaled so they sum to exactly FRAMES."""
    raw = rng.integers(100, 223, EPISODES)
    lengths = np.floor(raw * FRAMES / raw.sum()).astype(np.int64)
    lengths[: FRAMES - lengths.sum()] += 1  # hand out the rounding remainder, one frame each
    return lengths


def episodes(lengths, rng):
    tasks = [f"libero task number {i} with a typical instruction length" for i in range(TASKS)]
    for n, t in enumerate(lengths):
        img = rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)
        actions = np.clip(np.cumsum(rng.normal(0, 0.05, (t, 7)), 0), -1, 1).astype(np.float32)
        actions[:, 6] = np.where(np.arange(t) < t // 2, -1.0, 1.0)
        state = rng.normal(0, 1, (t, 8)).astype(np.float32)
        yield {"task": tasks[n % TASKS], "image": img, "wrist_image": img, "state": state, "actions": actions}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/tinyvla_bench_v20")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import pyarrow as pa

    pa.set_cpu_count(args.threads)
    pa.set_io_thread_count(args.threads)

    from tinyvla.data.writer import write_lerobot_v2

    out = Path(args.out)
    info = out / "meta" / "info.json"
    if not (info.is_file() and json.loads(info.read_text()).get("total_frames") == FRAMES):
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        write_lerobot_v2(out, episodes(episode_lengths(rng), rng), fps=10)
        print(f"generated {out} in {time.perf_counter() - t0:.1f} s")

    from typer.testing import CliRunner

    from tinyvla.cli.data import app

    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["stats", "--repo", str(out), "--json", "--horizon", "8"])
    wall = time.perf_counter() - t0
    if res.exit_code != 0:
        raise SystemExit(f"stats failed: {res.output} {res.exception!r}")
    summary = json.loads(res.output)
    print(f"tinyvla data stats: {summary['episodes']} episodes, {summary['frames']} frames, {summary['tasks']} tasks "
          f"in {wall:.2f} s (pyarrow threads {args.threads}, cpu_count {os.cpu_count()})")


if __name__ == "__main__":
    main()
