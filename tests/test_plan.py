"""The run plan: one recipe means the same optimisation on any number of processes (training/plan.py)."""

from pathlib import Path

import pytest

from tinyvla.errors import UserError
from tinyvla.recipe import TrainConfig, load_recipe
from tinyvla.training.plan import plan_run

ROOT = Path(__file__).resolve().parents[1]
GPU_RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.yaml") if not p.name.startswith("tiny-"))
LIBERO_FRAMES = 273_465


def test_the_plan_is_the_same_on_1_2_and_8_processes_except_the_split():
    cfg = TrainConfig(global_batch=64, batch_size=8, lr=4e-5, epochs=18.7)
    plans = {n: plan_run(cfg, LIBERO_FRAMES, n) for n in (1, 2, 8)}
    same = {"global_batch", "lr", "steps", "samples", "epochs", "micro_batch", "frames"}
    for n, plan in plans.items():
        assert {k: v for k, v in plan.to_dict().items() if k in same} == \
               {k: v for k, v in plans[1].to_dict().items() if k in same}
        assert plan.processes == n and plan.grad_accum == 8 // n
        assert plan.micro_batch * plan.processes * plan.grad_accum == plan.global_batch == 64
    assert plans[1].steps == round(18.7 * (LIBERO_FRAMES // 64) + 0.5)  # ceil of epochs x steps per epoch
    assert "global batch 64 = 8 micro x 2 processes x 4 accumulation, lr 4e-05" in plans[2].describe()


def test_budget_in_samples_or_steps():
    cfg = TrainConfig(global_batch=192, batch_size=8, max_samples=192 * 1000)
    plan = plan_run(cfg, LIBERO_FRAMES, 8)
    assert plan.steps == 1000 and plan.samples == 192_000 and plan.grad_accum == 3
    assert plan_run(TrainConfig(global_batch=192, batch_size=8, max_steps=10), 1000, 3).samples == 1920


def test_a_global_batch_that_does_not_split_is_one_line_error():
    with pytest.raises(UserError, match=r"not a multiple of train.batch_size 8 x 3 processes = 24.*launch 1, 2, 4, 8"):
        plan_run(TrainConfig(global_batch=64, batch_size=8), 10_000, 3)
    with pytest.raises(UserError, match="derived from train.global_batch"):
        plan_run(TrainConfig(global_batch=64, batch_size=8, grad_accum=2), 10_000, 1)


def test_without_global_batch_the_old_rule_holds():
    cfg = TrainConfig(batch_size=8, grad_accum=2, epochs=1)
    assert plan_run(cfg, 1600, 1).global_batch == 16 and plan_run(cfg, 1600, 4).global_batch == 64
    assert plan_run(cfg, 1600, 4).steps == 1600 // 64


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: p.stem)
def test_gpu_recipes_state_a_global_batch_that_splits_over_1_and_8_gpus(path):
    cfg = load_recipe(path)
    assert cfg.train.global_batch, f"{path.name}: GPU recipes state train.global_batch"
    one, eight = plan_run(cfg.train, LIBERO_FRAMES, 1), plan_run(cfg.train, LIBERO_FRAMES, 8)
    assert (one.steps, one.samples, one.lr) == (eight.steps, eight.samples, eight.lr)


def test_memory_per_gpu_from_parameter_counts():
    from tinyvla.training.memory import estimate_memory

    mixed = load_recipe(ROOT / "recipes" / "qwen3-8b-h100.yaml")
    est = estimate_memory(mixed, gpus=8)
    params = 8.767e9
    assert est["weights_gb"] == pytest.approx(params * 4 / 1e9, abs=0.1)  # fp32 master weights
    assert est["optimizer_gb"] == pytest.approx(params * 8 / 1e9, abs=0.1)  # two fp32 moments
    assert est["fsdp_per_gpu_gb"] < 80 < est["ddp_per_gpu_gb"]  # why the recipe shards
    kahan = load_recipe(ROOT / "recipes" / "qwen3-8b-h100.yaml",
                        ["train.precision=bf16", "train.optimizer=adamw-kahan"])
    k = estimate_memory(kahan, gpus=8)
    assert k["weights_gb"] == pytest.approx(params * 2 / 1e9, abs=0.1)
    assert k["optimizer_gb"] == pytest.approx(params * 6 / 1e9, abs=0.1)
    lora = estimate_memory(load_recipe(ROOT / "recipes" / "qwen3-2b-24gb-lora.yaml"))
    assert lora["trainable_b"] < 0.05 and lora["ddp_per_gpu_gb"] < 24


def test_the_trainer_refuses_a_global_batch_that_does_not_split(tmp_path):
    from tinyvla.training.smoke import smoke_recipe
    from tinyvla.training.trainer import train

    cfg = smoke_recipe(load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", [
        f"data.repo={ROOT / 'tests/fixtures/libero_v20_tiny'}", "data.suite=null", f"train.out_dir={tmp_path}"]))
    cfg.train.global_batch, cfg.train.batch_size = 5, 2
    with pytest.raises(UserError, match="train.global_batch 5 is not a multiple of train.batch_size 2 x 1 process = 2"):
        train(cfg)
    assert not (tmp_path / "final").exists()
