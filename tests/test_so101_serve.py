"""`tinyvla serve` answering an SO-101 policy's 6-D chunk (skipped where the serving package is not installed)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tinyvla.serving")
pytest.importorskip("openpi_client")

ROOT = Path(__file__).resolve().parents[1]
FRONT, WRIST = "observation.images.front", "observation.images.wrist"


@pytest.mark.slow  # a server process start (~20 s) and a tiny model
def test_serve_answers_a_6d_chunk(tmp_path):
    import torch

    from tinyvla.core.codec import ActionStats
    from tinyvla.core.prompt import PromptSpec
    from tinyvla.data.transforms import ImageSpec
    from tinyvla.modeling.loading import load_model
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import PolicyConfig, save_policy_dir

    torch.manual_seed(0)
    model, processor = load_model("tiny-qwen3")
    stats = ActionStats(min=[-100.0] * 5 + [0.0], max=[100.0] * 5 + [100.0])  # joints in degrees, gripper 0-100
    config = PolicyConfig(PromptSpec(horizon=3, dim=6, bins=20),
                          ImageSpec(image_size=48, crop_scale=1.0, color_jitter=False, cameras=(FRONT, WRIST)),
                          stats, gripper_dim=5)
    policy = Policy(config, model, processor)
    save_policy_dir(policy, tmp_path / "policy")

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tinyvla.cli.main", "serve", str(tmp_path / "policy"), "--port", "0",
                             "--num-threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    try:
        port, deadline = None, time.time() + 180
        while port is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("serving "):
                port = int(line.split("ws://127.0.0.1:")[1].split(" ")[0])
        assert port is not None, "server did not start"
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        client = WebsocketClientPolicy("127.0.0.1", port)
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        actions = client.infer({"image": frame, "wrist_image": frame, "prompt": "pick up the cube"})["actions"]
        client._ws.close()
        assert actions.shape == (3, 6) and np.all((actions[:, 5] >= 0) & (actions[:, 5] <= 100))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
