"""FSDP2 (`torch.distributed.fsdp.fully_shard`) wrapping of the Qwen-VL models, the same units as
recipes/accelerate/fsdp-8gpu.yaml names for accelerate.

Used where tinyvla shards a model itself: the CPU multi-process tests (accelerate only enables FSDP on GPU backends,
so on CPU its FSDP config silently runs DDP) and scripts/gpu_check.py. Units: each decoder layer, each vision block,
and the vision tower as a whole — transformers' generate() calls the tower outside the model's forward
(get_image_features), so its own parameters must gather themselves, or evaluation under FSDP fails.
"""

from __future__ import annotations

WRAP_CLASSES = ("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock", "Qwen3VLVisionModel", "Qwen2_5_VLDecoderLayer",
                "Qwen2_5_VLVisionBlock", "Qwen2_5_VisionTransformerPretrainedModel")


def shard_model(model, mesh, mp_policy=None) -> int:
    """Shard `model` in place over `mesh`, innermost units first; returns the number of units (root excluded)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    units = [m for m in reversed(list(model.modules())) if type(m).__name__ in WRAP_CLASSES]  # children first
    for module in units:
        fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return len(units)
