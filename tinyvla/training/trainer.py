"""The training loop: recipe -> policy directory.

One loop for a 0.4 M-parameter model on a laptop CPU and for Qwen3-VL-8B on eight H100s: accelerate handles devices,
DDP/FSDP and mixed precision; everything else is plain PyTorch you can read top to bottom.

    tinyvla train recipes/tiny-cpu.yaml                      # writes runs/tiny-cpu/{final,checkpoints,metrics.jsonl}
    accelerate launch -m tinyvla.cli.main train recipes/qwen3-2b-h100.yaml

Learning rate: exactly what the recipe says, whatever the number of processes. With `train.global_batch` set the
gradient accumulation is derived from the process count (training/plan.py), so a recipe is the same optimisation on
any number of GPUs. Each process reads its own shard of every epoch (a distributed sampler), unlike the official
VLA-0 code, where every GPU sees the whole dataset.

The objective is the token mean over the global batch: every labelled token of an optimizer step weighs the same,
however the step is split into processes and accumulation steps (see `train_step`).

Multi-process: `accelerate launch --multi_gpu --num_processes N -m tinyvla.cli.main train RECIPE` or
`torchrun --nproc_per_node N -m tinyvla.cli.main train RECIPE` (both work on CPU with gloo too). Beware
`accelerate launch --cpu --num_processes 2`: accelerate starts ONE process for it, without a word.

(Over 400 lines: the loop, its step, loss and precision choices read best together; the run plan, memory estimate
and FSDP units live in training/plan.py, memory.py and fsdp.py.)
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinyvla.core.masking import IGNORE_INDEX
from tinyvla.core.prompt import PromptSpec
from tinyvla.envs.suites import BLOCKFIND_SUITES
from tinyvla.errors import UserError
from tinyvla.recipe import Recipe, save_recipe
from tinyvla import lifetime
from tinyvla.training import checkpoint
from tinyvla.training.checkpoint import list_checkpoints  # noqa: F401  (the trainer's public names)
from tinyvla.training.data import ActionSampleDataset, EpochSampler, attach_video_cache, load_training_data
from tinyvla.training.ema import WeightAverage
from tinyvla.training.plan import plan_run


@dataclass
class TrainResult:
    out_dir: Path
    policy_dir: Path
    steps: int
    final_loss: float
    seconds: float
    main: bool = True  # False on every process but rank 0 (which alone reports "done")
    plan: object = None  # the RunPlan the run followed


# ------------------------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------------------------


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the labelled (answer) tokens, the same number as the model's own causal-LM loss."""
    total, count = answer_loss_sum(model, batch)
    return total / count.clamp(min=1)


def labelled_tokens(batch: dict) -> torch.Tensor:
    """How many tokens of a batch carry a label (position t predicts token t + 1)."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def answer_loss_sum(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over the labelled tokens, their number): the trainer divides by the count of the whole
    global batch, so a micro-batch with few labelled tokens (heavily masked) does not weigh more than one with many.

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
    total = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets[:, keep].flatten(),
                                              ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (targets != IGNORE_INDEX).sum()


def build_model(recipe: Recipe, training: bool = True):
    """(model, processor) for a recipe, with LoRA / frozen vision / gradient checkpointing applied."""
    from tinyvla.modeling.loading import apply_lora, freeze_vision, load_model

    m = recipe.model
    model, processor = load_model(m.name, dtype=training_dtype(recipe) if training else m.dtype, attn_implementation=m.attn_implementation,
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


def training_dtype(recipe: Recipe) -> str:
    """The dtype the weights are trained in. bf16-mixed and fp32 keep fp32 master weights (bf16-mixed computes under
    bf16 autocast); bf16 / fp16 train the weights in model.dtype itself (half the memory of weights and grads)."""
    return recipe.model.dtype if recipe.train.precision in ("bf16", "fp16") else "fp32"


def mixed_precision(cfg) -> str:
    """accelerate's autocast mode. CPUs get none: their bf16 matmuls are slow, and the CPU recipes are fp32."""
    if not torch.cuda.is_available():
        return "no"
    return {"bf16-mixed": "bf16", "bf16": "bf16", "fp16": "fp16"}.get(cfg.precision, "no")


def parameter_groups(model, weight_decay: float) -> list:
    """The trainable parameters for the optimizer. With weight decay, two groups (as nanoGPT's
    configure_optimizers): matrices (linear, embedding, conv kernels) decay; biases and norm scales (1-D tensors) do
    not, since shrinking them towards 0 only fights the normalisation. Without weight decay, one plain list, so the
    optimizer is exactly what it was before groups existed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not weight_decay or not params:
        return params
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    params = parameter_groups(model, cfg.weight_decay)
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
    if cfg.optimizer == "adamw-kahan":
        # AdamW with Kahan-compensated updates (torch-optimi): bf16 weights keep the part of each update that bf16
        # cannot represent in a bf16 buffer and add it back next step, so lr 5e-6 updates are not rounded away.
        from optimi import AdamW as KahanAdamW

        return KahanAdamW(params, eps=1e-8, kahan_sum=True, **kwargs)
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


def heldout_error(policy, reader, val_frames, cfg) -> dict:
    """Action error on held-out frames. Every process must call it with the same frames (chosen from cfg.seed): under
    FSDP each forward gathers weight shards from all processes, so a forward on one process alone never returns."""
    from tinyvla.evaluation.offline import offline_action_error

    n = min(len(val_frames), cfg.eval_batches * cfg.batch_size)
    frames = np.random.default_rng(cfg.seed).choice(val_frames, size=n, replace=False)
    return offline_action_error(policy, reader, frames, batch_size=cfg.batch_size)


def check_context(model, processor, prompt_len: int, prompt: PromptSpec):
    """Refuse a recipe whose prompt + longest possible action text does not fit the model's context."""
    cfg = getattr(model.config, "text_config", model.config)
    limit = getattr(cfg, "max_position_embeddings", None)
    # Longest action text: every int at its widest, single spaces between, plus end-of-turn.
    longest = prompt.horizon * prompt.dim * (len(str(prompt.bins)) + 1) + len(processor.end_of_turn_ids)
    if limit and prompt_len + longest > limit:
        raise UserError(f"prompt ({prompt_len} tokens) + up to {longest} action tokens exceeds the model's context of "
                        f"{limit}: lower actions.horizon or data.image_size")


# ------------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------------


def train(recipe: Recipe, resume: bool = False, smoke_test: bool = False, console=None,
          overwrite: bool = False) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = recipe.train
    out_dir = recipe.out_dir
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg), cpu=not on_gpu)
    main = accelerator.is_main_process
    log = (console.print if console else print) if main else (lambda *a, **k: None)
    set_seed(cfg.seed)
    if lifetime.launched_by_a_launcher():
        lifetime.die_with_parent()  # a kill -9 of accelerate launch / torchrun must not leave ranks training

    # The run directory: lock it and apply the rerun rule before any data loads (training/checkpoint.py).
    ckpt_dir = out_dir / "checkpoints"
    lock = checkpoint.claim_run_dir(out_dir, recipe, resume, overwrite or (smoke_test and not resume)) if main else None
    try:
        return _train(recipe, accelerator, resume, console, log, ckpt_dir)
    except BaseException:
        if lock is not None and (lock.created or not resume):  # never undo the recipe of a run being resumed
            lock.undo_if_unused()
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(recipe: Recipe, accelerator, resume: bool, console, log, ckpt_dir: Path) -> TrainResult:
    from tinyvla.inputs import mask_token_id as find_mask_token_id
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import PolicyConfig, save_policy_dir
    from tinyvla.training.logging import TrainLogger

    cfg, out_dir, main = recipe.train, recipe.out_dir, accelerator.is_main_process
    accelerator.wait_for_everyone()
    latest = checkpoint.select_resume_checkpoint(ckpt_dir, log) if resume else None

    # Data -> model -------------------------------------------------------------------------------------------------
    if recipe.model.init_from:  # before generating any data: a missing earlier stage is the user's first error
        from tinyvla.policy_dir import find_init_policy

        find_init_policy(recipe.model.init_from)
    data = load_training_data(recipe, log)
    attach_video_cache(recipe, data.reader, accelerator.is_local_main_process, log)
    world = accelerator.num_processes
    plan = plan_run(cfg, len(data.train_frames), world)  # a global batch that does not split fails here, before the model
    log(f"{recipe.name}: {plan.describe()}")
    policy_config = PolicyConfig.from_recipe(recipe, data.stats, dataset_info=getattr(data.reader, "info", {}) or {})
    prompt, image_spec, codec = policy_config.prompt, policy_config.image, policy_config.codec()
    model, processor = build_model(recipe)
    mask_id = find_mask_token_id(processor, recipe.actions.mask_char) if recipe.actions.mask_prob > 0 else None
    dataset = ActionSampleDataset(data.reader, codec, processor, prompt, image_spec, train=True, seed=cfg.seed,
                                  mask_prob=recipe.actions.mask_prob, mask_token_id=mask_id,
                                  unmasked_fraction=recipe.actions.unmasked_fraction)
    first = dataset[(int(data.train_frames[0]), 0)]
    check_context(model, processor, len(first["input_ids"]) - len(processor.end_of_turn_ids), prompt)

    sampler = EpochSampler(data.train_frames, cfg.seed, accelerator.process_index, world)
    if sampler.per_rank() < cfg.batch_size * plan.grad_accum:
        raise UserError(f"only {sampler.per_rank()} training frames per process but one optimizer step takes "
                        f"{cfg.batch_size * plan.grad_accum} per process: lower train.global_batch / "
                        "train.batch_size or add data")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
        num_workers=recipe.data.num_workers, collate_fn=lambda items: processor.collate(items, padding_side="right"),
        persistent_workers=False, worker_init_fn=lifetime.worker_dies_with_me(),
    )
    micro_per_epoch = sampler.per_rank() // cfg.batch_size
    total_steps, accum = plan.steps, plan.grad_accum

    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    # The scheduler stays outside accelerate: its wrapper steps once per process, which would silently speed the
    # schedule up by the GPU count.
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.compile:
        model = torch.compile(model)
    accelerator.register_for_checkpointing(scheduler)
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None  # training/ema.py
    with_average = ema.applied if ema else contextlib.nullcontext

    step, epoch, micro_in_epoch = 0, 0, 0
    state = {}
    if latest is not None:
        accelerator.load_state(str(latest))
        if ema:
            ema.load(latest, accelerator.process_index)
        state = checkpoint.read_state(latest)
        step, epoch, micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        if main:
            checkpoint.restore_metrics(out_dir, state)
        log(f"resumed from {latest} (step {step}, epoch {epoch})")
    resumed_step = step

    global_batch = plan.global_batch
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    log(f"  {world} process{'es' if world > 1 else ''} ({accelerator.distributed_type.value}, backend {backend}); "
        f"data: {sampler.per_rank():,} frames per process per epoch"
        f"{f' (process r reads positions r, r+{world}, r+{2 * world}, ... of the shuffled epoch)' if world > 1 else ''}; "
        f"{n_params / 1e6:.2f} M params ({n_train / 1e6:.2f} M trainable), "
        f"{len(data.val_frames)} frames held out; precision {cfg.precision} (weights {training_dtype(recipe)}, "
        f"autocast {mixed_precision(cfg)}), optimizer {cfg.optimizer}")
    if training_dtype(recipe) != "fp32" and cfg.optimizer == "adamw":
        log(f"  warning: {training_dtype(recipe)} weights stepped by plain AdamW lose updates smaller than their "
            "resolution (most of them at lr 5e-6): use train.optimizer=adamw-kahan or train.precision=bf16-mixed")

    logger = TrainLogger(out_dir, recipe, total_steps, start_step=step, enabled=main, console=console)

    policy_cache: list[Policy] = []

    def make_policy() -> Policy:
        # Built once: the grammar's token table takes a moment for a real 151k vocabulary.
        if not policy_cache:
            # Decodes speculatively when eval.speculative says so: same actions, fewer forward passes, faster probe.
            policy_cache.append(Policy(policy_config, accelerator.unwrap_model(model), processor))
        return policy_cache[0]

    # Held-out evaluation and the probe run on EVERY process, on the same inputs: under FSDP each forward gathers the
    # weight shards from all processes, so a forward on rank 0 alone would wait forever. Only rank 0 logs the result.
    def evaluate_heldout():
        if len(data.val_frames) == 0:
            return None
        with with_average():  # the weights the policy will have
            result = heldout_error(make_policy(), data.reader, data.val_frames, cfg)
        model.train()
        return result

    def probe():
        if cfg.rollout_every <= 0 or recipe.data.suite not in BLOCKFIND_SUITES:
            return
        from tinyvla.evaluation.probe import probe_success

        with with_average():
            rate = probe_success(make_policy(), recipe.data.suite, episodes=cfg.rollout_episodes)
        model.train()
        logger.log_probe(step, rate)

    def save_checkpoint():
        # The logging window and last loss travel with the checkpoint, so a resumed run logs what an unbroken one would.
        checkpoint.save_checkpoint(accelerator, ckpt_dir, step, {
            "epoch": epoch, "micro_in_epoch": micro_in_epoch, "last_loss": last_loss,
            "window_loss": window["loss"], "window_steps": window["steps"]}, cfg.keep_last,
            save_extra=(lambda path: ema.save(path, accelerator.process_index)) if ema else None)

    # Train -----------------------------------------------------------------------------------------------------------
    model.train()
    start = time.time()
    last_loss = float(state.get("last_loss", "nan"))
    window = {"loss": state.get("window_loss", 0.0), "steps": state.get("window_steps", 0), "samples": 0,
              "start": time.time()}
    try:
        while step < total_steps:
            sampler.set_epoch(epoch, skip=micro_in_epoch * cfg.batch_size)
            batches = iter(loader)
            epoch_done = False
            while step < total_steps and not epoch_done:
                micro = []
                for _ in range(accum):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    micro.append(batch)
                    micro_in_epoch += 1
                if len(micro) < accum:  # the epoch ran out mid-accumulation: drop the partial step
                    epoch_done = True
                    continue
                last_loss = train_step(accelerator, model, micro)
                if not math.isfinite(last_loss):  # the same global value on every process: all stop together
                    optimizer.zero_grad(set_to_none=True)
                    raise UserError(f"the loss became {last_loss} at step {step}: lower train.lr, set "
                                    "train.clip_grad=1.0, or use train.precision=fp32; no checkpoint was written")
                if cfg.clip_grad > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if ema:
                    ema.update(step)

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
        raise UserError(f"out of GPU memory at batch_size {cfg.batch_size}: lower train.batch_size (with "
                        "train.global_batch set, accumulation grows to keep the global batch), set "
                        "model.gradient_checkpointing=true, or enable model.lora.enabled=true") from None

    # Finish: a checkpoint to resume from, the held-out error, then the policy directory -------------------------------
    if step != resumed_step:  # resumed at the end: that checkpoint is already this one
        save_checkpoint()
    if ema:  # from here on the model holds the average: the held-out check, the probe and the policy directory
        ema.copy_to_model()
        with_average = contextlib.nullcontext
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
    return TrainResult(out_dir, policy_dir, step, last_loss, seconds, main=main, plan=plan)


def _gpu_memory() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def train_step(accelerator, model, micro: list[dict]) -> float:
    """Forward + backward of one optimizer step's micro-batches on this process; returns the step's loss.

    The objective is the mean cross-entropy over every labelled token of the GLOBAL batch (all micro-batches of all
    processes), so the loss and the gradient are the same whatever the split into processes and accumulation steps.
    The global token count is known before any backward (one small all-reduce of the local counts); each micro-batch
    then backpropagates its summed loss x processes / global count, because DDP and FSDP average gradients over
    processes, which the x processes undoes. Returns the global token-mean loss (identical on every process).
    """
    world = accelerator.num_processes
    local_tokens = sum(labelled_tokens(b) for b in micro).to(accelerator.device, torch.float32)
    global_tokens = accelerator.reduce(local_tokens, reduction="sum") if world > 1 else local_tokens
    scale = world / global_tokens.clamp(min=1)
    loss_sum = torch.zeros((), device=accelerator.device)
    for k, batch in enumerate(micro):
        batch = {key: v.to(accelerator.device) for key, v in batch.items()}
        # Gradients are averaged across processes only on the last micro-batch of an accumulation.
        with _maybe_no_sync(accelerator, model, k < len(micro) - 1), accelerator.autocast():
            total, _ = answer_loss_sum(model, batch)
            accelerator.backward(total * scale)
        loss_sum += total.detach().float()
    if world > 1:
        loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    return (loss_sum / global_tokens.clamp(min=1)).item()


def _maybe_no_sync(accelerator, model, skip_sync: bool):
    return accelerator.no_sync(model) if skip_sync else contextlib.nullcontext()
