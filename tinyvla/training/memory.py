"""Memory per GPU of a recipe's training, estimated from parameter counts (no GPU, no weights downloaded).

    tinyvla doctor recipes/qwen3-8b-h100.yaml      # prints this estimate for 1 GPU (DDP) and FSDP over 8

Bytes per parameter by precision mode (train.precision / train.optimizer):

    mode                         weights  grads  optimizer state            autocast copy
    bf16-mixed + adamw            4 fp32   4      8 (two fp32 moments)       2 (bf16 weights during fwd/bwd)
    bf16 + adamw-kahan            2 bf16   2      6 (two moments + Kahan buffer, bf16)
    bf16 + adamw                  2        2      4 (loses small updates: scripts/bench_bf16_updates.py)
    fp32 + adamw                  4        4      8
    adamw8bit                     -        -      2

Grads and optimizer state count trainable parameters only (LoRA: the adapters). FSDP (full shard) divides weights,
grads and optimizer state by the GPU count; DDP keeps all of it on every GPU plus gradient buckets (one more copy of
the grads). Activations are the rough part: per layer and token, ~34 x hidden bytes under bf16 without activation
checkpointing (Korthikanti et al. 2022, with flash/SDPA attention), ~2 x hidden bytes with it; plus the answer
positions' logits (bf16, their fp32 copy and its gradient). Real use adds the CUDA context and allocator slack
(~1-3 GB): leave headroom.
"""

from __future__ import annotations

GB = 1e9


def _arch_name(model_name: str) -> str | None:
    from tinyvla.modeling.registry import HUB_MODELS, resolve_model_name

    ref = resolve_model_name(model_name)
    if ref.kind == "arch":
        return ref.name
    if ref.kind == "hub" and ref.name in HUB_MODELS:
        return "arch:" + ref.name
    return None


def count_model(recipe) -> dict:
    """Parameter counts (total, vision, trainable) and the text/vision shapes, from the model built on the meta
    device: full-size names use the stored published config, tiny-* the recipe's tiny config."""
    import torch

    from tinyvla.modeling.registry import arch_config, model_class, resolve_model_name, tiny_config

    m = recipe.model
    arch = _arch_name(m.name)
    if arch:
        config = arch_config(arch)
    elif resolve_model_name(m.name).kind == "tiny":
        from tinyvla.tokenizers import load_tokenizer

        config = tiny_config(resolve_model_name(m.name).family, load_tokenizer(m.tokenizer or "tiny"), m.tiny or None)
    else:
        return {}
    with torch.device("meta"):
        model = model_class(config)._from_config(config)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}")
    trainable = total - (vision if m.freeze_vision else 0)
    if m.lora.enabled:  # r x (in + out) per adapted linear of the language model (attention + MLP projections)
        names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        trainable = sum(m.lora.r * (mod.in_features + mod.out_features) for n, mod in model.named_modules()
                        if n.split(".")[-1] in names and ".visual." not in f".{n}" and hasattr(mod, "in_features"))
    text, vis = config.text_config, config.vision_config
    return {"total": total, "vision": vision, "trainable": trainable, "hidden": text.hidden_size,
            "layers": text.num_hidden_layers, "vocab": text.vocab_size,
            "vision_hidden": getattr(vis, "hidden_size", None) or getattr(vis, "embed_dim", 0),
            "vision_depth": getattr(vis, "depth", 0), "patch": vis.patch_size,
            "merge": getattr(vis, "spatial_merge_size", 2)}


def sequence_tokens(recipe, counts: dict) -> dict:
    """Rough tokens per sample: vision tokens of the (tiled) views, the prompt text, the answer."""
    d, a = recipe.data, recipe.actions
    side = d.image_size // (counts["patch"] * counts["merge"])
    views = 2
    merged = side * side * views  # tiled side by side = the same count as two separate views
    answer = a.horizon * a.dim * (len(str(a.bins)) + 1)  # widest ints + spaces
    return {"vision_merged": merged, "vision_patches": merged * counts["merge"] ** 2,
            "text": 80 + answer, "answer": answer, "total": merged + 80 + answer}


def estimate_memory(recipe, gpus: int = 8) -> dict:
    """GB per GPU for the recipe's model, micro-batch and precision: DDP on 1 GPU and FSDP over `gpus`."""
    from tinyvla.training.trainer import training_dtype

    counts = count_model(recipe)
    if not counts:
        return {"skipped": f"{recipe.model.name}: parameter count unknown without downloading its config "
                           "(use a short name such as qwen3-2b, or arch:NAME)"}
    t = recipe.train
    wbytes = 4 if training_dtype(recipe) == "fp32" else 2
    opt_bytes = {"adamw": 2 * wbytes, "adamw-kahan": 3 * wbytes, "adamw8bit": 2}[t.optimizer]
    autocast_copy = 2 if (t.precision in ("bf16-mixed",) and wbytes == 4) else 0
    weights = counts["total"] * wbytes / GB
    grads = counts["trainable"] * wbytes / GB
    optimizer = counts["trainable"] * opt_bytes / GB
    copies = counts["total"] * autocast_copy / GB
    seq = sequence_tokens(recipe, counts)
    per_token_layer = (2 if recipe.model.gradient_checkpointing else 34)
    text_act = t.batch_size * seq["total"] * counts["layers"] * counts["hidden"] * per_token_layer
    vision_act = t.batch_size * seq["vision_patches"] * counts["vision_depth"] * counts["vision_hidden"] * per_token_layer
    logits = t.batch_size * seq["answer"] * counts["vocab"] * (2 + 4 + 4)
    activations = (text_act + vision_act + logits) / GB
    ddp = weights + 2 * grads + optimizer + copies + activations  # DDP: gradient buckets are a second copy
    fsdp = (weights + grads + optimizer) / gpus + copies / gpus + activations
    # FSDP gathers one unit's full weights at a time (plus the next one prefetched): ~2 decoder layers.
    fsdp += 2 * counts["total"] / max(counts["layers"], 1) * wbytes / GB
    return {"params_b": round(counts["total"] / 1e9, 3), "trainable_b": round(counts["trainable"] / 1e9, 3),
            "precision": t.precision, "optimizer": t.optimizer, "weights_dtype": training_dtype(recipe),
            "micro_batch": t.batch_size, "tokens_per_sample": seq["total"],
            "gradient_checkpointing": recipe.model.gradient_checkpointing,
            "weights_gb": round(weights, 1), "grads_gb": round(grads, 1), "optimizer_gb": round(optimizer, 1),
            "autocast_copy_gb": round(copies, 1), "activations_gb": round(activations, 1),
            "ddp_per_gpu_gb": round(ddp, 1), "fsdp_gpus": gpus, "fsdp_per_gpu_gb": round(fsdp, 1)}


def describe(est: dict) -> str:
    if "skipped" in est:
        return est["skipped"]
    return (f"{est['params_b']} B params ({est['trainable_b']} B trainable), {est['precision']} / {est['optimizer']}, "
            f"micro-batch {est['micro_batch']} x ~{est['tokens_per_sample']} tokens: weights {est['weights_gb']} GB, "
            f"grads {est['grads_gb']}, optimizer {est['optimizer_gb']}, autocast copy {est['autocast_copy_gb']}, "
            f"activations ~{est['activations_gb']} (rough) -> ~{est['ddp_per_gpu_gb']} GB per GPU with DDP, "
            f"~{est['fsdp_per_gpu_gb']} GB per GPU with FSDP over {est['fsdp_gpus']}")
