"""The training loop: recipe -> policy directory.

One loop for a 0.4 M-parameter model on a laptop CPU and for Qwen3-VL-8B on eight H100s: accelerate handles devices,
DDP/FSDP and mixed precision; everything else is plain PyTorch you can read top to bottom.

    tinyvla train recipes/tiny-cpu.yaml                      # writes runs/tiny-cpu/{final,checkpoints,metrics.jsonl}
    accelerate launch -m tinyvla.cli.main train recipes/qwen3-2b-h100.yaml

Learning rate: exactly what the recipe says, whatever the number of processes. Global batch = batch_size x grad_accum
x processes. Each process reads its own shard of every epoch (a distributed sampler), unlike the official VLA-0 code,
where every GPU sees the whole dataset.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinyvla.core.atomic import write_json_atomic
from tinyvla.core.masking import IGNORE_INDEX
from tinyvla.core.prompt import PromptSpec
from tinyvla.envs.suites import BLOCKFIND_SUITES
from tinyvla.errors import UserError
from tinyvla.recipe import Recipe, save_recipe
from tinyvla.training.data import ActionSampleDataset, EpochSampler, load_training_data

CHECKPOINT_PREFIX = "step-"


@dataclass
class TrainResult:
    out_dir: Path
    policy_dir: Path
    steps: int
    final_loss: float
    seconds: float


# ------------------------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------------------------


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the labelled (answer) tokens, the same number as the model's own causal-LM loss.

    The model computes logits only at the positions that predict a label: the prompt (system text, images,
    instruction) is well over half of every sequence, and a full-vocabulary projection plus log-softmax there is
    pure waste. Called through the (possibly DDP/FSDP-wrapped) model's forward, so gradient sync still happens.

    A right-padded batch needs no padding mask: under causal attention a real token only sees earlier tokens, which
    are all real, and its position ids do not depend on the padding after it. Without the mask, attention takes the
    plain causal kernel instead of a masked one.
    """
    labels = batch["labels"]
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    mask = batch["attention_mask"]
    right_padded = bool((mask[:, :-1] >= mask[:, 1:]).all())
    drop = ("labels", "attention_mask") if right_padded else ("labels",)
    inputs = {k: v for k, v in batch.items() if k not in drop}
    logits = model(**inputs, logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets[:, keep].flatten(),
                                             ignore_index=IGNORE_INDEX)


def build_model(recipe: Recipe, training: bool = True):
    """(model, processor) for a recipe, with LoRA / frozen vision / gradient checkpointing applied."""
    from tinyvla.modeling.loading import apply_lora, freeze_vision, load_model

    m = recipe.model
    model, processor = load_model(m.name, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                  trust_remote_code=m.trust_remote_code, tiny_overrides=m.tiny or None,
                                  tokenizer=m.tokenizer)
    if m.init_from:
        from tinyvla.policy_dir import load_weights_from_policy

        load_weights_from_policy(model, m.init_from, tokenizer=processor.tokenizer)
    if m.freeze_vision:
        freeze_vision(model)
    if m.lora.enabled:
        model = apply_lora(model, r=m.lora.r, alpha=m.lora.alpha, dropout=m.lora.dropout,
                           target_regex=m.lora.target_regex)
    if training and m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model, processor


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("no trainable parameters: with model.freeze_vision and LoRA off, something else froze them")
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("train.optimizer=adamw8bit needs bitsandbytes: pip install bitsandbytes "
                            "(CUDA only), or set --set train.optimizer=adamw") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def lr_lambda(cfg, total_steps: int):
    """Multiplier on the recipe's lr at a given optimizer step: linear warm-up, then constant or cosine."""

    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def check_context(model, processor, prompt_len: int, prompt: PromptSpec):
    """Refuse a recipe whose prompt + longest possible action text does not fit the model's context."""
    cfg = getattr(model.config, "text_config", model.config)
    limit = getattr(cfg, "max_position_embeddings", None)
    # Longest action text: every int at its widest, single spaces between, plus end-of-turn.
    longest = prompt.horizon * prompt.dim * (len(str(prompt.bins)) + 1) + len(processor.end_of_turn_ids)
    if limit and prompt_len + longest > limit:
        raise UserError(f"prompt ({prompt_len} tokens) + up to {longest} action tokens exceeds the model's context of "
                        f"{limit}: lower actions.horizon or data.image_size")


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. A checkpoint is complete once its trainer_state.json exists."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


# ------------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------------


def train(recipe: Recipe, resume: bool = False, smoke_test: bool = False, console=None) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from tinyvla.evaluation.offline import offline_action_error
    from tinyvla.inputs import mask_token_id as find_mask_token_id
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import PolicyConfig, save_policy_dir
    from tinyvla.training.logging import TrainLogger

    cfg = recipe.train
    out_dir = recipe.out_dir
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    on_gpu = torch.cuda.is_available()
    mixed = {"bf16": "bf16", "fp16": "fp16"}.get(cfg.precision, "no") if on_gpu else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not on_gpu)
    main = accelerator.is_main_process
    log = (console.print if console else print) if main else (lambda *a, **k: None)
    set_seed(cfg.seed)

    ckpt_dir = out_dir / "checkpoints"
    checkpoints = list_checkpoints(ckpt_dir)
    if not resume and (out_dir / "final").exists() and not smoke_test:
        raise UserError(f"{out_dir} already holds a finished run; pass --resume to continue it or --out to start anew")
    if resume and not checkpoints:
        raise UserError(f"--resume: no checkpoint under {ckpt_dir}; start without --resume")

    # Data -> model -------------------------------------------------------------------------------------------------
    if recipe.model.init_from:  # before generating any data: a missing earlier stage is the user's first error
        from tinyvla.policy_dir import find_init_policy

        find_init_policy(recipe.model.init_from)
    data = load_training_data(recipe, log)
    policy_config = PolicyConfig.from_recipe(recipe, data.stats, dataset_info=getattr(data.reader, "info", {}) or {})
    prompt, image_spec, codec = policy_config.prompt, policy_config.image, policy_config.codec()
    model, processor = build_model(recipe)
    mask_id = find_mask_token_id(processor, recipe.actions.mask_char) if recipe.actions.mask_prob > 0 else None
    dataset = ActionSampleDataset(data.reader, codec, processor, prompt, image_spec, train=True, seed=cfg.seed,
                                  mask_prob=recipe.actions.mask_prob, mask_token_id=mask_id,
                                  unmasked_fraction=recipe.actions.unmasked_fraction)
    first = dataset[(int(data.train_frames[0]), 0)]
    check_context(model, processor, len(first["input_ids"]) - len(processor.end_of_turn_ids), prompt)

    sampler = EpochSampler(data.train_frames, cfg.seed, accelerator.process_index, accelerator.num_processes)
    if sampler.per_rank() < cfg.batch_size:
        raise UserError(f"only {sampler.per_rank()} training frames per process but train.batch_size is "
                        f"{cfg.batch_size}: lower the batch size or add data")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
        num_workers=recipe.data.num_workers, collate_fn=lambda items: processor.collate(items, padding_side="right"),
        persistent_workers=False,
    )
    micro_per_epoch = sampler.per_rank() // cfg.batch_size
    total_steps = cfg.total_steps(sampler.per_rank())

    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    # The scheduler stays outside accelerate: its wrapper steps once per process, which would silently speed the
    # schedule up by the GPU count.
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.compile:
        model = torch.compile(model)
    accelerator.register_for_checkpointing(scheduler)

    step, epoch, micro_in_epoch = 0, 0, 0
    if resume:
        latest = checkpoints[-1]
        accelerator.load_state(str(latest))
        state = json.loads((latest / "trainer_state.json").read_text())
        step, epoch, micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        log(f"resumed from {latest} (step {step}, epoch {epoch})")

    global_batch = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{recipe.name}: {n_params / 1e6:.2f} M params ({n_train / 1e6:.2f} M trainable), {len(data.train_frames)} "
        f"train frames, {len(data.val_frames)} held out, global batch {global_batch}, {total_steps} steps, lr {cfg.lr:g}")

    logger = TrainLogger(out_dir, recipe, total_steps, start_step=step, enabled=main, console=console)

    policy_cache: list[Policy] = []

    def make_policy() -> Policy:
        # Built once: the grammar's token table takes a moment for a real 151k vocabulary.
        if not policy_cache:
            # Decodes speculatively when eval.speculative says so: same actions, fewer forward passes, faster probe.
            policy_cache.append(Policy(policy_config, accelerator.unwrap_model(model), processor))
        return policy_cache[0]

    def evaluate_heldout():
        if not main or len(data.val_frames) == 0:
            return None
        n = min(len(data.val_frames), cfg.eval_batches * cfg.batch_size)
        frames = np.random.default_rng(cfg.seed).choice(data.val_frames, size=n, replace=False)
        result = offline_action_error(make_policy(), data.reader, frames, batch_size=cfg.batch_size)
        model.train()
        return result

    def probe():
        if not main or cfg.rollout_every <= 0 or recipe.data.suite not in BLOCKFIND_SUITES:
            return
        from tinyvla.evaluation.probe import probe_success

        rate = probe_success(make_policy(), recipe.data.suite, episodes=cfg.rollout_episodes)
        model.train()
        logger.log_probe(step, rate)

    def save_checkpoint():
        accelerator.wait_for_everyone()
        final = ckpt_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
        tmp = ckpt_dir / f".{final.name}.tmp"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if main:
            write_json_atomic(tmp / "trainer_state.json", {"step": step, "epoch": epoch, "micro_in_epoch": micro_in_epoch})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # the checkpoint appears whole or not at all
            for old in list_checkpoints(ckpt_dir)[: -cfg.keep_last or None]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    # Train -----------------------------------------------------------------------------------------------------------
    model.train()
    start = time.time()
    last_loss = float("nan")
    window = {"loss": 0.0, "steps": 0, "samples": 0, "start": time.time()}
    try:
        while step < total_steps:
            sampler.set_epoch(epoch, skip=micro_in_epoch * cfg.batch_size)
            batches = iter(loader)
            epoch_done = False
            while step < total_steps and not epoch_done:
                micro_losses = []
                for k in range(cfg.grad_accum):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    batch = {key: v.to(accelerator.device) for key, v in batch.items()}
                    # Gradients are averaged across processes only on the last micro-batch of an accumulation.
                    with _maybe_no_sync(accelerator, model, k < cfg.grad_accum - 1), accelerator.autocast():
                        loss = answer_loss(model, batch)
                        if not torch.isfinite(loss):
                            raise UserError(f"the loss became {loss.item()} at step {step}: lower train.lr, set "
                                            "train.clip_grad=1.0, or use train.precision=fp32; no checkpoint was written")
                        accelerator.backward(loss / cfg.grad_accum)
                    micro_losses.append(loss.detach())
                    micro_in_epoch += 1
                if len(micro_losses) < cfg.grad_accum:  # the epoch ran out mid-accumulation: drop the partial step
                    optimizer.zero_grad(set_to_none=True)
                    epoch_done = True
                    continue
                if cfg.clip_grad > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1

                last_loss = accelerator.gather(torch.stack(micro_losses).mean()[None]).mean().item()
                window["loss"] += last_loss
                window["steps"] += 1
                window["samples"] += global_batch
                logger.progress(step, last_loss, scheduler.get_last_lr()[0])
                if step % cfg.log_every == 0 or step == total_steps:
                    elapsed = max(time.time() - window["start"], 1e-9)
                    logger.log(step, {"loss": window["loss"] / window["steps"], "lr": scheduler.get_last_lr()[0],
                                      "samples_per_s": window["samples"] / elapsed,
                                      "epoch": epoch + micro_in_epoch / max(1, micro_per_epoch), **_gpu_memory()})
                    window = {"loss": 0.0, "steps": 0, "samples": 0, "start": time.time()}
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    logger.log_eval(step, evaluate_heldout())
                if cfg.rollout_every and step % cfg.rollout_every == 0 and step < total_steps:
                    probe()
                if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                    save_checkpoint()
            if epoch_done:
                epoch += 1
                micro_in_epoch = 0
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"out of GPU memory at batch_size {cfg.batch_size}: lower train.batch_size (raise "
                        "train.grad_accum to keep the global batch), set model.gradient_checkpointing=true, or "
                        "enable model.lora.enabled=true") from None

    # Finish: a checkpoint to resume from, the held-out error, then the policy directory -------------------------------
    save_checkpoint()
    logger.log_eval(step, evaluate_heldout())
    probe()
    seconds = time.time() - start
    policy_dir = out_dir / "final"
    # Under FSDP each process holds a shard: gather the full weights (every process must take part).
    full_state = accelerator.get_state_dict(model) if accelerator.distributed_type.name == "FSDP" else None
    if main:
        save_recipe(recipe, out_dir / "recipe.yaml")
        save_policy_dir(make_policy(), policy_dir, recipe=recipe.to_dict(), state_dict=full_state)
        logger.finish(step, last_loss, seconds)
    accelerator.wait_for_everyone()
    return TrainResult(out_dir, policy_dir, step, last_loss, seconds)


def _gpu_memory() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def _maybe_no_sync(accelerator, model, skip_sync: bool):
    return accelerator.no_sync(model) if skip_sync else contextlib.nullcontext()
