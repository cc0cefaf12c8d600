"""Video frames decoded once, kept on disk at the size training crops from (`data.video_cache: true`).

Why: a random training sample of a video dataset costs a seek and ~1.4 decoded frames per camera (lerobot writes a
keyframe every 2 frames); on 640x480 AV1 that decode is half of a data worker's time (BENCHMARKS.md). Training reads
every frame many times (VLA-0: 64 epochs), so decoding each frame once, in file order (no seeks), into raw uint8 files
that workers memory-map takes the decoder out of the training loop.

The frames are stored resized to a square of side `image_size / crop_scale`: transforms.py crops `crop_scale` of each
side and squashes the crop to `image_size`, so from the stored frame a training crop is a slice, with no resize. The
geometry is the same as from the full frame; the pixels differ only by where the resampling happens (before the crop
instead of after; FFmpeg's area filter). Frames are looked up by their timestamp, as in video.py.

One entry per (video file, side), in `data.video_cache_dir` (default: default_cache_dir()):

    <stem>-<key>/frames.u8    uint8 (n, side, side, 3), raw: every frame of the file in order
    <stem>-<key>/meta.json    the source path, byte size and mtime, the shape, every frame's time in seconds

An entry directory appears complete or not at all (built under a temp name, renamed: core/atomic.py). key = a hash of
the source's resolved path, byte size, mtime and the side, so an edited or replaced video gets a new entry.

Disk: side^2 x 3 bytes per camera frame, 196 KB at side 256: 5.9 MB per second of a 30 fps camera (a 50-episode,
30 s, two-camera SO-101 dataset: 17.7 GB). Building decodes each file once (~130 frames/s per core for 640x480 AV1 on
CPU-2), files in parallel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tinyvla.data.reader import ForkSafeCache
from tinyvla.errors import UserError

META = "meta.json"
FRAMES = "frames.u8"
FORMAT = 1  # bump when the entry layout changes: older entries are then rebuilt under a new key


def default_cache_dir() -> Path:
    """$TINYVLA_CACHE/video-frames, else $XDG_CACHE_HOME/tinyvla/video-frames (~/.cache/tinyvla/video-frames)."""
    if os.environ.get("TINYVLA_CACHE"):
        return Path(os.environ["TINYVLA_CACHE"]).expanduser() / "video-frames"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinyvla" / "video-frames"


def cache_side(image_size: int, crop_scale: float) -> int:
    """The stored square's side: a crop of `crop_scale` of it is `image_size` pixels, so training needs no resize."""
    return max(image_size, round(image_size / crop_scale))


def _entry_name(video: Path, side: int) -> str:
    if not video.is_file():
        raise UserError(f"video file {video} is missing; the dataset download is incomplete")
    st = video.stat()
    ident = f"{FORMAT}|{video.resolve()}|{st.st_size}|{st.st_mtime_ns}|{side}"
    return f"{video.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


class _Entry:
    """One built entry, memory-mapped read-only."""

    def __init__(self, folder: Path):
        meta = json.loads((folder / META).read_text())
        self.times = np.asarray(meta["times"], dtype=np.float64)
        self.frames = np.memmap(folder / FRAMES, dtype=np.uint8, mode="r", shape=tuple(meta["shape"]))


class VideoFrameCache:
    """`frame(video, ts, tolerance, where)` from the built entries; `build(videos)` makes the missing ones.

    Pickles without its memory maps (DataLoader workers started by spawn map the files themselves); a forked worker
    starts with an empty table too, like the readers' other per-process handles."""

    def __init__(self, root: str | os.PathLike | None, side: int):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.side = int(side)
        self._open = ForkSafeCache(64)
        self._names: dict[Path, str] = {}

    def entry(self, video: Path) -> Path:
        name = self._names.get(video)
        if name is None:
            name = self._names[video] = _entry_name(video, self.side)
        return self.root / name

    def is_built(self, video: Path) -> bool:
        return (self.entry(video) / META).is_file()

    # -- building ---------------------------------------------------------------------------------------------------
    def build(self, videos: list[Path], workers: int = 1, log=print) -> None:
        """Decode every video of `videos` not yet in the cache, `workers` files at a time (FFmpeg decodes outside the
        GIL, so threads run in parallel). Nothing half-written is ever visible, even if this is killed."""
        todo = sorted({Path(v) for v in videos if not self.is_built(Path(v))}, key=str)
        if not todo:
            return
        self._check_room(todo)
        log(f"video cache: decoding {len(todo)} video file(s) once into {self.root} (frames {self.side}x{self.side})")
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
            for _ in pool.map(self._build_one, todo):
                pass

    def wait_until_built(self, videos: list[Path], poll_s: float = 2.0) -> None:
        """Block until another process has built every entry of `videos` (the trainer's other ranks)."""
        import time

        while not all(self.is_built(Path(v)) for v in videos):
            time.sleep(poll_s)

    def _check_room(self, todo: list[Path]) -> None:
        from tinyvla.core.atomic import check_output_dir

        check_output_dir(self.root, "data.video_cache_dir")
        self.root.mkdir(parents=True, exist_ok=True)
        need = sum(_frame_count_estimate(v) for v in todo) * self.side * self.side * 3
        free = shutil.disk_usage(self.root).free
        if need > free:
            raise UserError(f"data.video_cache_dir {self.root}: the cache needs ~{need / 1e9:.1f} GB but only "
                            f"{free / 1e9:.1f} GB are free; set data.video_cache_dir to a larger disk or "
                            "data.video_cache: false")

    def _build_one(self, video: Path) -> None:
        from tinyvla.core.atomic import atomic_dir
        from tinyvla.data.video import open_decoder

        entry = self.entry(video)
        with atomic_dir(entry) as tmp:
            container, stream = open_decoder(video)
            times = []
            try:
                with open(tmp / FRAMES, "wb") as out:
                    for frame in container.decode(stream):
                        if frame.time is None:
                            continue
                        small = frame.reformat(width=self.side, height=self.side, format="rgb24",
                                               interpolation="AREA", threads=1)
                        out.write(small.to_ndarray().tobytes())
                        times.append(float(frame.time))
            except UserError:
                raise
            except Exception as err:
                raise UserError(f"cannot decode video {video} ({type(err).__name__}: {err}); the file is "
                                "corrupt") from None
            finally:
                container.close()
            if not times:
                raise UserError(f"video {video} has no frames; the file is truncated or empty")
            (tmp / META).write_text(json.dumps({
                "format": FORMAT, "source": str(video.resolve()), "bytes": video.stat().st_size,
                "mtime_ns": video.stat().st_mtime_ns, "shape": [len(times), self.side, self.side, 3],
                "times": times}))

    # -- reading ----------------------------------------------------------------------------------------------------
    def frame(self, video: Path, ts: float, tolerance: float, where: str) -> np.ndarray:
        """The stored frame nearest `ts` seconds of `video` as uint8 (side, side, 3)."""
        entry = self._open.get(video, lambda: self._map(video))
        i = int(np.searchsorted(entry.times, ts))
        if i == len(entry.times) or (i > 0 and ts - entry.times[i - 1] < entry.times[i] - ts):
            i -= 1
        if abs(entry.times[i] - ts) > tolerance:
            raise UserError(f"{where}: video {video} has no frame at {ts:.3f} s; the file is truncated or shorter "
                            "than the dataset says")
        return np.asarray(entry.frames[i])

    def _map(self, video: Path) -> _Entry:
        folder = self.entry(video)
        if not (folder / META).is_file():
            raise UserError(f"video {video} is not in the frame cache {self.root}; it changed after the cache was "
                            "built: run again to rebuild it")
        return _Entry(folder)

    def __getstate__(self):
        return {"root": self.root, "side": self.side, "_open": self._open, "_names": {}}


def _frame_count_estimate(video: Path) -> int:
    """Frames in `video` from its header (for the disk-space check); an over-estimate by 1 % to be safe."""
    from tinyvla.data.video import open_decoder

    container, stream = open_decoder(video)
    try:
        if stream.frames:
            return int(stream.frames * 1.01) + 1
        rate = float(stream.average_rate or stream.guessed_rate or 30)
        duration = float(stream.duration * stream.time_base) if stream.duration else \
            float(container.duration or 0) / 1e6
        return int(duration * rate * 1.01) + 1
    finally:
        container.close()
