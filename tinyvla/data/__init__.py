"""Datasets: readers (LeRobot v2.0/v2.1/v3.0 in lerobot.py, raw LIBERO HDF5 in hdf5.py), the v2.0 writer
(writer.py), video decoding (video.py), action statistics (stats.py).

`open_dataset` is the one entry point: it looks at what the path holds and returns a `Reader` (reader.py): `len`,
`sample(i, horizon)`, `actions()`, `episode_index()`, `frame_index()`, `frame_task()`, `task_names`, `cameras`, `info`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from tinyvla.data.reader import Reader
from tinyvla.errors import UserError


def open_dataset(
    path_or_repo: str | os.PathLike,
    *,
    cameras: Iterable[str] | None = None,
    image_key: str | None = None,
    wrist_key: str | None = None,
    action_key: str | None = None,
    state_key: str | None = None,
    tasks: Iterable[str | int] | None = None,
) -> Reader:
    """A LeRobot dataset directory (meta/info.json), a Hub dataset repo id, or a folder of raw LIBERO *.hdf5 demos."""
    from tinyvla.data.lerobot import LeRobotDataset, resolve_dataset_path

    path = resolve_dataset_path(path_or_repo)
    keys = dict(cameras=cameras, image_key=image_key, wrist_key=wrist_key, action_key=action_key, state_key=state_key, tasks=tasks)
    if (path / "meta" / "info.json").is_file():
        return LeRobotDataset(path, **keys)
    if path.suffix in (".hdf5", ".h5") and path.is_file():
        from tinyvla.data.hdf5 import LiberoHDF5Dataset

        return LiberoHDF5Dataset(path, **keys)
    if path.is_dir():
        from tinyvla.data.hdf5 import LiberoHDF5Dataset, find_hdf5_files

        if find_hdf5_files(path):
            return LiberoHDF5Dataset(path, **keys)
    raise UserError(
        f"{path} is not a dataset tinyvla can read: expected a LeRobot dataset (with meta/info.json) "
        f"or a folder of LIBERO *_demo.hdf5 files"
    )


__all__ = ["Reader", "open_dataset"]
