"""Vision-tower attention over a whole batch of images in one SDPA call.

The Qwen-VL vision towers concatenate every image of a batch into one sequence and attend within each image. With
flash-attention that is one variable-length kernel; with SDPA or eager, transformers splits the sequence and calls
attention once per image (64 calls per step for a batch of 32 images in a 2-block tower), and on a CPU the
per-call overhead and the small-matrix backward dominate.

A VLA batch is the easy case: every image has the same size, so the packed sequence reshapes to
(images, heads, tokens, head_dim) and one batched SDPA call computes exactly the same thing. Images of unequal sizes
fall back to one call per image. The function is registered with transformers' AttentionInterface under a name that
contains "flash", which is what makes the vision attention hand it the image boundaries (cu_seqlens) instead of
splitting; it is only ever set on the vision tower, never on the language model (whose masks depend on the name).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_VISION_ATTENTION = "flash_packed_sdpa"
_registered = False


def packed_sdpa(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                **kwargs):
    """query/key/value: (1, heads, total_tokens, head_dim), images back to back; returns (1, total, heads, dim)."""
    if cu_seq_lens_q is None:
        raise ValueError("packed vision attention needs the image boundaries (cu_seq_lens_q)")
    lengths = (cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).tolist()
    _, heads, total, dim = query.shape
    p = dropout if module.training else 0.0
    if len(set(lengths)) == 1:  # every image the same size: one batched call
        n, length = len(lengths), lengths[0]
        q, k, v = (x.reshape(heads, n, length, dim).transpose(0, 1) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scaling)
        out = out.transpose(0, 1).reshape(heads, total, dim)
    else:
        pieces = zip(*(x[0].split(lengths, dim=1) for x in (query, key, value)))
        out = torch.cat([F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scaling) for q, k, v in pieces],
                        dim=1)
    return out.transpose(0, 1).unsqueeze(0).contiguous(), None


def register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(PACKED_VISION_ATTENTION, packed_sdpa)
        _registered = True


def pack_vision_attention(model) -> bool:
    """Switch a Qwen-VL model's vision tower from per-image SDPA to one batched call. Returns whether it did: only an
    SDPA vision tower is switched (flash-attention already packs; eager is left as the user asked)."""
    config = getattr(getattr(model, "config", None), "vision_config", None)
    if config is None or config._attn_implementation != "sdpa":
        return False
    register()
    config._attn_implementation = PACKED_VISION_ATTENTION
    return True
