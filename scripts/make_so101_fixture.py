"""Write tests/fixtures/so101_{2,3}cam_v30 with lerobot's OWN writer: SO-101 datasets as a robot owner records them.

What an SO-100/SO-101 owner gets from `lerobot-record`: LeRobot codebase v3.0, cameras as mp4 (lerobot's default
AV1, many episodes per file), 6-D joint-position actions and state named `shoulder_pan.pos ... gripper.pos` (joints in
degrees, gripper 0-100), 30 fps, robot_type `so101_follower`, a few tasks. These fixtures have exactly that schema:

    so101_2cam_v30   cameras observation.images.front, observation.images.wrist            24 episodes, 3 tasks
    so101_3cam_v30   cameras observation.images.front, observation.images.wrist, ...top    20 episodes, 2 tasks

Run it in the side venv of scripts/make_lerobot_env.sh (lerobot 0.4.4 cannot live in the project venv; the older
one of scripts/make_v30_fixture.py plus `accelerate` works too):

    /tmp/tinyvla-lerobot-venv/bin/lerobot-python scripts/make_so101_fixture.py [OUT_DIR] [--size HxW]

The data is synthetic and seeded: per episode a cube at a random place; the arm's joints move smoothly from a rest
pose to a pose that depends on the cube and the task, the gripper closes near the end. The cameras draw the cube (in
the task's colour) and the gripper's position, so the images carry what the actions depend on. Small images (48x64)
keep the committed fixture at a few hundred kB; pass --size 480x640 --texture for a realistic one (the throughput
benchmark): textured backgrounds that move with the wrist camera and sensor grain, so the video encodes to a real
camera's bitrate and decodes at a real camera's cost (flat synthetic frames decode several times faster).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_v30_fixture import stub_torchvision  # noqa: E402  (the same torchvision stand-in)

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
TASKS = ["pick up the red cube and put it in the box", "push the blue cube to the left",
         "pick up the green cube and hand it over"]
COLOURS = [(220, 40, 40), (40, 70, 220), (40, 190, 60)]
REST = np.array([0.0, -100.0, 95.0, 70.0, 0.0, 30.0], np.float32)  # roughly an SO-101 at rest, gripper half open
FPS = 30


def textures(rng: np.random.Generator, size: tuple[int, int], cameras: list[str]) -> tuple[dict, np.ndarray]:
    """Per camera a background (smooth blotches of colour + fine grain, twice the frame's width so the wrist camera
    can pan over it), and a bank of sensor-noise frames to cycle through."""
    from PIL import Image

    h, w = size
    backs = {}
    for cam in cameras:
        low = rng.integers(40, 200, (max(2, h // 24), max(2, w // 12), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((2 * w, h), Image.BILINEAR), np.int16)
        backs[cam] = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.int16)
    grain = rng.integers(-4, 5, (8, h, w, 3)).astype(np.int16)
    return backs, grain


def episode(rng: np.random.Generator, task: int, length: int, size: tuple[int, int], cameras: list[str],
            texture: np.random.Generator | None = None):
    """(frames per camera, state (T, 6), action (T, 6)) of one synthetic episode; `texture` (a generator of its own,
    so the plain fixture's frames do not change) draws textured, noisy frames instead of flat ones."""
    h, w = size
    cube = rng.uniform([-0.6, 0.2], [0.6, 0.9])  # cube on the table: x in [-1, 1] left-right, y in [0, 1] far
    goal = REST.copy()
    goal[0] = 45.0 * cube[0] + (25.0 if task == 1 else 0.0)  # pan towards the cube (task 1 pushes past it)
    goal[1] = -100.0 + 80.0 * cube[1]  # lift reaches further for a far cube
    goal[2] = 95.0 - 60.0 * cube[1]
    goal[3] = 70.0 - 20.0 * task
    goal[4] = 30.0 * (task - 1)
    goal[5] = 2.0 if task != 1 else 30.0  # close on the cube, except when pushing
    t = np.linspace(0.0, 1.0, length + 1)[:, None]
    ease = 0.5 - 0.5 * np.cos(np.pi * np.clip(t * 1.3, 0, 1))  # reach the goal pose at ~75% of the episode
    traj = REST + ease * (goal - REST) + rng.normal(0, 0.3, (length + 1, 6))
    traj[:, 5] = np.where(t[:, 0] < 0.7, REST[5], goal[5])  # gripper: a step, as a real grasp
    state, action = traj[:-1].astype(np.float32), traj[1:].astype(np.float32)  # action = next joint targets

    frames = {cam: np.zeros((length, h, w, 3), np.uint8) for cam in cameras}
    s = max(2, h // 8)  # cube / gripper marker size in pixels
    backs, grain = textures(texture, size, cameras) if texture is not None else (None, None)
    for k in range(length):
        # the gripper's place on the table, from pan (left-right) and lift (far-near)
        gx = np.clip(state[k, 0] / 45.0, -1, 1)
        gy = np.clip((state[k, 1] + 100.0) / 80.0, 0, 1)
        for cam, img in frames.items():
            img[k] = (60, 60, 60) if "front" in cam else (90, 80, 70) if "wrist" in cam else (50, 70, 50)
            if backs is not None:  # the wrist camera pans with the arm; the fixed cameras see a still scene
                shift = int((gx + 1) / 2 * w) if "wrist" in cam else 0
                img[k] = np.clip(backs[cam][:, shift: shift + w] + grain[k % len(grain)], 0, 255)
            if "wrist" in cam:  # egocentric: the cube's offset from the gripper, grown as it gets closer
                cx, cy = w / 2 + (cube[0] - gx) * w / 2, h / 2 + (cube[1] - gy) * h / 2
                grip = int(s * (1 + state[k, 5] / 30))
                img[k, h - grip:, : grip] = 200
                img[k, h - grip:, w - grip:] = 200
            elif "top" in cam:  # bird's eye: x across, y up the image
                cx, cy = (cube[0] + 1) * w / 2, (1 - cube[1]) * h
                px, py = int((gx + 1) * w / 2), int((1 - gy) * (h - s))
                img[k, max(0, py - s // 2): py + s // 2 + 1, max(0, px - s // 2): px + s // 2 + 1] = 255
            else:  # front: x across, y as height in the image (far = higher)
                cx, cy = (cube[0] + 1) * w / 2, h * (0.9 - 0.5 * cube[1])
                px, py = int((gx + 1) * w / 2), int(h * (0.9 - 0.5 * gy)) - s
                img[k, max(0, py - s): py, max(0, px - s // 2): px + s // 2 + 1] = 255
            y0, x0 = int(np.clip(cy - s / 2, 0, h - s)), int(np.clip(cx - s / 2, 0, w - s))
            img[k, y0: y0 + s, x0: x0 + s] = COLOURS[task]
    return frames, state, action


def write(out: Path, cameras: list[str], n_episodes: int, n_tasks: int, size: tuple[int, int], seed: int,
          length: int = 0, texture: bool = False) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    names = [f"{j}.pos" for j in JOINTS]
    features = {
        "action": {"dtype": "float32", "shape": (6,), "names": names},
        "observation.state": {"dtype": "float32", "shape": (6,), "names": names},
    }
    for cam in cameras:
        features[cam] = {"dtype": "video", "shape": (*size, 3), "names": ["height", "width", "channels"]}
    if out.exists():
        shutil.rmtree(out)
    ds = LeRobotDataset.create(repo_id=f"tinyvla/{out.name}", fps=FPS, features=features, root=out,
                               robot_type="so101_follower", use_videos=True)
    rng = np.random.default_rng(seed)
    tex = np.random.default_rng(seed + 1000) if texture else None
    for n in range(n_episodes):
        task = n % n_tasks
        steps = length or int(rng.integers(16, 31))  # 0.5-1 s at 30 fps: short, like the tail of a real grasp
        frames, state, action = episode(rng, task, steps, size, cameras, tex)
        for k in range(steps):
            row = {cam: frames[cam][k] for cam in cameras}
            ds.add_frame({**row, "observation.state": state[k], "action": action[k], "task": TASKS[task]})
        ds.save_episode()
    ds.finalize()
    shutil.rmtree(out / "images", ignore_errors=True)  # lerobot's temporary per-frame PNGs
    print(f"wrote {out} ({n_episodes} episodes, cameras {', '.join(cameras)})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out", nargs="?", default=str(FIXTURES))
    p.add_argument("--size", default="48x64", help="camera frame HxW")
    p.add_argument("--episodes", type=int, default=0, help="episodes per dataset (0 = the fixture's 24 / 20)")
    p.add_argument("--length", type=int, default=0, help="frames per episode (0 = 16-30, the fixture's)")
    p.add_argument("--only", choices=["2cam", "3cam"], help="write one of the two datasets")
    p.add_argument("--texture", action="store_true", help="textured, noisy frames (a real camera's bitrate)")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    stub_torchvision()
    out = Path(args.out)
    cams = ["observation.images.front", "observation.images.wrist"]
    if args.only != "3cam":
        write(out / "so101_2cam_v30", cams, args.episodes or 24, 3, size, seed=0, length=args.length,
              texture=args.texture)
    if args.only != "2cam":
        write(out / "so101_3cam_v30", cams + ["observation.images.top"], args.episodes or 20, 2, size, seed=1,
              length=args.length, texture=args.texture)


if __name__ == "__main__":
    main()
