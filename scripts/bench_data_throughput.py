"""Training-data throughput per data worker: tinyvla beside lerobot's own LeRobotDataset, on the same files, one run.

A data worker is one process; its samples/s bounds how many workers a GPU needs. Measured in one process with one
torch thread, frames in a seeded random order (what a training epoch asks for):

    read       reader.sample(i, H): camera frames decoded + the next H actions (lerobot: dataset[i] with
               delta_timestamps for the H actions, its float CHW tensors)
    pipeline   tinyvla's whole training item: read -> crop -> colour jitter -> tile -> Qwen3-VL image processor
               (patch 16, merge 2: 448x224 -> 196 vision tokens) -> chat template + action text -> token ids, labels

Datasets (made once under --work, with lerobot 0.4.4's own writer in the side venv of scripts/make_v30_fixture.py):

    libero-png   2 x 256x256 PNG in parquet (the LIBERO image format), v3.0 (lerobot's writer) and the same frames as
                 v2.0 (the physical-intelligence/libero schema, tinyvla's writer); 20 episodes x 100 frames
    so101-video  2 x 640x480 AV1 mp4 (lerobot's default codec, many episodes per file), 30 fps, 10 episodes x 150

lerobot decodes video only through torchcodec or torchvision; neither has a build for the CPU torch here (torchcodec's
wheels link CUDA), so on video lerobot's column is "n/a" and the comparison is with the loader pattern of lerobot's
pyav backend and starVLA: open the file and seek for every sample (PyAV), measured here.

    python scripts/bench_data_throughput.py --work /tmp/robot-bench [--samples 200] [--rounds 3] \
        [--lerobot-python /tmp/robot-lerobot-venv/bin/python]

"other" is lerobot's LeRobotDataset on libero-png v3.0 and open+seek per sample on so101-video; the libero-png v2.0
row is tinyvla alone (lerobot 0.4.4 refuses v2.0). "other read + tinyvla transforms" adds the measured per-sample
transform time (pipeline minus read) to the other loader's read time: the same transforms after either loader.
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
HORIZON = 8
LIBERO_EPISODES, LIBERO_LEN, LIBERO_SIZE = 20, 100, 256
TASKS = ["put the bowl on the plate", "open the top drawer", "turn on the stove"]


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


# ------------------------------------------------------------------------------------------------------------------
# Side venv (lerobot): writing the v3.0 LIBERO-format data, and lerobot's read rate
# ------------------------------------------------------------------------------------------------------------------


def lerobot_write_libero(out: Path) -> None:
    sys.path.insert(0, str(HERE))
    from make_v30_fixture import stub_torchvision

    stub_torchvision()
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


def lerobot_read_rate(root: Path, order: list[int]) -> dict:
    sys.path.insert(0, str(HERE))
    from make_v30_fixture import stub_torchvision

    stub_torchvision()
    import torch

    torch.set_num_threads(1)
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    fps = json.loads((root / "meta" / "info.json").read_text())["fps"]
    ds = LeRobotDataset("bench/x", root=root, delta_timestamps={"action": [k / fps for k in range(HORIZON)]})
    for i in order[:5]:
        ds[i]  # warm-up: opens files, fills caches
    t = time.perf_counter()
    for i in order:
        item = ds[i]
    dt = time.perf_counter() - t
    assert tuple(item["action"].shape) == (HORIZON, 7)
    return {"read": len(order) / dt}


# ------------------------------------------------------------------------------------------------------------------
# Main venv (tinyvla)
# ------------------------------------------------------------------------------------------------------------------


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


def rate(fn, order) -> float:
    for i in order[:5]:
        fn(i)
    t = time.perf_counter()
    for i in order:
        fn(i)
    return len(order) / (time.perf_counter() - t)


def reopen_seek_rate(reader, order) -> float:
    """The per-sample open + seek loader (lerobot's pyav backend, starVLA): each view opens its mp4, seeks, decodes."""
    import av

    def read(i):
        e, k = reader.episodes.locate(i)
        for path, offset in reader._ep_videos[e].values():
            ts = offset + k / reader.fps
            with av.open(str(path)) as c:
                s = c.streams.video[0]
                c.seek(int(ts / s.time_base), stream=s, backward=True)
                for f in c.decode(s):
                    if f.time >= ts - 0.5 / reader.fps:
                        f.to_ndarray(format="rgb24")
                        break
    return rate(read, order)


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
                        "--episodes", "10", "--length", "150", "--only", "2cam"], check=True, env=env)
        (tmp / "so101_2cam_v30").rename(paths["video"])
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/robot-bench")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache-mb", type=int, default=256, help="tinyvla's row-group cache per worker (0: 4 groups)")
    p.add_argument("--lerobot-python", default="/tmp/robot-lerobot-venv/bin/python")
    p.add_argument("--write-libero", help=argparse.SUPPRESS)
    p.add_argument("--lerobot-rate", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_libero:
        return lerobot_write_libero(Path(args.write_libero))
    if args.lerobot_rate:
        order = json.loads(os.environ["BENCH_ORDER"])
        return print(json.dumps(lerobot_read_rate(Path(args.lerobot_rate), order)))

    import torch

    torch.set_num_threads(1)
    from tinyvla.data.lerobot import LeRobotDataset

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = make_data(work, args.lerobot_python)
    sets = [("libero-png v3.0", "v30"), ("libero-png v2.0", "v20"), ("so101-video v3.0", "video")]
    readers = {key: LeRobotDataset(paths[key], cache_mb=args.cache_mb) for _, key in sets}
    pipes = {key: pipeline(r) for key, r in readers.items()}
    orders = {key: np.random.default_rng(0).permutation(len(r))[: args.samples].tolist() for key, r in readers.items()}
    # the pipeline pass reads other frames than the read pass, so it does not run on groups the read pass cached
    pipe_orders = {key: np.random.default_rng(1).permutation(len(r))[: args.samples].tolist()
                   for key, r in readers.items()}
    runs: dict = {key: {} for _, key in sets}
    # Rounds alternate the loaders so a busy neighbour slows each about equally; ratios are taken within a round.
    for rnd in range(args.rounds):
        for name, key in sets:
            r, order, got = readers[key], orders[key], runs[key]
            got.setdefault("read", []).append(rate(lambda i: r.sample(i, HORIZON), order))
            got.setdefault("pipeline", []).append(rate(pipes[key].__getitem__, pipe_orders[key]))
            if key == "v30":
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_ORDER": json.dumps(order), "OMP_NUM_THREADS": "1"}
                out = subprocess.run([args.lerobot_python, __file__, "--lerobot-rate", str(paths[key])], check=True,
                                     env=env, capture_output=True, text=True).stdout
                got.setdefault("other", []).append(json.loads(out.strip().splitlines()[-1])["read"])
            if key == "video":
                got.setdefault("other", []).append(reopen_seek_rate(r, order))
            print(json.dumps({"round": rnd, "data": name, **{k: v[-1] for k, v in got.items()}}), flush=True)

    def fmt(values, digits=0):
        v = np.asarray(values)
        return f"{v.mean():.{digits}f} [{v.min():.{digits}f}-{v.max():.{digits}f}]"

    print(f"\nsamples/s per worker, mean [min-max] over {args.rounds} rounds of {args.samples} random frames, "
          f"row-group cache {args.cache_mb} MB")
    print("| data | tinyvla read | other read | read ratio | tinyvla pipeline | other read + tinyvla transforms "
          "| pipeline ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, key in sets:
        g = runs[key]
        read, pipe = np.asarray(g["read"]), np.asarray(g["pipeline"])
        row = [f"{name} ({len(readers[key])} frames)", fmt(read)]
        if "other" in g:
            other = np.asarray(g["other"])
            # the same transforms after the other loader's read: per-sample times add
            other_pipe = 1 / (1 / other + (1 / pipe - 1 / read))
            row += [fmt(other), fmt(read / other, 1) + "x", fmt(pipe, 1), fmt(other_pipe, 1),
                    fmt(pipe / other_pipe, 2) + "x"]
        else:
            row += ["-", "-", fmt(pipe, 1), "-", "-"]
        print("| " + " | ".join(row) + " |")
    slowest = min(np.mean(runs[key]["pipeline"]) for _, key in sets)
    print(f"\nworkers for 50 samples/s at the slowest mean pipeline rate ({slowest:.1f}/s per worker): "
          f"{int(np.ceil(50 / slowest))}")


if __name__ == "__main__":
    main()
