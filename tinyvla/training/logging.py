"""Training logs: a rich progress bar on a terminal or one plain line per `log_every` steps elsewhere (a log file, SLURM,
CI), `metrics.jsonl` (one JSON object per line), TensorBoard, optional W&B, and a loss-curve PNG at the end. Only the
main process logs."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from tinyvla.progress import eta_seconds, format_duration, plain_line, stdout_is_terminal


class _TiedWeightsNotice(logging.Filter):
    """Drops accelerate's "Removed shared tensor {'lm_head.weight'} while saving" at every checkpoint. Qwen ties the
    output head to the input embeddings; safetensors stores a shared tensor once, and loading the checkpoint
    (safetensors' load_model, which knows about shared tensors) or the policy (transformers re-ties the head) restores
    it. With LoRA the head is peft's `base_model.model.lm_head.weight`. Any other removed tensor still warns."""

    NOTICE = re.compile(r"Removed shared tensor \{'(?:[\w.]+\.)?lm_head\.weight'\} while saving")

    def filter(self, record: logging.LogRecord) -> bool:
        # accelerate prefixes "[RANK n] ".
        return not self.NOTICE.search(record.getMessage())


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())


class TrainLogger:
    def __init__(self, out_dir: Path, recipe, total_steps: int, start_step: int = 0, enabled: bool = True,
                 console=None):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.total = total_steps
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.tb = self.wandb = self.progress_bar = None
        self.console = console
        self.start_step, self.start_time = start_step, time.time()
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)  # a resumed run rewrites what came after its checkpoint
        if recipe.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self.tb = None
        if recipe.train.wandb:
            try:
                import wandb
            except ImportError:
                from tinyvla.errors import UserError

                raise UserError("train.wandb=true needs wandb: pip install wandb") from None
            self.wandb = wandb.init(project="tinyvla", name=recipe.name, config=recipe.to_dict(), resume="allow")
        self.samples_per_s = 0.0
        if not stdout_is_terminal(console):
            return  # no live bar: log() writes a plain line instead (a bar off a terminal shows nothing until the end)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress_bar = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.task = self.progress_bar.add_task("train", total=total_steps, completed=start_step, info="")
        self.progress_bar.start()

    def _truncate_after(self, step: int):
        if not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in keep))

    def _write(self, record: dict):
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def progress(self, step: int, loss: float, lr: float):
        if self.progress_bar is not None:
            info = f"loss {loss:.4f}  lr {lr:.2e}  {self.samples_per_s:.1f} samples/s"
            self.progress_bar.update(self.task, completed=step, info=info)

    def log(self, step: int, values: dict):
        if not self.enabled:
            return
        self.samples_per_s = values.get("samples_per_s", self.samples_per_s)
        self._write({"step": step, "time": time.time(), **values})
        for key, value in values.items():
            if self.tb is not None:
                self.tb.add_scalar(f"train/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in values.items()}, step=step)
        if self.progress_bar is None:
            elapsed = time.time() - self.start_time
            eta = eta_seconds(step - self.start_step, self.total - self.start_step, elapsed)
            plain_line(f"step {step}/{self.total}  loss {values['loss']:.4f}  lr {values['lr']:.2e}  "
                       f"{self.samples_per_s:.1f} samples/s  elapsed {format_duration(elapsed)}  "
                       f"ETA {format_duration(eta)}", self.console)

    def _print(self, text: str):
        if self.progress_bar is not None:
            self.progress_bar.console.print(text)
        else:
            plain_line(text, self.console)

    def log_eval(self, step: int, result: dict | None):
        if not self.enabled or not result:
            return
        record = {"step": step, "time": time.time(), "eval": result}
        self._write(record)
        if self.tb is not None:
            self.tb.add_scalar("eval/l1_mean", result["l1_mean"], step)
            self.tb.add_scalar("eval/l1_baseline_mean", result["l1_baseline_mean"], step)
            self.tb.add_scalar("eval/grammar_valid_rate", result["grammar_valid_rate"], step)
        if self.wandb is not None:
            self.wandb.log({"eval/l1_mean": result["l1_mean"], "eval/l1_baseline_mean": result["l1_baseline_mean"]},
                           step=step)
        self._print(f"step {step}: held-out L1 {result['l1_mean']:.4f} "
                    f"(predict-the-mean {result['l1_baseline_mean']:.4f}), "
                    f"grammar-valid {result['grammar_valid_rate']:.0%}")

    def log_probe(self, step: int, success_rate: float):
        if not self.enabled:
            return
        self._write({"step": step, "time": time.time(), "probe_success": success_rate})
        if self.tb is not None:
            self.tb.add_scalar("eval/probe_success", success_rate, step)
        if self.wandb is not None:
            self.wandb.log({"eval/probe_success": success_rate}, step=step)
        self._print(f"step {step}: closed-loop probe success {success_rate:.0%}")

    def finish(self, step: int, loss: float, seconds: float):
        if not self.enabled:
            return
        if self.progress_bar is not None:
            self.progress_bar.update(self.task, completed=step)
            self.progress_bar.stop()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        plot_loss_curve(self.metrics_path, self.out_dir / "loss.png")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: Path, out_png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval"]["l1_mean"], r["eval"]["l1_baseline_mean"]) for r in records if "eval" in r]
    if not train:
        return
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(10 if evals else 5, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot(*zip(*train))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("training loss")
    if evals:
        ax = axes[0][1]
        steps, l1, base = zip(*evals)
        ax.plot(steps, l1, marker="o", label="policy")
        ax.plot(steps, base, linestyle="--", marker="x", label="predict-the-mean")
        ax.set_xlabel("step")
        ax.set_ylabel("held-out L1")
        ax.legend()
        ax.set_title("held-out action error")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
