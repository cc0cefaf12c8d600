"""Training-data throughput per data worker: tinyvla beside lerobot's own LeRobotDataset, on the same files, one run.

A data worker is one process; its samples/s bounds how many workers a GPU needs. Each side is measured in one process
with one torch thread, on the same frames in the same seeded random order (what a training epoch asks for):

    read       tinyvla: reader.sample(i, H) -> the cameras' uint8 frames + the next H actions + the instruction
               lerobot: LeRobotDataset(..., delta_timestamps={"action": H steps})[i] -> its float CHW frame tensors,
                        the H actions (+ pad flags), state, task; video through its default backend (torchcodec)
    pipeline   the whole training item, tinyvla's ActionSampleDataset: read -> crop -> colour jitter -> tile ->
               Qwen3-VL image processor (patch 16, merge 2: 448x224 -> 196 vision tokens) -> chat template + action
               text -> token ids, labels, masked action augmentation. lerobot's pipeline is the SAME object and code
               over lerobot's read: dataset[i], its frames turned back to uint8 HWC (the one extra step lerobot's float
               tensors need), then the identical transforms, processor and tokenizer (same versions), in the side venv.

Datasets (made once under --work, with lerobot 0.4.4's own writer where lerobot reads them):

    libero-png   2 x 256x256 PNG in parquet (the LIBERO image format, noisy renders so PNGs are realistic size), v3.0
                 (lerobot's writer) and the same frames as v2.0 (the physical-intelligence/libero schema, tinyvla's
                 writer; lerobot 0.4.4 refuses v2.0, so that row is tinyvla alone); 20 episodes x 100 frames
    so101-video  2 x 640x480 AV1 mp4 (lerobot's writer and codec, many episodes per file), 30 fps, 10 episodes x 150
                 frames, textured scenes with sensor noise (make_so101_fixture.py --texture)
    so101-video, frame cache   the same files with data.video_cache (data/frame_cache.py): each mp4 decoded once
                 (timed, printed) into 256x256 uint8 frames; the samples then read memory-mapped frames. lerobot's
                 column is its own reading of the same mp4s (it has no such cache).

lerobot runs in the side venv of scripts/make_lerobot_env.sh (benchmark only; the rows need it):

    bash scripts/make_lerobot_env.sh /tmp/tinyvla-lerobot-venv
    python scripts/bench_data_throughput.py --work /tmp/robot2-bench [--samples 200] [--rounds 3] \
        [--lerobot-python /tmp/tinyvla-lerobot-venv/bin/lerobot-python]

tinyvla runs in this process, lerobot in one side-venv process kept for the whole dataset; both warm up first, then
take turns every --chunk frames on the same frames, so a busy neighbour slows both alike. Ratios are taken within a
round (fresh random frames each), then mean [min-max] over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HORIZON = 8
LIBERO_EPISODES, LIBERO_LEN, LIBERO_SIZE = 20, 100, 256
TASKS = ["put the bowl on the plate", "open the top drawer", "turn on the stove"]
SIDE_VENV = "/tmp/tinyvla-lerobot-venv"


def libero_episode(n: int):
    """Deterministic LIBERO-like frames: a smooth scene, objects moving, sensor noise (so PNGs are realistic size)."""
    rng = np.random.default_rng(n)
    s = LIBERO_SIZE
    y, x = np.mgrid[0:s, 0:s] / s
    base = np.stack([120 + 60 * x, 110 + 40 * y, 90 + 50 * x * y], -1)
    image = np.empty((LIBERO_LEN, s, s, 3), np.uint8)
    wrist = np.empty_like(image)
    objects = rng.uniform(0.1, 0.8, (5, 2))
    colours = rng.integers(0, 255, (5, 3))
    for k in range(LIBERO_LEN):
        for view, out in ((0, image), (1, wrist)):
            img = base.copy() if view == 0 else base[::-1].copy()
            for (oy, ox), c in zip(objects + 0.002 * k * (1 + view), colours):
                r0, c0 = int(oy * s), int(ox * s)
                img[r0: r0 + s // 8, c0: c0 + s // 8] = c
            img += rng.normal(0, 3, img.shape)
            out[k] = np.clip(img, 0, 255).astype(np.uint8)
    actions = np.cumsum(rng.normal(0, 0.05, (LIBERO_LEN, 7)), 0).astype(np.float32)
    state = rng.normal(0, 1, (LIBERO_LEN, 8)).astype(np.float32)
    return TASKS[n % len(TASKS)], image, wrist, state, actions


def pipeline(reader):
    """tinyvla's training item builder with the Qwen3-VL-2B image settings and the real Qwen vocabulary."""
    from tinyvla.core.codec import ActionCodec, ActionStats
    from tinyvla.core.prompt import PromptSpec
    from tinyvla.data.transforms import ImageSpec
    from tinyvla.inputs import mask_token_id
    from tinyvla.modeling.processor import VLAProcessor, make_image_processor
    from tinyvla.modeling.registry import FAMILY_IMAGE_SETTINGS
    from tinyvla.tokenizers import load_tokenizer
    from tinyvla.training.data import ActionSampleDataset

    fam = FAMILY_IMAGE_SETTINGS["qwen3_vl"]
    processor = VLAProcessor(load_tokenizer("qwen"), make_image_processor(16, 2, 2, fam["image_mean"], fam["image_std"],
                                                                          fam["max_pixels"]), {"family": "qwen3_vl"})
    actions = reader.actions()
    prompt = PromptSpec(horizon=HORIZON, dim=actions.shape[1], num_views=len(reader.cameras))
    codec = ActionCodec(ActionStats.from_actions(actions), horizon=HORIZON)
    return ActionSampleDataset(reader, codec, processor, prompt, ImageSpec(), train=True, seed=0, mask_prob=0.4,
                               mask_token_id=mask_token_id(processor, "?"))


# ------------------------------------------------------------------------------------------------------------------
# Side venv (lerobot): writing the v3.0 LIBERO-format data, and lerobot's rates
# ------------------------------------------------------------------------------------------------------------------


def lerobot_write_libero(out: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    img = {"dtype": "image", "shape": (LIBERO_SIZE, LIBERO_SIZE, 3), "names": ["height", "width", "channel"]}
    features = {"observation.images.image": img, "observation.images.image2": dict(img),
                "observation.state": {"dtype": "float32", "shape": (8,), "names": None},
                "action": {"dtype": "float32", "shape": (7,), "names": None}}
    ds = LeRobotDataset.create(repo_id="bench/libero", fps=10, features=features, root=out, robot_type="panda",
                               use_videos=False)
    for n in range(LIBERO_EPISODES):
        task, image, wrist, state, actions = libero_episode(n)
        for k in range(LIBERO_LEN):
            ds.add_frame({"observation.images.image": image[k], "observation.images.image2": wrist[k],
                          "observation.state": state[k], "action": actions[k], "task": task})
        ds.save_episode()
    ds.finalize()


class LerobotSamples:
    """lerobot's LeRobotDataset behind the reader contract ActionSampleDataset uses: dataset[i] -> uint8 HWC views
    (in tinyvla's camera order), the next H actions, the task."""

    def __init__(self, ds, cameras: list[str]):
        self.ds, self.cameras = ds, cameras

    def __len__(self):
        return len(self.ds)

    def actions(self) -> np.ndarray:
        return np.stack(self.ds.hf_dataset.with_format("numpy")["action"]).astype(np.float32)

    def sample(self, i: int, horizon: int) -> dict:
        import torch

        item = self.ds[i]
        views = [(item[k] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for k in self.cameras]
        return {"views": views, "actions": item["action"].numpy()[:horizon], "instruction": item["task"]}


def lerobot_server(root: Path, cameras: list[str]) -> None:
    """The side process: open lerobot's dataset and the same pipeline over it, then time what stdin asks for, one
    JSON line each way ({"what": "read" | "pipeline", "frames": [...]} -> {"seconds": [wall, cpu]})."""
    import torch

    torch.set_num_threads(1)
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    fps = json.loads((root / "meta" / "info.json").read_text())["fps"]
    ds = LeRobotDataset("bench/x", root=root, delta_timestamps={"action": [k / fps for k in range(HORIZON)]})
    assert tuple(ds[0]["action"].shape)[0] == HORIZON
    steps = {"read": ds.__getitem__, "pipeline": pipeline(LerobotSamples(ds, cameras)).__getitem__}
    print(json.dumps({"backend": ds.video_backend if ds.meta.video_keys else "parquet (datasets)",
                      "versions": f"lerobot {lerobot.__version__}, torch {torch.__version__}"}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        print(json.dumps({"seconds": list(timed(steps[ask["what"]], ask["frames"]))}), flush=True)


def timed(fn, frames) -> np.ndarray:
    """(wall seconds, CPU seconds of this process) for fn over the frames: on a shared machine the CPU time is the
    steadier measure of the work done, the wall time what a worker delivers under that load."""
    t, c = time.perf_counter(), time.process_time()
    for i in frames:
        fn(i)
    return np.array([time.perf_counter() - t, time.process_time() - c])


class Side:
    """lerobot's side of the comparison, alive for the whole run (started once, warmed up like tinyvla's side)."""

    def __init__(self, python: str, root: Path, cameras: list[str]):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([python, __file__, "--lerobot-server", str(root), "--cameras", *cameras],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"lerobot's side process failed (exit {self.proc.wait()}); its error is above")
        return json.loads(line)

    def seconds(self, what: str, frames: list[int]) -> np.ndarray:
        self.proc.stdin.write(json.dumps({"what": what, "frames": frames}) + "\n")
        self.proc.stdin.flush()
        return np.array(self._answer()["seconds"])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


# ------------------------------------------------------------------------------------------------------------------
# Main venv (tinyvla)
# ------------------------------------------------------------------------------------------------------------------


def make_data(work: Path, side_python: str) -> dict:
    paths = {"v30": work / "libero_png_v30", "v20": work / "libero_png_v20", "video": work / "so101_video"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not paths["v30"].exists():
        subprocess.run([side_python, __file__, "--write-libero", str(paths["v30"])], check=True, env=env)
    if not paths["v20"].exists():
        from tinyvla.data.writer import write_lerobot_v2

        eps = ({"task": t, "image": im, "wrist_image": wr, "state": st, "actions": ac}
               for t, im, wr, st, ac in map(libero_episode, range(LIBERO_EPISODES)))
        write_lerobot_v2(paths["v20"], eps, fps=10)
    if not paths["video"].exists():
        tmp = work / "so101_tmp"
        subprocess.run([side_python, str(HERE / "make_so101_fixture.py"), str(tmp), "--size", "480x640",
                        "--episodes", "10", "--length", "150", "--only", "2cam", "--texture"], check=True, env=env)
        (tmp / "so101_2cam_v30").rename(paths["video"])
    return paths


def build_frame_cache(reader, folder: Path) -> tuple[float, int]:
    """data.video_cache: decode the reader's videos once (one thread, for the per-worker figure) at the side the
    benchmark's crop takes (224 / 0.875), attach it; -> (seconds, frames decoded)."""
    import shutil

    from tinyvla.data.frame_cache import META, VideoFrameCache, cache_side
    from tinyvla.data.transforms import ImageSpec

    shutil.rmtree(folder, ignore_errors=True)
    spec = ImageSpec()
    cache = VideoFrameCache(folder, cache_side(spec.image_size, spec.crop_scale))
    start = time.perf_counter()
    cache.build(reader.video_files(), workers=1)
    seconds = time.perf_counter() - start
    reader.use_frame_cache(cache)
    frames = sum(json.loads((cache.entry(v) / META).read_text())["shape"][0] for v in reader.video_files())
    return seconds, frames


def fmt(values, digits=0):
    v = np.asarray(values)
    return f"{v.mean():.{digits}f} [{v.min():.{digits}f}-{v.max():.{digits}f}]"


def measure(name, reader, pipe, side, args) -> dict:
    """Per round: the same random frames through both sides, in chunks that alternate between them (so a busy
    neighbour slows both alike), for the read, the whole pipeline (other frames), and the read of consecutive frames.
    -> {step: [rate per round]}"""
    steps = {"read": lambda i: reader.sample(i, HORIZON), "pipeline": pipe.__getitem__}
    warm = list(range(0, len(reader), max(1, len(reader) // 5)))[:5]
    for what, fn in steps.items():  # warm-up: opens files, fills caches, on both sides
        timed(fn, warm)
        if side:
            side.seconds(what, warm)
    got: dict = {}
    for rnd in range(args.rounds):
        for what in ("read", "pipeline", "sequential"):
            fn = steps["read" if what == "sequential" else what]
            if what == "sequential":  # consecutive frames from a random start: offline eval, an episode-ordered pass
                start = int(np.random.default_rng(2000 + rnd).integers(0, max(1, len(reader) - args.samples)))
                order = list(range(start, min(len(reader), start + args.samples)))
            else:  # the pipeline reads other frames than the read pass
                seed = rnd if what == "read" else 1000 + rnd
                order = np.random.default_rng(seed).permutation(len(reader))[: args.samples].tolist()
            ours, theirs = np.zeros(2), np.zeros(2)
            for c, start in enumerate(range(0, len(order), args.chunk)):
                chunk = order[start: start + args.chunk]
                op = "read" if what == "sequential" else what
                if side and c % 2:  # alternate who goes first
                    theirs += side.seconds(op, chunk)
                ours += timed(fn, chunk)
                if side and not c % 2:
                    theirs += side.seconds(op, chunk)
            got.setdefault(what, []).append(len(order) / ours[0])
            got.setdefault(f"{what} cpu", []).append(len(order) / ours[1])
            if side:
                got.setdefault(f"lerobot {what}", []).append(len(order) / theirs[0])
                got.setdefault(f"lerobot {what} cpu", []).append(len(order) / theirs[1])
        print(json.dumps({"round": rnd, "data": name, **{k: round(v[-1], 2) for k, v in got.items()}}), flush=True)
    return got


def print_rate_table(runs: dict, sets: list, sizes: dict | None, suffix: str) -> None:
    """One markdown table of samples/s: tinyvla beside lerobot, read and pipeline (suffix " cpu": by CPU time)."""
    print("| data | tinyvla read | lerobot read | read ratio | tinyvla pipeline | lerobot read + same pipeline "
          "| pipeline ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, key, with_lerobot in sets:
        g = runs[key]
        read, pipe = np.asarray(g["read" + suffix]), np.asarray(g["pipeline" + suffix])
        row = [f"{name} ({sizes[key]} frames)" if sizes else name, fmt(read)]
        if with_lerobot:
            lr, lp = np.asarray(g["lerobot read" + suffix]), np.asarray(g["lerobot pipeline" + suffix])
            row += [fmt(lr), fmt(read / lr, 1) + "x", fmt(pipe, 1), fmt(lp, 1), fmt(pipe / lp, 2) + "x"]
        else:
            row += ["(lerobot 0.4.4 refuses v2.0)" if sizes else "-", "-", fmt(pipe, 1), "-", "-"]
        print("| " + " | ".join(row) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/robot2-bench")
    p.add_argument("--samples", type=int, default=200, help="random frames per round and step")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=10, help="frames per turn when alternating the two sides")
    p.add_argument("--cache-mb", type=int, default=256, help="tinyvla's row-group cache per worker (0: 4 groups)")
    p.add_argument("--sets", help="comma-separated subset of v30,v20,video,video-cache (default all)")
    p.add_argument("--lerobot-python", default=f"{SIDE_VENV}/bin/lerobot-python",
                   help="the side venv's python wrapper (scripts/make_lerobot_env.sh)")
    p.add_argument("--write-libero", help=argparse.SUPPRESS)
    p.add_argument("--lerobot-server", help=argparse.SUPPRESS)
    p.add_argument("--cameras", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_libero:
        return lerobot_write_libero(Path(args.write_libero))
    if args.lerobot_server:
        return lerobot_server(Path(args.lerobot_server), args.cameras)
    if not Path(args.lerobot_python).exists():
        sys.exit(f"no side venv at {args.lerobot_python}: run bash scripts/make_lerobot_env.sh first")

    import torch

    torch.set_num_threads(1)
    from tinyvla.data.lerobot import LeRobotDataset

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = make_data(work, args.lerobot_python)
    paths["video-cache"] = paths["video"]
    sets = [("libero-png v3.0", "v30", True), ("libero-png v2.0", "v20", False), ("so101-video v3.0", "video", True),
            ("so101-video v3.0, frame cache", "video-cache", True)]
    if args.sets:
        sets = [s for s in sets if s[1] in args.sets.split(",")]
    runs, sizes, sides, builds = {}, {}, {}, {}
    for name, key, with_lerobot in sets:
        reader = LeRobotDataset(paths[key], cache_mb=args.cache_mb)
        if key == "video-cache":
            builds[key] = build_frame_cache(reader, work / "frame-cache")
        side = Side(args.lerobot_python, paths[key], list(reader.cameras)) if with_lerobot else None
        try:
            runs[key] = measure(name, reader, pipeline(reader), side, args)
        finally:
            if side:
                side.close()
                sides[key] = side.info
        sizes[key] = len(reader)

    print(f"\nsamples/s per worker (one process, one thread), mean [min-max] over {args.rounds} rounds of "
          f"{args.samples} random frames, the two sides alternating every {args.chunk} frames; tinyvla row-group "
          f"cache {args.cache_mb} MB")
    for key, info in sides.items():
        print(f"lerobot side ({key}): {info['versions']}, reading through {info['backend']}")
    print_rate_table(runs, sets, sizes, "")
    print("\nthe same, by CPU time (samples per CPU-second of the worker's process: less sensitive to the neighbours)")
    print_rate_table(runs, sets, None, " cpu")
    print("\nsequential reads (the same step on consecutive frames: offline eval, an episode-ordered pass)")
    print("| data | tinyvla read | lerobot read | read ratio |")
    print("|---|---|---|---|")
    for name, key, with_lerobot in sets:
        g, seq = runs[key], np.asarray(runs[key]["sequential"])
        other = np.asarray(g["lerobot sequential"]) if with_lerobot else None
        print(f"| {name} | {fmt(seq)} | " + (f"{fmt(other)} | {fmt(seq / other, 1)}x |" if with_lerobot else "- | - |"))
    for key, (seconds, frames) in builds.items():
        rate = np.mean(runs[key]["pipeline"])
        print(f"\nframe cache ({key}): built in {seconds:.1f} s, one decode of {frames} camera frames on one thread "
              f"({frames / seconds:.0f} frames/s); the first pass over the {sizes[key]} samples (build + pipeline) "
              f"{sizes[key] / (seconds + sizes[key] / rate):.1f} samples/s, every later one {rate:.1f}")
    slowest = min(np.mean(runs[key]["pipeline"]) for _, key, _ in sets)
    print(f"\nworkers for 50 samples/s at the slowest mean tinyvla pipeline rate ({slowest:.1f}/s per worker): "
          f"{int(np.ceil(50 / slowest))}")


if __name__ == "__main__":
    main()
