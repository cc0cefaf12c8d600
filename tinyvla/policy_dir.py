"""The policy directory: what `train` writes as DIR/final and `export` writes for others.

    policy.json          H, D, B, action stats, prompt + image layout, ensembling defaults, recipe, dataset, versions
    action_stats.json    the codec's stats on their own (what `data stats --save-stats` writes)
    model/               config.json + model.safetensors (the base weights when a LoRA adapter is kept apart),
                         tokenizer + image processor files
    adapter/             optional peft LoRA adapter (adapter_config.json + adapter_model.safetensors)
    README.md            a model card (export)

Loading reads safetensors only — a directory holding pickled weights (*.bin, *.pt, *.pkl) is refused — and never runs
remote code.
"""

from __future__ import annotations

import platform
from pathlib import Path

from tinyvla.core.atomic import atomic_dir, write_json_atomic
from tinyvla.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def versions() -> dict:
    import torch
    import transformers

    import tinyvla

    out = {"tinyvla": tinyvla.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        pass
    return out


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def save_model_weights(model, directory: Path, merge_lora: bool = False, dtype=None, state_dict=None) -> bool:
    """Save `model` under directory/model, and directory/adapter for an unmerged LoRA adapter (returns True then).
    The live model is never modified. `state_dict`: the full weights when the live module holds only a shard
    (FSDP: `accelerator.get_state_dict`)."""
    import torch

    from tinyvla.modeling.loading import plain_state_dict

    has_adapter = is_peft_model(model) and not merge_lora
    base = model.get_base_model() if is_peft_model(model) else model
    if state_dict is not None:
        state = state_dict
    elif is_peft_model(model):
        state = plain_state_dict(base, merge_lora=merge_lora)
    else:
        state = base.state_dict()
    if dtype is not None:
        state = {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in state.items()}
        base.config.dtype = str(dtype).replace("torch.", "")
    base.save_pretrained(directory / "model", state_dict=state, safe_serialization=True)
    if has_adapter:
        model.save_pretrained(directory / "adapter", safe_serialization=True)
    return has_adapter


def save_policy_dir(policy, out: str | Path, recipe: dict | None = None, merge_lora: bool = False, dtype=None,
                    extra: dict | None = None, state_dict=None) -> Path:
    """Write `policy` to `out` atomically: the directory appears complete or not at all."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        has_adapter = save_model_weights(policy.model, tmp, merge_lora=merge_lora, dtype=dtype, state_dict=state_dict)
        policy.processor.save_pretrained(tmp / "model")
        cfg = policy.config()
        cfg.update({"lora_adapter": has_adapter, "versions": versions(), **(extra or {})})
        if recipe is not None:
            cfg["recipe"] = recipe
        write_json_atomic(tmp / "policy.json", cfg)
        write_json_atomic(tmp / "action_stats.json", policy.codec.stats.to_dict())
    return out


def check_safe_files(path: Path) -> None:
    """Refuse pickled weights: loading them can execute arbitrary code."""
    pickled = [p for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise UserError(f"{pickled[0]} is a pickle-format file; tinyvla loads safetensors only. Re-save the weights "
                        "with safetensors (model.save_pretrained(dir, safe_serialization=True))")
    if not any((path / "model").glob("*.safetensors")):
        raise UserError(f"{path / 'model'} has no .safetensors weights; export the policy again with tinyvla export")
    for weights in sorted(path.rglob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise UserError(f"{weights} is {problem}; copy the policy again or re-export it")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file's framing (cut short, unreadable header), or None. Reads the header only:
    8 bytes of header length, the JSON header, then the tensors, whose byte ranges the header lists."""
    import json
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return f"truncated ({size} bytes, its header alone says {8 + n})"
        try:
            header = json.loads(f.read(n))
            end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"], default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "not a valid safetensors file (unreadable header)"
    if size != 8 + n + end:
        return f"truncated ({size} of {8 + n + end} bytes)" if size < 8 + n + end else "longer than its header says"
    return None


def resolve_policy_path(path: str | Path) -> Path:
    """A local directory, or a hub repo id downloaded through huggingface_hub."""
    local = Path(path)
    if local.exists():
        return local
    if str(path).count("/") == 1 and not str(path).startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja",
                                                                      "*.md", "*.yaml", "**/*"]))
        except Exception as err:  # offline, missing repo, auth: one line, with the local alternative
            raise UserError(f"could not download policy {path} from the hub ({type(err).__name__}); pass a local "
                            "policy directory instead") from None
    raise UserError(f"policy not found: {path} (pass a directory written by tinyvla train/export, e.g. runs/NAME/final)")


def load_policy_dir(path: str | Path, device: str | None = None, dtype: str | None = None):
    """Load a policy directory into a ready `Policy` (validated)."""
    import torch

    from tinyvla.modeling.loading import load_policy_model
    from tinyvla.policy import policy_from_config, read_policy_json

    root = resolve_policy_path(path)
    cfg = read_policy_json(root)
    check_safe_files(root)
    model, processor = load_policy_model(root / "model", dtype=dtype or "fp32")
    if (root / "adapter").is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(root / "adapter"))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    meta = {k: cfg[k] for k in ("dataset", "base_model", "recipe") if k in cfg}
    policy = policy_from_config(model, processor, cfg, meta=meta)
    policy.source = str(root)
    return policy
