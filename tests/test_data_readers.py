"""Dataset readers (LeRobot v2.0 / v3.0, raw LIBERO HDF5) and the v2.0 writer, on the fixtures in tests/fixtures.

The v3.0 fixture was written by lerobot 0.4.4 itself (scripts/make_v30_fixture.py); the v2.0 one by our writer in the
physical-intelligence/libero schema; the HDF5 one in the raw LIBERO demo layout (scripts/make_fixtures.py).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tinyvla.data import open_dataset
from tinyvla.data.lerobot import LeRobotDataset
from tinyvla.data.writer import write_lerobot_v2
from tinyvla.errors import UserError

FIX = Path(__file__).parent / "fixtures"
V20, V30, HDF5 = FIX / "libero_v20_tiny", FIX / "libero_v30_tiny", FIX / "libero_hdf5_tiny" / "libero_object"


def parquet_actions(root: Path, key: str) -> np.ndarray:
    files = sorted((root / "data").rglob("*.parquet"))
    return np.concatenate([np.array(pq.read_table(f, columns=[key]).column(key).to_pylist(), np.float32)
                           for f in files])


def hdf5_demos(root: Path):
    """(instruction, demo group name, actions) in file order, straight from h5py."""
    out = []
    for f in sorted(root.glob("*.hdf5")):
        with h5py.File(f, "r") as h:
            task = json.loads(h["data"].attrs["problem_info"])["language_instruction"]
            for name in sorted(h["data"], key=lambda s: int(s.split("_")[1])):
                out.append((task, f, name, h["data"][name]["actions"][()].astype(np.float32)))
    return out


def copy_fixture(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def rewrite_parquet(path: Path, column: str, fn) -> None:
    table = pq.read_table(path)
    i = table.column_names.index(column)
    table = table.set_column(i, table.schema.field(column), fn(table.column(column)))
    pq.write_table(table, path)


# ---------------------------------------------------------------------------------------------------------------------
# LeRobot v2.0 and v3.0
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("root,key,version,episodes", [(V20, "actions", "v2.0", [12, 9, 14]),
                                                       (V30, "action", "v3.0", [10, 13, 7])])
def test_lerobot_reader_matches_parquet(root, key, version, episodes):
    r = open_dataset(root)
    assert isinstance(r, LeRobotDataset) and r.info["codebase_version"] == version
    assert len(r) == sum(episodes) and r.action_key == key
    np.testing.assert_array_equal(r.actions(), parquet_actions(root, key))
    assert r.actions().dtype == np.float32 and r.actions().shape == (sum(episodes), 7)
    np.testing.assert_array_equal(r.episode_index(), np.repeat(np.arange(3), episodes))
    np.testing.assert_array_equal(r.frame_index()[: episodes[0] + 2], list(range(episodes[0])) + [0, 1])
    assert len(r.task_names) == 2
    task_index = np.concatenate([pq.read_table(f, columns=["task_index"]).column(0).to_numpy()
                                 for f in sorted((root / "data").rglob("*.parquet"))])
    assert list(r.frame_task()) == [r.task_names[i] for i in task_index]


@pytest.mark.parametrize("root", [V20, V30])
def test_sample_contract_and_horizon_repeat(root):
    r = open_dataset(root)
    acts, eps = r.actions(), r.episode_index()
    last_of_ep0 = int(np.flatnonzero(eps == 0)[-1])
    s = r.sample(last_of_ep0 - 2, horizon=8)
    assert set(s) >= {"image", "wrist_image", "instruction", "actions", "episode_index", "frame_index"}
    assert s["image"].dtype == np.uint8 and s["image"].shape == (32, 32, 3)
    assert s["wrist_image"].dtype == np.uint8 and s["wrist_image"].shape == (32, 32, 3)
    assert s["actions"].shape == (8, 7) and s["actions"].dtype == np.float32
    assert s["episode_index"] == 0 and s["frame_index"] == last_of_ep0 - 2
    # the 3 real actions, then the episode's last action repeated (never the next episode's first)
    np.testing.assert_array_equal(s["actions"][:3], acts[last_of_ep0 - 2:last_of_ep0 + 1])
    np.testing.assert_array_equal(s["actions"][3:], np.repeat(acts[last_of_ep0][None], 5, 0))
    assert s["instruction"] == r.frame_task()[last_of_ep0]
    assert s["state"].shape == (8,)
    # first frame of the second episode: its own actions, its own index
    s2 = r.sample(last_of_ep0 + 1, horizon=4)
    assert (s2["episode_index"], s2["frame_index"]) == (1, 0)
    np.testing.assert_array_equal(s2["actions"], acts[last_of_ep0 + 1:last_of_ep0 + 5])
    with pytest.raises(IndexError):
        r.sample(len(r), 8)


def test_v20_images_are_the_stored_png_bytes():
    r = open_dataset(V20)
    table = pq.read_table(V20 / "data/chunk-000/episode_000001.parquet")
    row = table.slice(3, 1).to_pylist()[0]
    s = r.sample(12 + 3)  # episode 1 frame 3
    np.testing.assert_array_equal(s["image"], np.asarray(Image.open(io.BytesIO(row["image"]["bytes"]))))
    np.testing.assert_array_equal(s["wrist_image"], np.asarray(Image.open(io.BytesIO(row["wrist_image"]["bytes"]))))
    np.testing.assert_allclose(s["state"], row["state"])
    assert s["image"][:4, :4].min() == 255  # the fixture's top-left orientation marker


def test_v30_written_by_lerobot_layout_and_images():
    info = json.loads((V30 / "meta/info.json").read_text())
    assert info["data_path"].startswith("data/chunk-{chunk_index")  # several episodes per file: the v3.0 layout
    r = open_dataset(V30)
    s = r.sample(10 + 12)  # episode 1, frame 12: a bright 6x6 square at column (3 * 12) % 26 = 10
    assert s["episode_index"] == 1 and s["frame_index"] == 12
    assert s["image"][4:10, 10:16].min() == 255 and s["image"][20:, :].max() < 255
    assert s["instruction"] == "open the top drawer"


def test_v30_task_filter_keeps_row_offsets():
    full = open_dataset(V30)
    only = open_dataset(V30, tasks=["put the red block in the bowl"])
    assert len(only) == 10 + 7
    np.testing.assert_array_equal(only.actions(), np.concatenate([full.actions()[:10], full.actions()[23:]]))
    s, ref = only.sample(10 + 2), full.sample(23 + 2)  # episode 2 frame 2, seen through both
    assert s["episode_index"] == ref["episode_index"] == 2
    np.testing.assert_array_equal(s["image"], ref["image"])
    np.testing.assert_array_equal(s["actions"], ref["actions"])
    assert len(open_dataset(V30, tasks=[1])) == 13


def test_explicit_keys_override_defaults():
    r = open_dataset(V30, image_key="observation.images.image2", wrist_key="observation.images.image")
    a, b = r.sample(5), open_dataset(V30).sample(5)
    np.testing.assert_array_equal(a["image"], b["wrist_image"])


# ---------------------------------------------------------------------------------------------------------------------
# Raw LIBERO HDF5
# ---------------------------------------------------------------------------------------------------------------------


def test_hdf5_reader_matches_h5py_and_rotates():
    demos = hdf5_demos(HDF5)
    for root in (HDF5, HDF5.parent):  # the suite folder or its parent
        r = open_dataset(root)
        assert len(r) == sum(len(d[3]) for d in demos)
        np.testing.assert_array_equal(r.actions(), np.concatenate([d[3] for d in demos]))
        assert r.task_names == list(dict.fromkeys(d[0] for d in demos))
        assert list(r.frame_task()) == [d[0] for d in demos for _ in range(len(d[3]))]
    first_len = len(demos[0][3])
    s = r.sample(first_len - 1, horizon=3)
    assert s["episode_index"] == 0 and s["frame_index"] == first_len - 1
    np.testing.assert_array_equal(s["actions"], np.repeat(demos[0][3][-1:], 3, 0))
    with h5py.File(demos[0][1], "r") as h:
        raw = h["data"][demos[0][2]]["obs"]["agentview_rgb"][first_len - 1]
        ee = h["data"][demos[0][2]]["obs"]["ee_pos"][first_len - 1]
    np.testing.assert_array_equal(s["image"], np.rot90(raw, 2))  # 180 degrees, as the LeRobot data is
    assert s["image"][:4, :4].min() == 255 and raw[-4:, -4:].min() == 255
    assert s["wrist_image"][:4, :4].min() == 255
    np.testing.assert_allclose(s["state"][:3], ee, rtol=1e-6)
    assert s["state"].shape == (8,) and s["instruction"] == demos[0][0]


def test_hdf5_task_from_filename_when_no_problem_info(tmp_path):
    src = sorted(HDF5.glob("*.hdf5"))[0]
    dst = tmp_path / ("KITCHEN_SCENE3_" + src.name)
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as h:
        del h["data"].attrs["problem_info"]
    r = open_dataset(tmp_path)
    assert r.task_names == ["pick up the alphabet soup and place it in the basket"]


# ---------------------------------------------------------------------------------------------------------------------
# The v2.0 writer
# ---------------------------------------------------------------------------------------------------------------------


def make_episode(t, task, seed):
    rng = np.random.default_rng(seed)
    return {"task": task, "image": rng.integers(0, 255, (t, 16, 16, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 255, (t, 16, 16, 3), dtype=np.uint8),
            "state": rng.normal(size=(t, 8)).astype(np.float32), "actions": rng.normal(size=(t, 7)).astype(np.float32),
            "success": True}


def test_writer_schema_matches_physical_intelligence_libero(tmp_path):
    eps = [make_episode(5, "a", 0), make_episode(3, "b", 1), make_episode(4, "a", 2)]
    out = write_lerobot_v2(tmp_path / "ds", iter(eps), fps=10)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.0" and info["robot_type"] == "panda" and info["fps"] == 10
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 12, 2)
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert list(info["features"]) == ["image", "wrist_image", "state", "actions", "timestamp", "frame_index",
                                      "episode_index", "index", "task_index"]
    assert info["features"]["image"] == {"dtype": "image", "shape": [16, 16, 3],
                                         "names": ["height", "width", "channel"]}
    assert [json.loads(x) for x in (out / "meta/tasks.jsonl").read_text().splitlines()] == [
        {"task_index": 0, "task": "a"}, {"task_index": 1, "task": "b"}]
    assert json.loads((out / "meta/episodes.jsonl").read_text().splitlines()[1]) == {
        "episode_index": 1, "tasks": ["b"], "length": 3}
    stats = json.loads((out / "meta/stats.json").read_text())
    all_actions = np.concatenate([e["actions"] for e in eps]).astype(np.float64)
    np.testing.assert_allclose(stats["actions"]["mean"], all_actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["actions"]["std"], all_actions.std(0), rtol=1e-5)
    assert np.array(stats["image"]["mean"]).shape == (3, 1, 1)
    for key in ("image", "wrist_image"):  # per channel in [0, 1], over every pixel of every frame (16 px: no stride)
        pixels = np.concatenate([e[key] for e in eps]).reshape(-1, 3) / 255.0
        for name, want in (("mean", pixels.mean(0)), ("std", pixels.std(0)), ("min", pixels.min(0)),
                           ("max", pixels.max(0))):
            np.testing.assert_allclose(np.array(stats[key][name]).reshape(3), want, rtol=1e-9, atol=1e-12)

    t = pq.read_table(out / "data/chunk-000/episode_000002.parquet")
    assert t.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert t.schema.field("actions").type == pa.list_(pa.float32(), 7)
    assert t.column("index").to_pylist() == [8, 9, 10, 11] and t.column("task_index").to_pylist() == [0] * 4
    np.testing.assert_allclose(t.column("timestamp").to_numpy(), [0, 0.1, 0.2, 0.3], rtol=1e-6)
    # HF schema metadata: the real `datasets` library decodes the image column to PIL without being told
    import datasets

    ds = datasets.Dataset.from_parquet(str(out / "data/chunk-000/episode_000002.parquet"))
    assert isinstance(ds.features["image"], datasets.Image)
    np.testing.assert_array_equal(np.asarray(ds[1]["image"]), eps[2]["image"][1])
    # and our reader round-trips it
    r = open_dataset(out)
    np.testing.assert_array_equal(r.sample(9)["wrist_image"], eps[2]["wrist_image"][1])
    np.testing.assert_array_equal(r.actions(), all_actions.astype(np.float32))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_writer_is_atomic_on_failure(tmp_path):
    out = write_lerobot_v2(tmp_path / "ds", [make_episode(3, "a", 0)], fps=10)
    before = (out / "meta/info.json").read_text()

    def broken():
        yield make_episode(3, "x", 1)
        yield {"task": "y", "image": np.zeros((2, 4, 4, 3), np.uint8)}  # missing keys

    with pytest.raises(UserError, match="episode 1: missing"):
        write_lerobot_v2(out, broken(), fps=10)
    assert (out / "meta/info.json").read_text() == before  # the old dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_writer_rejects_nan_and_empty(tmp_path):
    ep = make_episode(4, "a", 0)
    ep["actions"][2, 1] = np.nan
    with pytest.raises(UserError, match="episode 0 frame 2"):
        write_lerobot_v2(tmp_path / "ds", [ep], fps=10)
    with pytest.raises(UserError, match="no episodes"):
        write_lerobot_v2(tmp_path / "ds", [], fps=10)
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one-line UserErrors that say what to do
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_path_and_not_a_dataset(tmp_path):
    with pytest.raises(UserError, match="not a directory and not a Hub repo id"):
        open_dataset(tmp_path / "nope" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a dataset tinyvla can read"):
        open_dataset(tmp_path / "empty")


def test_hub_id_offline_names_local_alternative(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the real client, with no network allowed
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError) as err:
        open_dataset("someone/not-a-real-dataset-xyz")
    msg = str(err.value)
    assert "--repo DIR" in msg and "someone/not-a-real-dataset-xyz" in msg and str(tmp_path / "hub") in msg
    assert "\n" not in msg

    # a repo already in the HF cache opens offline, through the real snapshot_download
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--tinyvla--libero_v20_tiny"
    shutil.copytree(V20, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    r = open_dataset("tinyvla/libero_v20_tiny")
    assert len(r) == 35 and r.root == repo / "snapshots" / commit


def test_missing_feature_key_lists_available():
    with pytest.raises(UserError, match="available: .*observation.images.image"):
        open_dataset(V30, action_key="actions_xyz")
    with pytest.raises(UserError, match="available: image, wrist_image"):
        open_dataset(V20, image_key="observation.images.image")
    with pytest.raises(UserError, match="not an image"):
        open_dataset(V20, image_key="state")
    with pytest.raises(UserError, match="--image-key, available: .*obs/agentview_rgb"):
        open_dataset(HDF5, image_key="front_rgb")


def test_nan_action_names_episode_and_frame(tmp_path):
    root = copy_fixture(V20, tmp_path)

    def poison(col):
        a = np.array(col.to_pylist(), np.float32)
        a[4, 2] = np.inf
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), 7)

    rewrite_parquet(root / "data/chunk-000/episode_000001.parquet", "actions", poison)
    with pytest.raises(UserError, match="episode 1 frame 4 .dimension 2. is inf"):
        open_dataset(root).actions()


def test_empty_dataset(tmp_path):
    root = copy_fixture(V20, tmp_path)
    (root / "meta/episodes.jsonl").write_text("")
    with pytest.raises(UserError, match="has no episodes"):
        open_dataset(root)
    with pytest.raises(UserError, match="task 'no such task' not in"):
        open_dataset(V20, tasks=["no such task"])


def test_corrupt_image_names_episode_and_frame(tmp_path):
    root = copy_fixture(V20, tmp_path)

    def corrupt(col):
        rows = col.to_pylist()
        rows[5] = {"bytes": b"\x89PNG not really", "path": None}
        return pa.array(rows, type=col.type)

    rewrite_parquet(root / "data/chunk-000/episode_000002.parquet", "wrist_image", corrupt)
    r = open_dataset(root)
    r.sample(21 + 4)  # a healthy frame of the same episode still reads
    with pytest.raises(UserError, match=r"episode 2 frame 5 \(wrist_image\): cannot decode"):
        r.sample(21 + 5)


def test_missing_data_file_and_bad_version(tmp_path):
    root = copy_fixture(V20, tmp_path)
    (root / "data/chunk-000/episode_000002.parquet").unlink()
    with pytest.raises(UserError, match="episode_000002.parquet is missing"):
        open_dataset(root).actions()
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="v1.6 is not supported"):
        open_dataset(root)


# ---------------------------------------------------------------------------------------------------------------------
# Video features (v3.0 mp4 written by lerobot) and v2.1
# ---------------------------------------------------------------------------------------------------------------------

V30_VIDEO = FIX / "libero_v30_video_tiny"


def test_v30_video_frames_match_the_image_fixture():
    pytest.importorskip("av")
    video, image = open_dataset(V30_VIDEO), open_dataset(V30)  # the same episodes, as AV1 mp4 and as PNG
    assert video.features["observation.images.image"]["dtype"] == "video"
    np.testing.assert_array_equal(video.actions(), image.actions())
    for i in (0, 9, 10, 22, 23, 29):  # first/last frames of each episode: offsets into the concatenated mp4
        v, p = video.sample(i), image.sample(i)
        assert v["image"].shape == (32, 32, 3) and v["image"].dtype == np.uint8
        assert (v["episode_index"], v["frame_index"]) == (p["episode_index"], p["frame_index"])
        for key in ("image", "wrist_image"):
            err = np.abs(v[key].astype(int) - p[key]).mean()
            wrong = np.abs(v[key].astype(int) - image.sample(i - 1 if i else 1)[key]).mean()
            assert err < 4 < wrong, (i, key, err, wrong)  # lossy codec, but clearly the right frame


def test_video_without_pyav_is_user_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # import av -> ImportError
    r = open_dataset(V30_VIDEO)
    assert len(r.actions()) == 30  # stats never need the videos
    with pytest.raises(UserError, match="pip install av"):
        r.sample(0)


def test_v21_reads_like_v20(tmp_path):
    root = copy_fixture(V20, tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (root / "meta/info.json").write_text(json.dumps(info))
    r = open_dataset(root)
    assert r.version == "v2.1"
    np.testing.assert_array_equal(r.actions(), open_dataset(V20).actions())
    np.testing.assert_array_equal(r.sample(7)["image"], open_dataset(V20).sample(7)["image"])


@pytest.mark.parametrize("root", [V20, V30, HDF5])
def test_readers_pickle_for_dataloader_workers(root):
    import pickle

    r = open_dataset(root)
    before = r.sample(3)  # opens files / fills caches that must not be pickled
    clone = pickle.loads(pickle.dumps(r))
    after = clone.sample(3)
    for key in ("image", "wrist_image", "actions"):
        np.testing.assert_array_equal(before[key], after[key])
    if root == HDF5:
        assert len(open_dataset(HDF5, tasks=[1])) == 10
        assert len(open_dataset(HDF5, tasks=["pick up the alphabet soup and place it in the basket"])) == 19
