"""Progress without a terminal (plain lines in a log file), the tied-weights save notice, and the machine a figure
came from (policy.json `trained_on`, results.json `machine`)."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tinyvla.machine import describe, machine_info
from tinyvla.progress import format_duration, track
from tinyvla.recipe import load_recipe
from tinyvla.training.logging import TrainLogger

ROOT = Path(__file__).resolve().parents[1]


def file_console() -> Console:
    return Console(file=io.StringIO())  # not a terminal, like `> log.txt`


def test_track_writes_plain_lines_off_a_terminal():
    console = file_console()
    assert list(track(range(10), 10, "generate", "episodes", console=console, lines=5)) == list(range(10))
    lines = console.file.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["2/10", "4/10", "6/10", "8/10", "10/10"]
    assert lines[-1].startswith("generate 10/10 episodes") and lines[-1].endswith("ETA 0:00:00")


def test_format_duration():
    assert format_duration(3725.4) == "1:02:05" and format_duration(float("nan")) == "?"


def test_train_logger_prints_one_line_per_log_call_off_a_terminal(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", ["train.tensorboard=false"])
    console = file_console()
    logger = TrainLogger(tmp_path, recipe, total_steps=50, console=console)
    assert logger.progress_bar is None
    logger.progress(25, 1.5, 1e-3)  # per step: nothing printed off a terminal
    logger.log(25, {"loss": 1.25, "lr": 1e-3, "samples_per_s": 99.0})
    logger.log_probe(25, 0.5)
    line, probe = console.file.getvalue().splitlines()
    assert line.startswith("step 25/50  loss 1.2500  lr 1.00e-03  99.0 samples/s  elapsed 0:00:0") and "ETA 0:00:0" in line
    assert probe == "step 25: closed-loop probe success 50%"
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 1.25


def test_tied_head_notice_is_dropped_and_other_shared_tensors_still_warn(caplog):
    import torch
    from accelerate import PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    PartialState(cpu=True)  # accelerate's logger needs its state
    w = torch.zeros(3, 2)
    with caplog.at_level(logging.WARNING):
        clean_state_dict_for_safetensors({"model.embed_tokens.weight": w, "lm_head.weight": w})
        lora = "base_model.model."  # peft's names around the same tie
        clean_state_dict_for_safetensors({lora + "model.embed_tokens.weight": w, lora + "lm_head.weight": w})
        assert "Removed shared tensor" not in caplog.text
        u = torch.zeros(4)
        clean_state_dict_for_safetensors({"a.weight": u, "not_lm_head.weight": u})
        assert "Removed shared tensor {'not_lm_head.weight'}" in caplog.text
        v = torch.zeros(2)
        clean_state_dict_for_safetensors({"a.weight": v, "b.weight": v})
        assert "Removed shared tensor {'b.weight'}" in caplog.text


def test_machine_info_names_the_cpu_kernels():
    info = machine_info()
    json.dumps(info)  # goes into policy.json / results.json as is
    assert info["cores"] >= 1 and info["arch"]
    if info["arch"] in ("x86_64", "AMD64"):
        assert info["torch_cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX")
    assert describe(info)


@pytest.mark.slow
def test_train_to_a_log_file_shows_progress_and_the_machine(tmp_path):
    """`tinyvla train recipes/tiny-cpu.yaml > log.txt`: generation and training progress lines land in the file, no
    tied-weights notice at the checkpoint saves; policy.json and results.json say which machine ran them."""
    out = tmp_path / "run"
    log = tmp_path / "log.txt"
    sets = ["data.repo=" + str(tmp_path / "demos"), "data.generate_episodes=40", "data.val_episodes=4",
            "train.max_steps=6", "train.log_every=2", "train.save_every=3", "train.batch_size=4",
            "train.eval_batches=1", "train.tensorboard=false"]
    cmd = [sys.executable, "-m", "tinyvla.cli.main", "train", "recipes/tiny-cpu.yaml", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    with log.open("w") as f:
        subprocess.run(cmd + [x for s in sets for x in ("--set", s)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                       env=env, check=True, timeout=600)
    text = log.read_text()
    assert "generate blockfind-reach 40/40 episodes" in text
    steps = [line for line in text.splitlines() if line.startswith("step ") and "loss" in line]
    assert [line.split()[1] for line in steps] == ["2/6", "4/6", "6/6"], text
    assert all("samples/s" in line and "ETA" in line for line in steps)
    assert "Removed shared tensor" not in text
    policy = json.loads((out / "final" / "policy.json").read_text())
    assert policy["trained_on"] == json.loads(json.dumps(policy["trained_on"])) and policy["trained_on"]["cores"] >= 1

    evals = tmp_path / "eval"
    subprocess.run([sys.executable, "-m", "tinyvla.cli.main", "eval", str(out / "final"), "--suite", "blockfind-reach",
                    "--episodes-per-task", "1", "--num-threads", "1", "--out", str(evals)],
                   stdout=subprocess.DEVNULL, cwd=ROOT, env=env, check=True, timeout=300)
    results = json.loads((evals / "results.json").read_text())
    assert results["machine"]["cpu"] == machine_info()["cpu"]
