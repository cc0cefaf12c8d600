"""LeRobot datasets: read codebase v2.0 / v2.1 / v3.0 (a local directory or a Hub repo id); writer.py writes v2.0.

(About 460 lines, over the usual 400: one reader for three on-disk layouts, and the layout-specific metadata loading
is most of it; splitting it per version would repeat the sampling code.)

The two layouts, as far as a reader cares:

    v2.0 / v2.1 (physical-intelligence/libero)        v3.0 (HuggingFaceVLA/libero, lerobot/libero)
    meta/info.json                                    meta/info.json
    meta/episodes.jsonl  {episode_index,tasks,length} meta/episodes/chunk-000/file-000.parquet  (+ file / row ranges)
    meta/tasks.jsonl     {task_index,task}            meta/tasks.parquet  (task string is the pandas index)
    data/chunk-000/episode_000000.parquet  (1 ep.)    data/chunk-000/file-000.parquet  (many episodes back to back)

The reader flattens the (optionally task-filtered) episodes into one frame numbering 0..N-1 (the EpisodeTable of
reader.py) and keeps where each episode lives (file, first row in that file, video files and offsets), so `sample(i)`
is a binary search plus one row-group read.

Why the actions are read once and kept in memory: they are tiny (273k x 7 float32 = 7.6 MB for all of LIBERO) and every
sample needs the next `horizon` of them, which may cross a row group; reading them once with pyarrow (action column
only, never the image columns) also makes `tinyvla data stats` fast.

Cameras (any names, 1-3 of them, `cameras=`): `image` features (PNG bytes in a parquet struct {bytes, path}) are
decoded with PIL; `video` features (mp4, one per episode in v2.x, many episodes per file in v3.0 at
`from_timestamp + timestamp`) with PyAV through video.py, or read from the frame cache (frame_cache.py,
`data.video_cache`) once `use_frame_cache` is called. Neither is touched by `actions()` or the stats. Video files
are checked when the reader opens: a missing one, or (for up to 64 files) one that does not open or ends early, is a
one-line error naming it.

Random access cost: a sample reads the parquet row group holding its row (a v2.0 file is one episode, one row group)
and keeps the last few in an LRU; a cache miss on a full-size LIBERO episode is tens of milliseconds, so use several
DataLoader workers (the caches are fork-safe and pickle empty).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tinyvla.data.parquet import RowGroups, column_to_numpy, decode_image
from tinyvla.data.reader import EpisodeTable, select_tasks
from tinyvla.data.video import VideoFrames, check_video_file
from tinyvla.errors import UserError
from tinyvla.hub import is_hub_id

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
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
MAX_CAMERAS = 3
CHECK_VIDEO_FILES = 64  # open every mp4 at start (truncation check) when a dataset has at most this many


# ------------------------------------------------------------------------------------------------------------------
# Finding the dataset: local directory or Hub repo id
# ------------------------------------------------------------------------------------------------------------------


def resolve_dataset_path(path_or_repo: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a Hub dataset repo id, downloaded (or found in the HF cache)."""
    path = Path(os.path.expanduser(str(path_or_repo)))
    if path.exists():
        return path
    text = str(path_or_repo)
    if not is_hub_id(text):
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
# The reader
# ------------------------------------------------------------------------------------------------------------------


class LeRobotDataset:
    """Read-only view of a LeRobot dataset (v2.0, v2.1, v3.0) with the `Reader` contract of reader.py.

    `cameras`: the image / video features to return as the sample's `views`, in order (1-3). None = the classic two
    (`image_key` / `wrist_key`, or the version's defaults: LIBERO's third-person + wrist) when the dataset has them,
    else every camera of the dataset in info.json order. Images are decoded only inside `sample`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        cameras: Iterable[str] | None = None,
        image_key: str | None = None,
        wrist_key: str | None = None,
        action_key: str | None = None,
        state_key: str | None = None,
        tasks: Iterable[str | int] | None = None,
        cache_mb: int = 256,
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
        self.state_key = self._pick_key("state", state_key, gen, required=state_key is not None)
        self.default_views = True  # the views are LIBERO's (third-person, wrist): a policy reads them as such
        self.cameras = self._pick_cameras(cameras, image_key, wrist_key, gen)

        if gen == "v3":
            self.task_names, episodes = self._load_meta_v3()
        else:
            self.task_names, episodes = self._load_meta_v2()
        wanted = select_tasks(self.task_names, tasks, str(self.root))
        if wanted is not None:
            episodes = [e for e in episodes if e["task"] in wanted]
        if not episodes:
            raise UserError(f"{self.root} has no episodes{' for the selected tasks' if tasks else ''}")

        # The episode table (shared with the HDF5 reader) plus where each episode lives on disk.
        self.episodes = EpisodeTable([e["episode_index"] for e in episodes], [e["length"] for e in episodes],
                                     [e["task"] for e in episodes])
        self._files: list[Path] = sorted({e["file"] for e in episodes}, key=lambda p: str(p))
        file_id = {p: i for i, p in enumerate(self._files)}
        self._ep_file = np.array([file_id[e["file"]] for e in episodes], dtype=np.int64)
        self._ep_row = np.array([e["row"] for e in episodes], dtype=np.int64)
        self._ep_videos = [e["videos"] for e in episodes]
        self._check_videos()
        self._rows = RowGroups(cache_mb)
        self._video = VideoFrames()
        self._frames = self._video  # where video frames come from: decoded per sample, or a frame cache
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

    def _pick_cameras(self, cameras, image_key, wrist_key, gen) -> list[str]:
        have = self.image_features
        if cameras is not None:
            cameras = [str(c) for c in ([cameras] if isinstance(cameras, str) else cameras)]
            if not 1 <= len(cameras) <= MAX_CAMERAS or len(set(cameras)) != len(cameras):
                raise UserError(f"data.cameras must name 1-{MAX_CAMERAS} different cameras, got {cameras}")
            for cam in cameras:
                if cam not in have:
                    what = f"a {self.features[cam].get('dtype')} feature, not a camera" if cam in self.features \
                        else "not in the dataset"
                    raise UserError(f"camera '{cam}' is {what} ({self.root}); its cameras: "
                                    f"{', '.join(have) or 'none'}")
            self.default_views = False
            return cameras
        for role, key in (("image", image_key), ("wrist", wrist_key)):
            if key is not None and key in self.features and key not in have:
                raise UserError(f"--{role}-key {key} is a {self.features[key].get('dtype')} feature, not an image")
        image = self._pick_key("image", image_key, gen, required=image_key is not None)
        wrist = self._pick_key("wrist", wrist_key, gen, required=wrist_key is not None)
        if image is not None and wrist is not None:
            return [image, wrist]
        self.default_views = False  # not LIBERO's pair: a policy must record these names
        return have[:MAX_CAMERAS] if image is None and wrist is None else [k for k in (image, wrist) if k]

    def _video_keys(self) -> list[str]:
        """The cameras this reader will decode that are stored as mp4 (only those need video metadata)."""
        return [k for k in self.cameras if self.features[k].get("dtype") == "video"]

    def _check_videos(self) -> None:
        """Fail now, in one line, on a missing video file; open each (when few) to catch a truncated one."""
        until: dict[Path, float] = {}
        for videos, length in zip(self._ep_videos, self.episodes.lengths):
            for path, offset in videos.values():
                until[path] = max(until.get(path, 0.0), offset + (int(length) - 1) / (self.fps or 30))
        missing = [p for p in until if not p.is_file()]
        if missing:
            raise UserError(f"video file {missing[0]} is missing ({len(missing)} of {len(until)} video files); the "
                            "dataset download is incomplete")
        try:
            import av  # noqa: F401  (without PyAV only `sample` fails; the stats never need a frame)
        except ImportError:
            return
        if len(until) <= CHECK_VIDEO_FILES:
            for path, end in until.items():
                check_video_file(path, end, 0.5 / (self.fps or 30))

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
        for f, row, length, ep in zip(self._ep_file, self._ep_row, self.episodes.lengths, self.episodes.ids):
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
            task_index = np.repeat([names.get(t, 0) for t in self.episodes.tasks], self.episodes.lengths)
        from tinyvla.data.stats import check_finite

        check_finite(actions, self.episode_index(), self.frame_index())
        self._columns = {"actions": actions, "task_index": task_index}
        return self._columns

    # -- the reader contract ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.episodes.num_frames

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def actions(self) -> np.ndarray:
        """(N, D) float32 actions of every frame, in frame order. Read once, without touching an image."""
        return self._load_columns()["actions"]

    def episode_index(self) -> np.ndarray:
        return self.episodes.episode_index()

    def frame_index(self) -> np.ndarray:
        return self.episodes.frame_index()

    def frame_task(self) -> np.ndarray:
        """(N,) task text of every frame (object array of str), from the per-frame task_index when stored."""
        cols = self._load_columns()
        if "frame_task" not in cols:
            idx = cols["task_index"]
            names = np.array(self.task_names + [""], dtype=object)
            cols["frame_task"] = names[np.where((idx >= 0) & (idx < len(self.task_names)), idx, len(self.task_names))]
        return cols["frame_task"]

    def sample(self, i: int, horizon: int = 8) -> dict:
        """The frame sample of the Reader contract: the cameras' views, the instruction, the next `horizon` actions."""
        e, k = self.episodes.locate(i)
        cols = self._load_columns()
        ep = int(self.episodes.ids[e])
        frame = int(self.episodes.starts[e]) + k
        out = {
            "actions": cols["actions"][self.episodes.action_window(e, k, horizon)],
            "instruction": str(self.frame_task()[frame]),
            "episode_index": ep,
            "frame_index": k,
        }
        if not self.cameras:
            raise UserError(f"{self.root} has no camera features (image or video); a policy needs at least one")
        videos = self._ep_videos[e]
        # image cameras are read from their data page alone (pages.py); the small columns from a cached row group
        needed = [key for key in (self.state_key,) if key is not None]
        if videos:
            needed.append("timestamp")
        path, file_row = self._files[self._ep_file[e]], int(self._ep_row[e]) + k
        table, row = self._rows.row(path, file_row, needed) if needed else (None, 0)
        where = f"{self.root.name} episode {ep} frame {k}"
        views = []
        for key in self.cameras:
            if key in videos:
                video, offset = videos[key]
                ts = offset + float(table.column("timestamp")[row].as_py())
                # half a frame period: lerobot's own tolerance is 1e-4 s, but re-muxed files drift slightly
                tol = 0.5 / (self.fps or 10)
                views.append(self._frames.frame(video, ts, tol, f"{where} ({key})"))
            else:
                views.append(decode_image(self._rows.image_cell(path, file_row, key), f"{where} ({key})", self.root))
        out["views"] = views
        out["image"] = views[0]
        if len(views) > 1:
            out["wrist_image"] = views[1]
        if self.state_key is not None:
            out["state"] = np.asarray(table.column(self.state_key)[row].as_py(), dtype=np.float32).reshape(-1)
        return out

    def video_files(self) -> list[Path]:
        """The mp4 files behind the cameras this reader returns (frame_cache.py decodes them once)."""
        return sorted({path for videos in self._ep_videos for path, _ in videos.values()}, key=str)

    def use_frame_cache(self, cache) -> None:
        """Take video frames from `cache` (a built frame_cache.VideoFrameCache) instead of decoding per sample."""
        self._frames = cache

    @property
    def image_features(self) -> list[str]:
        return [k for k, v in self.features.items() if v.get("dtype") in IMAGE_DTYPES]

    def __repr__(self) -> str:
        return (f"LeRobotDataset({self.root}, {self.version}, {self.num_episodes} episodes, {len(self)} frames, "
                f"action={self.action_key}, cameras={', '.join(self.cameras)})")


