"""`tinyvla train RECIPE --test`: the recipe's own code path at a scale that runs on a CPU in seconds.

The architecture family, LoRA / frozen-vision / checkpointing settings, optimizer, schedule and the data pipeline are
the recipe's; only sizes shrink: the tiny model of the same family, 64 px views, 2 steps of batch 2, fp32.
"""

from __future__ import annotations

import copy

from tinyvla.recipe import Recipe


def tiny_family(name: str) -> str:
    """The tiny model of the same architecture as `name`."""
    lowered = name.lower()
    if lowered.startswith("tiny-"):
        return name
    return "tiny-qwen2.5" if ("qwen2.5" in lowered or "qwen2_5" in lowered) else "tiny-qwen3"


def smoke_recipe(recipe: Recipe) -> Recipe:
    r = copy.deepcopy(recipe)
    r.model.name = tiny_family(r.model.name)
    r.model.tokenizer = None
    r.model.init_from = None  # a smoke run builds its own tiny model; a previous stage's weights need not exist
    r.model.dtype = "fp32"
    r.model.attn_implementation = "sdpa"
    r.data.image_size = 64
    r.data.num_workers = 0
    r.data.val_episodes = min(r.data.val_episodes, 1)
    r.train.max_steps = 2
    r.train.batch_size = 2
    r.train.grad_accum = min(r.train.grad_accum, 2)
    if r.train.global_batch:  # keep the derived-accumulation path, at 2 micro-batches of 2 on one process
        r.train.global_batch, r.train.grad_accum = 4, 1
    r.train.precision = "fp32"
    r.train.optimizer = "adamw" if r.train.optimizer == "adamw8bit" else r.train.optimizer  # bitsandbytes: CUDA
    r.train.compile = False
    r.train.log_every = 1
    r.train.save_every = 1
    r.train.eval_every = 0
    r.train.eval_batches = 1
    r.train.tensorboard = False
    r.train.wandb = False
    r.train.out_dir = str(recipe.out_dir) + "-smoke"
    return r.validate()
