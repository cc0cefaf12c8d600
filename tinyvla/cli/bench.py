"""`tinyvla bench`: training throughput and closed-loop inference speed (speculative vs greedy) in one run.

    tinyvla bench recipes/tiny-cpu.yaml
    tinyvla bench --model arch:qwen3-2b --only infer --compare spec,greedy --json
    tinyvla bench runs/tiny-cpu/final --only infer

The measuring code is tinyvla/bench.py; this module parses options and prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tinyvla.errors import UserError


def bench(
    target: Annotated[Optional[str], typer.Argument(help="A recipe (.yaml) or a policy directory; or use --model.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name: tiny-qwen3, arch:qwen3-2b, qwen3-2b, a hub id or a dir.")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Recipe override, e.g. --set train.batch_size=4 (repeatable).")] = [],  # noqa: B006
    only: Annotated[Optional[str], typer.Option(help="train | infer (default: both; a policy directory: infer).")] = None,
    compare: Annotated[str, typer.Option(help="Decoding modes to measure, comma separated: spec, greedy.")] = "spec,greedy",
    steps: Annotated[int, typer.Option(help="Inference: closed-loop steps per repeat (one query per step).")] = 20,
    num_envs: Annotated[int, typer.Option(help="Inference: BlockFind envs queried together (batch size).")] = 1,
    repeats: Annotated[int, typer.Option(help="Repeats per measurement; figures are medians.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up rounds.")] = 1,
    train_steps: Annotated[int, typer.Option(help="Training: timed optimizer steps (after --warmup + 1 untimed).")] = 5,
    batch_size: Annotated[Optional[int], typer.Option(help="Training: batch size (default: the recipe's).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Inference device (default: cuda if available, else cpu).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Inference dtype: fp32 | bf16 | fp16 (default: the recipe's on GPU, fp32 on CPU).")] = None,
    static_cache: Annotated[bool, typer.Option("--static-cache", help="Greedy on GPU: a static KV cache (transformers then compiles the decode step).")] = False,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Peak bf16 TFLOP/s of the GPU for MFU, if not in the built-in table.")] = None,
    num_threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch; 1 is often fastest on a busy CPU.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the BlockFind episodes.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Also write the JSON here.")] = None,
):
    """Training throughput and inference speed, speculative vs greedy decoding on the same closed-loop observations."""
    from tinyvla import bench as B

    if only not in (None, "train", "infer"):
        raise UserError(f"--only must be train or infer, got {only!r}")
    for name, value, low in (("--steps", steps, 1), ("--num-envs", num_envs, 1), ("--repeats", repeats, 1),
                             ("--warmup", warmup, 0), ("--train-steps", train_steps, 1)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    modes = [m.strip() for m in compare.split(",") if m.strip()]
    if not modes or any(m not in B.MODES for m in modes):
        raise UserError(f"--compare takes a comma list of {', '.join(B.MODES)}; got {compare!r}")
    import torch

    if num_threads is not None:
        if num_threads < 1:
            raise UserError(f"--num-threads must be >= 1, got {num_threads}")
        torch.set_num_threads(num_threads)

    recipe, policy_dir = B.resolve_target(target, model, set_)
    if policy_dir is not None and only == "train":
        raise UserError("training throughput needs a recipe (or --model); a policy directory only benchmarks inference")
    report: dict = {"target": target or model, "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                    "threads": torch.get_num_threads()}
    if recipe is not None and only in (None, "train"):
        report["train"] = B.bench_training(recipe, steps=train_steps, warmup=warmup + 1, batch_size=batch_size,
                                           peak_tflops=peak_tflops, num_threads=num_threads)
    if only in (None, "infer"):
        from tinyvla.policy_dir import DecodingConfig

        decoding = DecodingConfig(generate_kwargs={"cache_implementation": "static"} if static_cache else {})
        if policy_dir is not None:
            from tinyvla.policy import Policy

            policy = Policy.from_pretrained(policy_dir, device=device, dtype=dtype, decoding=decoding)
        else:
            policy = B.policy_from_recipe(recipe, device=device, dtype=dtype, decoding=decoding)
        report["infer"] = B.bench_inference(policy, modes=modes, steps=steps, num_envs=num_envs, repeats=repeats,
                                            warmup=warmup, seed=seed)
        report["infer"]["random_weights"] = policy_dir is None and not _is_checkpoint(recipe.model.name)

    if out is not None:
        from tinyvla.core.atomic import write_json_atomic

        write_json_atomic(out, report)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    return report


def _is_checkpoint(name: str) -> bool:
    from tinyvla.modeling.registry import resolve_model_name

    return resolve_model_name(name).kind in ("hub", "local")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{report['target']}[/bold] on {report['device']} (torch {report['torch']}, "
                  f"{report['threads']} threads)")
    if "train" in report:
        t = report["train"]
        table = Table(title="training (synthetic batches of the recipe's shape)")
        for col in ("params (M)", "batch", "seq", "step (s)", "samples/s", "tokens/s", "peak mem (GB)", "MFU"):
            table.add_column(col, justify="right")
        table.add_row(_fmt(t["params_m"]), f"{t['batch_size']}x{t['grad_accum']}", _fmt(t["seq_len"]),
                      _fmt(t["step_s"]), _fmt(t["samples_per_s"]), _fmt(t["tokens_per_s"]),
                      f"{_fmt(t['peak_mem_gb'])} ({t['memory_kind']})",
                      "-" if t["mfu"] is None else f"{100 * t['mfu']:.1f}%")
        console.print(table)
    if "infer" in report:
        r = report["infer"]
        table = Table(title=f"inference: closed-loop BlockFind-reach, {r['steps']} steps x {r['num_envs']} env(s), "
                            f"H={r['horizon']} D={r['dim']} B={r['bins']}, median of {r['repeats']}")
        for col in ("mode", "ms/chunk", "ms/query", "tokens/chunk", "passes/chunk", "chunks/s", "acceptance"):
            table.add_column(col, justify="right")
        for mode, m in r["modes"].items():
            table.add_row(mode, _fmt(m["ms_per_chunk"]), _fmt(m["ms_per_query"]), _fmt(m["tokens_per_chunk"]),
                          _fmt(m["passes_per_chunk"]), _fmt(m["chunks_per_s"]), _fmt(m["acceptance"]))
        console.print(table)
        if "ratio" in r:
            ok = "[green]identical actions[/green]" if r["identical"] else "[red]actions differ[/red]"
            console.print(f"spec / greedy: passes x{r['ratio'].get('passes_per_chunk', float('nan')):.3f}, "
                          f"time x{r['ratio'].get('ms_per_chunk', float('nan')):.3f} (speedup {r['speedup']}x); {ok}")
            steady = r["modes"]["spec"].get("passes_per_chunk_steady")
            if steady is not None:
                console.print(f"steady state (no env starting an episode): {steady:.2f} passes per chunk with spec")
        if r.get("random_weights"):
            console.print("[dim]random weights: the model's text is meaningless and repetitive, which flatters drafts; "
                          "judge acceptance on a trained policy[/dim]")
