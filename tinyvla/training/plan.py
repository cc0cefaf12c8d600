"""The run plan: how a recipe's global batch splits over processes, and how long the run is.

A recipe states `train.global_batch` (samples per optimizer step) and `train.batch_size` (the micro-batch one device
holds). The number of processes is only known at launch, so gradient accumulation is derived here:

    global_batch = batch_size x processes x grad_accum

The same recipe is then the same optimisation on 1, 8 or 64 GPUs: lr belongs to the global batch and is never scaled
by the GPU count, and every optimizer step sees the same samples whatever the split (training/data.py EpochSampler).
Without `global_batch` (older recipes) `grad_accum` is taken as written and the global batch grows with the GPU count.

The budget is one of `max_steps` (optimizer steps), `max_samples`, or `epochs`; the plan states all three. Pure
Python: no torch, so `tinyvla doctor` and the tests can plan a run for any process count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tinyvla.errors import UserError


@dataclass(frozen=True)
class RunPlan:
    global_batch: int  # samples per optimizer step
    micro_batch: int  # samples per device per forward/backward
    processes: int
    grad_accum: int  # micro-batches per process per optimizer step
    lr: float
    steps: int  # optimizer steps
    samples: int  # steps x global_batch
    epochs: float  # samples / training frames
    frames: int  # training frames

    def describe(self) -> str:
        """The run's first line: what one optimizer step is and how long the run is."""
        return (f"global batch {self.global_batch} = {self.micro_batch} micro x {self.processes} process"
                f"{'es' if self.processes != 1 else ''} x {self.grad_accum} accumulation, lr {self.lr:g}, "
                f"{self.steps:,} steps, {self.samples:,} samples, {self.epochs:.2f} epochs of {self.frames:,} frames")

    def to_dict(self) -> dict:
        return asdict(self)


def split_global_batch(cfg, processes: int) -> tuple[int, int]:
    """(global batch, grad accumulation) of a train config on `processes` processes; a UserError when it cannot split."""
    micro = cfg.batch_size
    if not cfg.global_batch:
        return micro * cfg.grad_accum * processes, cfg.grad_accum
    if cfg.grad_accum != 1:
        raise UserError(f"train.grad_accum ({cfg.grad_accum}) is derived from train.global_batch "
                        f"({cfg.global_batch}); remove one of them from the recipe")
    per_step = micro * processes
    if cfg.global_batch % per_step:
        fits = [n for n in range(1, 65) if cfg.global_batch % (micro * n) == 0]
        raise UserError(f"train.global_batch {cfg.global_batch} is not a multiple of train.batch_size {micro} x "
                        f"{processes} process{'es' if processes != 1 else ''} = {per_step}: change train.batch_size or launch "
                        f"{', '.join(map(str, fits[:6])) or 'another number of'} processes")
    return cfg.global_batch, cfg.global_batch // per_step


def plan_run(cfg, frames: int, processes: int = 1) -> RunPlan:
    """The optimisation a train config means on `processes` processes over `frames` training frames.

    Steps per epoch use the trainer's own arithmetic: each process takes frames // processes of every epoch, in whole
    micro-batches, in whole accumulations — which equals frames // global_batch, so it does not depend on the split.
    """
    if processes < 1:
        raise UserError(f"processes must be >= 1, got {processes}")
    global_batch, accum = split_global_batch(cfg, processes)
    steps_per_epoch = (frames // processes // cfg.batch_size) // accum
    if cfg.max_steps:
        steps = int(cfg.max_steps)
    elif cfg.max_samples:
        steps = math.ceil(cfg.max_samples / global_batch)
    else:
        if steps_per_epoch < 1:
            raise UserError(f"{frames} training frames are fewer than one global batch ({global_batch}): lower "
                            "train.global_batch / train.batch_size, or add data")
        steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    samples = steps * global_batch
    return RunPlan(global_batch=global_batch, micro_batch=cfg.batch_size, processes=processes, grad_accum=accum,
                   lr=cfg.lr, steps=steps, samples=samples, epochs=samples / max(frames, 1), frames=frames)
