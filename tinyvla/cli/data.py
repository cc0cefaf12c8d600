"""`tinyvla data ...`: dataset statistics and BlockFind dataset generation.

    tinyvla data stats --repo physical-intelligence/libero            # tables
    tinyvla data stats --repo tests/fixtures/libero_v20_tiny --json   # one JSON object on stdout
    tinyvla data stats --repo DIR --save-stats action_stats.json --plot actions.png
    tinyvla data generate blockfind --episodes 200 --out data/blockfind
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Datasets: statistics of LeRobot / LIBERO data, and BlockFind dataset generation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fmt(x: float) -> str:
    return f"{x:+.4f}"


def _print_tables(summary: dict, source: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from tinyvla.data.stats import sparkline

    console = Console()
    s = Table(title=f"dataset {source}", show_header=False)
    s.add_column("", style="bold")
    s.add_column("")
    for label, value in [
        ("format", summary["codebase_version"]), ("episodes", summary["episodes"]), ("frames", summary["frames"]),
        ("fps", summary["fps"]), ("tasks", summary["tasks"]),
        ("keys", ", ".join(f"{k}={v}" for k, v in summary["keys"].items() if v)),
    ]:
        s.add_row(label, str(value))
    console.print(s)

    f = Table(title="features")
    for col in ("name", "dtype", "shape"):
        f.add_column(col)
    for name, ft in summary["features"].items():
        f.add_row(name, str(ft["dtype"]), "x".join(map(str, ft["shape"])))
    console.print(f)

    a = summary["action"]
    t = Table(title=f"actions ({summary['keys'].get('action')}), per dimension")
    for col in ("dim", "min", "q01", "mean", "std", "q99", "max"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("histogram (min..max)", no_wrap=True, min_width=len(summary["histograms"][0]["counts"]))
    for d in range(len(a["min"])):
        t.add_row(str(d), *(_fmt(a[k][d]) for k in ("min", "q01", "mean", "std", "q99", "max")),
                  sparkline(summary["histograms"][d]["counts"]))
    console.print(t)

    p = Table(title="per-task bounds (min .. max per dimension)")
    p.add_column("task")
    p.add_column("bounds")
    for task, b in summary["per_task_bounds"].items():
        p.add_row(task, "  ".join(f"{lo:+.2f}..{hi:+.2f}" for lo, hi in zip(b["min"], b["max"])))
    console.print(p)

    tok = summary["action_text_tokens"]
    console.print(
        f"action text: {tok['horizon']} steps x {tok['dims']} dims as ints 0..{tok['bins']} -> "
        f"[bold]{tok['min']} / {tok['mean']:.1f} / {tok['max']}[/bold] tokens (min / mean / max over "
        f"{tok['frames']} frames; with Qwen, one token per digit or space)"
    )


def _plot(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    hists = summary["histograms"]
    cols = min(4, len(hists))
    rows = (len(hists) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for d, ax in enumerate(axes.flat):
        if d >= len(hists):
            ax.axis("off")
            continue
        edges, counts = np.asarray(hists[d]["edges"]), np.asarray(hists[d]["counts"])
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue")
        ax.axvline(summary["action"]["q01"][d], color="tab:red", lw=0.8, ls="--")
        ax.axvline(summary["action"]["q99"][d], color="tab:red", lw=0.8, ls="--")
        ax.set_title(f"dim {d}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"action histograms ({summary['frames']} frames; dashed: q01 / q99)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix or ".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


@app.command("stats")
def stats(
    repo: str = typer.Option(..., "--repo", help="LeRobot dataset dir, Hub dataset id, or a folder of LIBERO .hdf5"),
    horizon: int = typer.Option(8, "--horizon", min=1, help="Action chunk length H for the action-text lengths."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object and nothing else."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write per-dimension histograms to this PNG."),
    save_stats: Optional[Path] = typer.Option(None, "--save-stats", help="Write action stats JSON (ActionStats)."),
    image_key: Optional[str] = typer.Option(None, "--image-key", help="Third-person camera feature."),
    wrist_key: Optional[str] = typer.Option(None, "--wrist-key", help="Wrist camera feature."),
    action_key: Optional[str] = typer.Option(None, "--action-key", help="Action feature (default: by version)."),
    bins: int = typer.Option(20, "--bins", min=2, help="Histogram bins."),
):
    """Episodes, frames, tasks, features and per-dimension action statistics; reads only the action columns."""
    from tinyvla.core.atomic import check_output_file, write_json_atomic
    from tinyvla.data import open_dataset

    for flag, target in (("--save-stats", save_stats), ("--plot", plot)):
        if target is not None:
            check_output_file(target, flag)  # before the (possibly long) read of the dataset
    from tinyvla.data.stats import dataset_summary, summary_to_action_stats

    reader = open_dataset(repo, image_key=image_key, wrist_key=wrist_key, action_key=action_key)
    summary = dataset_summary(reader, horizon=horizon, histogram_bins=bins)
    summary["source"] = str(repo)
    if save_stats is not None:
        write_json_atomic(save_stats, summary_to_action_stats(summary))
    if plot is not None:
        _plot(summary, plot)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    _print_tables(summary, str(repo))
    if save_stats is not None:
        typer.echo(f"action stats -> {save_stats}")
    if plot is not None:
        typer.echo(f"histograms -> {plot}")


@app.command("generate")
def generate(
    suite: str = typer.Argument(..., help="BlockFind suite, e.g. blockfind or blockfind-reach."),
    episodes: int = typer.Option(..., "--episodes", min=1, help="Number of expert demonstrations."),
    out: Path = typer.Option(..., "--out", help="Output directory (a LeRobot v2.0 dataset)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    image_size: int = typer.Option(64, "--image-size", min=8, help="Side of the square camera images."),
    blocks: int = typer.Option(3, "--blocks", help="Blocks on the table (2-4; evaluation uses 3)."),
    paired: bool = typer.Option(False, "--paired", help="blockfind: demonstrate every block of each layout from one "
                                                        "start, so only the instruction tells the demos apart."),
    home_layouts: float = typer.Option(0.0, "--home-layouts", min=0.0, max=1.0,
                                       help="blockfind: share of layouts with each colour in its own quadrant "
                                            "(a curriculum: the colour word alone points the way there)."),
    path: str = typer.Option("diagonal", "--path", help="How the expert moves: diagonal (both axes at once) or "
                                                        "x_first (align x, then y)."),
    expert: str = typer.Option("coarse", "--expert", help="How big the expert's moves are: coarse (-1/0/+1 per axis) "
                                                          "or continuous (proportional to the distance, clipped)."),
    force: bool = typer.Option(False, "--force", help="Replace what is already in --out."),
):
    """Write BlockFind expert demonstrations as a LeRobot v2.0 dataset (the physical-intelligence/libero layout)."""
    from tinyvla.core.atomic import check_output_dir
    from tinyvla.envs.blockfind import generate_dataset  # lazy: keeps `tinyvla --help` fast
    from tinyvla.errors import UserError

    check_output_dir(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "a dataset" if (out / "meta" / "info.json").is_file() else "files"
        raise UserError(f"--out {out} already holds {what}; pass --force to replace it, or choose another --out")
    written = generate_dataset(suite, episodes, out, seed=seed, image_size=image_size, n_blocks=blocks,
                               paired=paired, home_layouts=home_layouts, path=path, expert=expert)
    typer.echo(f"wrote {written}")
