"""`tinyvla export CKPT --out DIR`: a self-contained policy directory (safetensors, processor, policy.json, card)."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    ckpt: Path = typer.Argument(..., help="A policy directory: runs/NAME/final or an earlier export."),
    out: Path = typer.Option(..., "--out", help="Where to write the exported policy."),
    merge_lora: bool = typer.Option(False, "--merge-lora", help="Fold LoRA adapters into the weights."),
    dtype: str = typer.Option("fp32", "--dtype", help="Weight dtype of the export: fp32 | bf16 | fp16."),
    push_to_hub: str | None = typer.Option(None, "--push-to-hub", help="Also upload to this hub repo (ORG/NAME)."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier export in --out."),
):
    """Export a trained policy."""
    from rich.console import Console

    from tinyvla.export import export_policy

    path = export_policy(ckpt, out, merge_lora=merge_lora, dtype=dtype, push_to_hub=push_to_hub, force=force)
    Console().print(f"[green]exported[/green] {ckpt} -> [bold]{path}[/bold]")
