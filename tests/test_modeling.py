"""Model names -> (model, processor): tiny Qwen3-VL / Qwen2.5-VL end to end, arch configs, LoRA, checkpoints."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/huggingface_hub read it

import numpy as np
import pytest
import torch
from PIL import Image

from tinyvla.errors import UserError
from tinyvla.modeling import registry
from tinyvla.modeling.loading import (
    apply_lora,
    count_parameters,
    freeze_vision,
    load_model,
    load_policy_model,
    save_policy_model,
)
from tinyvla.modeling.processor import VLAProcessor, render_chat_text
from tinyvla.tokenizers import tiny_tokenizer

FAMILIES = {"tiny-qwen3": "qwen3_vl", "tiny-qwen2.5": "qwen2_5_vl"}
SYSTEM = "Predict 2 actions of 2 dims."


def image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=list(FAMILIES))
def tiny(request):
    torch.manual_seed(0)
    model, processor = load_model(request.param)
    return request.param, model, processor


def training_batch(processor):
    two = [image(64, 64, 1), image(64, 64, 2)]
    a = processor.build_training_example(two, "pick up the red block", SYSTEM, "0 1000 5 17")
    b = processor.build_training_example([image(64, 128, 3)], "open the drawer", SYSTEM, "999 3 250 1")
    return processor.collate([a, b], padding_side="right")


# ------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "short, published_params",
    # Total parameter counts shown on the model cards / safetensors index of each checkpoint.
    [("qwen3-2b", 2.13e9), ("qwen3-4b", 4.44e9), ("qwen3-8b", 8.77e9), ("qwen2.5-3b", 3.75e9), ("qwen2.5-7b", 8.29e9)],
)
def test_arch_configs_match_published_models(short, published_params):
    config = registry.arch_config("arch:" + short)
    registry.check_config(config)
    assert config.image_token_id == 151655 and config.vision_start_token_id == 151652
    assert config.video_token_id == 151656 and config.vision_end_token_id == 151653
    assert config.text_config.vocab_size >= 151669  # the Qwen tokenizer fits
    n = registry.count_parameters_meta(config)  # meta device: no memory
    assert abs(n - published_params) / published_params < 0.005, n


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tiny_config_obeys_the_qwen_rules(name):
    tok = tiny_tokenizer()
    overrides = {"hidden_size": 96, "num_attention_heads": 4, "num_hidden_layers": 3, "vision_depth": 4,
                 "patch_size": 16}
    for ov in (None, overrides):
        cfg = registry.tiny_config(FAMILIES[name], tok, ov)
        text, vision = cfg.text_config, cfg.vision_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
        assert vision.out_hidden_size == text.hidden_size
        assert text.vocab_size == len(tok)
        assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
        assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
        assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
        if name == "tiny-qwen3":
            deep = vision.deepstack_visual_indexes
            assert deep and max(deep) < vision.depth and len(deep) <= text.num_hidden_layers
    assert cfg.text_config.hidden_size == 96 and cfg.vision_config.patch_size == 16
    with pytest.raises(UserError, match="unknown tiny model setting"):
        registry.tiny_config(FAMILIES[name], tok, {"hiden_size": 32})
    with pytest.raises(UserError, match="deepstack"):
        registry.tiny_config("qwen3_vl", tok, {"deepstack_visual_indexes": [2]})  # depth is 2


def test_model_names_resolve_and_errors():
    assert registry.resolve_model_name("qwen3-2b").source == "Qwen/Qwen3-VL-2B-Instruct"
    assert registry.resolve_model_name("qwen2.5-7b").source == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert registry.resolve_model_name("arch:qwen3-8b").kind == "arch"
    assert registry.resolve_model_name("someorg/some-vlm").kind == "hub"
    for bad in ("arch:qwen9-1b", "not-a-model", "./missing/dir"):
        with pytest.raises(UserError):
            registry.resolve_model_name(bad)
    with pytest.raises(UserError, match="tiny-"):
        load_model("qwen3-2b", tiny_overrides={"hidden_size": 32})
    with pytest.raises(UserError, match="dtype"):
        load_model("tiny-qwen3", dtype="fp8")
    with pytest.raises(UserError, match="real Qwen tokenizer"):
        load_model("arch:qwen3-2b", tokenizer="tiny", device="meta")


def test_dtype_names_have_one_definition():
    from tinyvla.modeling.loading import DTYPES

    # The torch-free names (what recipes and --dtype check against) and the torch table built from them.
    assert registry.DTYPE_CHOICES == ("fp32", "bf16", "fp16")
    assert [DTYPES[n] for n in registry.DTYPE_CHOICES] == [torch.float32, torch.bfloat16, torch.float16]
    assert DTYPES["bfloat16"] is torch.bfloat16 and DTYPES["float16"] is torch.float16  # HF configs' spelling
    with pytest.raises(UserError, match="one of fp32, bf16, fp16; got 'int8'"):
        load_model("tiny-qwen3", dtype="int8")


def test_hub_model_offline_names_the_local_dir_alternative(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="local-dir"):
        load_model("nobody/no-such-vlm")


# ------------------------------------------------------------------------------------------------- processor
def test_processor_prompt_matches_stock_expansion(tiny):
    name, model, processor = tiny
    v = model.config.vision_config
    ip = processor.image_processor
    assert (ip.patch_size, ip.merge_size) == (v.patch_size, v.spatial_merge_size)
    assert ip.temporal_patch_size == v.temporal_patch_size

    two = processor.build_prompt([image(64, 64, 1), image(64, 64, 2)], "pick it", SYSTEM)
    assert two["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]
    ids = two["input_ids"]
    assert ids.count(processor.image_token_id) == 32  # 8*8 patches / 2^2 per image
    assert two["pixel_values"].shape == (128, 3 * 2 * 8 * 8)
    # What the stock processor does: expand each <|image_pad|> in the text, then tokenize the whole string.
    text = render_chat_text(SYSTEM, 2, "pick it").replace("<|image_pad|>", "<|image_pad|>" * 16)
    assert ids == processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    # ... and the text is what the chat template renders.
    messages = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "pick it"}]},
    ]
    templated = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert templated == render_chat_text(SYSTEM, 2, "pick it")
    suffix = processor.tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert ids[-len(suffix):] == suffix

    tiled = processor.build_prompt([image(64, 128, 3)], "pick it", SYSTEM)
    assert tiled["image_grid_thw"].tolist() == [[1, 8, 16]] and tiled["input_ids"].count(processor.image_token_id) == 32
    shown = processor.render_prompt_text(tiled)
    assert "<|vision_start|><|image_pad|>x32<|vision_end|>pick it<|im_end|>" in shown


@pytest.mark.parametrize("position,system", [("after_images", "vla0"), ("before_images", "vla0"), ("end", "vla0"),
                                             ("after_images", "none"), ("end", "none")])
def test_chat_text_is_the_chat_template_in_every_layout(tiny, position, system):
    from tinyvla.core.prompt import PromptSpec, build_messages

    _, _, processor = tiny
    spec = PromptSpec(horizon=2, dim=7, bins=1000, tile_views=False, instruction_position=position,
                      system_prompt=system)
    messages = build_messages("pick it", 2, spec)
    if position == "end":  # the assistant turn is open: the model continues the instruction
        templated = processor.tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    else:
        templated = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert templated == render_chat_text(spec.system, 2, "pick it", instruction_position=position)
    assert ("<|im_start|>system" in templated) == (system == "vla0")  # "none": no system turn at all
    ids = processor.build_prompt([image(64, 64, 1), image(64, 64, 2)], "pick it", spec.system,
                                 instruction_position=position)["input_ids"]
    pick, it = (processor.tokenizer.encode(w, add_special_tokens=False)[-1] for w in ("pick", " it"))
    # The instruction's first token comes before the images only in before_images; with end, its last word is the
    # prompt's last token: the one that predicts the first action digit.
    assert (ids.index(pick) < ids.index(processor.image_token_id)) == (position == "before_images")
    assert (ids[-1] == it) == (position == "end")


def test_instruction_at_the_end_is_read_not_supervised(tiny):
    _, _, processor = tiny
    ex = processor.build_training_example([image(64, 64, 1)], "pick it", SYSTEM, "12 0", instruction_position="end")
    start, end = ex["action_span"]
    it = processor.tokenizer.encode(" it", add_special_tokens=False)[-1]
    assert ex["input_ids"][start - 1] == it  # the first action digit is predicted at the instruction's last word
    assert ex["labels"][:start] == [-100] * start and processor.decode(ex["input_ids"][start:end]) == "12 0"


def test_training_example_and_collate(tiny):
    _, _, processor = tiny
    ex = processor.build_training_example([image(64, 64, 1)], "go", SYSTEM, "12 0")
    start, end = ex["action_span"]
    assert processor.decode(ex["input_ids"][start:end]) == "12 0" and end - start == 4
    assert ex["labels"][:start] == [-100] * start
    assert ex["labels"][start:] == ex["input_ids"][start:] and ex["labels"][-1] == processor.im_end_token_id

    short = processor.build_prompt([image(64, 64, 2)], "go", SYSTEM)
    long = processor.build_prompt([image(64, 64, 3), image(64, 64, 4)], "go further away", SYSTEM)
    for side in ("left", "right"):
        batch = processor.collate([short, long], padding_side=side)
        n = len(short["input_ids"])
        width = batch["input_ids"].shape[1]
        assert width == len(long["input_ids"])
        assert batch["attention_mask"][0].sum() == n
        real = slice(width - n, width) if side == "left" else slice(0, n)
        assert batch["input_ids"][0, real].tolist() == short["input_ids"]
        assert (batch["input_ids"][0][batch["attention_mask"][0] == 0] == processor.pad_token_id).all()
        mm = batch["mm_token_type_ids"]
        assert torch.equal(mm == 1, batch["input_ids"] == processor.image_token_id) and mm.max() == 1
        assert batch["image_grid_thw"].shape == (3, 3) and batch["pixel_values"].shape[0] == 3 * 64
    batch = processor.collate([ex, processor.build_training_example([image(64, 64, 5)], "a longer one", SYSTEM, "1")])
    assert (batch["labels"][0][batch["attention_mask"][0] == 0] == -100).all()
    with pytest.raises(ValueError, match="labels"):
        processor.collate([ex, short])


# ------------------------------------------------------------------------------------------------- model
def test_forward_backward_generate(tiny):
    name, model, processor = tiny
    model.train()
    batch = training_batch(processor)
    out = model(**batch)
    assert torch.isfinite(out.loss) and 4.0 < out.loss.item() < 7.0  # ~ln(vocab) at random init
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("visual" in n and g.abs().sum() > 0 for n, g in grads.items())  # gradient reaches the vision tower
    assert any("language_model" in n and g.abs().sum() > 0 for n, g in grads.items())
    model.zero_grad()

    model.eval()
    p1 = processor.build_prompt([image(64, 128, 7)], "go", SYSTEM)
    p2 = processor.build_prompt([image(64, 64, 8), image(64, 64, 9)], "a much longer instruction", SYSTEM)
    left = processor.collate([p1, p2], padding_side="left")
    # mm_token_type_ids drive the 3-D M-RoPE: the tiled image's 32 tokens sit on a 4x8 (h, w) grid of positions,
    # all sharing one temporal position, and the text after it resumes at start + max(4, 8).
    pos, _ = model.model.get_rope_index(
        left["input_ids"], mm_token_type_ids=left["mm_token_type_ids"],
        image_grid_thw=left["image_grid_thw"], attention_mask=left["attention_mask"])
    img = (left["input_ids"][0] == processor.image_token_id).nonzero().flatten()
    t, h, w = (pos[k, 0, img] - pos[k, 0, img[0]] for k in range(3))
    assert t.tolist() == [0] * 32
    assert sorted(set(h.tolist())) == [0, 1, 2, 3] and sorted(set(w.tolist())) == list(range(8))
    assert (pos[:, 0, img[-1] + 1] == pos[0, 0, img[0]] + 8).all()
    with torch.no_grad():
        # Left padding must not change what the model sees: same next-token logits as each prompt alone.
        batched = model(**left).logits[:, -1]
        alone = model(**processor.collate([p1])).logits[:, -1]
        assert torch.allclose(batched[0], alone[0], atol=1e-4)
        gen = model.generate(**left, max_new_tokens=6, do_sample=False,
                             eos_token_id=processor.eos_token_ids, pad_token_id=processor.pad_token_id)
    assert gen.shape[0] == 2 and gen.shape[1] > left["input_ids"].shape[1]
    assert torch.equal(gen[:, : left["input_ids"].shape[1]], left["input_ids"])


def test_save_load_roundtrip_identical_logits(tiny, tmp_path):
    name, model, processor = tiny
    model.eval()
    save_policy_model(model, processor, tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"} <= files
    assert "tinyvla_processor.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded, loaded_processor = load_policy_model(tmp_path)
    loaded.eval()
    batch = training_batch(processor)
    again = loaded_processor.build_prompt([image(64, 64, 1)], "go", SYSTEM)
    first = processor.build_prompt([image(64, 64, 1)], "go", SYSTEM)
    assert again["input_ids"] == first["input_ids"] and torch.equal(again["pixel_values"], first["pixel_values"])
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_lora_targets_language_model_only(tiny, tmp_path):
    name, model, processor = tiny
    torch.manual_seed(1)
    fresh, _ = load_model(name)
    if name == "tiny-qwen2.5":
        # The pitfall the regex exists for: a plain name list also hits the vision MLP.
        from peft.tuners.tuners_utils import check_target_module_exists
        from peft import LoraConfig

        plain = LoraConfig(target_modules=["q_proj", "gate_proj"])
        hit = [n for n, _ in fresh.named_modules() if check_target_module_exists(plain, n)]
        assert any(".visual." in n for n in hit)
    peft_model = apply_lora(fresh, r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    assert any("mlp.down_proj" in n for n in trainable) and any("self_attn.q_proj" in n for n in trainable)
    assert count_parameters(peft_model, trainable_only=True) < 0.1 * count_parameters(peft_model)

    # A LoRA checkpoint is saved merged and loads as a plain model with the same outputs.
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    peft_model.eval()
    batch = training_batch(processor)
    with torch.no_grad():
        before = peft_model(**batch).logits
    save_policy_model(peft_model, processor, tmp_path)
    with torch.no_grad():
        assert torch.equal(peft_model(**batch).logits, before)  # saving left the live model untouched
    plain, _ = load_policy_model(tmp_path)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(**batch).logits, before, atol=1e-4)


def test_freeze_vision():
    model, _ = load_model("tiny-qwen3")
    n = freeze_vision(model)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert n > 0 and frozen and all(".visual." in f for f in frozen)
    assert all(p.requires_grad for name, p in model.named_parameters() if "language_model" in name)


def test_processor_from_stock_checkpoint_dir_keeps_image_size(tmp_path):
    # A downloaded Qwen3-VL checkpoint ships preprocessor_config.json with min_pixels 65536, which would upscale a
    # 224x224 image to 256x256 (64 tokens). Loaded through VLAProcessor it keeps 224x224 (7x7 = 49 tokens).
    tiny_tokenizer().save_pretrained(str(tmp_path))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
    }))
    processor = VLAProcessor.from_pretrained(str(tmp_path))
    assert processor.image_token_count(224, 224) == 49
    prompt = processor.build_prompt([image(224, 224, 0)], "go", SYSTEM)
    assert prompt["image_grid_thw"].tolist() == [[1, 14, 14]]
    assert list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5]


# ------------------------------------------------------------------------------------------------- speed paths, exact
def _loss_and_grads(model, batch, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("same_size", [True, False])
def test_packed_vision_attention_equals_per_image_sdpa(tiny, same_size):
    from tinyvla.modeling.attention import PACKED_VISION_ATTENTION

    _, model, processor = tiny
    vision = model.config.vision_config
    assert vision._attn_implementation == PACKED_VISION_ATTENTION  # load_model switched it on
    if same_size:
        items = [processor.build_training_example([image(64, 128, s)], "go", SYSTEM, "1 2 3 4") for s in range(3)]
        batch = processor.collate(items, padding_side="right")
    else:
        batch = training_batch(processor)  # 64x64, 64x64 and 64x128 images: the per-image fallback
    model.train()
    loss_fn = lambda m, b: m(**b).loss  # noqa: E731
    try:
        packed = _loss_and_grads(model, batch, loss_fn)
        vision._attn_implementation = "sdpa"  # transformers' own path: one SDPA call per image
        split = _loss_and_grads(model, batch, loss_fn)
    finally:
        vision._attn_implementation = PACKED_VISION_ATTENTION
    torch.testing.assert_close(packed[0], split[0], rtol=1e-5, atol=1e-6)
    assert packed[1].keys() == split[1].keys() and any("visual" in n for n in packed[1])
    for n in packed[1]:
        torch.testing.assert_close(packed[1][n], split[1][n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("padding_side", ["right", "left"])  # right: the padding mask is dropped; left: kept
def test_answer_loss_equals_the_models_own_loss(tiny, padding_side):
    from tinyvla.training.trainer import answer_loss

    _, model, processor = tiny
    model.train()
    two = [image(64, 64, 1), image(64, 64, 2)]
    items = [processor.build_training_example(two, "pick up the red block", SYSTEM, "0 1000 5 17"),
             processor.build_training_example([image(64, 128, 3)], "open the drawer", SYSTEM, "999 3 250 1 8")]
    batch = processor.collate(items, padding_side=padding_side)  # different prompt and answer lengths
    assert (batch["attention_mask"] == 0).any()
    full = _loss_and_grads(model, batch, lambda m, b: m(**b).loss)
    ours = _loss_and_grads(model, batch, answer_loss)
    torch.testing.assert_close(ours[0], full[0], rtol=1e-5, atol=1e-6)
    for n in full[1]:
        torch.testing.assert_close(ours[1][n], full[1][n], rtol=1e-4, atol=1e-6, msg=n)
