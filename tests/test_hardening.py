"""Every bad input of issue #14 through the real CLI, in-process: exit code 2, one `error:` line on stderr, no traceback,
and nothing written or removed that the user did not ask for. Then the run-directory rules (rerun, resume, lock) and
checkpoint fallback."""

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from tinyvla.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "libero_v20_tiny"
RECIPE = str(ROOT / "recipes" / "tiny-cpu.yaml")
# The tiny recipe on the fixture dataset at test size: a few seconds per run.
TINY = [f"data.repo={FIXTURE}", "data.suite=null", "data.image_size=32", "data.num_workers=0", "data.val_episodes=1",
        "train.batch_size=2", "train.max_steps=2", "train.save_every=1", "train.keep_last=2", "train.log_every=1",
        "train.warmup_steps=0", "train.tensorboard=false", "train.eval_batches=1"]


@pytest.fixture(autouse=True, scope="module")
def quiet_progress_bars():
    """transformers draws a "Loading weights" bar on stderr; the checks below read stderr line by line."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    logging.enable_progress_bar()


def sets(*overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def snapshot(root: Path) -> dict:
    """Every path under root with its size and mtime; a run dir's .lock (it takes the PID of each locker) aside."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.name != ".lock"}


def expect_one_error(capsys, tmp_path, argv, message):
    """Run the CLI; it must fail with one `error:` line containing `message` and leave tmp_path as it was."""
    before = snapshot(tmp_path)
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 2, (rc, captured.err, captured.out)
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(tmp_path) == before, "the failed command wrote or removed files"
    return captured.err


def broken_dataset(tmp_path: Path, meta_file: str, drop: str) -> Path:
    repo = tmp_path / "ds"
    shutil.copytree(FIXTURE, repo)
    path = repo / "meta" / meta_file
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != drop}) + "\n" for r in rows))
    return repo


# ------------------------------------------------------------------------------------------------------------------
# Bad inputs that need no trained policy
# ------------------------------------------------------------------------------------------------------------------

RECIPE_KNOBS = [
    (["train.log_every=0"], "train.log_every must be >= 1, got 0"),
    (["data.num_workers=-1"], "data.num_workers must be >= 0, got -1"),
    (["model.tiny.hidden_size=abc"], "model.tiny.hidden_size must be a positive number, got 'abc'"),
    (["train.betas=[0.9]"], "train.betas must be 2 numbers, each in [0, 1), got [0.9]"),
    (["train.lr=.nan"], "train.lr must be a finite number, got nan"),
    (["train.lr=.inf"], "train.lr must be a finite number, got inf"),
    (["actions.bins=1"], "actions.bins must be >= 2, got 1"),
    (["eval.exp_w=0"], "eval.exp_w must be in (0, 1], got 0.0"),
]


@pytest.mark.parametrize("overrides, message", RECIPE_KNOBS, ids=lambda x: x[0] if isinstance(x, list) else None)
def test_recipe_knobs_are_checked_at_load(capsys, tmp_path, overrides, message):
    out = tmp_path / "run"
    expect_one_error(capsys, tmp_path, ["train", RECIPE, *sets(*TINY, *overrides), "--out", out], message)
    assert not out.exists()  # no stray tensorboard dir, no run dir


@pytest.mark.parametrize("value, message", [("-1", "train.max_steps must be >= 1, got -1"),
                                            ("0", "train.max_steps must be >= 1, got 0")])
def test_max_steps_below_one_is_refused_not_read_as_unset(capsys, tmp_path, value, message):
    expect_one_error(capsys, tmp_path, ["train", RECIPE, *sets(*TINY), "--max-steps", value, "--out", tmp_path / "r"],
                     message)


@pytest.mark.parametrize("kind, message", [
    ("binary", "is not UTF-8 text"),
    ("empty", "is empty; a recipe needs"),
    ("directory", "is a directory; pass a recipe file"),
])
def test_unreadable_recipes(capsys, tmp_path, kind, message):
    path = tmp_path / "recipe.yaml"
    if kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00model: x\n")
    elif kind == "empty":
        path.write_text("")
    else:
        path.mkdir()
    expect_one_error(capsys, tmp_path, ["train", path], message)


@pytest.mark.parametrize("where, message", [
    ("file", "is an existing file; choose a directory"),
    ("under-file", "is a file, so no directory can be made under it"),
    pytest.param("read-only", "is not writable", marks=pytest.mark.skipif(
        os.geteuid() == 0, reason="root writes to read-only directories")),
])
def test_train_out_is_checked_before_the_data_loads(capsys, tmp_path, where, message):
    (tmp_path / "a-file").write_text("mine")
    out = {"file": tmp_path / "a-file", "under-file": tmp_path / "a-file" / "run",
           "read-only": tmp_path / "ro" / "run"}[where]
    if where == "read-only":
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o500)
    # A missing dataset would be the error if --out were checked after the data: it must not come to that.
    expect_one_error(capsys, tmp_path, ["train", RECIPE, *sets(*TINY, f"data.repo={tmp_path / 'nope'}"), "--out", out],
                     message)


@pytest.mark.parametrize("meta_file, drop", [("episodes.jsonl", "length"), ("tasks.jsonl", "task_index")])
def test_data_stats_on_incomplete_metadata(capsys, tmp_path, meta_file, drop):
    repo = broken_dataset(tmp_path, meta_file, drop)
    expect_one_error(capsys, tmp_path, ["data", "stats", "--repo", repo], f"{meta_file}: entry 1 lacks '{drop}'")


@pytest.mark.parametrize("flag", ["--save-stats", "--plot"])
def test_data_stats_outputs_must_be_files(capsys, tmp_path, flag):
    (tmp_path / "somedir").mkdir()
    expect_one_error(capsys, tmp_path, ["data", "stats", "--repo", FIXTURE, flag, tmp_path / "somedir"],
                     f"{flag} {tmp_path / 'somedir'} is an existing directory")


def test_data_generate_never_replaces_a_dataset_without_force(capsys, tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "ds")
    expect_one_error(capsys, tmp_path, ["data", "generate", "blockfind-reach", "--episodes", "2", "--out",
                                        tmp_path / "ds"], "already holds a dataset; pass --force")


@pytest.mark.parametrize("argv, message", [
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "cuda"], "no CUDA GPU is visible"),
    (["--out", "{file}"], "is an existing file; choose a directory"),
])
def test_eval_arguments(capsys, tmp_path, argv, message):
    (tmp_path / "a-file").write_text("mine")
    argv = [a.format(file=tmp_path / "a-file") for a in argv]
    if "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    expect_one_error(capsys, tmp_path, ["eval", "random", "--suite", "blockfind-reach", "--episodes-per-task", "1",
                                        *argv], message)


@pytest.mark.parametrize("actions, message", [
    ("1500 " + "0 " * 27, "--actions codes must be ints in 0..1000 (actions.bins), got 1500"),
    ("1.5 " + "0 " * 27, "--actions value 1.5 (step 0, dim 0) is outside the stats' bounds [-1, 1]"),
])
def test_inspect_tokens_refuses_actions_it_would_clip(capsys, tmp_path, actions, message):
    expect_one_error(capsys, tmp_path, ["inspect-tokens", RECIPE, "--actions", actions], message)


@pytest.mark.parametrize("target, message", [
    ("file", "is an existing file; choose a directory"),
    ("nonempty", "is a non-empty directory that is not a tinyvla policy"),
])
def test_export_never_overwrites_what_is_not_an_export(capsys, tmp_path, target, message):
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "notes.txt").write_text("mine")
    out = tmp_path / ("a-file" if target == "file" else "nonempty")
    expect_one_error(capsys, tmp_path, ["export", tmp_path / "whatever", "--out", out], message)


# ------------------------------------------------------------------------------------------------------------------
# Bad inputs around a trained policy
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run: checkpoints step-1 and step-2, final/."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", RECIPE, *sets(*TINY), "--out", str(out)]) == 0
    return out


def test_truncated_weights_are_one_line_naming_the_file(capsys, tmp_path, run_dir):
    policy = tmp_path / "policy"
    shutil.copytree(run_dir / "final", policy)
    weights = policy / "model" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    for argv in (["eval", policy, "--suite", "blockfind-reach", "--episodes-per-task", "1", "--out", tmp_path / "ev"],
                 ["export", policy, "--out", tmp_path / "exp"]):
        expect_one_error(capsys, tmp_path, argv, f"{weights} is truncated")


def test_offline_eval_on_a_dataset_with_another_action_dimension(capsys, tmp_path, run_dir):
    from tinyvla.data.writer import write_lerobot_v2

    rng = np.random.default_rng(0)
    episodes = [{"task": "reach", "image": rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8),
                 "wrist_image": rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8),
                 "state": np.zeros((6, 8), np.float32), "actions": rng.normal(size=(6, 5)).astype(np.float32)}
                for _ in range(3)]
    write_lerobot_v2(tmp_path / "five-dim", episodes, fps=10)
    expect_one_error(capsys, tmp_path, ["eval", run_dir / "final", "--offline", "--repo", tmp_path / "five-dim",
                                        "--out", tmp_path / "ev"], "has 5-dimensional actions but the policy writes 7")


def test_export_replaces_an_earlier_export_only_with_force(capsys, tmp_path, run_dir):
    out = tmp_path / "exp"
    assert main(["export", str(run_dir / "final"), "--out", str(out)]) == 0
    capsys.readouterr()
    expect_one_error(capsys, tmp_path, ["export", run_dir / "final", "--out", out], "already holds a policy; pass --force")
    assert main(["export", str(run_dir / "final"), "--out", str(out), "--force"]) == 0
    # Dirs and files follow the umask (not 0700 / 0600): group and others may read under the usual 022.
    mask = os.umask(0)
    os.umask(mask)
    for path in (out, out / "model", out / "model" / "model.safetensors", run_dir / "final",
                 run_dir / "final" / "model" / "model.safetensors", run_dir / "checkpoints" / "step-00000002",
                 run_dir / "checkpoints" / "step-00000002" / "model.safetensors"):
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, (path, oct(path.stat().st_mode))


def test_push_to_hub_offline_says_offline_not_login(capsys, tmp_path, run_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["export", str(run_dir / "final"), "--out", str(tmp_path / "exp"), "--push-to-hub", "me/policy"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "cannot be reached" in err and "login" not in err
    assert (tmp_path / "exp" / "policy.json").is_file()  # the local export is complete


# ------------------------------------------------------------------------------------------------------------------
# The run directory: rerun rule, resume checks, checkpoint fallback
# ------------------------------------------------------------------------------------------------------------------


def test_rerun_into_a_run_dir_needs_resume_or_overwrite(capsys, tmp_path, run_dir):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    expect_one_error(capsys, tmp_path, ["train", RECIPE, *sets(*TINY), "--out", out],
                     "is not empty (checkpoints, final, metrics.jsonl, recipe.yaml); pass --resume")
    expect_one_error(capsys, tmp_path, ["train", RECIPE, *sets(*TINY, "train.lr=0.01"), "--out", out, "--resume"],
                     "the recipe differs from the run in " f"{out} in train.lr (0.001 -> 0.01)")
    expect_one_error(capsys, tmp_path, ["train", RECIPE, *sets(*TINY), "--out", out, "--resume", "--overwrite"],
                     "pass one of them")
    (out / "notes.txt").write_text("mine")
    assert main(["train", RECIPE, *sets(*TINY, "train.max_steps=1"), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite removes the run's files only
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]


BREAKAGES = {
    "truncated weights": lambda c: _truncate(c / "model.safetensors"),
    "empty trainer_state.json": lambda c: (c / "trainer_state.json").write_text(""),
    "unreadable trainer_state.json": lambda c: (c / "trainer_state.json").write_text("{step: 2"),
    "no optimizer file": lambda c: (c / "optimizer.bin").unlink(),
    "no marker": lambda c: (c / "COMPLETE.json").unlink(),
}


def _truncate(path: Path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_resume_falls_back_to_the_newest_complete_checkpoint(capsys, tmp_path, run_dir, breakage):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    shutil.rmtree(out / "final")
    BREAKAGES[breakage](out / "checkpoints" / "step-00000002")
    assert main(["train", RECIPE, *sets(*TINY), "--out", str(out), "--resume"]) == 0
    text = capsys.readouterr().out.replace("\n", "")  # rich wraps long lines at the terminal width
    assert "skipping checkpoint" in text and "step-00000002" in text
    assert "resumed from" in text and "step-00000001" in text
    # Resumed from step 1, it ends where the unbroken run ended: same weights, same metrics, a finite final loss.
    from safetensors.numpy import load_file

    a, b = (load_file(str(d / "final" / "model" / "model.safetensors")) for d in (run_dir, out))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (out / "metrics.jsonl").read_text().count('"eval"') == 1
    assert "final loss nan" not in text


def test_resume_with_no_complete_checkpoint_says_what_to_delete(capsys, tmp_path, run_dir):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    for ckpt in (out / "checkpoints").iterdir():
        (ckpt / "optimizer.bin").unlink()
    err = expect_one_error(capsys, tmp_path, ["train", RECIPE, *sets(*TINY), "--out", out, "--resume"],
                           "no complete checkpoint")
    assert "step-00000001" in err and "step-00000002" in err and "--overwrite" in err


def test_a_run_that_fails_before_training_leaves_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    expect_one_error(capsys, tmp_path, ["train", RECIPE, *sets(*TINY, f"data.repo={tmp_path / 'missing'}"),
                                        "--out", out], "missing")
    assert not out.exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_replacing_a_directory_always_leaves_a_complete_copy(tmp_path, monkeypatch, exchange):
    from tinyvla.core import atomic

    if not exchange:  # a filesystem without RENAME_EXCHANGE: the fallback and its crash recovery
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = tmp_path / "step-00000002"
    for content in ("old", "new"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "weights").write_text(content)
    assert (target / "weights").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    # A kill between the fallback's two renames leaves only `.NAME.old`; recovery puts it back whole.
    os.replace(target, atomic.old_copy(target))
    atomic.recover_replaced_dir(target)
    assert (target / "weights").read_text() == "new" and not atomic.old_copy(target).exists()
