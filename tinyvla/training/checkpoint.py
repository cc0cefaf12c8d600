"""Checkpoints and the run directory: what makes a training run safe to kill, resume and share a machine with.

    runs/NAME/
      .lock                  held (flock) by the training writing here; holds its PID
      recipe.yaml            the run's recipe, written when the run starts (--resume compares against it)
      metrics.jsonl, tensorboard/, loss.png, final/
      checkpoints/step-00000500/
        model.safetensors, optimizer.bin, random_states_<rank>.pkl, ...   accelerate's save_state, every rank
        ema_rank<rank>.safetensors   the weight average, when train.ema_decay > 0 (training/ema.py)
        trainer_state.json   step, epoch, position in the epoch, logging window, metrics.jsonl length
        COMPLETE.json        written last, after every rank finished: each file of the checkpoint with its size

The rules, each one a fix for something a kill -9 or a second terminal once broke:
- A checkpoint counts only when COMPLETE.json is there and every file it lists has its recorded size. It is built in
  `.step-N.tmp` and renamed in after all ranks wrote their files (a barrier, then rank 0 writes the marker); replacing
  a checkpoint of the same step swaps the two directories in one step (core/atomic.py).
- `--resume` takes the newest complete checkpoint and names each newer one it skipped and why.
- A run directory that holds anything is refused without `--resume` (continue it) or `--overwrite` (remove the previous
  run's files, and only those). `--resume` refuses a recipe that changed in anything but the step budget.
- One training per run directory: an exclusive lock; a second one is refused with the PID of the first.
- Processes die with their parent (tinyvla/lifetime.py): DataLoader workers and launched ranks ask the kernel for
  SIGKILL when their parent goes, so a kill -9 of the trainer or of `accelerate launch` leaves nothing training.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from tinyvla.core.atomic import (apply_umask, check_output_dir, recover_replaced_dir, replace_dir, write_json_atomic,
                                 write_text_atomic)
from tinyvla.errors import UserError

CHECKPOINT_PREFIX = "step-"
MARKER = "COMPLETE.json"
STATE = "trainer_state.json"
LOCK = ".lock"
# What a training run writes into its directory: the only things --overwrite removes.
RUN_FILES = ("checkpoints", "final", "metrics.jsonl", "recipe.yaml", "tensorboard", "loss.png")
# The recipe keys --resume lets change: the step budget (and where the run lives).
RESUMABLE_CHANGES = ("train.max_steps", "train.epochs", "train.out_dir")


# ------------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# ------------------------------------------------------------------------------------------------------------------


def _step_of(path: Path) -> int | None:
    digits = path.name[len(CHECKPOINT_PREFIX):]
    return int(digits) if path.name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def all_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Every step-N directory, complete or not, oldest first."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [p for p in Path(ckpt_dir).iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=_step_of)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint, or None when it is."""
    try:
        listed = json.loads((path / MARKER).read_text())["files"]
    except FileNotFoundError:
        return f"no {MARKER} (its save was interrupted)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MARKER} is unreadable"
    for name, size in listed.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is truncated ({file.stat().st_size} of {size} bytes)"
    try:
        read_state(path)
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STATE} is unreadable"
    return None


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [p for p in all_checkpoints(ckpt_dir) if checkpoint_problem(p) is None]


def read_state(path: Path) -> dict:
    state = json.loads((path / STATE).read_text())
    for key in ("step", "epoch", "micro_in_epoch"):
        int(state[key])
    return state


def select_resume_checkpoint(ckpt_dir: Path, log=print) -> Path:
    """The newest complete checkpoint; each newer, broken one is named with what is wrong with it."""
    found = all_checkpoints(ckpt_dir)
    if not found:
        raise UserError(f"--resume: no checkpoint under {ckpt_dir} yet; start the run anew (without --resume; add "
                        "--overwrite if a killed run left files there)")
    broken = []
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            for bad, why in broken:
                log(f"skipping checkpoint {bad}: {why}")
            return path
        broken.append((path, problem))
    bad, why = broken[0]
    raise UserError(f"--resume: no complete checkpoint under {ckpt_dir} ({bad.name}: {why}); delete "
                    f"{' '.join(str(p) for p, _ in broken)} and start again with --overwrite")


def restore_metrics(out_dir: Path, state: dict) -> None:
    """Cut metrics.jsonl back to what it held when the checkpoint was saved: what came later is logged again."""
    path = Path(out_dir) / "metrics.jsonl"
    keep = state.get("metrics_lines")
    if keep is None or not path.exists():
        return
    lines = path.read_text(errors="replace").split("\n")[:keep]  # also drops a line cut by the kill
    write_text_atomic(path, "".join(line + "\n" for line in lines))


# ------------------------------------------------------------------------------------------------------------------
# Writing checkpoints (every process calls this)
# ------------------------------------------------------------------------------------------------------------------


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def save_checkpoint(accelerator, ckpt_dir: Path, step: int, state: dict, keep_last: int, save_extra=None) -> Path:
    """accelerate's save_state into `.step-N.tmp`, then (after every rank finished) the state, the marker, the
    rename. Every process must call it: it holds barriers. `save_extra(dir)`, when given, writes this process's own
    further files (the weight average) into the checkpoint before it is declared complete."""
    main = accelerator.is_main_process
    final = Path(ckpt_dir) / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = final.with_name(f".{final.name}.tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if save_extra is not None:
        save_extra(tmp)
    accelerator.wait_for_everyone()  # every rank's files are on disk before rank 0 declares the checkpoint complete
    if main:
        metrics = Path(ckpt_dir).parent / "metrics.jsonl"
        write_json_atomic(tmp / STATE, {**state, "step": step, "metrics_lines": _count_lines(metrics)})
        apply_umask(tmp)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json_atomic(tmp / MARKER, {"step": step, "files": files})
        replace_dir(tmp, final)
        complete = list_checkpoints(ckpt_dir)
        newest = _step_of(complete[-1]) if complete else step
        stale = complete[: -keep_last or None] if keep_last else []
        # Broken leftovers older than the newest complete one can never be resumed from.
        stale += [p for p in all_checkpoints(ckpt_dir) if _step_of(p) < newest and p not in complete]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ------------------------------------------------------------------------------------------------------------------
# The run directory
# ------------------------------------------------------------------------------------------------------------------


class RunLock:
    """An exclusive flock on DIR/.lock, held for the life of the training (the kernel drops it if the process dies)."""

    def __init__(self, out_dir: Path, created: bool = False):
        self.out_dir, self.created = Path(out_dir), created  # created: the directory did not exist before this run
        path = Path(out_dir) / LOCK
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise UserError(f"{out_dir} is in use by another training (PID {holder}); wait for it to finish or "
                            "choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it would race a waiting locker)
            self.fd = None

    def undo_if_unused(self) -> None:
        """A run that failed before it wrote anything but its recipe leaves no trace (a rerun needs no --overwrite)."""
        if self.fd is None or {p.name for p in self.out_dir.iterdir()} - {LOCK, "recipe.yaml"}:
            return
        (self.out_dir / "recipe.yaml").unlink(missing_ok=True)
        if self.created:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        else:
            (self.out_dir / LOCK).unlink(missing_ok=True)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and full != "model.tiny":
            out.update(_flatten(value, full))
        else:
            out[full] = value
    return out


def recipe_changes(before: dict, after: dict) -> list[str]:
    """'key (old -> new)' for each recipe key that differs, ignoring the step budget."""
    a, b = _flatten(before), _flatten(after)
    keys = sorted(k for k in set(a) | set(b) if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k))
    return [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in keys]


def claim_run_dir(out_dir: Path, recipe, resume: bool, overwrite: bool) -> RunLock:
    """Lock the run directory and apply the rerun rule (main process only). Returns the held lock."""
    import yaml

    from tinyvla.recipe import save_recipe

    out_dir = Path(out_dir)
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    check_output_dir(out_dir)  # before any data loads or model builds
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out_dir, created)
    try:
        ours = [name for name in RUN_FILES if (out_dir / name).exists()]
        others = sorted(p.name for p in out_dir.iterdir() if p.name not in RUN_FILES and p.name != LOCK
                        and not _is_leftover(p.name))
        if resume:
            saved = out_dir / "recipe.yaml"
            if saved.is_file():
                changed = recipe_changes(yaml.safe_load(saved.read_text()) or {}, recipe.to_dict())
                if changed:
                    raise UserError(f"--resume: the recipe differs from the run in {out_dir} in {', '.join(changed)}; "
                                    "only the step budget (train.max_steps, train.epochs) may change on a resume. "
                                    "Use the run's recipe, or start anew with --overwrite or another --out")
        elif ours or others:
            if not overwrite:
                shown = ", ".join((ours + others)[:4])
                raise UserError(f"--out {out_dir} is not empty ({shown}); pass --resume to continue that run, "
                                "--overwrite to replace it, or choose another --out")
            for name in ours:
                path = out_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        _remove_leftovers(out_dir)
        if not resume:  # a resumed run keeps the recipe it started with until it writes final/
            save_recipe(recipe, out_dir / "recipe.yaml")
    except BaseException:
        lock.release()
        raise
    return lock


def _is_leftover(name: str) -> bool:
    """Temp names our atomic writes use in the run dir (.final.XXXX.tmp, .metrics.jsonl.XXXX.tmp, .final.old)."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old")) and \
        name.split(".")[1] in ("final", "recipe", "metrics", "loss")


def _remove_leftovers(out_dir: Path) -> None:
    """Half-written temp dirs of a killed run (ours by name; the lock guarantees no one is writing them)."""
    recover_replaced_dir(out_dir / "final")
    for path in out_dir.iterdir():
        if _is_leftover(path.name):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    ckpt_dir = out_dir / "checkpoints"
    if ckpt_dir.is_dir():
        for path in list(ckpt_dir.iterdir()):
            if path.name.endswith(".old") and path.name.startswith(f".{CHECKPOINT_PREFIX}"):
                recover_replaced_dir(ckpt_dir / path.name[1:-4])
            elif path.name.endswith(".tmp") and path.name.startswith(f".{CHECKPOINT_PREFIX}"):
                shutil.rmtree(path, ignore_errors=True)
