"""From a model name to a ready (model, processor) pair; LoRA, freezing, and safetensors-only policy checkpoints.

The models are the stock transformers classes (Qwen3VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration,
or AutoModelForImageTextToText for other ids): nothing here changes the architecture, so a tinyvla checkpoint is an
ordinary Hugging Face checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tinyvla.errors import UserError
from tinyvla.modeling import registry
from tinyvla.modeling.attention import pack_vision_attention
from tinyvla.modeling.processor import VLAProcessor, processor_for_config

# registry.DTYPE_CHOICES -> torch.dtype; torch's own names ("bfloat16", as HF configs write them) are accepted too.
DTYPES = {name: getattr(torch, long) for short, long in registry.TORCH_DTYPE_NAMES.items() for name in (short, long)}

# LoRA goes on the language model's attention and MLP projections only. A plain name list ("q_proj", "gate_proj", ...)
# would also match Qwen2.5-VL's vision MLP (model.visual.blocks.N.mlp.gate_proj); the `language_model` anchor prevents
# that. peft matches a string target_modules as a full regex on the module's dotted name.
DEFAULT_LORA_REGEX = (
    r".*\blanguage_model\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(registry.DTYPE_CHOICES)}; got {dtype!r}")
    return DTYPES[dtype]


def load_model(
    name: str,
    *,
    dtype="fp32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    tiny_overrides: dict | None = None,
    tokenizer=None,
    device=None,
):
    """(model, processor) for a short name, tiny-*, arch:*, hub id or local dir. See registry.py for the names.

    tokenizer: for tiny-* / arch:* which tokenizer to size the model to ("tiny" default for tiny-*, "qwen" for arch:*),
    a name for `load_tokenizer`, or a tokenizer object. Not allowed for real checkpoints: they bring their own.
    """
    from tinyvla.tokenizers import load_tokenizer

    ref = registry.resolve_model_name(name)
    torch_dtype = _dtype(dtype)
    if tiny_overrides and ref.kind != "tiny":
        raise UserError(f"tiny model settings only apply to tiny-* models, not {name!r}")

    if ref.kind in ("tiny", "arch"):
        tok = tokenizer if tokenizer is not None else ("tiny" if ref.kind == "tiny" else "qwen")
        tok = load_tokenizer(tok) if isinstance(tok, str) else tok
        if ref.kind == "tiny":
            config = registry.tiny_config(ref.family, tok, tiny_overrides)
        else:
            config = registry.arch_config(ref)
            try:
                registry.check_config(config, tok)
            except ValueError as e:
                raise UserError(f"{name} needs the real Qwen tokenizer ('qwen'): {e}") from e
        kwargs = {"dtype": torch_dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        cls = registry.model_class(config)
        # Build directly on the target device: a full-size model built on CPU first would double the time.
        with torch.device(device or "cpu"):
            model = cls._from_config(config, **kwargs)
        processor = processor_for_config(model.config, tok, ref.family)
        processor.settings["model_name"] = name
        # Random-weight models have no published generation config: stop on either end token, greedy, pad with
        # <|endoftext|>, as the real checkpoints' generation_config.json does (minus their sampling defaults).
        gen = model.generation_config
        gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = processor.eos_token_ids, processor.pad_token_id, None
        gen.do_sample = False
        pack_vision_attention(model)
        return model, processor

    if tokenizer is not None:
        raise UserError("a real checkpoint brings its own tokenizer; do not pass tokenizer= for " + repr(name))
    source = ref.source
    model = _from_pretrained(source, name, torch_dtype, attn_implementation, trust_remote_code, device)
    processor = VLAProcessor.from_pretrained(source)
    processor.settings.setdefault("model_name", name)
    return model, processor


def _from_pretrained(source: str, name: str, torch_dtype, attn_implementation, trust_remote_code, device):
    from transformers import AutoConfig

    local = Path(source).is_dir()
    hint = (
        f"download it where there is internet (huggingface-cli download {source} --local-dir DIR), pass DIR as the model"
        if not local
        else "the directory needs config.json and model.safetensors"
    )
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load the config of model {name!r} ({type(e).__name__}); {hint}") from e
    cls = registry.model_class(config)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device is not None:
        kwargs["device_map"] = {"": str(device)}
    try:
        model = cls.from_pretrained(source, config=config, **kwargs)
    except OSError as e:
        raise UserError(f"could not load the weights of model {name!r} ({e}); {hint}") from e
    pack_vision_attention(model)
    return model


# ---------------------------------------------------------------------------------------------------------- training
def freeze_vision(model) -> int:
    """Stop gradients into the vision tower (and its merger); returns the number of parameters frozen."""
    n = 0
    for pname, p in model.named_parameters():
        if re.search(r"(^|\.)visual\.", pname):
            p.requires_grad_(False)
            n += p.numel()
    if n == 0:
        raise UserError("found no vision parameters (named '*.visual.*') to freeze in this model")
    return n


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_regex: str | None = None):
    """Wrap `model` with peft LoRA adapters on the language model only; everything else is frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise UserError("LoRA needs peft: pip install peft") from e

    regex = target_regex or DEFAULT_LORA_REGEX
    names = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    if not names:
        raise UserError(f"LoRA target regex {regex!r} matches no module of this model")
    visual = [n for n in names if re.search(r"(^|\.)visual\.", n)]
    if visual:
        raise UserError(f"LoRA regex also matches vision modules (e.g. {visual[0]}); anchor it on language_model")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=regex, bias="none")
    peft_model = get_peft_model(model, config)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    wrong = [n for n in trainable if "lora_" not in n]
    if wrong or not trainable:
        raise RuntimeError(f"LoRA left non-adapter parameters trainable: {wrong[:3]}")
    return peft_model


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ------------------------------------------------------------------------------------------------------ checkpoints
def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def plain_state_dict(base, merge_lora: bool = True) -> dict:
    """The stock-model state dict of a peft-wrapped model's base (`peft_model.get_base_model()`): LoRA layers removed
    and, with merge_lora, each adapted weight replaced by W + delta (computed on CPU; the live model is untouched)."""
    from peft.tuners.lora import LoraLayer

    merged = {}
    for module_name, module in base.named_modules() if merge_lora else ():
        if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters:
            weight = module.get_base_layer().weight
            total = weight.detach().to("cpu", torch.float32)
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    total = total + module.get_delta_weight(adapter).detach().to("cpu", torch.float32)
            merged[f"{module_name}.weight"] = total.to(weight.dtype)
    state = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        clean = key.replace(".base_layer.", ".")
        state[clean] = merged.get(clean, value)
    return state


def save_policy_model(model, processor: VLAProcessor, directory, *, merge_lora: bool = True, dtype=None,
                      state_dict=None, adapter_dir=None) -> bool:
    """config.json + model.safetensors + tokenizer + image processor into `directory` (created; files overwritten).
    Returns True when a LoRA adapter was saved apart, into `adapter_dir` (merge_lora=False).

    The policy directory also holds files written by others (policy.json, action_stats.json), so making the whole
    directory appear atomically is the caller's job (tinyvla.policy_dir.save_policy_dir writes into an atomic_dir).

    A LoRA model is saved merged by default (W + B A * scale: a plain checkpoint anyone can load) without touching the
    live model, so training can go on. (peft's merge_adapter/unmerge_adapter would round the base weights twice in
    bf16.) `dtype`: cast floating weights on the way out. `state_dict`: the full weights when the live module holds
    only a shard (FSDP: `accelerator.get_state_dict`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    peft = is_peft_model(model)
    has_adapter = peft and not merge_lora
    if has_adapter and adapter_dir is None:
        raise ValueError("saving an unmerged LoRA adapter needs adapter_dir")
    base = model.get_base_model() if peft else model
    if state_dict is not None:
        state = state_dict
    elif peft:
        state = plain_state_dict(base, merge_lora=merge_lora)
    else:
        state = base.state_dict()
    if dtype is not None:
        state = {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in state.items()}
        base.config.dtype = str(dtype).replace("torch.", "")
    base.save_pretrained(directory, state_dict=state, safe_serialization=True)
    if has_adapter:
        model.save_pretrained(adapter_dir, safe_serialization=True)
    processor.save_pretrained(directory)
    for stale in directory.glob("*.bin"):  # never leave a pickle beside the safetensors
        stale.unlink()
    return has_adapter


def load_policy_model(directory, *, dtype="fp32", device=None, attn_implementation: str | None = None):
    """(model, processor) from a directory written by save_policy_model: safetensors only, no remote code."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UserError(f"policy model directory {directory} does not exist")
    if not (directory / "model.safetensors").is_file() and not (directory / "model.safetensors.index.json").is_file():
        raise UserError(f"{directory} has no model.safetensors; tinyvla loads safetensors checkpoints only")
    model = _from_pretrained(str(directory), str(directory), _dtype(dtype), attn_implementation, False, device)
    processor = VLAProcessor.from_pretrained(str(directory))
    return model, processor
