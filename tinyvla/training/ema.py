"""An exponential moving average (EMA) of the trained weights: the policy that is saved when `train.ema_decay` > 0.

    average <- d * average + (1 - d) * weights        after every optimizer step, d = min(decay, (1 + t) / (10 + t))

Why: the last weights of a run carry the noise of its last few hundred steps; their average over a window of about
1 / (1 - decay) steps is a smoother policy (diffusion-policy and most robot-learning trainers ship the EMA). The
ramp (1 + t) / (10 + t) keeps the random initial weights from lingering in the average of a short run.

The average is kept in fp32 beside the weights (one more copy of the trainable parameters: 8 GB for a fully fine-tuned
2 B model, nothing to speak of with LoRA, where only the adapters train), on the same device. Under FSDP each process
averages its own shard. Checkpoints hold it (one safetensors file per process), so a resumed run continues the same
average and ends on the same policy.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from tinyvla.errors import UserError


def _local(t: torch.Tensor) -> torch.Tensor:
    """A process's own part of a tensor (an FSDP2 shard is a DTensor; everything else is itself)."""
    return t.to_local() if hasattr(t, "to_local") else t


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [_local(p.detach()).float().clone() for p in self.params]

    def rate(self, step: int) -> float:
        """The decay used after optimizer step `step` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        keep = self.rate(step)
        for avg, p in zip(self.average, self.params):
            avg.lerp_(_local(p.detach()).float(), 1.0 - keep)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Overwrite the weights with the average (the end of a run: what the policy directory gets)."""
        for avg, p in zip(self.average, self.params):
            _local(p.data).copy_(avg)

    @contextlib.contextmanager
    def applied(self):
        """The average in the model for the duration (a held-out check or probe mid-run), the weights back after."""
        saved = [_local(p.detach()).clone() for p in self.params]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for keep, p in zip(saved, self.params):
                    _local(p.data).copy_(keep)

    # Checkpoints ----------------------------------------------------------------------------------------------------

    @staticmethod
    def file_name(rank: int) -> str:
        return f"ema_rank{rank}.safetensors"

    def save(self, checkpoint_dir: Path, rank: int) -> None:
        from safetensors.torch import save_file

        save_file({str(i): avg.contiguous().cpu() for i, avg in enumerate(self.average)},
                  str(Path(checkpoint_dir) / self.file_name(rank)))

    def load(self, checkpoint_dir: Path, rank: int) -> None:
        from safetensors.torch import load_file

        path = Path(checkpoint_dir) / self.file_name(rank)
        if not path.is_file():
            raise UserError(f"{checkpoint_dir} has no weight average ({path.name}) but train.ema_decay is set: resume "
                            "with the ema_decay the run started with, or start a new run")
        saved = load_file(str(path))
        if len(saved) != len(self.average) or any(saved[str(i)].shape != a.shape for i, a in enumerate(self.average)):
            raise UserError(f"{path}: the weight average does not match this model's trainable weights; resume with "
                            "the recipe (and number of processes) the run started with")
        for i, avg in enumerate(self.average):
            avg.copy_(saved[str(i)])
