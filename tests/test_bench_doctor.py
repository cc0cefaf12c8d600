"""`tinyvla bench` and `tinyvla doctor` through the CLI (typer's CliRunner on the verb functions), with --json."""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import typer
from typer.testing import CliRunner

from tinyvla import bench as B
from tinyvla.cli.bench import bench
from tinyvla.cli.doctor import doctor
from tinyvla.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
app = typer.Typer()
app.command("bench")(bench)
app.command("doctor")(doctor)


def run(*args):
    torch.set_num_threads(1)
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def run_json(*args):
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


# -------------------------------------------------------------------------------------------------------------- bench
def test_bench_inference_json_spec_vs_greedy():
    r = run_json("bench", "--model", "tiny-qwen3", "--only", "infer", "--steps", "4", "--repeats", "1", "--warmup", "0",
                 "--num-threads", "1")
    assert "train" not in r
    inf = r["infer"]
    assert set(inf["modes"]) == {"spec", "greedy"}
    for mode in ("spec", "greedy"):
        m = inf["modes"][mode]
        for key in ("ms_per_chunk", "ms_per_query", "tokens_per_chunk", "passes_per_chunk", "chunks_per_s"):
            assert m[key] > 0, (mode, key)
    g, s = inf["modes"]["greedy"], inf["modes"]["spec"]
    assert g["passes_per_chunk"] == g["tokens_per_chunk"]  # greedy: one pass per token (H=4 x D=7 ints here)
    assert s["tokens_per_chunk"] == g["tokens_per_chunk"]
    assert s["passes_per_chunk"] < g["passes_per_chunk"]
    assert inf["identical"] is True
    assert inf["ratio"]["passes_per_chunk"] == pytest.approx(s["passes_per_chunk"] / g["passes_per_chunk"], abs=1e-3)
    assert inf["random_weights"] is True and (inf["horizon"], inf["dim"]) == (4, 7)


def test_bench_training_json_fields():
    r = run_json("bench", "--model", "tiny-qwen3", "--only", "train", "--train-steps", "1", "--warmup", "0",
                 "--set", "train.batch_size=2")
    t = r["train"]
    assert t["batch_size"] == 2 and t["params_m"] > 0.1 and t["seq_len"] > 4 * 7
    assert t["step_s"] > 0 and t["samples_per_s"] == pytest.approx(2 / t["step_s"], rel=0.01)
    assert t["tokens_per_s"] == pytest.approx(t["tokens_per_step"] / t["step_s"], rel=0.01)
    assert t["peak_mem_gb"] > 0 and t["mfu"] is None  # no GPU here: no peak FLOPs to divide by


def test_bench_policy_dir_and_errors(tmp_path):
    from tinyvla.policy_dir import save_policy_dir

    policy = B.policy_from_recipe(B.resolve_target(None, "tiny-qwen3")[0])
    save_policy_dir(policy, tmp_path / "final")
    out = tmp_path / "bench.json"
    r = run_json("bench", tmp_path, "--only", "infer", "--compare", "greedy", "--steps", "2", "--repeats", "1",
                 "--warmup", "0", "--out", out)
    assert list(r["infer"]["modes"]) == ["greedy"] and "ratio" not in r["infer"]
    assert json.loads(out.read_text())["infer"]["modes"]["greedy"]["passes_per_chunk"] > 0
    for args in (("bench", tmp_path, "--only", "train"), ("bench", "--model", "tiny-qwen3", "--compare", "beam"),
                 ("bench",), ("bench", tmp_path / "nothing.txt")):
        result = run(*args)
        assert isinstance(result.exception, UserError), args


def test_peak_flops_and_total_steps():
    assert B.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert B.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert B.peak_flops("Some Future GPU") is None
    recipe, _ = B.resolve_target(None, "tiny-qwen3", ["train.max_steps=null", "train.epochs=2", "train.batch_size=8",
                                                      "train.grad_accum=2"])
    # 1000 frames / 8 per micro-batch = 125 micro-batches -> 62 steps per epoch (partial steps dropped) -> 124.
    assert B.total_steps(recipe, 1000) == 124
    assert B.total_steps(recipe, 1000, processes=4) == 2 * ((250 // 8) // 2)
    recipe.train.max_steps = 7
    assert B.total_steps(recipe, 1000) == 7


# ------------------------------------------------------------------------------------------------------------- doctor
def test_doctor_checks_json():
    r = run_json("doctor", "--no-render-probe")
    names = {c["name"]: c for c in r["checks"]}
    for name in ("python", "torch", "cuda", "bf16", "attention: sdpa", "attention: flash-attn", "transformers",
                 "LIBERO simulator", "rendering", "tokenizer: tiny"):
        assert name in names, name
    assert all(c["status"] in ("ok", "warn", "fail", "info") and c["detail"] for c in r["checks"])
    assert names["torch"]["detail"].startswith(torch.__version__)
    assert names["attention: sdpa"]["status"] == "ok"
    assert "estimate" not in r


def test_doctor_estimates_recipe_training_time(tmp_path):
    recipe = ROOT / "recipes" / "tiny-cpu.yaml"
    r = run_json("doctor", recipe, "--no-render-probe", "--steps", "1", "--set", "train.batch_size=2",
                 "--set", f"data.repo={tmp_path / 'not-generated'}", "--set", "data.generate_episodes=12")
    est = r["estimate"]
    from tinyvla.recipe import load_recipe

    steps = load_recipe(recipe).train.max_steps
    assert est["by_processes"]["1"]["steps"] == steps  # the recipe's max_steps
    assert est["by_processes"]["1"]["seconds"] == pytest.approx(steps * est["step_s"], abs=0.1)
    assert est["frames"] > 12 and "to be generated" in est["frames_source"]
    # A full-size recipe on a machine without a GPU: no misleading CPU timing, and nothing is built.
    if not torch.cuda.is_available():
        r = run_json("doctor", ROOT / "recipes" / "qwen3-2b-h100.yaml", "--no-render-probe")
        assert "skipped" in r["estimate"]
        assert r["memory"]["weights_gb"] == 8.5 and r["memory"]["optimizer_gb"] == 17.0  # 2.13 B x 4 / x 8 bytes
