"""Camera frames out of mp4 files (LeRobot `video` features), decoded with PyAV, without a reopen or a seek per sample.

The known cost of video datasets (lerobot#1623, starVLA#84): a loader that opens the file and seeks for every sample
pays the container open (parsing the index of a many-episode v3.0 file) and a decoder flush each time. Here each
process keeps its files open (a fork-safe LRU, reader.py) and each open file remembers where its decoder stands:

    a request at or just after the last decoded frame  -> decode forward from there (no seek)
    a request for a frame decoded moments ago           -> served from a short window of recent frames (no decode)
    anything else                                       -> one seek to the keyframe before it, then decode forward

So sequential reads (offline eval, an episode-ordered sampler, the several frames of one training sample) decode each
frame once, and random reads cost one seek plus the frames from the keyframe (lerobot writes a keyframe every 2 frames).

Bad input is one line naming the file: missing, not a video, or truncated (no frame at the asked time).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from tinyvla.data.reader import ForkSafeCache
from tinyvla.errors import UserError

RECENT_FRAMES = 8  # decoded frames kept per open file (a backward step this short needs no seek)
FORWARD_FRAMES = 4  # decode forward instead of seeking when the target is at most this many frames ahead


def _import_av():
    try:
        import av
    except ImportError:
        raise UserError("this dataset stores its cameras as video (mp4); install PyAV to decode them: "
                        "pip install av") from None
    return av


def open_decoder(path: Path):
    """(container, video stream) of an mp4, decoding on one thread; a missing or unreadable file is one line."""
    av = _import_av()
    if not path.is_file():
        raise UserError(f"video file {path} is missing; the dataset download is incomplete")
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
        # one decoding thread: a data worker is one process and the parallelism is the number of workers (FFmpeg's
        # default starts a thread per core in every worker, and the per-worker figures would borrow other cores)
        stream.codec_context.thread_count = 1
    except Exception as err:
        raise UserError(f"cannot open video {path} ({type(err).__name__}: {err}); the file is corrupt or "
                        "not a video") from None
    return container, stream


class _OpenVideo:
    """One open mp4 and its decoder position."""

    def __init__(self, path: Path):
        self.container, self.stream = open_decoder(path)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.period = 1.0 / float(rate) if rate else 1.0 / 30
        self.path = path
        self.recent: deque = deque(maxlen=RECENT_FRAMES)  # (time, av.VideoFrame), oldest first
        self.decoder = None  # the running frame iterator after the last seek, or None
        self.seeks = self.decoded = 0  # counters for tests and the throughput script

    def close(self) -> None:
        self.container.close()

    def _seek(self, ts: float) -> None:
        # a quarter period past `ts`: a time a hair before the frame's own pts (float rounding) would land on the
        # keyframe before, decoding a whole group more; the next frame is still a full period away
        target = (ts + 0.25 * self.period) / self.stream.time_base
        self.container.seek(max(0, int(target)), stream=self.stream, backward=True, any_frame=False)
        self.decoder = self.container.decode(self.stream)
        self.recent.clear()
        self.seeks += 1

    def frame(self, ts: float, tolerance: float) -> np.ndarray | None:
        """The frame nearest `ts` (within `tolerance` seconds) as uint8 (H, W, 3), or None if the file has none."""
        for t, f in reversed(self.recent):
            if abs(t - ts) <= tolerance:
                return _rgb(f)
        last = self.recent[-1][0] if self.recent else None
        if self.decoder is None or last is None or not (last < ts <= last + FORWARD_FRAMES * self.period + tolerance):
            self._seek(ts)
        best = None
        for f in self.decoder:
            if f.time is None:
                continue
            self.decoded += 1
            self.recent.append((f.time, f))
            if best is None or abs(f.time - ts) < abs(best.time - ts):
                best = f
            if f.time >= ts - tolerance:
                break
        else:  # the file ended: the next request must seek again
            self.decoder = None
        if best is None or abs(best.time - ts) > tolerance:
            return None
        return _rgb(best)


_ONE_THREAD = {"threads": 1}  # emptied if this PyAV predates reformat(threads=)


def _rgb(frame) -> np.ndarray:
    """A decoded frame as uint8 RGB (H, W, 3), converted on this thread: FFmpeg 8's converter otherwise starts
    threads of its own for every frame it converts (hundreds per worker, and ~3x the wall time on a busy machine)."""
    try:
        return frame.to_ndarray(format="rgb24", **_ONE_THREAD)
    except TypeError:
        if not _ONE_THREAD:
            raise
        _ONE_THREAD.clear()
        return frame.to_ndarray(format="rgb24")


def _close(video: _OpenVideo) -> None:
    video.close()


class VideoFrames:
    """`frame(path, ts, tolerance, where)`: one camera frame at time `ts` of an mp4, keeping up to `size` files open
    per process."""

    def __init__(self, size: int = 8):
        self.files = ForkSafeCache(size, close=_close)

    def open(self, path: Path) -> _OpenVideo:
        return self.files.get(path, lambda: _OpenVideo(path))

    def frame(self, path: Path, ts: float, tolerance: float, where: str) -> np.ndarray:
        video = self.open(path)
        try:
            out = video.frame(ts, tolerance)
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"{where}: cannot decode video {path} ({type(err).__name__}: {err}); the file is "
                            "corrupt") from None
        if out is None:
            raise UserError(f"{where}: video {path} has no frame at {ts:.3f} s; the file is truncated or shorter "
                            "than the dataset says")
        return out


def check_video_file(path: Path, until: float, tolerance: float) -> None:
    """Raise a one-line UserError unless `path` opens as a video holding a frame at `until` seconds (its last frame
    the dataset uses). A seek and a decode or two: a truncated file's index still promises the frames it lost."""
    if not path.is_file():
        raise UserError(f"video file {path} is missing; the dataset download is incomplete")
    try:
        video = _OpenVideo(path)
        try:
            found = video.frame(until, tolerance) is not None
        finally:
            video.close()
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot decode video {path} ({type(err).__name__}: {err}); the file is corrupt or "
                        "truncated") from None
    if not found:
        raise UserError(f"video {path} has no frame at {until:.2f} s, the last one the dataset uses; the file is "
                        "truncated")
