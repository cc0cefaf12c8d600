"""Raw LIBERO demonstrations (robomimic-style HDF5) through the same reader contract as the LeRobot datasets.

Layout of a suite folder (e.g. LIBERO/libero/datasets/libero_object), one file per task:

    pick_up_the_alphabet_soup_and_place_it_in_the_basket_demo.hdf5
      data/                      attrs: problem_info (JSON with "language_instruction"), env_args, ...
        demo_0/actions           (T, 7) float   6 end-effector deltas + gripper (-1 open, +1 closed)
        demo_0/obs/agentview_rgb     (T, 128, 128, 3) uint8   third-person camera
        demo_0/obs/eye_in_hand_rgb   (T, 128, 128, 3) uint8   wrist camera
        demo_0/obs/ee_pos (T, 3), ee_ori (T, 3), gripper_states (T, 2), joint_states (T, 7)

Orientation: the simulator renders these frames upside down, and the LeRobot conversion
(physical-intelligence/libero) rotated them by 180 degrees. This reader rotates every image by 180 degrees too, so a
sample from raw HDF5 looks like a sample from the LeRobot dataset and one policy can train on either.

State: `ee_pos (3) + ee_ori (3, axis-angle) + gripper_states (2)` = 8 values, the order of the LeRobot `state`.
The task text comes from `problem_info["language_instruction"]`, else from the file name (minus a SCENE prefix and
the `_demo` suffix). Raw demos are recorded at the 20 Hz control rate.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from tinyvla.data.reader import EpisodeTable, ForkSafeCache, select_tasks
from tinyvla.errors import UserError

CONTROL_HZ = 20
IMAGE_KEYS = {"image": "agentview_rgb", "wrist": "eye_in_hand_rgb"}
STATE_PARTS = ("ee_pos", "ee_ori", "gripper_states")


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def task_from_filename(path: Path) -> str:
    """`KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5` -> `turn on the stove`."""
    stem = re.sub(r"_demo$", "", path.stem)
    words = stem.split("_")
    # libero_10 / libero_90 prefix the scene in capitals (LIVING_ROOM_SCENE2_...); the instruction is lower case.
    while words and words[0].isupper() and len(words) > 1:
        words.pop(0)
    return " ".join(words)


def find_hdf5_files(root: Path) -> list[Path]:
    files = sorted(root.rglob("*.hdf5"), key=lambda p: _natural(str(p.relative_to(root))))
    return [f for f in files if not f.name.startswith(".")]


class LiberoHDF5Dataset:
    """Raw LIBERO HDF5 demos as a tinyvla reader: `len()`, `sample(i, horizon)`, `actions()`, `episode_index()`,
    `frame_index()`, `frame_task()`, `task_names`, `info`. Images rotated 180 degrees (see the module doc)."""

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
    ):
        import h5py

        self.root = Path(root)
        files = [self.root] if self.root.is_file() else find_hdf5_files(self.root)
        if not files:
            raise UserError(f"{self.root} has no .hdf5 files (expected LIBERO *_demo.hdf5 task files)")
        self.action_key = action_key or "actions"
        self.default_views = cameras is None  # LIBERO's (third-person, wrist) pair, read as such by a policy
        if cameras is not None:  # obs/ keys, in the order the policy sees them
            self.cameras = [str(c) for c in ([cameras] if isinstance(cameras, str) else cameras)]
        else:
            self.cameras = [image_key or IMAGE_KEYS["image"], wrist_key or IMAGE_KEYS["wrist"]]
        self.state_key = state_key  # None: the LeRobot-style 8-D state built from STATE_PARTS, when present

        self._features_probe: dict | None = None
        self._files: list[Path] = []
        episodes = []  # (file id, demo name, length, task)
        task_of_file = []
        for path in files:
            try:
                with h5py.File(path, "r") as f:
                    if "data" not in f:
                        raise UserError(f"{path} is not a LIBERO demo file (no 'data' group)")
                    data = f["data"]
                    task = self._task(data, path)
                    demos = sorted((k for k in data.keys() if k.startswith("demo")), key=_natural)
                    if not demos:
                        continue
                    first = data[demos[0]]
                    self._check_keys(first, path, demos[0])
                    fid = len(self._files)
                    self._files.append(path)
                    task_of_file.append(task)
                    for name in demos:
                        length = int(data[name][self.action_key].shape[0])
                        if length:
                            episodes.append((fid, name, length, task))
                    if self._features_probe is None:
                        self._features_probe = self._describe(first)
            except OSError as err:
                raise UserError(f"cannot open {path} as HDF5 ({err})") from None

        self.task_names = list(dict.fromkeys(task_of_file))
        wanted = select_tasks(self.task_names, tasks, str(self.root))
        if wanted is not None:
            episodes = [e for e in episodes if e[3] in wanted]
        if not episodes:
            raise UserError(f"{self.root} has no demos{' for the selected tasks' if tasks else ''}")

        # episode ids are the row numbers of the kept demos (raw HDF5 has no global episode index)
        self.episodes = EpisodeTable(range(len(episodes)), [e[2] for e in episodes], [e[3] for e in episodes])
        self._demos = [(fid, name) for fid, name, _, _ in episodes]
        self._handles = ForkSafeCache(size=len(self._files), close=_close_h5)  # h5py handles must not cross a fork
        self._actions: np.ndarray | None = None
        self.info = {
            "codebase_version": "libero-hdf5",
            "fps": CONTROL_HZ,
            "total_episodes": len(episodes),
            "total_frames": self.episodes.num_frames,
            "features": self._features_probe or {},
        }

    # -- metadata ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _task(data, path: Path) -> str:
        raw = data.attrs.get("problem_info")
        if raw is not None:
            try:
                info = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
                text = info.get("language_instruction")
                if isinstance(text, list):
                    text = "".join(text)
                if isinstance(text, str) and text.strip():
                    return text.strip().strip('"')
            except (json.JSONDecodeError, AttributeError):
                pass
        return task_from_filename(path)

    def _check_keys(self, demo, path: Path, name: str) -> None:
        obs = demo.get("obs")
        available = sorted(["actions"] if "actions" in demo else []) + sorted(f"obs/{k}" for k in (obs or {}).keys())
        if self.action_key not in demo:
            raise UserError(f"{path.name} {name}: no '{self.action_key}' dataset; available: {', '.join(available)}")
        for n, key in enumerate(self.cameras):
            if obs is None or key not in obs:
                role = ("image", "wrist")[n] if n < 2 else "camera"
                raise UserError(f"{path.name} {name}: no obs/{key} ({role} camera); pass data.cameras or "
                                f"--{role}-key, available: {', '.join(available)}")
        if self.state_key is not None and self.state_key not in obs:
            raise UserError(f"{path.name} {name}: no obs/{self.state_key}; available: {', '.join(available)}")

    def _describe(self, demo) -> dict:
        obs = demo["obs"]
        feats = {key: {"dtype": "image", "shape": list(obs[key].shape[1:])} for key in self.cameras}
        feats |= {
            self.action_key: {"dtype": str(demo[self.action_key].dtype),
                              "shape": list(demo[self.action_key].shape[1:])},
        }
        for key in obs.keys():
            if key not in feats:
                feats[key] = {"dtype": str(obs[key].dtype), "shape": list(obs[key].shape[1:])}
        return feats

    def _file(self, fid: int):
        import h5py

        return self._handles.get(fid, lambda: h5py.File(self._files[fid], "r"))

    # -- the reader contract ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.episodes.num_frames

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def actions(self) -> np.ndarray:
        if self._actions is None:
            parts = [np.asarray(self._file(fid)["data"][name][self.action_key][()], dtype=np.float32)
                     for fid, name in self._demos]
            actions = np.concatenate([p.reshape(len(p), -1) for p in parts])
            from tinyvla.data.stats import check_finite

            check_finite(actions, self.episode_index(), self.frame_index())
            self._actions = actions
        return self._actions

    def episode_index(self) -> np.ndarray:
        return self.episodes.episode_index()

    def frame_index(self) -> np.ndarray:
        return self.episodes.frame_index()

    def frame_task(self) -> np.ndarray:
        return self.episodes.frame_task()

    def video_files(self) -> list:
        return []  # HDF5 demos store their frames as arrays

    def use_frame_cache(self, cache) -> None:
        pass  # nothing to cache

    def episode_name(self, e: int) -> str:
        """`file.hdf5:demo_N`, for messages."""
        fid, name = self._demos[e]
        return f"{self._files[fid].name}:{name}"

    def sample(self, i: int, horizon: int = 8) -> dict:
        e, k = self.episodes.locate(i)
        fid, name = self._demos[e]
        demo = self._file(fid)["data"][name]
        out = {
            "actions": self.actions()[self.episodes.action_window(e, k, horizon)],
            "instruction": self.episodes.tasks[e],
            "episode_index": e,
            "frame_index": k,
        }
        views = []
        for key in self.cameras:
            frame = np.asarray(demo["obs"][key][k])
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
                raise UserError(f"{self.episode_name(e)} frame {k}: obs/{key} is {frame.dtype} {frame.shape}, "
                                f"expected uint8 (H, W, 3)")
            views.append(np.ascontiguousarray(frame[::-1, ::-1]))  # 180 degrees: match the LeRobot orientation
        out["views"], out["image"] = views, views[0]
        if len(views) > 1:
            out["wrist_image"] = views[1]
        obs = demo["obs"]
        if self.state_key is not None:
            out["state"] = np.asarray(obs[self.state_key][k], dtype=np.float32).reshape(-1)
        elif all(p in obs for p in STATE_PARTS):
            out["state"] = np.concatenate([np.asarray(obs[p][k], dtype=np.float32).reshape(-1) for p in STATE_PARTS])
        return out

    def __repr__(self) -> str:
        return (f"LiberoHDF5Dataset({self.root}, {len(self._files)} files, {self.num_episodes} demos, "
                f"{len(self)} frames)")


def _close_h5(handle) -> None:
    handle.close()
