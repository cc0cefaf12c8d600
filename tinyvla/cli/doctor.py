"""`tinyvla doctor [RECIPE]`: what this machine can run, and how long a recipe's training takes here.

    tinyvla doctor
    tinyvla doctor recipes/tiny-cpu.yaml --json

The checks live in tinyvla/doctor.py; this module parses options and prints. Exit code 1 when a check fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

STYLE = {"ok": "green", "warn": "yellow", "fail": "red", "info": "cyan"}


def doctor(
    recipe: Annotated[Optional[Path], typer.Argument(help="A recipe: also estimate its training time from timed steps.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Recipe override, e.g. --set train.batch_size=4 (repeatable).")] = [],  # noqa: B006
    steps: Annotated[int, typer.Option(help="Optimizer steps to time for the estimate (after 1 warm-up).")] = 3,
    force: Annotated[bool, typer.Option("--force", help="Time a full-size model's steps even without a GPU.")] = False,
    no_render_probe: Annotated[bool, typer.Option("--no-render-probe", help="Skip starting a GL context in a child process.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
):
    """Check torch, GPU, bf16, attention kernels, simulator, rendering and tokenizers; estimate a recipe's training time."""
    from tinyvla import doctor as D
    from tinyvla.errors import UserError

    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    cfg = None
    if recipe is not None:
        from tinyvla.recipe import load_recipe

        cfg = load_recipe(recipe, list(set_))
    elif set_:
        raise UserError("--set needs a recipe argument")
    report = {"checks": D.run_checks(probe_render=not no_render_probe)}
    if cfg is not None:
        from tinyvla.training.memory import estimate_memory

        report["memory"] = estimate_memory(cfg)  # from parameter counts: no GPU needed
        report["estimate"] = D.estimate_training_time(cfg, steps=steps, force=force)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    if any(c["status"] == "fail" for c in report["checks"]):
        raise typer.Exit(1)
    return report


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="tinyvla doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for c in report["checks"]:
        style = STYLE.get(c["status"], "white")
        table.add_row(c["name"], f"[{style}]{c['status']}[/{style}]", c["detail"])
    console.print(table)
    if report.get("memory"):
        from tinyvla.training.memory import describe

        console.print(f"[bold]memory per GPU[/bold] (estimate from parameter counts): {describe(report['memory'])}")
    est = report.get("estimate")
    if not est:
        return
    if "skipped" in est:
        console.print(f"[yellow]training time not estimated[/yellow]: {est['skipped']}")
        return
    console.print(f"[bold]{est['recipe']}[/bold]: {est['step_s']:.3f} s per optimizer step on {est['device']} "
                  f"({est['samples_per_s']:.1f} samples/s, peak memory {est['peak_mem_gb']} GB ({est['memory_kind']})"
                  + (f", MFU {100 * est['mfu']:.1f}%" if est.get("mfu") else "") + ")")
    console.print(f"  data: {est['frames']} training frames ({est['frames_source']})")
    for procs, p in est["by_processes"].items():
        hours = p["hours"]
        when = f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.1f} h"
        console.print(f"  {procs} process(es): {p['steps']} steps -> [bold]{when}[/bold]")
    console.print(f"  [dim]{est['note']}[/dim]")
