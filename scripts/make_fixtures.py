"""Write the small test datasets in tests/fixtures/ (deterministic; re-running gives the same data).

    libero_v20_tiny/               LeRobot v2.0 in the physical-intelligence/libero schema, by tinyvla's own writer:
                                   3 episodes (12, 9, 14 frames), 2 tasks, 32x32 images, state 8, actions 7, fps 10
    libero_hdf5_tiny/libero_object/  raw LIBERO demo layout (robomimic HDF5), 2 task files, 3 demos, 32x32 images,
                                   images stored upside down like the simulator renders them

The v3.0 fixture is written by lerobot itself: scripts/make_v30_fixture.py (needs a side venv, see there).

Every image carries a marker in its top-left corner (in dataset orientation) so tests can check the orientation.

    /work/venv/bin/python scripts/make_fixtures.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyvla.data.writer import write_lerobot_v2  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SIZE = 32
V20_TASKS = ["pick up the black bowl and place it on the plate", "put the cream cheese in the bowl"]
V20_EPISODES = [(0, 12), (1, 9), (0, 14)]  # (task, frames)
HDF5_TASKS = [  # (file stem, instruction, demo lengths)
    ("pick_up_the_alphabet_soup_and_place_it_in_the_basket", "pick up the alphabet soup and place it in the basket",
     [8, 11]),
    ("pick_up_the_ketchup_and_place_it_in_the_basket", "pick up the ketchup and place it in the basket", [10]),
]


def synthetic_episode(rng: np.random.Generator, task_id: int, length: int) -> dict:
    """Images: task colour + a moving square + a white 4x4 marker top-left. Actions: smooth, gripper -1 then +1."""
    image = np.zeros((length, SIZE, SIZE, 3), np.uint8)
    wrist = np.zeros((length, SIZE, SIZE, 3), np.uint8)
    image[..., task_id % 3] = 90
    wrist[..., (task_id + 1) % 3] = 70
    for k in range(length):
        x = (2 * k) % (SIZE - 8) + 4
        image[k, 12:18, x : x + 6] = 255 - 10 * task_id
        wrist[k, x : x + 6, 14:20] = 200
    image[:, :4, :4] = 255
    wrist[:, :4, :4] = 255
    actions = np.cumsum(rng.normal(0, 0.05, (length, 7)), axis=0).astype(np.float32)
    actions[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)
    state = rng.normal(0, 0.5, (length, 8)).astype(np.float32)
    return {"image": image, "wrist_image": wrist, "state": state, "actions": actions}


def make_v20() -> Path:
    rng = np.random.default_rng(20)
    eps = []
    for task_id, length in V20_EPISODES:
        ep = synthetic_episode(rng, task_id, length)
        ep["task"] = V20_TASKS[task_id]
        eps.append(ep)
    return write_lerobot_v2(FIXTURES / "libero_v20_tiny", eps, fps=10, robot_type="panda")


def make_hdf5() -> Path:
    import h5py

    out = FIXTURES / "libero_hdf5_tiny" / "libero_object"
    shutil.rmtree(out.parent, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for task_id, (stem, instruction, lengths) in enumerate(HDF5_TASKS):
        with h5py.File(out / f"{stem}_demo.hdf5", "w") as f:
            data = f.create_group("data")
            data.attrs["problem_info"] = json.dumps(
                {"problem_name": "libero_tabletop_manipulation", "domain_name": "robosuite",
                 "language_instruction": instruction})
            data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation"})
            total = 0
            for d, length in enumerate(lengths):
                ep = synthetic_episode(rng, task_id + 2, length)
                g = data.create_group(f"demo_{d}")
                g.attrs["num_samples"] = length
                g.create_dataset("actions", data=ep["actions"].astype(np.float64))  # LIBERO stores float64
                obs = g.create_group("obs")
                # The simulator renders upside down: store the frames rotated so the reader's 180 degree turn
                # restores the dataset orientation (marker back in the top-left corner).
                obs.create_dataset("agentview_rgb", data=ep["image"][:, ::-1, ::-1])
                obs.create_dataset("eye_in_hand_rgb", data=ep["wrist_image"][:, ::-1, ::-1])
                obs.create_dataset("ee_pos", data=ep["state"][:, :3].astype(np.float64))
                obs.create_dataset("ee_ori", data=ep["state"][:, 3:6].astype(np.float64))
                obs.create_dataset("gripper_states", data=ep["state"][:, 6:8].astype(np.float64))
                obs.create_dataset("joint_states", data=rng.normal(0, 1, (length, 7)))
                g.create_dataset("dones", data=(np.arange(length) == length - 1).astype(np.uint8))
                g.create_dataset("rewards", data=(np.arange(length) == length - 1).astype(np.uint8))
                total += length
            data.attrs["total"] = total
    return out


if __name__ == "__main__":
    print("wrote", make_v20())
    print("wrote", make_hdf5())
