"""SO-101 LeRobot datasets end to end (fixtures written by lerobot 0.4.4 itself: v3.0, AV1 video, 6-D joints, 30 fps):
`data stats`, `train`, `eval --offline`, a policy acting on observations keyed by the dataset's camera names, any
number of views, the video decoder, and one line + exit 2 for each bad input."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinyvla.cli.main import main
from tinyvla.core.prompt import tile_views, view_images
from tinyvla.data import open_dataset
from tinyvla.data.transforms import ImageSpec, model_images
from tinyvla.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TWO = ROOT / "tests" / "fixtures" / "so101_2cam_v30"
THREE = ROOT / "tests" / "fixtures" / "so101_3cam_v30"
RECIPE = ROOT / "recipes" / "so101-qwen3-2b-24gb-lora.yaml"
FRONT, WRIST, TOP = (f"observation.images.{c}" for c in ("front", "wrist", "top"))


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(rc, out, err, message):
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in out + err


def test_fixture_is_the_so101_schema():
    r = open_dataset(THREE)
    assert r.version == "v3.0" and r.info["robot_type"] == "so101_follower" and r.info["fps"] == 30
    assert r.cameras == [FRONT, WRIST, TOP] and all(r.features[c]["dtype"] == "video" for c in r.cameras)
    assert r.num_episodes == 20 and len(r.task_names) == 2 and r.actions().shape == (len(r), 6)
    assert r.info["features"]["action"]["names"][5] == "gripper.pos"
    s = r.sample(len(r) - 1, horizon=5)
    assert [v.shape for v in s["views"]] == [(48, 64, 3)] * 3 and s["state"].shape == (6,)
    np.testing.assert_array_equal(s["actions"], np.repeat(r.actions()[-1:], 5, axis=0))  # last action repeats
    two = open_dataset(TWO, cameras=[WRIST])
    assert two.num_episodes == 24 and len(two.task_names) == 3 and len(two.sample(0)["views"]) == 1


def test_data_stats_cli(capsys):
    rc, out, _ = run(capsys, "data", "stats", "--repo", TWO, "--json")
    assert rc == 0
    summary = json.loads(out)
    assert summary["episodes"] == 24 and summary["frames"] == 543 and summary["tasks"] == 3
    assert summary["keys"]["cameras"] == f"{FRONT}, {WRIST}" and len(summary["action"]["min"]) == 6


def test_video_reads_forward_without_seeking_and_matches_random_access():
    seq = open_dataset(TWO)
    frames = [seq.sample(i)["views"] for i in range(40)]  # two episodes, in order
    videos = [seq._video.open(p) for p, _ in seq._ep_videos[0].values()]
    assert all(v.seeks == 1 for v in videos), [v.seeks for v in videos]  # one seek per file, then forward only
    rnd = open_dataset(TWO)
    for i in np.random.default_rng(0).permutation(40)[:12]:  # a fresh reader, random order: seeks
        for a, b in zip(rnd.sample(int(i))["views"], frames[i]):
            np.testing.assert_array_equal(a, b)


def test_any_number_of_views_tiles_left_to_right():
    a, b, c = (np.full((4, 5, 3), v, np.uint8) for v in (1, 2, 3))
    assert tile_views(a, b, c).shape == (4, 15, 3) and tile_views(a, b, c)[0, 10, 0] == 3
    assert len(view_images(a, b, c, tile=False)) == 3 and len(view_images(a, tile=True)) == 1
    spec = ImageSpec(image_size=8, crop_scale=1.0, color_jitter=False, tile_views=True)
    assert [im.size for im in model_images([a, b, c], spec)] == [(24, 8)]


@pytest.mark.slow  # ~40 s: trains 2 steps, scores 6 frames of 10-step chunks, acts
def test_train_offline_eval_and_act_on_camera_names(tmp_path, capsys):
    out = tmp_path / "run"
    rc, log, err = run(capsys, "train", RECIPE, "--test", "--set", f"data.repo={THREE}",
                       "--set", f"data.cameras=[{FRONT}, {WRIST}, {TOP}]", "--set", f"train.out_dir={out}")
    assert rc == 0, err
    assert "horizon 10 steps = 0.33 s at 30 fps" in " ".join(log.split())  # actions.horizon_s 0.33 at 30 fps
    policy_dir = out.with_name("run-smoke") / "final"
    cfg = json.loads((policy_dir / "policy.json").read_text())
    assert cfg["dim"] == 6 and cfg["horizon"] == 10 and cfg["gripper_dim"] == 5
    assert cfg["image"]["cameras"] == [FRONT, WRIST, TOP]

    rc, log, err = run(capsys, "eval", policy_dir, "--offline", "--repo", THREE, "--out", tmp_path / "off",
                       "--offline-frames", 6)
    assert rc == 0, err
    result = json.loads((tmp_path / "off" / "offline.json").read_text())
    assert len(result["l1"]) == 6 and result["grammar_valid_rate"] == 1.0
    assert "gripper.pos" in log and (tmp_path / "off" / "offline_chunks.png").stat().st_size > 1000

    from tinyvla.policy import Policy

    policy = Policy.from_pretrained(policy_dir)
    sample = open_dataset(THREE).sample(7)
    obs = dict(zip([FRONT, WRIST, TOP], sample["views"]))
    action = policy.act(obs, sample["instruction"])
    assert action.shape == (6,) and np.isfinite(action).all()
    with pytest.raises(UserError, match="no 'observation.images.top' camera"):
        policy.act({FRONT: obs[FRONT], WRIST: obs[WRIST]}, sample["instruction"])


def broken_copy(tmp_path, how):
    root = Path(shutil.copytree(TWO, tmp_path / "ds"))
    video = root / "videos" / WRIST / "chunk-000" / "file-000.mp4"
    if how == "truncated":
        os.truncate(video, video.stat().st_size * 6 // 10)
    else:
        shutil.rmtree(root / "videos" / WRIST)
    return root


@pytest.mark.parametrize("case, sets, message", [
    ("camera", [f"data.cameras=[{FRONT}, observation.images.side]"],
     "camera 'observation.images.side' is not in the dataset"),
    ("dim", ["actions.dim=7"], "the dataset's actions have 6 dimensions but actions.dim is 7"),
    ("gripper", ["actions.gripper_dim=0"], "the dataset's gripper is dimension 5 (gripper.pos)"),
    ("truncated", [], "file-000.mp4 has no frame at"),
    ("missing", [], "file-000.mp4 is missing (1 of 2 video files)"),
])
def test_bad_robot_data_is_one_line_exit_2(tmp_path, capsys, case, sets, message):
    repo = broken_copy(tmp_path, case) if case in ("truncated", "missing") else TWO
    args = ["train", RECIPE, "--test", "--set", f"data.repo={repo}", "--set", f"train.out_dir={tmp_path / 'run'}"]
    for s in sets:
        args += ["--set", s]
    one_line_error(*run(capsys, *args), message)
    assert not (tmp_path / "run-smoke" / "final").exists()


class _Views:
    def __init__(self, reader):
        self.reader = reader

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return np.stack(self.reader.sample(i * 7)["views"])


def test_forked_workers_after_the_parent_decoded():
    import torch

    r = open_dataset(TWO)
    parent = [np.stack(r.sample(i * 7)["views"]) for i in range(16)]  # the parent now holds decoders and frames
    loader = torch.utils.data.DataLoader(_Views(r), batch_size=4, num_workers=2, multiprocessing_context="fork",
                                         timeout=60)  # a worker that deadlocks on the parent's decoder fails here
    got = np.concatenate([b.numpy() for b in loader])
    np.testing.assert_array_equal(got, np.stack(parent))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads through Linux's /proc")
def test_video_frames_convert_on_the_workers_thread(tmp_path):
    """A data worker converts decoded frames on its own thread: FFmpeg 8's converter otherwise keeps threads of its
    own for each 640x480 frame converted (hundreds per worker, measured), oversubscribing a machine of workers."""
    import os

    import av

    from tinyvla.data.video import _rgb

    path = tmp_path / "camera.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for k in range(6):
            img = np.random.default_rng(k).integers(0, 256, (480, 640, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    with av.open(str(path)) as c:
        c.streams.video[0].codec_context.thread_count = 1
        frames = list(c.decode(video=0))
    before = len(os.listdir("/proc/self/task"))
    rgb = [_rgb(f) for f in frames]  # the frames stay alive, as in the reader's window of recent frames
    assert len(os.listdir("/proc/self/task")) - before <= 1
    assert len(rgb) == 6 and rgb[0].shape == (480, 640, 3)
