"""`tinyvla import`: bring a checkpoint trained elsewhere into a tinyvla policy directory.

    tinyvla import vla0 runs/vla0 --out policies/vla0-libero      # NVlabs/vla0's released LIBERO checkpoint
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("vla0")
def vla0(
    src: Annotated[Path, typer.Argument(help="The VLA-0 checkpoint folder: config.yaml, dataset_stats.pkl, model_last.pth (+ model_last/).")],
    out: Annotated[Path, typer.Option(help="Policy directory to write (then: tinyvla eval OUT --suite ...).")],
    base: Annotated[Optional[str], typer.Option(help="Base model dir or hub id for config/tokenizer when model_last/ is absent (default: config.yaml's qwen_model_id).")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option(help="Decoding repetition penalty (default: the checkpoint's generation_config value, as the official eval applies it; 1.0 = none).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="fp32 | bf16 | fp16 (default: the checkpoint's).")] = None,
):
    """Convert NVlabs/vla0's checkpoint (its two pickles read through restricted unpicklers) into safetensors + policy.json."""
    from tinyvla.vla0 import import_vla0

    path = import_vla0(src, out, base=base, repetition_penalty=repetition_penalty, dtype=dtype)
    typer.echo(f"wrote {path} (tinyvla eval {path} --suite libero_goal)")
