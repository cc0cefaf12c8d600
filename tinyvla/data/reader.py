"""What every dataset reader shares: the `Reader` contract, the episode table, the task filter, a fork-safe cache.

A reader (LeRobot v2.x / v3.0 in lerobot.py, raw LIBERO HDF5 in hdf5.py) flattens the episodes it keeps into one frame
numbering 0..N-1. The `EpisodeTable` holds that numbering (episode starts and lengths, each episode's id and task),
answers "which episode and step is frame i" and "which frames hold the next H actions", and turns the per-episode
facts into the per-frame arrays of the contract. `ForkSafeCache` keeps open files and decoded row groups between
samples; DataLoader workers fork, and a file handle (h5py, an mp4 container) must not cross a fork, so the cache
empties itself in a new process and pickles empty.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Iterable, Protocol, runtime_checkable

import numpy as np

from tinyvla.errors import UserError


@runtime_checkable
class Reader(Protocol):
    """The dataset contract of docs/ARCHITECTURE.md. `sample(i, horizon)` returns a dict with `views` (the cameras'
    uint8 (H, W, 3) frames, in `cameras` order), `image` / `wrist_image` (the first two views, for two-camera code),
    `actions` (horizon, D) float32, `instruction`, `episode_index`, `frame_index` and, when the data has it, `state`."""

    info: dict
    task_names: list[str]
    cameras: list[str]  # the dataset features behind `views`, in order
    default_views: bool  # True: the views are LIBERO's (third-person, wrist) pair, which policies call image / wrist_image
    action_key: str

    def __len__(self) -> int: ...

    def sample(self, i: int, horizon: int = 8) -> dict: ...

    def actions(self) -> np.ndarray: ...

    def episode_index(self) -> np.ndarray: ...

    def frame_index(self) -> np.ndarray: ...

    def frame_task(self) -> np.ndarray: ...

    def video_files(self) -> list: ...  # the mp4 files behind the cameras read (empty: images only)

    def use_frame_cache(self, cache) -> None: ...  # read video frames from a built frame_cache.VideoFrameCache


def select_tasks(task_names: list[str], tasks: Iterable[str | int] | str | int | None, where: str) -> set[str] | None:
    """The task texts named by `tasks` (texts or indices into `task_names`); None = all. Unknown names are an error."""
    if tasks is None:
        return None
    wanted = set()
    for t in ([tasks] if isinstance(tasks, (str, int)) else tasks):
        if isinstance(t, int) or (isinstance(t, str) and t.isdigit()):
            if not 0 <= int(t) < len(task_names):
                raise UserError(f"task index {t} out of range: {where} has {len(task_names)} tasks")
            wanted.add(task_names[int(t)])
        elif t in task_names:
            wanted.add(t)
        else:
            more = " ..." if len(task_names) > 10 else ""
            raise UserError(f"task '{t}' not in {where}; tasks: {'; '.join(task_names[:10])}{more}")
    return wanted


class EpisodeTable:
    """The kept episodes in dataset order: `ids` (the dataset's episode index), `lengths`, `tasks` (text), and the
    derived `starts` of each episode in the flat frame numbering."""

    def __init__(self, ids: Iterable[int], lengths: Iterable[int], tasks: Iterable[str]):
        self.ids = np.asarray(list(ids), dtype=np.int64)
        self.lengths = np.asarray(list(lengths), dtype=np.int64)
        self.tasks = [str(t) for t in tasks]
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.num_frames = int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.ids)

    def locate(self, i: int) -> tuple[int, int]:
        """Frame i -> (row in this table, step within the episode). Negative i counts from the end, like a list."""
        if not -self.num_frames <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range for a dataset of {self.num_frames} frames")
        i %= self.num_frames
        e = int(np.searchsorted(self.starts, i, side="right") - 1)
        return e, i - int(self.starts[e])

    def action_window(self, e: int, k: int, horizon: int) -> np.ndarray:
        """Flat frame indices of the next `horizon` actions from step k of episode row e; past the episode's end the
        last action repeats (the robot holds still), as VLA-0 pads."""
        start, length = int(self.starts[e]), int(self.lengths[e])
        return start + np.minimum(np.arange(k, k + horizon), length - 1)

    def episode_index(self) -> np.ndarray:
        return np.repeat(self.ids, self.lengths)

    def frame_index(self) -> np.ndarray:
        return np.arange(self.num_frames) - np.repeat(self.starts, self.lengths)

    def frame_task(self) -> np.ndarray:
        return np.repeat(np.array(self.tasks, dtype=object), self.lengths)


_INHERITED: list = []  # caches a forked process took over from its parent (never used, never freed)


class ForkSafeCache:
    """A small LRU of open files or decoded data, keyed by anything hashable. `get(key, make)` returns the cached value
    or `make()`'s; values pushed out are passed to `close`. In a forked process (a DataLoader worker) it starts empty,
    without closing or freeing the parent's handles; pickled, it is empty too (workers started by spawn)."""

    def __init__(self, size: int = 4, close: Callable | None = None):
        self.size = max(1, size)
        self.close = close
        self._items: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def get(self, key, make: Callable):
        if os.getpid() != self._pid:
            # Keep the parent's objects alive, untouched: freeing them here would run their C destructors in a
            # process without the threads they own (an mp4 decoder's frame converter then waits on a thread pool
            # that was not forked, forever).
            _INHERITED.append(self._items)
            self._items, self._pid = OrderedDict(), os.getpid()
        value = self._items.get(key)
        if value is None:
            value = self._items[key] = make()
            if len(self._items) > self.size:
                _, old = self._items.popitem(last=False)
                if self.close is not None:
                    self.close(old)
        else:
            self._items.move_to_end(key)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self):
        return {"size": self.size, "close": self.close, "_items": OrderedDict(), "_pid": -1}
