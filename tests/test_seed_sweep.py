"""scripts/seed_sweep.py: seed lists, the mean [min-max] summary, and one real two-seed sweep at tiny scale."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("seed_sweep", ROOT / "scripts" / "seed_sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


def test_parse_seeds():
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("1-2,9") == [1, 2, 9]
    for bad in ("a", "1,1", "3-1"):
        with pytest.raises(SystemExit):
            sweep.parse_seeds(bad)


def test_seed_placeholder_in_overrides():
    sets = ["model.init_from=runs/sweep/seed-{seed}/final", "train.lr=1e-3"]
    assert sweep.seed_overrides(sets, 3) == ["model.init_from=runs/sweep/seed-3/final", "train.lr=1e-3"]


def test_summary_is_mean_min_max():
    s = sweep.summarize({0: 0.87, 1: 0.95, 2: 0.92})
    assert s["seeds"] == 3 and s["min"] == 0.87 and s["max"] == 0.95 and abs(s["mean"] - 0.9133) < 1e-3
    assert sweep.format_summary(s) == "91.3 % [87-95] over 3 seeds"


@pytest.mark.slow
def test_two_seed_sweep_end_to_end(tmp_path, capsys):
    sets = [f"data.repo={tmp_path / 'demos'}", "data.generate_episodes=20", "data.val_episodes=2",
            "train.max_steps=2", "train.batch_size=4", "train.eval_batches=1", "train.tensorboard=false"]
    record = sweep.main(["recipes/tiny-cpu.yaml", "--seeds", "0,1", "--jobs", "2", "--episodes-per-task", "2",
                         "--num-envs", "2", "--out", str(tmp_path / "sweep")] + [x for s in sets for x in ("--set", s)])
    assert [r["seed"] for r in record["runs"]] == [0, 1]
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["summary"] == record["summary"] and saved["machine"]["cores"] >= 1
    for seed in (0, 1):  # each seed really trained with its own seed
        policy = json.loads((tmp_path / "sweep" / f"seed-{seed}" / "final" / "policy.json").read_text())
        assert policy["recipe"]["train"]["seed"] == seed
    assert "mean [min-max]:" in capsys.readouterr().out
