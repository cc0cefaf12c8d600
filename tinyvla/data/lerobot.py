"""LeRobot datasets: read codebase v2.0 / v2.1 / v3.0 (a local directory or a Hub repo id), write v2.0.

The two layouts, as far as a reader cares:

    v2.0 / v2.1 (physical-intelligence/libero)        v3.0 (HuggingFaceVLA/libero, lerobot/libero)
    meta/info.json                                    meta/info.json
    meta/episodes.jsonl  {episode_index,tasks,length} meta/episodes/chunk-000/file-000.parquet  (+ file / row ranges)
    meta/tasks.jsonl     {task_index,task}            meta/tasks.parquet  (task string is the pandas index)
    data/chunk-000/episode_000000.parquet  (1 ep.)    data/chunk-000/file-000.parquet  (many episodes back to back)

Every reader here flattens the (optionally task-filtered) episodes into one frame numbering 0..N-1 and keeps a small
episode table (file, first row in that file, length, task), so `sample(i)` is a binary search plus one row-group read.

Why the actions are read once and kept in memory: they are tiny (273k x 7 float32 = 7.6 MB for all of LIBERO) and every
sample needs the next `horizon` of them, which may cross a row group; reading them once with pyarrow (action column
only, never the image columns) also makes `tinyvla data stats` fast.

Cameras: `image` features (PNG bytes in a parquet struct {bytes, path}) are decoded with PIL; `video` features (mp4,
one per episode in v2.x, many episodes per file in v3.0 at `from_timestamp + timestamp`) with PyAV, imported only
when a video frame is asked for (`pip install av`). Neither is touched by `actions()` or the stats.

Random access cost: a sample reads the parquet row group holding its row (a v2.0 file is one episode, one row group)
and keeps the last few in an LRU; a cache miss on a full-size LIBERO episode is tens of milliseconds, so use several
DataLoader workers (the readers pickle without their caches and open files).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tinyvla.errors import UserError

# Feature keys per codebase generation: v2.x is physical-intelligence/libero, v3.0 is HuggingFaceVLA/libero.
# Each role lists candidates in order; the first present in the dataset wins unless the caller names a key.
DEFAULT_KEYS = {
    "v2": {
        "image": ["image", "observation.images.image"],
        "wrist": ["wrist_image", "observation.images.wrist_image"],
        "state": ["state", "observation.state"],
        "action": ["actions", "action"],
    },
    "v3": {
        "image": ["observation.images.image", "image"],
        "wrist": ["observation.images.image2", "observation.images.wrist_image", "wrist_image"],
        "state": ["observation.state", "state"],
        "action": ["action", "actions"],
    },
}
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
IMAGE_DTYPES = ("image", "video")
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


# ------------------------------------------------------------------------------------------------------------------
# Finding the dataset: local directory or Hub repo id
# ------------------------------------------------------------------------------------------------------------------


def _looks_like_repo_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.startswith((".", "/", "~"))


def resolve_dataset_path(path_or_repo: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a Hub dataset repo id, downloaded (or found in the HF cache)."""
    path = Path(os.path.expanduser(str(path_or_repo)))
    if path.exists():
        return path
    text = str(path_or_repo)
    if not _looks_like_repo_id(text):
        raise UserError(f"dataset not found: {text} is not a directory and not a Hub repo id like owner/name")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id=text, repo_type="dataset"))
    except Exception as err:  # offline, not found, gated, no disk: the user's fix is the same
        reason = type(err).__name__
        raise UserError(
            f"could not get dataset '{text}' from the Hugging Face Hub ({reason}); download it on a machine with "
            f"access (hf download {text} --repo-type dataset) and pass its local directory with "
            f"--repo DIR, or put it in the HF cache ({constants.HF_HUB_CACHE})"
        ) from None


# ------------------------------------------------------------------------------------------------------------------
# Small helpers shared by the readers
# ------------------------------------------------------------------------------------------------------------------


def column_to_numpy(col: pa.ChunkedArray | pa.Array, name: str = "column") -> np.ndarray:
    """A scalar or (fixed-size) list column -> numpy (N,) or (N, D), without going through Python objects."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise UserError(f"column '{name}' has {col.null_count} missing values; the dataset is incomplete")
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        offsets = col.offsets.to_numpy()
        lengths = np.diff(offsets)
        if len(lengths) and (lengths != lengths[0]).any():
            raise UserError(f"column '{name}' has rows of different lengths; expected one fixed-size vector per frame")
        width = int(lengths[0]) if len(lengths) else 0
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return col.to_numpy(zero_copy_only=False)


def decode_image(cell, where: str, root: Path | None = None) -> np.ndarray:
    """A parquet image struct {bytes, path} (PNG/JPEG bytes, or a path relative to the dataset) -> uint8 (H, W, 3)."""
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else None
    try:
        if data:
            img = Image.open(io.BytesIO(data))
        elif isinstance(cell, dict) and cell.get("path"):
            p = Path(cell["path"])
            img = Image.open(p if p.is_absolute() or root is None else root / p)
        else:
            raise UserError(f"{where}: the image cell is empty (no bytes, no path)")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{where}: cannot decode the image ({type(err).__name__}: {err}); the file is corrupt") \
            from None


def chunk_indices(starts: np.ndarray, lengths: np.ndarray, frames: np.ndarray, horizon: int) -> np.ndarray:
    """Global frame indices of the next `horizon` actions for each frame; past the episode end the last one repeats.

    `starts`/`lengths` describe each frame's episode (per frame, not per episode), so this is fully vectorised.
    """
    steps = frames[:, None] + np.arange(horizon)[None, :]
    last = (starts + lengths - 1)[:, None]
    return np.minimum(steps, last)


class _RowGroupCache:
    """LRU of decoded-from-disk parquet row groups (only the columns a sample needs), keyed by (file, row group).

    Random access during training touches one row of a row group; caching the last few keeps sequential-ish reads
    (and the repeated wrist + scene lookups of one sample) from re-reading the file.
    """

    def __init__(self, size: int = 4):
        self.size = max(1, size)
        self._tables: OrderedDict = OrderedDict()
        self._starts: dict[Path, np.ndarray] = {}

    def row(self, path: Path, row: int, columns: list[str]) -> tuple[pa.Table, int]:
        starts = self._starts.get(path)
        if starts is None:
            md = pq.ParquetFile(path).metadata
            starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
            self._starts[path] = starts
        group = int(np.searchsorted(starts, row, side="right") - 1)
        key = (path, group, tuple(columns))
        table = self._tables.get(key)
        if table is None:
            table = pq.ParquetFile(path).read_row_group(group, columns=columns)
            self._tables[key] = table
            if len(self._tables) > self.size:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table, row - int(starts[group])


class _VideoFrames:
    """Single frames out of mp4 files (LeRobot `video` features) with PyAV: seek to the keyframe before the
    timestamp, decode forward to it. lerobot encodes with a keyframe every 2 frames, so a lookup decodes 1-2 frames.
    Open containers are kept in a small LRU; after a fork (DataLoader workers) they are reopened."""

    def __init__(self, size: int = 4):
        self.size = max(1, size)
        self._open: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def _container(self, path: Path):
        if os.getpid() != self._pid:
            self._open, self._pid = OrderedDict(), os.getpid()
        c = self._open.get(path)
        if c is None:
            try:
                import av
            except ImportError:
                raise UserError("this dataset stores its cameras as video (mp4); install PyAV to decode them: "
                                "pip install av") from None
            if not path.is_file():
                raise UserError(f"video file {path} is missing; the download is incomplete")
            c = self._open[path] = av.open(str(path))
            if len(self._open) > self.size:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(path)
        return c

    def frame(self, path: Path, ts: float, tolerance: float, where: str) -> np.ndarray:
        try:
            c = self._container(path)
            stream = c.streams.video[0]
            c.seek(max(0, int(ts / stream.time_base)), stream=stream, backward=True, any_frame=False)
            best = None
            for frame in c.decode(stream):
                if frame.time is None:
                    continue
                if best is None or abs(frame.time - ts) < abs(best.time - ts):
                    best = frame
                if frame.time >= ts - tolerance:
                    break
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"{where}: cannot decode video {path.name} ({type(err).__name__}: {err})") from None
        if best is None or abs(best.time - ts) > tolerance:
            got = "no frame" if best is None else f"nearest {best.time:.3f} s"
            raise UserError(f"{where}: video {path.name} has no frame at {ts:.3f} s ({got}); the file is truncated")
        return best.to_ndarray(format="rgb24")

    def __getstate__(self):
        return {"size": self.size, "_open": OrderedDict(), "_pid": -1}


# ------------------------------------------------------------------------------------------------------------------
# The reader
# ------------------------------------------------------------------------------------------------------------------


class LeRobotDataset:
    """Read-only view of a LeRobot dataset (v2.0, v2.1, v3.0) implementing the tinyvla reader contract.

    `len()`, `sample(i, horizon)`, `actions()`, `episode_index()`, `frame_index()`, `frame_task()`, `task_names`,
    `info`. Images are decoded with PIL only inside `sample`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        image_key: str | None = None,
        wrist_key: str | None = None,
        action_key: str | None = None,
        state_key: str | None = None,
        tasks: Iterable[str | int] | None = None,
        cache_row_groups: int = 4,
    ):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.is_file():
            raise UserError(f"{self.root} is not a LeRobot dataset (no meta/info.json)")
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{info_path} is not valid JSON ({err})") from None
        self.version = str(self.info.get("codebase_version", "?"))
        if self.version not in SUPPORTED_VERSIONS:
            raise UserError(
                f"{self.root}: LeRobot codebase version {self.version} is not supported; tinyvla reads "
                f"{', '.join(SUPPORTED_VERSIONS)}"
            )
        self.fps = float(self.info.get("fps", 0)) or None
        self.features: dict = self.info.get("features", {})
        gen = "v3" if self.version.startswith("v3") else "v2"
        self.action_key = self._pick_key("action", action_key, gen, required=True)
        self.image_key = self._pick_key("image", image_key, gen, required=image_key is not None)
        self.wrist_key = self._pick_key("wrist", wrist_key, gen, required=wrist_key is not None)
        self.state_key = self._pick_key("state", state_key, gen, required=state_key is not None)
        for role, key in (("image", self.image_key), ("wrist", self.wrist_key)):
            if key is not None and self.features[key].get("dtype") not in IMAGE_DTYPES:
                raise UserError(f"--{role}-key {key} is a {self.features[key].get('dtype')} feature, not an image")

        if gen == "v3":
            self.task_names, episodes = self._load_meta_v3()
        else:
            self.task_names, episodes = self._load_meta_v2()
        episodes = self._filter_tasks(episodes, tasks)
        if not episodes:
            raise UserError(f"{self.root} has no episodes{' for the selected tasks' if tasks else ''}")

        # The episode table: one entry per kept episode, in dataset order.
        self._files: list[Path] = sorted({e["file"] for e in episodes}, key=lambda p: str(p))
        file_id = {p: i for i, p in enumerate(self._files)}
        self._ep_index = np.array([e["episode_index"] for e in episodes], dtype=np.int64)
        self._ep_length = np.array([e["length"] for e in episodes], dtype=np.int64)
        self._ep_file = np.array([file_id[e["file"]] for e in episodes], dtype=np.int64)
        self._ep_row = np.array([e["row"] for e in episodes], dtype=np.int64)
        self._ep_task = [e["task"] for e in episodes]
        self._ep_videos = [e["videos"] for e in episodes]
        self._ep_start = np.concatenate([[0], np.cumsum(self._ep_length)[:-1]]).astype(np.int64)
        self._n = int(self._ep_length.sum())
        self._cache = _RowGroupCache(cache_row_groups)
        self._video = _VideoFrames()
        self._columns: dict[str, np.ndarray] | None = None

    # -- metadata ---------------------------------------------------------------------------------------------------
    def _pick_key(self, role: str, given: str | None, gen: str, required: bool) -> str | None:
        keys = list(self.features)
        if given is not None:
            if given not in self.features:
                raise UserError(f"feature '{given}' ({role}) not in {self.root}; available: {', '.join(keys)}")
            return given
        for cand in DEFAULT_KEYS[gen][role]:
            if cand in self.features:
                return cand
        if required:
            raise UserError(
                f"no {role} feature found in {self.root} (tried {', '.join(DEFAULT_KEYS[gen][role])}); "
                f"pass --{role}-key, available: {', '.join(keys)}"
            )
        return None

    def _video_keys(self) -> list[str]:
        """The camera keys this reader will decode that are stored as mp4 (only those need video metadata)."""
        keys = (self.image_key, self.wrist_key)
        return [k for k in keys if k is not None and self.features[k].get("dtype") == "video"]

    def _read_jsonl(self, rel: str) -> list[dict]:
        path = self.root / rel
        if not path.is_file():
            raise UserError(f"{self.root} is not a complete LeRobot {self.version} dataset: {rel} is missing")
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{n} is not valid JSON") from None
        return rows

    def _require(self, rel: str, rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
        for n, row in enumerate(rows, 1):
            missing = [k for k in keys if k not in row]
            if missing:
                raise UserError(f"{self.root / rel}: entry {n} lacks '{missing[0]}' (each line needs "
                                f"{', '.join(keys)}); the dataset's metadata is incomplete")
        return rows

    def _load_meta_v2(self) -> tuple[list[str], list[dict]]:
        task_rows = self._require("meta/tasks.jsonl", self._read_jsonl("meta/tasks.jsonl"), ("task_index", "task"))
        tasks = {int(t["task_index"]): t["task"] for t in task_rows}
        task_names = [tasks[i] for i in sorted(tasks)]
        data_path = self.info.get("data_path", "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet")
        chunks_size = int(self.info.get("chunks_size", 1000))
        video_path = self.info.get("video_path") or V2_VIDEO_PATH
        episodes = []
        ep_rows = self._require("meta/episodes.jsonl", self._read_jsonl("meta/episodes.jsonl"),
                                ("episode_index", "length"))
        for ep in sorted(ep_rows, key=lambda e: e["episode_index"]):
            idx = int(ep["episode_index"])
            file = self.root / data_path.format(episode_chunk=idx // chunks_size, episode_index=idx)
            ep_tasks = ep.get("tasks") or [""]
            videos = {key: (self.root / video_path.format(episode_chunk=idx // chunks_size, video_key=key,
                                                          episode_index=idx), 0.0)
                      for key in self._video_keys()}
            episodes.append({"episode_index": idx, "length": int(ep["length"]), "file": file, "row": 0,
                             "task": ep_tasks[0], "videos": videos})
        return task_names, episodes

    def _load_meta_v3(self) -> tuple[list[str], list[dict]]:
        tpath = self.root / "meta" / "tasks.parquet"
        if not tpath.is_file():
            raise UserError(f"{self.root} is not a complete LeRobot v3.0 dataset: meta/tasks.parquet is missing")
        ttable = pq.read_table(tpath)
        # lerobot writes tasks with pandas: the task text is the index, stored as a column named in the pandas
        # metadata (usually "__index_level_0__"); a plain "task" column is accepted too.
        text_col = "task" if "task" in ttable.column_names else None
        if text_col is None:
            pandas_md = json.loads((ttable.schema.metadata or {}).get(b"pandas", b"{}"))
            idx_cols = [c for c in pandas_md.get("index_columns", []) if isinstance(c, str)]
            text_col = idx_cols[0] if idx_cols else "__index_level_0__"
        tasks = dict(zip(ttable.column("task_index").to_pylist(), ttable.column(text_col).to_pylist()))
        task_names = [tasks[i] for i in sorted(tasks)]

        ep_files = sorted((self.root / "meta" / "episodes").rglob("*.parquet"))
        if not ep_files:
            raise UserError(f"{self.root} is not a complete LeRobot v3.0 dataset: meta/episodes/ has no parquet files")
        cols = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index"]
        for key in self._video_keys():
            cols += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
        rows = []
        for f in ep_files:
            try:
                t = pq.read_table(f, columns=cols)
            except (pa.ArrowInvalid, KeyError) as err:
                raise UserError(f"{f} lacks episode columns this reader needs ({err})") from None
            rows.extend(t.to_pylist())
        rows.sort(key=lambda r: r["episode_index"])
        data_path = self.info.get("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
        video_path = self.info.get("video_path") or V3_VIDEO_PATH
        episodes = []
        for r in rows:
            file = self.root / data_path.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
            # v3.0 concatenates episodes in one mp4: an episode's frame at time t is at from_timestamp + t.
            videos = {key: (self.root / video_path.format(video_key=key, chunk_index=r[f"videos/{key}/chunk_index"],
                                                          file_index=r[f"videos/{key}/file_index"]),
                            float(r[f"videos/{key}/from_timestamp"]))
                      for key in self._video_keys()}
            episodes.append({"episode_index": int(r["episode_index"]), "length": int(r["length"]), "file": file,
                             "from": int(r["dataset_from_index"]), "task": (r["tasks"] or [""])[0],
                             "videos": videos})
        # Row offsets inside each data file: the episodes of a file are stored back to back in global-index order,
        # so a file's first row is the smallest global index among its episodes (computed before any filtering).
        file_start: dict[Path, int] = {}
        for e in episodes:
            file_start[e["file"]] = min(file_start.get(e["file"], e["from"]), e["from"])
        for e in episodes:
            e["row"] = e.pop("from") - file_start[e["file"]]
        return task_names, episodes

    def _filter_tasks(self, episodes: list[dict], tasks) -> list[dict]:
        if tasks is None:
            return episodes
        wanted = set()
        for t in ([tasks] if isinstance(tasks, (str, int)) else tasks):
            if isinstance(t, int) or (isinstance(t, str) and t.isdigit()):
                i = int(t)
                if not 0 <= i < len(self.task_names):
                    raise UserError(f"task index {i} out of range: the dataset has {len(self.task_names)} tasks")
                wanted.add(self.task_names[i])
            elif t in self.task_names:
                wanted.add(t)
            else:
                raise UserError(f"task '{t}' not in {self.root}; tasks: {'; '.join(self.task_names[:10])}"
                                f"{' ...' if len(self.task_names) > 10 else ''}")
        return [e for e in episodes if e["task"] in wanted]

    # -- whole-column reads (no images) -----------------------------------------------------------------------------
    def _load_columns(self) -> dict[str, np.ndarray]:
        """Actions (+ per-frame task index) of all kept frames, reading only those columns, files in parallel."""
        if self._columns is not None:
            return self._columns
        missing = [p for p in self._files if not p.is_file()]
        if missing:
            raise UserError(f"{self.root}: data file {missing[0].relative_to(self.root)} is missing "
                            f"({len(missing)} of {len(self._files)} files); the download is incomplete")
        has_task = "task_index" in self.features

        def read(path: Path) -> dict[str, np.ndarray]:
            cols = [self.action_key] + (["task_index"] if has_task else [])
            try:
                table = pq.read_table(path, columns=cols)
            except (pa.ArrowInvalid, OSError) as err:
                raise UserError(f"cannot read {path}: {err}") from None
            out = {"actions": column_to_numpy(table.column(self.action_key), self.action_key)}
            if has_task:
                out["task_index"] = column_to_numpy(table.column("task_index"), "task_index").reshape(-1)
            return out

        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            per_file = list(pool.map(read, self._files))

        parts: dict[str, list[np.ndarray]] = {"actions": [], "task_index": []}
        for f, row, length, ep in zip(self._ep_file, self._ep_row, self._ep_length, self._ep_index):
            cols = per_file[f]
            if row + length > len(cols["actions"]):
                raise UserError(f"{self.root}: episode {ep} should have {length} frames but its data file "
                                f"{self._files[f].relative_to(self.root)} has only {len(cols['actions']) - row}")
            for k in parts:
                if k in cols:
                    parts[k].append(cols[k][row:row + length])
        actions = np.concatenate(parts["actions"]).astype(np.float32, copy=False)
        if actions.ndim != 2:
            actions = actions.reshape(len(actions), -1)
        if has_task:
            task_index = np.concatenate(parts["task_index"]).astype(np.int64)
        else:  # fall back to the episode's first task
            names = {t: i for i, t in enumerate(self.task_names)}
            task_index = np.repeat([names.get(t, 0) for t in self._ep_task], self._ep_length)
        from tinyvla.data.stats import check_finite

        check_finite(actions, self.episode_index(), self.frame_index())
        self._columns = {"actions": actions, "task_index": task_index}
        return self._columns

    # -- the reader contract ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def num_episodes(self) -> int:
        return len(self._ep_index)

    def actions(self) -> np.ndarray:
        """(N, D) float32 actions of every frame, in frame order. Read once, without touching an image."""
        return self._load_columns()["actions"]

    def episode_index(self) -> np.ndarray:
        return np.repeat(self._ep_index, self._ep_length)

    def frame_index(self) -> np.ndarray:
        return np.arange(self._n) - np.repeat(self._ep_start, self._ep_length)

    def frame_task(self) -> np.ndarray:
        """(N,) task text of every frame (object array of str)."""
        cols = self._load_columns()
        if "frame_task" not in cols:
            idx = cols["task_index"]
            names = np.array(self.task_names + [""], dtype=object)
            cols["frame_task"] = names[np.where((idx >= 0) & (idx < len(self.task_names)), idx, len(self.task_names))]
        return cols["frame_task"]

    def _locate(self, i: int) -> tuple[int, int]:
        if not -self._n <= i < self._n:
            raise IndexError(f"frame {i} out of range for a dataset of {self._n} frames")
        i %= self._n
        e = int(np.searchsorted(self._ep_start, i, side="right") - 1)
        return e, i - int(self._ep_start[e])

    def sample(self, i: int, horizon: int = 8) -> dict:
        """The frame sample of ARCHITECTURE.md: both views, the instruction, the next `horizon` actions."""
        e, k = self._locate(i)
        start, length = int(self._ep_start[e]), int(self._ep_length[e])
        idx = start + np.minimum(np.arange(k, k + horizon), length - 1)
        cols = self._load_columns()
        ep = int(self._ep_index[e])
        out = {
            "actions": cols["actions"][idx],
            "instruction": str(self.frame_task()[start + k]),
            "episode_index": ep,
            "frame_index": k,
        }
        for role, key in (("image", self.image_key), ("wrist", self.wrist_key)):
            if key is None:
                raise UserError(f"no {role} camera feature in {self.root}; pass --{role}-key "
                                f"(image features: {', '.join(self.image_features) or 'none'})")
        videos = self._ep_videos[e]
        keys = (self.image_key, self.wrist_key, self.state_key)
        needed = [key for key in keys if key is not None and key not in videos]
        if videos:
            needed.append("timestamp")
        table, row = self._cache.row(self._files[self._ep_file[e]], int(self._ep_row[e]) + k, needed)
        where = f"{self.root.name} episode {ep} frame {k}"
        for name, key in (("image", self.image_key), ("wrist_image", self.wrist_key)):
            if key in videos:
                path, offset = videos[key]
                ts = offset + float(table.column("timestamp")[row].as_py())
                # half a frame period: lerobot's own tolerance is 1e-4 s, but re-muxed files drift slightly
                tol = 0.5 / (self.fps or 10)
                out[name] = self._video.frame(path, ts, tol, f"{where} ({key})")
            else:
                out[name] = decode_image(table.column(key)[row].as_py(), f"{where} ({key})", self.root)
        if self.state_key is not None:
            out["state"] = np.asarray(table.column(self.state_key)[row].as_py(), dtype=np.float32).reshape(-1)
        return out

    @property
    def image_features(self) -> list[str]:
        return [k for k, v in self.features.items() if v.get("dtype") in IMAGE_DTYPES]

    def __repr__(self) -> str:
        return (f"LeRobotDataset({self.root}, {self.version}, {self.num_episodes} episodes, {self._n} frames, "
                f"action={self.action_key}, image={self.image_key}, wrist={self.wrist_key})")

    def __getstate__(self):  # DataLoader workers: do not ship cached row groups to every process
        state = dict(self.__dict__)
        state["_cache"] = _RowGroupCache(self._cache.size)
        state["_video"] = _VideoFrames(self._video.size)
        return state


# ------------------------------------------------------------------------------------------------------------------
# Writing: exactly the physical-intelligence/libero v2.0 schema
# ------------------------------------------------------------------------------------------------------------------

CHUNKS_SIZE = 1000
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"


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
        s, ss, lo, hi = x.sum(0), (x * x).sum(0), x.min(0), x.max(0)
        if self.s is None:
            self.s, self.ss, self.lo, self.hi = s, ss, lo, hi
        else:
            self.s, self.ss = self.s + s, self.ss + ss
            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
        self.n += len(x)

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
            pq.write_table(pa.table(columns, schema=schema), path)

            # lerobot v2.0 stats: images per channel in [0, 1] with shape (3, 1, 1); scalars with shape (1,).
            for key, frames in (("image", image), ("wrist_image", wrist)):
                # A 64x64 pixel grid per frame is plenty for mean/std and keeps a 256x256 episode at ~15 MB.
                step = max(1, frames.shape[1] // 64)
                stats[key].add(frames[:, ::step, ::step].reshape(-1, 3) / 255.0)
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
