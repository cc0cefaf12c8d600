"""Write episodes as a LeRobot codebase v2.0 dataset with exactly the physical-intelligence/libero schema.

Two cameras as PNG bytes inside parquet (`image`, `wrist_image`), `state`, `actions`, one parquet file per episode,
meta/info.json + episodes.jsonl + tasks.jsonl + stats.json. BlockFind's generator and the test fixtures write with it;
the readers in lerobot.py read it back. The dataset appears whole or not at all (built beside, renamed into place).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tinyvla.data.lerobot import V2_DATA_PATH, V2_VIDEO_PATH
from tinyvla.errors import UserError


CHUNKS_SIZE = 1000


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # compress_level 1: PNG is lossless either way; level 6 costs ~3x the time for ~10% smaller files.
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _hf_features(state_dim: int, action_dim: int) -> dict:
    """The `datasets` feature description stored in each parquet file, so `datasets` decodes the image columns."""
    def seq(n):
        return {"feature": {"dtype": "float32", "_type": "Value"}, "length": n, "_type": "Sequence"}

    return {
        "image": {"_type": "Image"},
        "wrist_image": {"_type": "Image"},
        "state": seq(state_dim),
        "actions": seq(action_dim),
        "timestamp": {"dtype": "float32", "_type": "Value"},
        "frame_index": {"dtype": "int64", "_type": "Value"},
        "episode_index": {"dtype": "int64", "_type": "Value"},
        "index": {"dtype": "int64", "_type": "Value"},
        "task_index": {"dtype": "int64", "_type": "Value"},
    }


class _RunningStats:
    """min / max / mean / std over frames, accumulated episode by episode (float64 sums)."""

    def __init__(self):
        self.n = 0
        self.s = self.ss = self.lo = self.hi = None

    def add(self, x: np.ndarray) -> None:  # x: (T, ...) per-frame values
        x = np.asarray(x, dtype=np.float64)
        self._merge(len(x), x.sum(0), (x * x).sum(0), x.min(0), x.max(0))

    def add_pixels(self, frames: np.ndarray) -> None:
        """uint8 (..., 3) pixels, as values in [0, 1] per channel. Counted per channel with a 256-bin histogram:
        float reductions over a (pixels, 3) array were ~40 % of BlockFind's demo generation."""
        channels = frames.reshape(-1, frames.shape[-1])
        counts = np.stack([np.bincount(channels[:, c], minlength=256) for c in range(channels.shape[1])])
        values = np.arange(256, dtype=np.float64) / 255.0
        seen = counts > 0
        self._merge(len(channels), counts @ values, counts @ (values * values),
                    np.array([values[row].min() for row in seen]), np.array([values[row].max() for row in seen]))

    def _merge(self, n: int, s, ss, lo, hi) -> None:
        if self.s is None:
            self.s, self.ss, self.lo, self.hi = s, ss, lo, hi
        else:
            self.s, self.ss = self.s + s, self.ss + ss
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
        self.n += n

    def to_dict(self) -> dict:
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean * mean, 0.0))
        return {"mean": mean.tolist(), "std": std.tolist(), "max": self.hi.tolist(), "min": self.lo.tolist()}


def _check_episode(n: int, ep: dict) -> int:
    for key in ("task", "image", "wrist_image", "state", "actions"):
        if key not in ep:
            raise UserError(f"episode {n}: missing '{key}' (need task, image, wrist_image, state, actions)")
    t = len(ep["actions"])
    if t == 0:
        raise UserError(f"episode {n} has no frames")
    for key in ("image", "wrist_image"):
        a = ep[key]
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 or len(a) != t:
            raise UserError(f"episode {n}: '{key}' must be uint8 (T={t}, H, W, 3), got {a.dtype} {a.shape}")
    for key in ("state", "actions"):
        a = np.asarray(ep[key])
        if a.ndim != 2 or len(a) != t:
            raise UserError(f"episode {n}: '{key}' must be (T={t}, D), got {a.shape}")
        if not np.isfinite(a).all():
            bad = int(np.argwhere(~np.isfinite(a))[0][0])
            raise UserError(f"episode {n} frame {bad}: '{key}' has NaN or inf")
    return t


def write_lerobot_v2(out_dir: str | os.PathLike, episodes: Iterable[dict], fps: int, robot_type: str = "panda",
                     overwrite: bool = True, extra_meta: dict[str, dict] | None = None) -> Path:
    """Write episodes as a LeRobot codebase v2.0 dataset with the schema of physical-intelligence/libero.

    Each episode: {"task": str, "image": uint8 (T,H,W,3), "wrist_image": uint8 (T,H,W,3), "state": float32 (T,S),
    "actions": float32 (T,A)}; other keys are ignored. Episodes are streamed (one in memory at a time). The dataset
    is built in a temp directory beside `out_dir` and renamed into place only when complete. `extra_meta` maps file
    names to JSON objects written into meta/ with the rest, so they appear together with the data or not at all.
    """
    from tinyvla.core.atomic import atomic_dir

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; remove it or choose another output directory")
    with atomic_dir(out_dir, overwrite=True) as tmp:
        tasks: dict[str, int] = {}
        ep_rows, index, shapes, dims = [], 0, None, None
        stats = {k: _RunningStats() for k in ("image", "wrist_image", "state", "actions", "timestamp",
                                              "frame_index", "episode_index", "index", "task_index")}
        schema = None
        for n, ep in enumerate(episodes):
            t = _check_episode(n, ep)
            image, wrist = ep["image"], ep["wrist_image"]
            state = np.asarray(ep["state"], dtype=np.float32)
            actions = np.asarray(ep["actions"], dtype=np.float32)
            if shapes is None:
                shapes = (image.shape[1:], wrist.shape[1:])
                dims = (state.shape[1], actions.shape[1])
                hf = {"info": {"features": _hf_features(*dims)}}
                img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
                schema = pa.schema(
                    [("image", img_type), ("wrist_image", img_type),
                     ("state", pa.list_(pa.float32(), dims[0])), ("actions", pa.list_(pa.float32(), dims[1])),
                     ("timestamp", pa.float32()), ("frame_index", pa.int64()), ("episode_index", pa.int64()),
                     ("index", pa.int64()), ("task_index", pa.int64())],
                    metadata={"huggingface": json.dumps(hf)},
                )
            elif (image.shape[1:], wrist.shape[1:]) != shapes or (state.shape[1], actions.shape[1]) != dims:
                raise UserError(f"episode {n}: shapes differ from episode 0 (images {shapes}, "
                                f"state/action dims {dims})")
            task_index = tasks.setdefault(str(ep["task"]), len(tasks))
            frame_index = np.arange(t, dtype=np.int64)
            timestamp = (frame_index / fps).astype(np.float32)
            columns = {
                "image": pa.array([{"bytes": _png(f), "path": None} for f in image], type=schema.field("image").type),
                "wrist_image": pa.array([{"bytes": _png(f), "path": None} for f in wrist],
                                        type=schema.field("wrist_image").type),
                "state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), dims[0]),
                "actions": pa.FixedSizeListArray.from_arrays(pa.array(actions.reshape(-1)), dims[1]),
                "timestamp": pa.array(timestamp),
                "frame_index": pa.array(frame_index),
                "episode_index": pa.array(np.full(t, n, dtype=np.int64)),
                "index": pa.array(np.arange(index, index + t, dtype=np.int64)),
                "task_index": pa.array(np.full(t, task_index, dtype=np.int64)),
            }
            path = tmp / V2_DATA_PATH.format(episode_chunk=n // CHUNKS_SIZE, episode_index=n)
            path.parent.mkdir(parents=True, exist_ok=True)
            # PNG bytes never repeat: a dictionary would put the episode's images into one page that every random
            # read must decompress whole. PLAIN values in ~1 MB pages (pyarrow closes a page only between write
            # batches, hence the small batches) let a reader fetch a frame's page alone (pages.py).
            plain = ["image.bytes", "wrist_image.bytes"]
            pq.write_table(pa.table(columns, schema=schema), path,
                           use_dictionary=[c for c in schema.names if c not in ("image", "wrist_image")],
                           column_encoding={c: "PLAIN" for c in plain}, write_batch_size=8)

            # lerobot v2.0 stats: images per channel in [0, 1] with shape (3, 1, 1); scalars with shape (1,).
            for key, frames in (("image", image), ("wrist_image", wrist)):
                # A 64x64 pixel grid per frame is plenty for mean/std (and keeps the stats of a 256x256 episode cheap).
                step = max(1, frames.shape[1] // 64)
                stats[key].add_pixels(frames[:, ::step, ::step])
            stats["state"].add(state)
            stats["actions"].add(actions)
            for key, values in (("timestamp", timestamp), ("frame_index", frame_index),
                                ("episode_index", np.full(t, n)), ("index", np.arange(index, index + t)),
                                ("task_index", np.full(t, task_index))):
                stats[key].add(np.asarray(values, dtype=np.float64)[:, None])
            ep_rows.append({"episode_index": n, "tasks": [str(ep["task"])], "length": t})
            index += t
        if not ep_rows:
            raise UserError("no episodes to write")

        stats_json = {k: s.to_dict() for k, s in stats.items()}
        for key in ("image", "wrist_image"):  # per-channel values as (3, 1, 1) nested lists, as lerobot writes them
            stats_json[key] = {k: [[[v]] for v in vals] for k, vals in stats_json[key].items()}
        (image_shape, wrist_shape), (state_dim, action_dim) = shapes, dims

        def img_feature(shape):
            return {"dtype": "image", "shape": list(shape), "names": ["height", "width", "channel"]}

        info = {
            "codebase_version": "v2.0",
            "robot_type": robot_type,
            "total_episodes": len(ep_rows),
            "total_frames": index,
            "total_tasks": len(tasks),
            "total_videos": 0,
            "total_chunks": (len(ep_rows) - 1) // CHUNKS_SIZE + 1,
            "chunks_size": CHUNKS_SIZE,
            "fps": fps,
            "splits": {"train": f"0:{len(ep_rows)}"},
            "data_path": V2_DATA_PATH,
            "video_path": V2_VIDEO_PATH,
            "features": {
                "image": img_feature(image_shape),
                "wrist_image": img_feature(wrist_shape),
                "state": {"dtype": "float32", "shape": [state_dim], "names": ["state"]},
                "actions": {"dtype": "float32", "shape": [action_dim], "names": ["actions"]},
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                "index": {"dtype": "int64", "shape": [1], "names": None},
                "task_index": {"dtype": "int64", "shape": [1], "names": None},
            },
        }
        meta = tmp / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        (meta / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ep_rows))
        (meta / "tasks.jsonl").write_text(
            "".join(json.dumps({"task_index": i, "task": t}) + "\n" for t, i in tasks.items()))
        (meta / "stats.json").write_text(json.dumps(stats_json, indent=4))
        for name, obj in (extra_meta or {}).items():
            (meta / name).write_text(json.dumps(obj, indent=4))
    return out_dir
