"""What an evaluation leaves on disk, and how it is read back.

    OUT/episodes.jsonl   one JSON line per finished episode, appended and fsync'ed as it ends: the source of truth
                         (a crash loses at most the episodes still running; a rerun skips what is here)
    OUT/run.json         what makes two runs comparable (suite, protocol, ensembling, checkpoint hash): a rerun into
                         the same OUT with different settings is refused instead of mixing incomparable episodes
    OUT/results.json     the summary, rewritten atomically after every run from episodes.jsonl
    OUT/videos/*.mp4     optional

Pure stdlib + numpy-free: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tinyvla.core.atomic import write_json_atomic
from tinyvla.machine import machine_info
from tinyvla.errors import UserError

EPISODES_FILE = "episodes.jsonl"
RESULTS_FILE = "results.json"
RUN_FILE = "run.json"


# ----------------------------------------------------------------------------------------------------------------------
# episodes.jsonl


class EpisodeLog:
    """Append-only episode records. Several shards may append to one file: each record is one write() of one line
    to a file opened with O_APPEND, which POSIX keeps whole."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / EPISODES_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[tuple[int, int], dict]:
        """(task_id, episode) -> record. The last record of an episode wins (a retried error); a torn last line (a
        crash mid-write) is skipped."""
        records: dict[tuple[int, int], dict] = {}
        if not self.path.is_file():
            return records
        with open(self.path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                    records[(int(r["task_id"]), int(r["episode"]))] = r
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
        return records

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        if self._torn_tail():  # a crash cut the last line: start on a fresh line so this record stays readable
            line = "\n" + line
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


    def _torn_tail(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except FileNotFoundError:
            return False


# ----------------------------------------------------------------------------------------------------------------------
# Identity: versions, checkpoint hash, run settings


def _sha256_file(path: Path, h) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # 1 MiB at a time: multi-GB weights never sit in memory
            h.update(block)


def checkpoint_identity(path: str | os.PathLike) -> dict:
    """Path + one sha256 over policy.json and every *.safetensors file (names and contents, in sorted order)."""
    root = Path(path).resolve()
    files = sorted([root / "policy.json"] + [p for p in root.rglob("*.safetensors") if p.is_file()])
    files = [p for p in files if p.is_file()]
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        _sha256_file(p, h)
        h.update(b"\0")
    return {"path": str(root), "sha256": h.hexdigest(), "files": [p.relative_to(root).as_posix() for p in files]}


def check_run_identity(out_dir: str | os.PathLike, identity: dict) -> None:
    """Write OUT/run.json, or check a rerun matches the run already there."""
    path = Path(out_dir) / RUN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old is not None and old != identity:
            diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            raise UserError(f"{out_dir} holds episodes of a different evaluation (differs in: {', '.join(diff)}); "
                            "pass another --out, or delete that directory to start over")
        if old is not None:
            return
    write_json_atomic(path, identity)


# ----------------------------------------------------------------------------------------------------------------------
# Summary


def summarize(records: dict[tuple[int, int], dict], tasks: dict[int, str], keys: list[tuple[int, int]]) -> dict:
    """Success per task and overall over the episodes `keys` (the whole, unsharded episode list) that have records."""
    per_task = {t: {"task_id": t, "task": name, "episodes": 0, "successes": 0, "errors": 0, "steps": 0}
                for t, name in tasks.items()}
    done = 0
    for key in keys:
        r = records.get(key)
        if r is None:
            continue
        done += 1
        row = per_task[key[0]]
        row["episodes"] += 1
        row["successes"] += bool(r.get("success"))
        row["errors"] += "error" in r
        row["steps"] += int(r.get("steps", 0))
    rows = []
    for row in per_task.values():
        n = row["episodes"]
        rows.append({"task_id": row["task_id"], "task": row["task"], "episodes": n, "successes": row["successes"],
                     "success_rate": row["successes"] / n if n else None, "errors": row["errors"],
                     "mean_steps": row["steps"] / n if n else None})
    total = sum(r["episodes"] for r in rows)
    wins = sum(r["successes"] for r in rows)
    return {
        "success_rate": wins / total if total else None,
        "episodes": total,
        "successes": wins,
        "errors": sum(r["errors"] for r in rows),
        "episodes_expected": len(keys),
        "complete": done == len(keys),
        "tasks": rows,
    }


def write_results(out_dir: str | os.PathLike, results: dict) -> Path:
    """Write results.json; the machine goes into `results` too (success figures depend on the CPU's kernels), so what
    the caller returns is what the file says."""
    path = Path(out_dir) / RESULTS_FILE
    results["machine"] = machine_info()
    write_json_atomic(path, results)
    return path


def print_table(summary: dict, console=None, title: str = "") -> None:
    """The per-task table (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title or None)
    table.add_column("id", justify="right")
    table.add_column("task")
    table.add_column("episodes", justify="right")
    table.add_column("success", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("steps", justify="right")
    for r in summary["tasks"]:
        if not r["episodes"]:
            continue
        table.add_row(str(r["task_id"]), r["task"], str(r["episodes"]), str(r["successes"]),
                      f"{100 * r['success_rate']:.1f}%", str(r["errors"]) if r["errors"] else "",
                      f"{r['mean_steps']:.0f}")
    rate = summary["success_rate"]
    table.add_section()
    table.add_row("", "all", str(summary["episodes"]), str(summary["successes"]),
                  "-" if rate is None else f"{100 * rate:.1f}%",
                  str(summary["errors"]) if summary["errors"] else "", "")
    console.print(table)
