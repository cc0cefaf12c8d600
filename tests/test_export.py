"""Export and the Python policy API: same actions from a training output and its export; unsafe dirs refused."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinyvla.cli.main import main
from tinyvla.core.prompt import system_prompt
from tinyvla.errors import UserError
from tinyvla.export import export_policy
from tinyvla.policy import Policy
from tinyvla.recipe import load_recipe
from tinyvla.training.smoke import smoke_recipe
from tinyvla.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "libero_v20_tiny"
TASK = "put the cream cheese in the bowl"


def observations(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)], \
           [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def smoke_trained(recipe: str, out: Path, *overrides, init_from: Path | None = None) -> Path:
    """A few big steps of `recipes/<recipe>` on the LIBERO fixture: weights far from init, so a mismatch would show."""
    cfg = smoke_recipe(load_recipe(ROOT / "recipes" / recipe,
                                   [f"data.repo={FIXTURE}", "data.suite=null", f"train.out_dir={out}", *overrides]))
    cfg.model.init_from = str(init_from) if init_from else None  # smoke_recipe drops it; a second stage needs it back
    cfg.train.max_steps = 3
    cfg.train.lr = 3e-2
    return train(cfg, smoke_test=True).policy_dir


def trained(tmp_path_factory, *overrides) -> Path:
    return smoke_trained("tiny-cpu.yaml", tmp_path_factory.mktemp("run"), *overrides)


@pytest.fixture(scope="module")
def full_ft(tmp_path_factory):
    return trained(tmp_path_factory)


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return trained(tmp_path_factory, "model.lora.enabled=true", "model.lora.r=4")


def chunks(path):
    policy = Policy.from_pretrained(path, device="cpu")
    images, wrists = observations()
    return policy.predict_chunks(images, wrists, [TASK] * len(images))


def test_export_gives_bit_identical_actions(full_ft, tmp_path):
    assert main(["export", str(full_ft), "--out", str(tmp_path / "exp")]) == 0
    exported = tmp_path / "exp"
    cfg = json.loads((exported / "policy.json").read_text())
    for key in ("horizon", "dim", "bins", "action_stats", "system_prompt", "image", "ensemble", "recipe", "versions",
                "dataset"):
        assert key in cfg, key
    assert (exported / "README.md").read_text().startswith("---")
    assert list((exported / "model").glob("*.safetensors"))
    a, b = chunks(full_ft), chunks(exported)
    assert a.dtype == np.float32 and np.array_equal(a, b)


def test_lora_merged_and_unmerged_exports_act_the_same(lora, tmp_path):
    export_policy(lora, tmp_path / "kept")
    export_policy(lora, tmp_path / "merged", merge_lora=True)
    assert (tmp_path / "kept" / "adapter").is_dir() and not (tmp_path / "merged" / "adapter").exists()
    base = chunks(lora)
    assert np.array_equal(base, chunks(tmp_path / "kept"))
    assert np.array_equal(base, chunks(tmp_path / "merged"))


def test_policy_act_ensembles_over_steps(full_ft):
    policy = Policy.from_pretrained(full_ft, device="cpu")
    images, wrists = observations(1)
    policy.reset()
    first = policy.act({"image": images[0], "wrist_image": wrists[0]}, TASK)
    chunk = policy.predict_chunk(images[0], wrists[0], TASK)
    assert np.array_equal(first, chunk[0])  # one chunk so far: the action is its first row


@pytest.mark.parametrize("corrupt, message", [
    (lambda c: c.pop("action_stats"), "no 'action_stats'"),
    (lambda c: c.update(dim=6), "action stats have 7 dimensions but dim is 6"),
    # VLA-0's system turn names H, D, B: one that disagrees with them was edited (the tiny recipe has no system turn)
    (lambda c: c.update(system_prompt=system_prompt(c["horizon"], c["dim"], c["bins"]), horizon=c["horizon"] + 1),
     "system_prompt does not match"),
    (lambda c: c.update(system_prompt="Be a robot."), "system_prompt does not match"),
    (lambda c: c.update(instruction_position="middle"), "instruction_position 'middle' is not one of"),
])
def test_hand_corrupted_policy_json_is_refused(full_ft, tmp_path, corrupt, message):
    bad = tmp_path / "bad"
    shutil.copytree(full_ft, bad)
    cfg = json.loads((bad / "policy.json").read_text())
    corrupt(cfg)
    (bad / "policy.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        Policy.from_pretrained(bad, device="cpu")


def test_pickle_weights_are_refused(full_ft, tmp_path):
    bad = tmp_path / "pickled"
    shutil.copytree(full_ft, bad)
    for f in (bad / "model").glob("*.safetensors"):
        f.unlink()
    (bad / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UserError, match="pickle"):
        Policy.from_pretrained(bad, device="cpu")
    assert main(["eval", str(bad), "--suite", "blockfind-reach", "--episodes-per-task", "1",
                 "--out", str(tmp_path / "e")]) == 2


def test_not_a_policy_dir(tmp_path):
    with pytest.raises(UserError, match="not a policy directory"):
        Policy.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(UserError, match="policy not found"):
        Policy.from_pretrained(tmp_path / "nope", device="cpu")


def test_instruction_position_is_saved_and_honoured(full_ft, tmp_path):
    cfg = json.loads((full_ft / "policy.json").read_text())
    assert cfg["instruction_position"] == "end"  # tiny-cpu.yaml's
    moved = tmp_path / "moved"
    shutil.copytree(full_ft, moved)
    (moved / "policy.json").write_text(json.dumps({**cfg, "instruction_position": "after_images"}))
    assert Policy.from_pretrained(moved, device="cpu").prompt.instruction_position == "after_images"
    # Same weights, the instruction moved into the user turn: the model reads a different sequence.
    assert not np.array_equal(chunks(full_ft), chunks(moved))
    # A policy.json from before instruction_position existed: instruction_first says where the words were.
    old = {k: v for k, v in cfg.items() if k != "instruction_position"}
    for first, position in ((True, "before_images"), (False, "after_images")):
        (moved / "policy.json").write_text(json.dumps({**old, "instruction_first": first}))
        assert Policy.from_pretrained(moved, device="cpu").prompt.instruction_position == position


def test_init_from_refuses_weights_trained_under_another_vocabulary(full_ft, tmp_path):
    from tinyvla.training.trainer import build_model

    other = tmp_path / "other-vocab"
    shutil.copytree(full_ft, other)
    file = other / "model" / "tokenizer.json"
    tok = json.loads(file.read_text())
    vocab = tok["model"]["vocab"]
    a, b = "0", "1"  # swap two ids: same size, same shapes, scrambled meaning
    vocab[a], vocab[b] = vocab[b], vocab[a]
    file.write_text(json.dumps(tok))
    with pytest.raises(UserError, match="another vocabulary"):
        build_model(load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", [f"model.init_from={other}"]))


def test_init_from_starts_a_run_from_a_policys_weights(full_ft):
    import torch

    from tinyvla.training.trainer import build_model

    recipe = load_recipe(ROOT / "recipes" / "tiny-cpu.yaml", [f"model.init_from={full_ft}"])
    model, _ = build_model(recipe)
    trained_model = Policy.from_pretrained(full_ft, device="cpu").model
    ours, theirs = model.state_dict(), trained_model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    fresh, _ = build_model(load_recipe(ROOT / "recipes" / "tiny-cpu.yaml"))
    assert not torch.equal(fresh.state_dict()["model.language_model.embed_tokens.weight"],
                           ours["model.language_model.embed_tokens.weight"])
    # A different architecture is one clear error, not a half-loaded model.
    with pytest.raises(UserError, match="do not fit this model"):
        build_model(load_recipe(ROOT / "recipes" / "tiny-cpu.yaml",
                                [f"model.init_from={full_ft}", "model.tiny.hidden_size=96"]))


def test_second_stage_writes_chunks_of_its_own_length(full_ft, tmp_path):
    """The named-colour stage starts from the reach policy's weights (chunks of 4) and writes chunks of 2: the chunk
    length belongs to the recipe and the policy it saves, not to the weights it starts from."""
    stage2 = smoke_trained("tiny-cpu-blockfind.yaml", tmp_path / "s2", init_from=full_ft)
    horizons = [json.loads((p / "policy.json").read_text())["horizon"] for p in (full_ft, stage2)]
    assert horizons == [4, 2]
    assert chunks(full_ft).shape[1:] == (4, 7) and chunks(stage2).shape[1:] == (2, 7)


def test_grounding_script_reports_every_figure(full_ft, monkeypatch, capsys):
    import runpy

    monkeypatch.setattr("sys.argv", ["blockfind_grounding.py", str(full_ft), "--episodes", "2"])
    runpy.run_path(str(ROOT / "scripts" / "blockfind_grounding.py"), run_name="__main__")
    out = capsys.readouterr().out
    ratios = [float(x) for x in out.split("per layer: ")[1].splitlines()[0].split()[1::2]]
    assert len(ratios) == 3  # embeddings + two layers of tiny-cpu.yaml's model
    assert ratios[0] > 0  # with instruction_position=end the answer position is the colour word itself
    assert "episodes 2: " in out and "first move to the named block: " in out and "dy " in out
