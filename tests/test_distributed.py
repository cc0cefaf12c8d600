"""Two CPU processes (gloo) train exactly what one process with gradient accumulation 2 trains; FSDP2 on CPU processes.

The same recipe (global batch 4, micro-batch 2) runs once under torchrun with 2 processes and once in this process
with accumulation 2. Every optimizer step sees the same 4 samples in both runs (training/data.py EpochSampler) and the
objective is the token mean over the global batch (trainer.train_step), so:
- per-step losses agree to float tolerance (1e-5 relative: only the summation order and the padding of the
  micro-batches differ);
- final weights: the difference between the two runs is compared with how far training moved the weights. Adam
  amplifies tiny gradient differences only where a gradient is near zero, so the runs may drift apart by float noise
  but not by a different objective: a per-micro-batch mean (the old weighting) changes the gradient direction by
  several per cent (BENCHMARKS.md) and fails both checks.
- checkpoints written by 2 processes are complete and a 2-process resume replays the lost step exactly.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from accelerate.utils import set_seed
from safetensors.numpy import load_file

from tinyvla.recipe import load_recipe, save_recipe
from tinyvla.training.smoke import smoke_recipe
from tinyvla.training.trainer import build_model, train

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "libero_v20_tiny"


def two_process_recipe(out: Path, steps: int = 3):
    cfg = smoke_recipe(load_recipe(ROOT / "recipes" / "tiny-cpu.yaml",
                                   [f"data.repo={FIXTURE}", "data.suite=null", f"train.out_dir={out}"]))
    cfg.train.out_dir = str(out)  # smoke_recipe appends -smoke
    cfg.train.global_batch, cfg.train.batch_size, cfg.train.grad_accum = 4, 2, 1
    cfg.train.max_steps, cfg.train.save_every, cfg.train.log_every, cfg.train.keep_last = steps, 2, 1, 2
    cfg.train.clip_grad, cfg.train.schedule, cfg.train.warmup_steps = 0.0, "constant", 0  # plain Adam steps
    cfg.actions.mask_prob = 0.4  # labelled-token counts differ per sample: what makes the weighting matter
    return cfg.validate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(recipe_path: Path, nproc: int, *extra: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "-m", "tinyvla.cli.main", "train", str(recipe_path), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def weights(out: Path) -> dict:
    return load_file(str(next((out / "final" / "model").glob("*.safetensors"))))


@pytest.mark.slow
def test_two_processes_equal_one_process_with_accumulation(tmp_path):
    two = two_process_recipe(tmp_path / "two")
    save_recipe(two, tmp_path / "two.yaml")
    res = launch(tmp_path / "two.yaml", 2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "global batch 4 = 2 micro x 2 processes x 1 accumulation" in out
    assert "2 processes (MULTI_CPU, backend gloo)" in out and "frames per process per epoch" in out
    assert out.count("done") == 1, out  # rank 0 alone reports

    one = two_process_recipe(tmp_path / "one")
    result = train(one)
    assert result.plan.grad_accum == 2 and result.plan.global_batch == 4

    l2, l1 = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(l1) == len(l2) == 3
    assert np.allclose(l1, l2, rtol=1e-5, atol=0), (l1, l2)

    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    init = two_process_recipe(tmp_path / "init")
    set_seed(init.train.seed)  # what train() does before building the model: the same initial weights
    model, _ = build_model(init)
    w0 = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    keys = [k for k in w1 if k in w0]
    assert keys and set(w1) == set(w2)
    moved = np.sqrt(sum(((w1[k] - w0[k]) ** 2).sum() for k in keys))
    apart = np.sqrt(sum(((w1[k] - w2[k]) ** 2).sum() for k in keys))
    print(f"\nper-step losses 1 process {l1}, 2 processes {l2}; max relative difference "
          f"{max(abs(a - b) / abs(a) for a, b in zip(l1, l2)):.2e}; weights: |w2 - w1| {apart:.3e}, "
          f"|w1 - w0| {moved:.3e}, ratio {apart / moved:.2e}")
    assert moved > 0.01, moved  # training did move the weights
    assert apart < 1e-3 * moved, (apart, moved)

    # Killed after the step-2 checkpoint: what survives is that checkpoint; resuming with 2 processes replays step 3.
    ckpts = sorted((tmp_path / "two" / "checkpoints").glob("step-*"))
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000003"]
    for p in ckpts:  # complete: every process's random state is in it
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= {f.name for f in p.iterdir()}, list(p.iterdir())
    shutil.rmtree(ckpts[-1])
    shutil.rmtree(tmp_path / "two" / "final")
    res = launch(tmp_path / "two.yaml", 2, "--resume")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from" in res.stdout
    assert np.allclose(losses(tmp_path / "two"), l2, rtol=1e-6, atol=0), (losses(tmp_path / "two"), l2)
    w3 = weights(tmp_path / "two")
    assert np.sqrt(sum(((w3[k] - w2[k]) ** 2).sum() for k in keys)) < 1e-6 * moved


def run_worker(recipe_path: Path, mode: str, out_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(ROOT / "tests" / "fsdp_worker.py"), str(recipe_path), mode, str(out_dir)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.slow
def test_fsdp2_on_cpu_shards_and_every_process_enters_every_forward(tmp_path):
    cfg = two_process_recipe(tmp_path / "fsdp")
    cfg.train.eval_batches = 1
    save_recipe(cfg, tmp_path / "fsdp.yaml")
    res = run_worker(tmp_path / "fsdp.yaml", "every-rank", tmp_path)
    written = sorted(p.name for p in tmp_path.glob("rank*.json"))
    assert res.returncode == 0, f"rows written: {written}\n" + res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in rows] == [0, 1]
    assert rows[0]["units"] >= 4  # decoder layers + vision blocks wrapped
    assert all(r["local_params"] < 0.6 * r["params"] for r in rows)  # really sharded: each holds about half
    assert rows[0]["loss"] == rows[1]["loss"] and np.isfinite(rows[0]["loss"])  # one global objective
    assert rows[0]["l1"] == rows[1]["l1"] is not None  # every process ran the same evaluation

    # The old trainer's path, evaluation on rank 0 alone, does not finish: rank 0 waits in an all-gather.
    (tmp_path / "rank0.json").unlink()
    res = run_worker(tmp_path / "fsdp.yaml", "rank0-only", tmp_path)
    assert res.returncode != 0 and not (tmp_path / "rank0.json").exists()
