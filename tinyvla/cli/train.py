"""`tinyvla train RECIPE`: train a policy; writes DIR/final (the policy), DIR/metrics.jsonl, DIR/checkpoints/."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/tiny-cpu.yaml"),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set train.lr=1e-4 (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (default runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output directory from its newest "
                                                        "complete checkpoint (only the step budget may change)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the previous run in the output directory "
                                                              "(its checkpoints, final/, metrics; nothing else)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    test: bool = typer.Option(False, "--test", help="Smoke mode: the same recipe at tiny scale, 2 steps, on CPU."),
):
    """Train a policy from a YAML recipe."""
    from rich.console import Console

    from tinyvla.recipe import load_recipe
    from tinyvla.training.trainer import train as run_training

    overrides = list(set_)
    if out is not None:
        overrides.append(f"train.out_dir={out}")
    if max_steps is not None:
        overrides.append(f"train.max_steps={max_steps}")
    cfg = load_recipe(recipe, overrides)
    if test:
        from tinyvla.training.smoke import smoke_recipe

        cfg = smoke_recipe(cfg)
    console = Console()
    result = run_training(cfg, resume=resume, smoke_test=test, console=console, overwrite=overwrite)
    if not result.main:  # one "done" per run, not one per process
        return
    console.print(f"[green]done[/green]: {result.steps} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}"
                  f" -> policy in [bold]{result.policy_dir}[/bold]")
