"""Write tests/fixtures/libero_v30_tiny with lerobot's OWN writer (LeRobotDataset.create), codebase v3.0.

Why lerobot itself: the v3.0 reader in tinyvla must read what lerobot writes, not what we think it writes.
lerobot cannot live in the project venv (0.4.4 pins torch < 2.11 and huggingface-hub < 0.36), so this script runs in a
side venv. Setup used (Python 3.11, CPU torch via the constraint file; no torchvision build exists for CPU torch 2.13):

    python3 -m venv /work/venv-lerobot
    /work/venv-lerobot/bin/pip install -c constraints-cpu.txt torch==2.13.0 "datasets>=4,<5" \
        "huggingface-hub>=0.34.2,<0.36" jsonlines draccus==0.10.0 "deepdiff>=7,<9" "packaging>=24.2,<26" einops \
        pillow termcolor "imageio>=2.34" numpy pandas pyarrow "av>=15,<16" "setuptools<81"
    /work/venv-lerobot/bin/pip install --no-deps lerobot==0.4.4
    HF_HUB_OFFLINE=1 /work/venv-lerobot/bin/python scripts/make_v30_fixture.py

torchvision is only imported by lerobot for image transforms / video decoding, neither of which writing an image
dataset uses, so when it is missing this script registers a minimal stand-in module before importing lerobot.

The data is synthetic and deterministic (seeded): 3 episodes (10, 13, 7 frames), 2 tasks, 32x32 images, 8-D state,
7-D actions, fps 10 — the same keys as HuggingFaceVLA/libero.
"""

import importlib.machinery
import shutil
import sys
import types
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
TASKS = ["put the red block in the bowl", "open the top drawer"]
EPISODES = [(0, 10), (1, 13), (0, 7)]  # (task id, length)
SIZE = 32


def stub_torchvision():
    """Register a tiny `torchvision` so `import lerobot.datasets` works without the real package."""
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        pass
    import torch

    class Transform(torch.nn.Module):
        pass

    class ToTensor:
        def __call__(self, img):
            arr = np.asarray(img, dtype=np.float32) / 255.0
            return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    v2 = types.ModuleType("torchvision.transforms.v2")
    functional = types.ModuleType("torchvision.transforms.v2.functional")
    transforms.ToTensor = ToTensor
    v2.Transform = Transform
    v2.functional = functional
    transforms.v2 = v2
    tv.transforms = transforms
    tv.__version__ = "0.0-stub"
    for name, mod in [("torchvision", tv), ("torchvision.transforms", transforms),
                      ("torchvision.transforms.v2", v2), ("torchvision.transforms.v2.functional", functional)]:
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # `datasets` probes find_spec("torchvision")
        sys.modules[name] = mod


def synthetic_episode(rng, task_id, length):
    """Images with a task-dependent colour and a moving bright square so frames differ; smooth random actions."""
    t = np.arange(length)
    image = np.zeros((length, SIZE, SIZE, 3), np.uint8)
    wrist = np.zeros((length, SIZE, SIZE, 3), np.uint8)
    image[..., task_id] = 80
    wrist[..., 2 - task_id] = 60
    for k in range(length):
        x = (3 * k) % (SIZE - 6)
        image[k, 4:10, x : x + 6] = 255
        wrist[k, x : x + 6, 20:26] = 200
    actions = np.cumsum(rng.normal(0, 0.1, (length, 7)), axis=0).astype(np.float32)
    actions[:, 6] = np.where(t < length // 2, -1.0, 1.0)  # gripper open then closed
    state = rng.normal(0, 1, (length, 8)).astype(np.float32)
    return image, wrist, state, actions


def write(out: Path, video: bool):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    img = {"dtype": "video" if video else "image", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channel"]}
    features = {
        "observation.images.image": img,
        "observation.images.image2": dict(img),
        "observation.state": {"dtype": "float32", "shape": (8,), "names": [f"s{i}" for i in range(8)]},
        "action": {"dtype": "float32", "shape": (7,), "names": ["x", "y", "z", "rx", "ry", "rz", "gripper"]},
    }
    if out.exists():
        shutil.rmtree(out)
    ds = LeRobotDataset.create(repo_id=f"tinyvla/{out.name}", fps=10, features=features, root=out,
                               robot_type="panda", use_videos=video)
    rng = np.random.default_rng(0)
    for task_id, length in EPISODES:
        image, wrist, state, actions = synthetic_episode(rng, task_id, length)
        for k in range(length):
            ds.add_frame({"observation.images.image": image[k], "observation.images.image2": wrist[k],
                          "observation.state": state[k], "action": actions[k], "task": TASKS[task_id]})
        ds.save_episode()
    ds.finalize()
    # lerobot leaves its temporary per-frame PNGs under images/ only while recording; drop anything left behind.
    shutil.rmtree(out / "images", ignore_errors=True)
    print(f"wrote {out}")


def main():
    stub_torchvision()
    write(FIXTURES / "libero_v30_tiny", video=False)
    # The same episodes with both cameras as AV1 mp4 (lerobot's default codec), like the Hub's v3.0 LIBERO sets.
    write(FIXTURES / "libero_v30_video_tiny", video=True)


if __name__ == "__main__":
    main()
