"""The official VLA-0 protocol details and the import of its released checkpoint (tinyvla/vla0.py).

The checkpoint here is built the way NVlabs/vla0 builds its own (rv_train/train.py, rv_train/models/qwen/model.py):
a Qwen2.5-VL (tiny, from config) saved with `save_pretrained` as model_last/ (transformers writes the <= 4.51 key
layout: `model.layers.*`, `visual.*`), a model_last.pth with {cfg, epoch, model_state, optimizer_state,
lr_sched_state}, the stats dict pickled with pickle.dump, and a config.yaml like configs/vla0.yaml after yacs's dump.

The Qwen2.5-VL chat template in tests/fixtures/qwen2_5_vl_chat_template.jinja is the published Qwen2-VL / Qwen2.5-VL
template as transformers' own processor tests (tests/models/qwen2_vl/test_processor_qwen2_vl.py) carry it: this
machine has no hub access, and the project's CHAT_TEMPLATE leaves "Picture N:" out on purpose.
"""

import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tinyvla.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = (ROOT / "tests" / "fixtures" / "qwen2_5_vl_chat_template.jinja").read_text()
SIDE = 64  # per view; the tiny model's patch 8 x merge 2 keeps it as is
STATS = {"out_ori_act": {"min": np.array([-0.9, -0.8, -0.95, -0.2, -0.3, -0.35, -1.0], np.float32),
                         "max": np.array([0.93, 0.87, 0.94, 0.21, 0.33, 0.36, 1.0], np.float32),
                         "mean_ema": np.zeros(7, np.float64), "std_ema": np.full(7, 0.3)},
         "ori_act": {"min": np.full(7, -1.0), "max": np.full(7, 1.0)}}


def _messages(instruction, n_images=1):
    from tinyvla.core.prompt import PromptSpec, build_messages

    return build_messages(instruction, n_images, PromptSpec())


# ------------------------------------------------------------------------------------------------------------- prompt
@pytest.mark.parametrize("n_images", [1, 2])
def test_vision_id_renders_as_qwen25_template(n_images):
    from tinyvla.core.prompt import PromptSpec
    from tinyvla.modeling.processor import render_chat_text
    from tinyvla.tokenizers import tiny_tokenizer

    tok = tiny_tokenizer()
    system = PromptSpec().system
    texts = {}
    for vision_id in (True, False):
        texts[vision_id] = tok.apply_chat_template(_messages("put the bowl on the plate", n_images),
                                                   chat_template=TEMPLATE, tokenize=False, add_generation_prompt=True,
                                                   add_vision_id=vision_id)
        assert texts[vision_id] == render_chat_text(system, n_images, "put the bowl on the plate", vision_id=vision_id)
    labels = [f"Picture {k + 1}: <|vision_start|>" for k in range(n_images)]
    assert all(label in texts[True] for label in labels) and "Picture" not in texts[False]


def test_inspect_tokens_prompt_ids_equal_the_qwen25_template(capsys):
    """`inspect-tokens --set data.vision_id=true --json` prints the ids Qwen2.5-VL's own template gives, with the
    real Qwen vocabulary: "Picture 1: " costs 5 tokens."""
    from tinyvla.cli.main import main
    from tinyvla.tokenizers import qwen_tokenizer

    recipe = str(ROOT / "recipes" / "qwen2.5-3b-8xa100.yaml")
    instruction = "put the black bowl on the plate"
    assert main(["inspect-tokens", recipe, "--set", "data.vision_id=true", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vision_id"] is True and report["instruction"] == instruction
    tok = qwen_tokenizer()
    n_image = report["counts"]["vision"] - 2  # the image pads between vision_start and vision_end

    def template_ids(vision_id):
        text = tok.apply_chat_template(_messages(instruction), chat_template=TEMPLATE, tokenize=False,
                                       add_generation_prompt=True, add_vision_id=vision_id)
        return tok(text.replace("<|image_pad|>", "<|image_pad|>" * n_image), add_special_tokens=False)["input_ids"]

    assert report["prompt_ids"] == template_ids(True)
    assert len(template_ids(True)) - len(template_ids(False)) == 5
    assert "<|im_start|>user\nPicture 1: <|vision_start|>" in tok.decode(report["prompt_ids"])


# --------------------------------------------------------------------------------------------------------- jitter
def test_one_colour_jitter_for_both_views_unless_per_view():
    from tinyvla.data.transforms import ImageSpec, model_images

    frame = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for per_view, same in ((False, True), (True, False)):
        spec = ImageSpec(image_size=32, crop_scale=1.0, tile_views=False, jitter_per_view=per_view)
        a, b = (np.asarray(im) for im in model_images([frame, frame], spec, np.random.default_rng(5)))
        assert np.array_equal(a, b) == same
        plain = np.asarray(model_images([frame, frame], spec, None)[0])
        assert not np.array_equal(a, plain)  # jittered at all


# ----------------------------------------------------------------------------------------------- the official checkpoint
class _RunsCode:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_vla0_model(seed=0):
    from tinyvla.modeling.loading import load_model

    torch.manual_seed(seed)
    model, processor = load_model("tiny-qwen2.5")
    with torch.no_grad():  # away from the init's near-zero logits, so a wrong mapping shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval(), processor


def _config_yaml(path: Path, base: str):
    cfg = {"EXP": {"EXP_ID": "vla0", "MODEL": "qwen", "LR_SCHED": "none", "AMP": True, "OPTIMIZER": "adamw"},
           "TRAIN": {"lr": 5e-6, "num_epochs": 24, "clip_grad_norm": 0.0, "l2": 1e-10},
           "DATALOADER": {"batch_size": 8, "ROBOVERSE": {
               "cfg_path": "libs/RoboVerse/roboverse/configs/img_libero_aug.yaml",
               "cfg_opts": f"IMAGE.crop_img:0.875:IMAGE.img_size:{SIDE}:IMAGE.cam_list:('3p1','3p2')"}},
           "MODEL": {"QWEN": {"action_type": "original", "add_vision_id": True, "use_lora": False,
                              "use_qlora": False, "rgb_img_size": [SIDE, SIDE], "original_action_dim": 7,
                              "horizon": 8, "history": 1, "num_cam": 2, "tiled_rgb_imgs": True,
                              "num_bins_actions": 1000, "action_mask_aug_per": 0.4, "qwen_model_id": base}}}
    path.write_text(yaml.safe_dump(cfg))  # yacs's cfg.dump() is yaml.safe_dump of the nested dict


def _official_checkpoint(root: Path, model, processor, weights_in_pth: bool) -> Path:
    """A run directory as rv_train/train.py leaves it."""
    run = root / "run"
    run.mkdir()
    base = root / "base"  # the base model folder config.yaml's qwen_model_id names (tokenizer, preprocessor, config)
    model.config.save_pretrained(base)
    processor.tokenizer.save_pretrained(base)
    processor.image_processor.save_pretrained(base)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-6)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    opt.zero_grad()
    if weights_in_pth:  # the wrapper's own state dict: its `model.` prefix over the <= 4.51 layout
        hf = root / "hf"
        model.save_pretrained(hf)  # transformers writes the <= 4.51 names
        from safetensors.torch import load_file

        old = load_file(str(hf / "model.safetensors"))
        old["lm_head.weight"] = old["model.embed_tokens.weight"]  # nn.Module.state_dict() lists the tied head too
        model_state = OrderedDict(("model." + k, v) for k, v in old.items())
    else:  # QwenActor has save_pretrained: weights in model_last/, model_state None
        model.save_pretrained(run / "model_last")
        processor.tokenizer.save_pretrained(run / "model_last")
        processor.image_processor.save_pretrained(run / "model_last")
        model_state = None
    yacs_attrs = {"__immutable__": True, "__deprecated_keys__": set(), "__renamed_keys__": {}, "__new_allowed__": False}
    torch.save({"cfg": yacs_attrs, "epoch": 23, "model_state": model_state, "optimizer_state": opt.state_dict(),
                "lr_sched_state": None}, run / "model_last.pth")
    with open(run / "dataset_stats.pkl", "wb") as f:
        pickle.dump(STATS, f)
    _config_yaml(run / "config.yaml", str(base))
    return run


def _observation(seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (80, 80, 3), dtype=np.uint8) for _ in range(2)]


@pytest.mark.parametrize("weights_in_pth", [False, True])
def test_import_round_trip_same_logits(tmp_path, capsys, weights_in_pth):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tinyvla.cli.main import main
    from tinyvla.policy import Policy

    model, processor = _tiny_vla0_model()
    run = _official_checkpoint(tmp_path, model, processor, weights_in_pth)
    if not weights_in_pth:  # as Qwen2.5-VL-3B-Instruct's generation_config.json, which the official eval applies
        gen = json.loads((run / "model_last" / "generation_config.json").read_text())
        (run / "model_last" / "generation_config.json").write_text(json.dumps({**gen, "repetition_penalty": 1.05}))
    out = tmp_path / "policy"
    assert main(["import", "vla0", str(run), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert not any(p.suffix in (".pth", ".pkl", ".bin") for p in out.rglob("*"))
    cfg = json.loads((out / "policy.json").read_text())
    assert cfg["vision_id"] is True and cfg["horizon"] == 8 and cfg["bins"] == 1000
    assert cfg["action_stats"]["min"] == pytest.approx(STATS["out_ori_act"]["min"].tolist())
    assert cfg["action_stats"]["max"] == pytest.approx(STATS["out_ori_act"]["max"].tolist())
    assert cfg["image"] == {"image_size": SIDE, "crop_scale": 0.875, "color_jitter": True, "tile_views": True,
                            "jitter_per_view": False}
    assert cfg["recipe"]["eval"]["seeding"] == "per_task"
    penalty = 1.0 if weights_in_pth else 1.05
    assert cfg["recipe"]["eval"]["repetition_penalty"] == penalty
    from tinyvla.evaluate import load_policy

    assert load_policy(str(out), device="cpu")[0].config.decoding.repetition_penalty == penalty  # what eval uses

    policy = Policy.from_pretrained(out, device="cpu")
    image, wrist = _observation(1)
    batch = policy.encode_batch([image], [wrist], ["put the bowl on the plate"])
    ids = batch["input_ids"][0].tolist()
    assert "Picture 1: " in policy.processor.tokenizer.decode(ids)  # the official prompt
    # The reference: the official-layout weights loaded into a stock class by transformers' own loader.
    if weights_in_pth:
        ref_dir = tmp_path / "hf"
    else:
        ref_dir = run / "model_last"
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(ref_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        got = policy.model(**batch).logits
        want = stock(**batch).logits
        orig = model(**batch).logits
    assert torch.equal(got, want) and torch.equal(got, orig)
    chunk = policy.predict_chunk(image, wrist, "put the bowl on the plate")
    lo, hi = STATS["out_ori_act"]["min"], STATS["out_ori_act"]["max"]
    assert chunk.shape == (8, 7) and np.all(chunk >= lo - 1e-6) and np.all(chunk <= hi + 1e-6)


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, capsys):
    from tinyvla.cli.main import main
    from tinyvla.vla0 import read_checkpoint_pth, read_stats_pickle

    model, processor = _tiny_vla0_model()
    run = _official_checkpoint(tmp_path, model, processor, weights_in_pth=False)
    marker = tmp_path / "pwned"
    with open(run / "dataset_stats.pkl", "wb") as f:
        pickle.dump({"out_ori_act": _RunsCode(marker)}, f)
    capsys.readouterr()  # the fixture's own progress bars
    rc = main(["import", "vla0", str(run), "--out", str(tmp_path / "policy")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: refused to unpickle") and "posix.system" in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "policy").exists()

    torch.save({"model_state": _RunsCode(marker)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="refused to unpickle .* posix.system") as info:
        read_checkpoint_pth(tmp_path / "bad.pth")
    assert "\n" not in str(info.value) and not marker.exists()
    # what the official code writes is read
    assert read_checkpoint_pth(run / "model_last.pth")["epoch"] == 23
    with open(tmp_path / "good.pkl", "wb") as f:
        pickle.dump(STATS, f)
    assert np.array_equal(read_stats_pickle(tmp_path / "good.pkl")["out_ori_act"]["max"], STATS["out_ori_act"]["max"])


def test_import_user_errors(tmp_path):
    from tinyvla.vla0 import import_vla0, to_current_layout

    with pytest.raises(UserError, match="has no config.yaml"):
        import_vla0(tmp_path, tmp_path / "out")
    assert to_current_layout({"module.model.visual.a": 1, "module.model.model.layers.0.w": 2,
                              "module.model.lm_head.weight": 3}) == {
        "model.visual.a": 1, "model.language_model.layers.0.w": 2, "lm_head.weight": 3}
    model, processor = _tiny_vla0_model()
    run = _official_checkpoint(tmp_path, model, processor, weights_in_pth=True)
    ckpt = torch.load(run / "model_last.pth", weights_only=True)
    ckpt["model_state"]["model.model.layers.9.mlp.up_proj.weight"] = torch.zeros(1)
    torch.save(ckpt, run / "model_last.pth")
    with pytest.raises(UserError, match="1 unknown .*layers.9"):
        import_vla0(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------ LIBERO
def _libero():
    from tinyvla.envs import libero as L

    if not L.libero_installed():
        pytest.skip("LIBERO simulator not installed (bash scripts/install-sim.sh)")
    return L


def _rng_state():
    """numpy's global RNG state (LIBERO's seed() and object placement use it): key words and position."""
    _, key, pos, *_ = np.random.get_state()
    return key.tobytes(), int(pos)


@pytest.mark.libero
@pytest.mark.slow  # one env, four hard resets: ~30 s on 2 busy cores
def test_per_task_seeding_replays_the_official_order():
    """Init state 1 starts from the same simulator RNG state (and scene) whether its env just ran init state 0 (the
    official order) or has to replay it; per-episode seeding starts it elsewhere."""
    L = _libero()
    with L.LiberoEnv("libero_object", 0, L.LiberoProtocol(max_steps=3, wait_steps=2)) as env:
        env.reset(options={"init_state_index": 0})
        for _ in range(3):
            env.step([0, 0, 0.5, 0, 0, 0, -1])  # stepping draws nothing from the RNG the resets use
        obs, info = env.reset(options={"init_state_index": 1})
        in_order = _rng_state()
        assert info["resets_replayed"] == 0
        obs2, info2 = env.reset(options={"init_state_index": 1})  # out of order: replays seed + init state 0
        assert info2["resets_replayed"] == 1
        assert _rng_state() == in_order
        assert np.array_equal(obs["image"], obs2["image"])
        env.reset(seed=7, options={"init_state_index": 1})  # per_episode
        assert _rng_state() != in_order


@pytest.mark.libero
@pytest.mark.slow  # import + one 3-step LIBERO episode
def test_imported_vla0_policy_runs_in_libero_and_results_record_the_protocol(tmp_path):
    _libero()
    from tinyvla.evaluate import evaluate
    from tinyvla.vla0 import import_vla0

    model, processor = _tiny_vla0_model()
    run = _official_checkpoint(tmp_path, model, processor, weights_in_pth=False)
    policy_dir = import_vla0(run, tmp_path / "policy")
    out = tmp_path / "eval"
    evaluate(str(policy_dir), suite="libero_object", episodes_per_task=1, tasks="0", max_steps=3, out=out)
    saved = json.loads((out / "results.json").read_text())
    p = saved["protocol"]
    assert p["seeding"] == "per_task" and p["seed"] == 7
    assert p["decoding"] == {"method": "constrained_greedy", "repetition_penalty": 1.0, "speculative": True}
    assert p["training_color_jitter"] == "shared" and p["vision_id"] is True
    assert saved["episodes"] == 1 and saved["errors"] == 0


def test_seeding_choice_reaches_the_episodes():
    """per_task: LIBERO episodes reset without a seed (the env keeps the official order); per_episode: with it."""
    from tinyvla.envs.suites import EnvFactory, SuiteSetup, setup_suite
    from tinyvla.evaluation.episodes import episode_list
    from tinyvla.recipe import recipe_from_dict

    for seeding, reset_seed in (("per_task", None), ("per_episode", 7)):
        setup = SuiteSetup("libero_object", ["task a", "task b"], {"seed": 7, "seeding": seeding},
                           EnvFactory("libero_object", {}), init_states_per_task=50)
        episodes = episode_list(setup, [0, 1], 3)
        assert [e.init_state_index for e in episodes] == [0, 1, 2, 0, 1, 2]
        assert {e.reset_seed for e in episodes} == {reset_seed}
    with pytest.raises(UserError, match="--seeding 'per_run': choose per_task"):
        setup_suite("blockfind-reach", seeding="per_run")
    with pytest.raises(UserError, match="eval.seeding: 'per_run' is not one of per_task, per_episode"):
        recipe_from_dict({"eval": {"seeding": "per_run"}})
    with pytest.raises(UserError, match="eval.repetition_penalty must be > 0"):
        recipe_from_dict({"eval": {"repetition_penalty": 0}})
