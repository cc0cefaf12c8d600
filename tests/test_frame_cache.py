"""The video frame cache (data/frame_cache.py, `data.video_cache`): each mp4 of an SO-101 fixture written by lerobot
decoded once into memory-mapped uint8 frames at the crop's size; the frames equal FFmpeg's own resize of the decoded
frame, the model's views match the uncached path, workers (fork and spawn) read it, nothing half-built is ever used,
a changed video is rebuilt, and bad input is one line."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinyvla.data import open_dataset
from tinyvla.data.frame_cache import FRAMES, META, VideoFrameCache, cache_side
from tinyvla.data.transforms import ImageSpec, transform_view
from tinyvla.errors import UserError

from test_so101 import _Views as Views  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
TWO = ROOT / "tests" / "fixtures" / "so101_2cam_v30"
RECIPE = ROOT / "recipes" / "so101-qwen3-2b-24gb-lora.yaml"
SPEC = ImageSpec(image_size=32, crop_scale=0.875, color_jitter=False)
SIDE = cache_side(SPEC.image_size, SPEC.crop_scale)


def built(tmp_path, reader=None):
    reader = reader or open_dataset(TWO)
    cache = VideoFrameCache(tmp_path / "cache", SIDE)
    cache.build(reader.video_files(), workers=2, log=lambda *_: None)
    return reader, cache


def test_side_makes_the_training_crop_a_slice():
    assert cache_side(224, 0.875) == 256 and cache_side(224, 1.0) == 224 and SIDE == 37
    assert round(SIDE * SPEC.crop_scale) == SPEC.image_size


def test_frames_are_ffmpegs_resize_of_every_decoded_frame(tmp_path):
    import av

    reader, cache = built(tmp_path)
    assert len(reader.video_files()) == 2
    for video in reader.video_files():
        entry = cache.entry(video)
        meta = json.loads((entry / META).read_text())
        with av.open(str(video)) as c:
            decoded = list(c.decode(video=0))
        assert meta["shape"] == [len(decoded), SIDE, SIDE, 3]
        assert (entry / FRAMES).stat().st_size == len(decoded) * SIDE * SIDE * 3
        for k in (0, 1, len(decoded) // 2, len(decoded) - 1):
            want = decoded[k].reformat(width=SIDE, height=SIDE, format="rgb24", interpolation="AREA").to_ndarray()
            np.testing.assert_array_equal(cache.frame(video, decoded[k].time, 0.01, "test"), want)


def test_views_match_the_uncached_path(tmp_path):
    """The model's view (centre crop -> image_size) from a cached frame vs. from the full decoded frame: same geometry,
    pixels within resampling differences (a flipped, shifted or wrong frame is tens of levels off)."""
    plain = open_dataset(TWO)
    cached, cache = built(tmp_path, open_dataset(TWO))
    cached.use_frame_cache(cache)
    for i in np.random.default_rng(0).permutation(len(plain))[:20]:
        a, b = plain.sample(int(i)), cached.sample(int(i))
        assert [v.shape for v in b["views"]] == [(SIDE, SIDE, 3)] * 2
        np.testing.assert_array_equal(a["actions"], b["actions"])
        for full, small in zip(a["views"], b["views"]):
            va, vb = transform_view(full, SPEC, None), transform_view(small, SPEC, None)
            assert va.shape == vb.shape == (32, 32, 3)
            assert np.abs(va.astype(int) - vb.astype(int)).mean() < 4.0
    # the control: a neighbouring frame of another episode is far off, so the bound above can fail
    far = transform_view(cached.sample(300)["views"][0], SPEC, None).astype(int)
    assert np.abs(transform_view(plain.sample(0)["views"][0], SPEC, None).astype(int) - far).mean() > 8.0


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_read_the_cache(tmp_path, context):
    import torch

    reader, cache = built(tmp_path)
    reader.use_frame_cache(cache)
    views = Views(reader)  # test_so101's: frames 0, 7, ..., 105 of the fixture
    parent = np.stack([views[i] for i in range(len(views))])  # the parent has mapped the files
    loader = torch.utils.data.DataLoader(views, batch_size=4, num_workers=2,
                                         multiprocessing_context=context, timeout=120)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in loader]), parent)


def test_only_complete_entries_count_and_a_changed_video_is_rebuilt(tmp_path):
    ds = Path(shutil.copytree(TWO, tmp_path / "ds"))
    reader, cache = built(tmp_path, open_dataset(ds))
    video = reader.video_files()[0]
    first = cache.entry(video)
    (first / META).unlink()  # as if killed before the entry was finished
    assert not cache.is_built(video)
    again = VideoFrameCache(tmp_path / "cache", SIDE)
    again.build([video], log=lambda *_: None)
    assert again.is_built(video) and not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # the file changed
    fresh = VideoFrameCache(tmp_path / "cache", SIDE)
    assert fresh.entry(video) != first and not fresh.is_built(video)
    with pytest.raises(UserError, match="is not in the frame cache"):
        fresh.frame(video, 0.0, 0.01, "test")


def test_bad_input_is_one_line(tmp_path, monkeypatch):
    reader = open_dataset(TWO)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="data.video_cache_dir .*file is an existing file"):
        VideoFrameCache(tmp_path / "file", SIDE).build(reader.video_files())
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"the cache needs ~0\.0 GB but only 0\.0 GB are free"):
        VideoFrameCache(tmp_path / "c", SIDE).build(reader.video_files())
    monkeypatch.undo()
    ds = Path(shutil.copytree(TWO, tmp_path / "ds"))
    video = ds / "videos" / "observation.images.wrist" / "chunk-000" / "file-000.mp4"
    os.truncate(video, 2000)
    with pytest.raises(UserError, match="file-000.mp4"):
        VideoFrameCache(tmp_path / "c2", SIDE).build([video], log=lambda *_: None)
    assert not list((tmp_path / "c2").glob("file-000-*"))  # nothing half-built left behind


def test_training_builds_and_reads_the_cache(tmp_path, capsys):
    from tinyvla.cli.main import main

    cache_dir = tmp_path / "frames"
    rc = main(["train", str(RECIPE), "--test", "--set", f"data.repo={TWO}", "--set", "data.video_cache=true",
               "--set", f"data.video_cache_dir={cache_dir}", "--set", f"train.out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "video cache: decoding 2 video file(s) once" in out.out
    import yaml

    used = yaml.safe_load((tmp_path / "run-smoke" / "recipe.yaml").read_text())["data"]  # --test shrinks the images
    side = cache_side(used["image_size"], used["crop_scale"])
    entries = sorted(cache_dir.iterdir())
    assert len(entries) == 2 and all(json.loads((e / META).read_text())["shape"][1:] == [side, side, 3]
                                     for e in entries)
    assert (tmp_path / "run-smoke" / "final" / "policy.json").is_file()


@pytest.mark.parametrize("on", [True, False])
def test_the_trainers_reader_takes_frames_from_the_cache(tmp_path, on):
    """attach_video_cache (what the trainer calls after opening the data): with data.video_cache the reader's views are
    the cache's squares; without it, the decoded frames as stored (the control)."""
    from tinyvla.training.data import attach_video_cache

    recipe = so101_recipe(tmp_path, on)
    reader = open_dataset(TWO)
    attach_video_cache(recipe, reader, main=True, log=lambda *_: None)
    side = cache_side(recipe.data.image_size, recipe.data.crop_scale)
    assert {v.shape for v in reader.sample(5)["views"]} == ({(side, side, 3)} if on else {(48, 64, 3)})
    assert (tmp_path / "frames").is_dir() == on


def test_other_ranks_wait_for_the_main_ranks_build(tmp_path):
    """A rank that is not the local main waits until the main rank's entries exist, then reads them."""
    import threading

    from tinyvla.training.data import attach_video_cache

    recipe = so101_recipe(tmp_path, True)
    other = open_dataset(TWO)
    waiter = threading.Thread(target=attach_video_cache, args=(recipe, other, False), kwargs={"poll_s": 0.05})
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # nothing built yet: still waiting
    attach_video_cache(recipe, open_dataset(TWO), main=True, log=lambda *_: None)
    waiter.join(10)
    assert not waiter.is_alive()
    side = cache_side(recipe.data.image_size, recipe.data.crop_scale)
    assert other.sample(0)["views"][0].shape == (side, side, 3)


def so101_recipe(tmp_path, video_cache: bool):
    from tinyvla.recipe import load_recipe

    return load_recipe(RECIPE, [f"data.repo={TWO}", f"data.video_cache={str(video_cache).lower()}",
                                f"data.video_cache_dir={tmp_path / 'frames'}"])
