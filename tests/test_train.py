"""Training: every shipped recipe's code path at tiny scale, exact resume, LoRA, and the bad-input paths."""

import json
from pathlib import Path

import numpy as np
import pytest

from tinyvla.errors import UserError
from tinyvla.recipe import load_recipe
from tinyvla.training.smoke import smoke_recipe
from tinyvla.training.trainer import list_checkpoints, train

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "libero_v20_tiny"
GPU_RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.yaml") if not p.name.startswith("tiny-"))


def tiny_recipe(tmp_path, *overrides):
    base = [f"data.repo={FIXTURE}", "data.suite=null", f"train.out_dir={tmp_path / 'run'}"]
    return smoke_recipe(load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", base + list(overrides)))


def read_losses(out_dir: Path) -> list[float]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]


@pytest.mark.slow
@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda p: p.stem)
def test_every_gpu_recipe_trains_one_step_at_tiny_scale(tmp_path, path):
    data = ROOT / "tests" / "fixtures" / "so101_2cam_v30" if path.stem.startswith("so101") else FIXTURE
    cfg = smoke_recipe(load_recipe(path, [f"data.repo={data}", "data.suite=null",
                                          f"train.out_dir={tmp_path / 'run'}"]))
    cfg.train.max_steps = 1
    result = train(cfg, smoke_test=True)
    assert result.steps == 1 and np.isfinite(result.final_loss)
    policy = json.loads((result.policy_dir / "policy.json").read_text())
    assert policy["horizon"] == cfg.actions.horizon and policy["lora_adapter"] == cfg.model.lora.enabled
    expected_family = "qwen2_5_vl" if "qwen2.5" in path.stem else "qwen3_vl"
    config = json.loads((result.policy_dir / "model" / "config.json").read_text())
    assert config["model_type"] == expected_family


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    straight = tiny_recipe(tmp_path / "a", "train.max_steps=4", "train.save_every=2")
    straight.train.max_steps, straight.train.save_every = 4, 2
    train(straight, smoke_test=True)
    full = read_losses(Path(straight.train.out_dir))

    half = tiny_recipe(tmp_path / "b")
    half.train.max_steps, half.train.save_every = 2, 2
    train(half, smoke_test=True)  # "killed" after 2 steps: its checkpoint is all that survives
    resumed = tiny_recipe(tmp_path / "b")
    resumed.train.max_steps, resumed.train.save_every = 4, 2
    train(resumed, resume=True, smoke_test=True)
    again = read_losses(Path(resumed.train.out_dir))
    assert len(full) == len(again) == 4
    assert np.allclose(full, again, rtol=1e-5, atol=1e-6), (full, again)


@pytest.mark.slow
def test_lora_trains_only_adapters_and_the_policy_acts(tmp_path):
    from tinyvla.policy import Policy
    from tinyvla.training.trainer import build_model

    cfg = tiny_recipe(tmp_path, "model.lora.enabled=true", "model.lora.r=4")
    model, _ = build_model(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    result = train(cfg, smoke_test=True)
    assert (result.policy_dir / "adapter" / "adapter_model.safetensors").is_file()
    policy = Policy.from_pretrained(result.policy_dir, device="cpu")
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "wrist_image": np.zeros((32, 32, 3), np.uint8)}
    action = policy.act(obs, "put the cream cheese in the bowl")
    assert action.shape == (7,) and np.all(np.isfinite(action))


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    cfg = tiny_recipe(tmp_path)
    cfg.train.max_steps, cfg.train.save_every, cfg.train.keep_last = 3, 1, 2
    train(cfg, smoke_test=True)
    ckpts = list_checkpoints(Path(cfg.train.out_dir) / "checkpoints")
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000003"]
    assert not list((Path(cfg.train.out_dir) / "checkpoints").glob(".*tmp"))
    for p in ckpts:
        assert any(p.glob("*.safetensors")) and (p / "trainer_state.json").is_file()


def test_bad_inputs_fail_with_one_line(tmp_path):
    with pytest.raises(UserError, match="not a dataset|not found|does not exist"):
        train(tiny_recipe(tmp_path, f"data.repo={tmp_path / 'missing'}"), smoke_test=True)
    with pytest.raises(UserError, match="exceeds the model's context"):
        train(tiny_recipe(tmp_path, "model.tiny.max_position_embeddings=64"), smoke_test=True)
    with pytest.raises(UserError, match="no checkpoint"):
        train(tiny_recipe(tmp_path / "fresh"), resume=True, smoke_test=True)
    assert not (tmp_path / "run" / "final").exists()


def test_nan_loss_stops_without_a_checkpoint(tmp_path):
    cfg = tiny_recipe(tmp_path, "train.lr=1.0e+30")
    cfg.train.max_steps, cfg.train.save_every = 4, 1
    with pytest.raises(UserError, match="loss became"):
        train(cfg, smoke_test=True)
    ckpts = list_checkpoints(Path(cfg.train.out_dir) / "checkpoints")
    assert all(json.loads((p / "trainer_state.json").read_text())["step"] >= 1 for p in ckpts)
    assert not (Path(cfg.train.out_dir) / "final").exists()
