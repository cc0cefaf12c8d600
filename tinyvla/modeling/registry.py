"""Model names -> what to build.

Three kinds of names:
- short names of real checkpoints (`qwen3-2b` -> `Qwen/Qwen3-VL-2B-Instruct`), or any hub id / local directory;
- `tiny-qwen3`, `tiny-qwen2.5`: the same architectures at toy sizes with random weights and the 282-token byte
  tokenizer, for CPU training and tests (sizes overridable);
- `arch:qwen3-2b` ...: the full-size architecture built from the published config.json stored in
  `tinyvla/modeling/configs/`, random weights, real tokenizer vocabulary — for measuring GPU speed and memory without
  downloading weights.

Tiny configs obey the rules that make a Qwen-VL model silently wrong when broken (see `check_config`): M-RoPE sections
sum to head_dim / 2, the vision merger outputs the text width, deepstack layers exist, and the special-token ids and
vocabulary size come from the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tinyvla.errors import UserError
from tinyvla.hub import is_hub_id

HUB_MODELS = {
    "qwen3-2b": "Qwen/Qwen3-VL-2B-Instruct",
    "qwen3-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-8b": "Qwen/Qwen3-VL-8B-Instruct",
    "qwen2.5-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
}
TINY_MODELS = {"tiny-qwen3": "qwen3_vl", "tiny-qwen2.5": "qwen2_5_vl"}
ARCH_PREFIX = "arch:"

# Weight dtypes: the name recipes (model.dtype) and `--dtype` use -> torch's name for it. Defined here, without torch,
# so that recipe.py and export.py can check a name that modeling/loading.py's DTYPES then turns into a torch.dtype.
TORCH_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_CHOICES = tuple(TORCH_DTYPE_NAMES)  # ("fp32", "bf16", "fp16")

CONFIG_DIR = Path(__file__).parent / "configs"

# The published image-processor settings of each family (preprocessor_config.json): normalization and the pixel
# budget. Qwen2.5-VL normalizes with the CLIP mean/std, Qwen3-VL with 0.5/0.5. patch/merge sizes come from the model
# config so they can never disagree with the vision tower.
FAMILY_IMAGE_SETTINGS = {
    "qwen2_5_vl": {
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_pixels": 12845056,
    },
    "qwen3_vl": {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "max_pixels": 16777216},
}

# Default tiny sizes (FACTS §6: ~0.4 M parameters learns a closed-loop task on 2 CPU threads in minutes). A 64x64
# image with patch 8 and merge 2 becomes 8x8 patches -> 16 tokens; a tiled 128x64 pair -> 32 tokens.
TINY_DEFAULTS = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": None,  # None: hidden_size // num_attention_heads
    "vision_hidden_size": 64,
    "vision_depth": 2,
    "vision_intermediate_size": 256,
    "vision_num_heads": 4,
    "patch_size": 8,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "deepstack_visual_indexes": None,  # None: spread over the vision tower (Qwen3-VL only)
    "max_position_embeddings": 4096,
    "rope_theta": None,  # None: the family's published value
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name. kind: "hub" (hub id), "local" (a directory), "tiny", or "arch"."""

    kind: str
    name: str  # what the user typed
    source: str  # hub id, local path, family (tiny) or config json path (arch)
    family: str | None  # "qwen3_vl" | "qwen2_5_vl" | None when only the checkpoint's config can tell


def resolve_model_name(name: str) -> ModelRef:
    name = str(name).strip()
    if name in HUB_MODELS:
        hub_id = HUB_MODELS[name]
        return ModelRef("hub", name, hub_id, "qwen3_vl" if name.startswith("qwen3") else "qwen2_5_vl")
    if name in TINY_MODELS:
        return ModelRef("tiny", name, TINY_MODELS[name], TINY_MODELS[name])
    if name.startswith(ARCH_PREFIX):
        short = name[len(ARCH_PREFIX) :]
        path = CONFIG_DIR / f"{short}.json"
        if not path.is_file():
            known = ", ".join(ARCH_PREFIX + k for k in sorted(HUB_MODELS))
            raise UserError(f"unknown architecture {name!r}; known: {known}")
        return ModelRef("arch", name, str(path), "qwen3_vl" if short.startswith("qwen3") else "qwen2_5_vl")
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef("local", name, str(path.resolve()), None)
    if not is_hub_id(name):
        known = ", ".join(list(HUB_MODELS) + list(TINY_MODELS) + [ARCH_PREFIX + "qwen3-2b"])
        raise UserError(f"model {name!r} is not a known name ({known}), an existing directory, or a hub id (org/name)")
    return ModelRef("hub", name, name, None)


def known_models() -> dict[str, str]:
    """Every short name with what it means (for CLI help and docs)."""
    out = {k: v for k, v in HUB_MODELS.items()}
    out.update({k: f"{v} architecture, toy size, random weights, byte tokenizer" for k, v in TINY_MODELS.items()})
    out.update({ARCH_PREFIX + k: f"{v} architecture, full size, random weights" for k, v in HUB_MODELS.items()})
    return out


def _mrope_section(head_dim: int, family: str) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) in the published proportions.

    Qwen3-VL: [24, 20, 20] of 64; Qwen2.5-VL: [16, 24, 24] of 64. The sum MUST be head_dim/2: Qwen3-VL silently falls
    back to a default layout otherwise.
    """
    half = head_dim // 2
    hw_share = 20 / 64 if family == "qwen3_vl" else 24 / 64
    hw = max(1, int(half * hw_share))
    t = half - 2 * hw
    if t < 1:
        raise UserError(f"head_dim {head_dim} is too small for M-RoPE; use head_dim >= 6")
    return [t, hw, hw]


def _deepstack_indexes(depth: int, text_layers: int) -> list[int]:
    """Up to 3 vision layers spread over the tower, like [5, 11, 17] of 24; never >= depth (that silently disables
    deepstack) and no more than the text layers they are injected into."""
    n = max(1, min(3, depth - 1, text_layers))
    return sorted({max(0, (k + 1) * depth // (n + 1) - 1) for k in range(n)})


def tiny_config(family: str, tokenizer, overrides: dict | None = None):
    """A Qwen3VLConfig / Qwen2_5_VLConfig at toy size whose token ids and vocabulary come from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    unknown = set(overrides or {}) - set(TINY_DEFAULTS)
    if unknown:
        raise UserError(f"unknown tiny model setting(s) {sorted(unknown)}; allowed: {sorted(TINY_DEFAULTS)}")
    s = {**TINY_DEFAULTS, **(overrides or {})}
    hidden, heads = int(s["hidden_size"]), int(s["num_attention_heads"])
    kv_heads = int(s["num_key_value_heads"] or heads)
    head_dim = int(s["head_dim"] or hidden // heads)
    if heads % kv_heads:
        raise UserError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
    if family == "qwen2_5_vl" and head_dim * heads != hidden:
        raise UserError(f"Qwen2.5-VL needs hidden_size ({hidden}) divisible by num_attention_heads ({heads})")
    if int(s["vision_hidden_size"]) % int(s["vision_num_heads"]):
        raise UserError("vision_hidden_size must be divisible by vision_num_heads")
    ids = _token_ids(tokenizer)
    patch, merge, depth = int(s["patch_size"]), int(s["spatial_merge_size"]), int(s["vision_depth"])
    vision = {
        "depth": depth,
        "hidden_size": int(s["vision_hidden_size"]),
        "intermediate_size": int(s["vision_intermediate_size"]),
        "num_heads": int(s["vision_num_heads"]),
        "in_channels": 3,
        "patch_size": patch,
        "temporal_patch_size": int(s["temporal_patch_size"]),
        "spatial_merge_size": merge,
        "out_hidden_size": hidden,  # the merger projects into the text width
    }
    text = {
        "vocab_size": len(tokenizer),  # embeddings sized to the tokenizer, added tokens included
        "hidden_size": hidden,
        "intermediate_size": int(s["intermediate_size"]),
        "num_hidden_layers": int(s["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": int(s["max_position_embeddings"]),
        "rms_norm_eps": 1e-6,
        "bos_token_id": None,
        "eos_token_id": ids["im_end"],
        # None as in the published configs: a pad id would make that embedding row a frozen zero (padding_idx).
        "pad_token_id": None,
    }
    mrope = _mrope_section(head_dim, family)
    common = dict(
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=bool(s["tie_word_embeddings"]),
    )
    if family == "qwen3_vl":
        deep = s["deepstack_visual_indexes"]
        if deep is None:
            deep = _deepstack_indexes(depth, text["num_hidden_layers"])
        vision["deepstack_visual_indexes"] = list(deep)
        # Learned position table, bilinearly interpolated to the actual grid; 16x16 covers 128 px at patch 8.
        vision["num_position_embeddings"] = 256
        vision["hidden_act"] = "gelu_pytorch_tanh"
        text["head_dim"] = head_dim
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": float(s["rope_theta"] or 5_000_000),
            "mrope_section": mrope,
            "mrope_interleaved": True,
        }
        cfg = Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    elif family == "qwen2_5_vl":
        vision["hidden_act"] = "silu"
        # Window attention: a window of 4x4 merged tokens as in the real model (112 px / 14 px patches / merge 2).
        vision["window_size"] = 4 * merge * patch
        vision["fullatt_block_indexes"] = [depth - 1]
        vision["tokens_per_second"] = 2
        theta = float(s["rope_theta"] or 1_000_000)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "mrope_section": mrope}
        text["use_sliding_window"] = False
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    else:
        raise UserError(f"unknown tiny family {family!r}; use qwen3_vl or qwen2_5_vl")
    try:
        check_config(cfg, tokenizer)
    except ValueError as e:  # the overrides came from the user's recipe
        raise UserError(f"tiny model settings give an invalid model: {e}") from e
    return cfg


def arch_config(ref_or_name):
    """The full-size config of `arch:<short>` from the stored published config.json."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    ref = ref_or_name if isinstance(ref_or_name, ModelRef) else resolve_model_name(ref_or_name)
    if ref.kind != "arch":
        raise UserError(f"{ref.name!r} is not an arch:* name")
    data = json.loads(Path(ref.source).read_text())
    data.pop("_tinyvla", None)  # our provenance note, not a config field
    cls = Qwen3VLConfig if data["model_type"] == "qwen3_vl" else Qwen2_5_VLConfig
    return cls.from_dict(data)


def _token_ids(tokenizer) -> dict[str, int]:
    def tid(token: str) -> int:
        i = tokenizer.convert_tokens_to_ids(token)
        if i is None or i == tokenizer.unk_token_id:
            raise UserError(f"tokenizer has no {token} token; Qwen-VL models need the Qwen special tokens")
        return int(i)

    pad = tokenizer.pad_token_id
    return {
        "image": tid("<|image_pad|>"),
        "video": tid("<|video_pad|>"),
        "vision_start": tid("<|vision_start|>"),
        "vision_end": tid("<|vision_end|>"),
        "im_end": tid("<|im_end|>"),
        "pad": int(pad) if pad is not None else tid("<|endoftext|>"),
    }


def check_config(config, tokenizer=None) -> None:
    """Raise on the mismatches that make a Qwen-VL model run but compute the wrong thing."""
    text, vision = config.text_config, config.vision_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    rope = getattr(text, "rope_parameters", None) or {}
    section = rope.get("mrope_section")
    if section is None or sum(section) != head_dim // 2:
        raise ValueError(f"mrope_section {section} must sum to head_dim/2 = {head_dim // 2}")
    if vision.out_hidden_size != text.hidden_size:
        raise ValueError(f"vision out_hidden_size {vision.out_hidden_size} != text hidden_size {text.hidden_size}")
    deep = getattr(vision, "deepstack_visual_indexes", None)
    if deep is not None and any(i >= vision.depth or i < 0 for i in deep):
        raise ValueError(f"deepstack_visual_indexes {deep} must be < vision depth {vision.depth}")
    if tokenizer is not None:
        ids = _token_ids(tokenizer)
        for key, field in [("image", "image_token_id"), ("video", "video_token_id"),
                           ("vision_start", "vision_start_token_id"), ("vision_end", "vision_end_token_id")]:
            if getattr(config, field) != ids[key]:
                raise ValueError(f"config {field}={getattr(config, field)} but the tokenizer says {ids[key]}")
        if text.vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size {text.vocab_size} < tokenizer size {len(tokenizer)}")


def model_class(config):
    """The stock transformers class for a config: the Qwen-VL classes by model_type, else the image-text auto class."""
    import transformers

    mt = getattr(config, "model_type", None)
    if mt == "qwen3_vl":
        return transformers.Qwen3VLForConditionalGeneration
    if mt == "qwen2_5_vl":
        return transformers.Qwen2_5_VLForConditionalGeneration
    return transformers.AutoModelForImageTextToText


def count_parameters_meta(config) -> int:
    """Parameter count of the architecture, built on the meta device (no memory, ~0.1 s even for 8B)."""
    import torch

    cls = model_class(config)
    with torch.device("meta"):
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)
    return sum(p.numel() for p in model.parameters())
