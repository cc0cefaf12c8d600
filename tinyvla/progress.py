"""Progress that reads well in a terminal and in a log file.

On a terminal: a rich progress bar. Anywhere else (SLURM, nohup, CI, `> log.txt`) a live bar draws nothing until it
ends, so the same progress is written as plain lines, flushed at once, that `tail -f` and grep can read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator


def stdout_is_terminal(console=None) -> bool:
    if console is not None:
        return bool(console.is_terminal)
    return sys.stdout.isatty()


def format_duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def eta_seconds(done: int, total: int, elapsed: float) -> float:
    """Remaining time at the average rate so far (0 when nothing is left; unknown before the first unit is done)."""
    if done >= total:
        return 0.0
    if done <= 0:
        return float("nan")
    return elapsed / done * (total - done)


def plain_line(text: str, console=None) -> None:
    """One line, flushed now: a log file shows it while the job runs, not when a buffer fills."""
    out = console.file if console is not None else sys.stdout
    out.write(text + "\n")
    out.flush()


def track(items: Iterable, total: int, label: str, unit: str, console=None, lines: int = 10) -> Iterator:
    """Yield from `items`, showing progress: a bar on a terminal, else about `lines` plain lines
    (`generate 400/2000 episodes  212.3 episodes/s  ETA 0:00:08`)."""
    if total <= 0:
        yield from items
        return
    if stdout_is_terminal(console):
        from rich.progress import track as rich_track

        yield from rich_track(items, total=total, description=label, console=console, transient=True)
        return
    every = max(1, total // max(1, lines))
    start = time.time()
    done = 0
    for item in items:
        yield item
        done += 1
        if done % every == 0 or done == total:
            elapsed = max(time.time() - start, 1e-9)
            plain_line(f"{label} {done}/{total} {unit}  {done / elapsed:.1f} {unit}/s  "
                       f"ETA {format_duration(eta_seconds(done, total, elapsed))}", console)
