"""`tinyvla data stats` and tinyvla.data.stats: numbers checked against direct numpy over the raw files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tinyvla.cli.data import app
from tinyvla.core.codec import ActionCodec, ActionStats
from tinyvla.data.stats import (
    action_text_lengths,
    check_finite,
    compute_action_stats,
    episode_bounds,
    per_task_bounds,
    sparkline,
)
from tinyvla.errors import UserError

FIX = Path(__file__).parent / "fixtures"
V20, V30, HDF5 = FIX / "libero_v20_tiny", FIX / "libero_v30_tiny", FIX / "libero_hdf5_tiny" / "libero_object"
runner = CliRunner()


def raw_parquet(root: Path, key: str):
    """(actions, episode_index, task text per frame) straight from the parquet files and the task metadata."""
    files = sorted((root / "data").rglob("*.parquet"))
    tables = [pq.read_table(f, columns=[key, "episode_index", "task_index"]) for f in files]
    actions = np.concatenate([np.array(t.column(key).to_pylist(), np.float32) for t in tables])
    episodes = np.concatenate([t.column("episode_index").to_numpy() for t in tables])
    task_index = np.concatenate([t.column("task_index").to_numpy() for t in tables])
    if (root / "meta/tasks.jsonl").exists():
        tasks = {json.loads(x)["task_index"]: json.loads(x)["task"]
                 for x in (root / "meta/tasks.jsonl").read_text().splitlines()}
    else:
        df = pq.read_table(root / "meta/tasks.parquet").to_pandas()
        tasks = {int(i): t for t, i in zip(df.index, df["task_index"])}
    return actions, episodes, [tasks[i] for i in task_index]


def raw_hdf5(root: Path):
    acts, eps, tasks = [], [], []
    for f in sorted(root.glob("*.hdf5")):
        with h5py.File(f, "r") as h:
            task = json.loads(h["data"].attrs["problem_info"])["language_instruction"]
            for name in sorted(h["data"], key=lambda s: int(s.split("_")[1])):
                a = h["data"][name]["actions"][()].astype(np.float32)
                acts.append(a)
                eps += [len(acts) - 1] * len(a)
                tasks += [task] * len(a)
    return np.concatenate(acts), np.array(eps), tasks


def expected_token_lengths(actions, episodes, horizon):
    """Encode every frame's chunk with the project codec, join as text, count characters."""
    codec = ActionCodec(ActionStats(min=actions.min(0).tolist(), max=actions.max(0).tolist()), horizon=horizon)
    lens = []
    for i in range(len(actions)):
        last = np.flatnonzero(episodes == episodes[i])[-1]
        chunk = actions[np.minimum(np.arange(i, i + horizon), last)]
        lens.append(len(codec.to_text(codec.encode(chunk))))
    return min(lens), float(np.mean(lens)), max(lens)


@pytest.mark.parametrize("root,raw", [(V20, lambda: raw_parquet(V20, "actions")),
                                      (V30, lambda: raw_parquet(V30, "action")),
                                      (HDF5, lambda: raw_hdf5(HDF5))], ids=["v2.0", "v3.0", "hdf5"])
def test_stats_json_equals_numpy(root, raw):
    res = runner.invoke(app, ["stats", "--repo", str(root), "--json", "--horizon", "5"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)  # exactly one JSON object, nothing else on stdout
    actions, episodes, tasks = raw()
    a = actions.astype(np.float64)
    assert out["frames"] == len(actions) and out["episodes"] == len(np.unique(episodes))
    assert out["tasks"] == len(set(tasks)) and sorted(out["task_names"]) == sorted(set(tasks))
    for key, ref in [("min", a.min(0)), ("max", a.max(0)), ("mean", a.mean(0)), ("std", a.std(0)),
                     ("q01", np.quantile(a, 0.01, axis=0)), ("q99", np.quantile(a, 0.99, axis=0))]:
        np.testing.assert_allclose(out["action"][key], ref, rtol=1e-12, atol=1e-12, err_msg=key)
    tasks = np.array(tasks)
    assert set(out["per_task_bounds"]) == set(tasks)
    for task, b in out["per_task_bounds"].items():
        np.testing.assert_array_equal(b["min"], a[tasks == task].min(0))
        np.testing.assert_array_equal(b["max"], a[tasks == task].max(0))
    tok = out["action_text_tokens"]
    lo, mean, hi = expected_token_lengths(actions, episodes, 5)
    assert (tok["min"], tok["max"], tok["horizon"], tok["dims"]) == (lo, hi, 5, 7)
    assert tok["mean"] == pytest.approx(mean)
    assert all(sum(h["counts"]) == len(actions) for h in out["histograms"])
    assert out["features"][out["keys"]["action"]]["shape"] == [7]


def test_save_stats_plot_and_tables(tmp_path):
    stats_path, plot_path = tmp_path / "s" / "action_stats.json", tmp_path / "hist.png"
    res = runner.invoke(app, ["stats", "--repo", str(V20), "--save-stats", str(stats_path), "--plot", str(plot_path)])
    assert res.exit_code == 0, res.output
    for title in ("features", "per dimension", "per-task bounds", "tokens", "image", "wrist_image"):
        assert title in res.output
    assert any(ch in res.output for ch in "▁▂▃▄▅▆▇█")
    saved = ActionStats.load(stats_path)  # the codec's own loader accepts the file
    actions, _, tasks = raw_parquet(V20, "actions")
    np.testing.assert_allclose(saved.min, actions.min(0))
    np.testing.assert_allclose(saved.q99, np.quantile(actions.astype(np.float64), 0.99, axis=0))
    assert set(saved.per_task) == set(tasks)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot_path.stat().st_size > 5000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_bad_input_raises_user_error(tmp_path):
    res = runner.invoke(app, ["stats", "--repo", str(tmp_path / "missing" / "dir")])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    res = runner.invoke(app, ["stats", "--repo", str(V20), "--action-key", "nope"])
    assert isinstance(res.exception, UserError) and "available:" in str(res.exception)


def test_generate_writes_a_dataset_stats_can_read(tmp_path):
    out = tmp_path / "bf"
    res = runner.invoke(app, ["generate", "blockfind", "--episodes", "2", "--out", str(out), "--image-size", "16"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["stats", "--repo", str(out), "--json"])
    summary = json.loads(res.output)
    assert summary["episodes"] == 2 and summary["codebase_version"] == "v2.0"
    assert summary["features"]["image"]["shape"] == [16, 16, 3]
    res = runner.invoke(app, ["generate", "blockfind", "--episodes", "2", "--out", str(tmp_path / "x"),
                              "--image-size", "16", "--path", "x_first"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "x" / "meta" / "blockfind_generation.json").read_text())["path"] == "x_first"


def test_helpers():
    a = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    s = compute_action_stats(a)
    assert s["min"] == [0, 1] and s["max"] == [4, 1] and s["mean"] == [2, 1]
    assert s["std"][0] == pytest.approx(np.sqrt(8 / 3)) and s["q01"][0] == pytest.approx(0.04)
    assert per_task_bounds(a, np.array(["x", "y", "x"], dtype=object)) == {
        "x": {"min": [0, 1], "max": [4, 1]}, "y": {"min": [2, 1], "max": [2, 1]}}
    starts, lengths = episode_bounds(np.array([3, 3, 7, 7, 7]))
    assert starts.tolist() == [0, 0, 2, 2, 2] and lengths.tolist() == [2, 2, 3, 3, 3]
    assert sparkline([0, 1, 2, 4]) == " ▂▄█" and sparkline([0, 0]) == "  "
    # constant dim -> code 500 (3 chars); dim 0 spans 0..4 -> codes 0, 500, 1000
    t = action_text_lengths(a, np.zeros(3, int), 1, s["min"], s["max"])
    assert (t["min"], t["max"]) == (len("0 500"), len("1000 500"))
    with pytest.raises(UserError, match="non-empty"):
        compute_action_stats(np.zeros((0, 7)))
    bad = np.ones((4, 2))
    bad[3, 1] = np.nan
    with pytest.raises(UserError, match="episode 9 frame 1 .dimension 1. is nan"):
        check_finite(bad, np.array([8, 8, 9, 9]), np.array([0, 1, 0, 1]))


def test_stats_on_empty_dataset_is_user_error(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(V20, root)
    (root / "meta/episodes.jsonl").write_text("\n")
    res = runner.invoke(app, ["stats", "--repo", str(root), "--json"])
    assert isinstance(res.exception, UserError) and "no episodes" in str(res.exception)
