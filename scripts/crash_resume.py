"""Crash injection: kill -9 a short training at random moments, `--resume` it, and compare with an unbroken run.

    python scripts/crash_resume.py --iterations 20            # the BENCHMARKS figure (~15 min on a 2-core CPU)
    python scripts/crash_resume.py --iterations 2 --modes checkpoint,final   # what tests/test_crash_resume.py runs

One uninterrupted reference run (tiny Qwen3-VL, fp32, CPU, the test fixture dataset, a checkpoint every step), then
per iteration a fresh run killed with SIGKILL at a moment chosen by its mode:
  random      a uniform moment of the training proper: from when the run claims its directory (recipe.yaml written,
              before data and model load) to when the reference run had finished
  checkpoint  while a checkpoint is being written (a `.step-N.tmp` directory exists), at a random save
  final       while the final policy directory is being written (a `.final.*.tmp` directory exists)
and then `tinyvla train --resume` (or `--overwrite` when the kill came before the first checkpoint). An iteration passes
when the resumed run's weights are bit-identical to the reference's, its metrics.jsonl holds the same records (step,
loss, lr, one held-out eval), and no DataLoader worker of the killed trainer outlived it. Prints one line per iteration
and a `identical: K / N` summary; exit code 1 if any iteration failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "libero_v20_tiny"
STEPS = 6
OVERRIDES = [f"data.repo={FIXTURE}", "data.suite=null", "data.image_size=32", "data.num_workers=1",
             "data.val_episodes=1", "train.batch_size=2", f"train.max_steps={STEPS}", "train.save_every=1",
             "train.keep_last=2", "train.log_every=2", "train.warmup_steps=0", "train.tensorboard=false",
             "train.eval_every=0", "train.eval_batches=1", "train.num_threads=1"]
MODES = ("random", "checkpoint", "final")


def command(out: Path, *flags: str) -> list[str]:
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    return [sys.executable, "-m", "tinyvla.cli.main", "train", str(ROOT / "recipes" / "tiny-cpu.yaml"), *sets,
            "--out", str(out), *flags]


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(out, *flags), env=environment(), capture_output=True, text=True, timeout=600)


def children(pid: int) -> set[int]:
    """Direct children of `pid` (the DataLoader workers of a trainer), from /proc."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def describe(pid: int) -> str:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        return f"state {state}, {cmd}"
    except OSError:
        return "gone"


def temp_dirs(out: Path, mode: str) -> list[Path]:
    if mode == "checkpoint":
        return list((out / "checkpoints").glob(".step-*.tmp")) if (out / "checkpoints").is_dir() else []
    return list(out.glob(".final.*.tmp")) if out.is_dir() else []


def wait_for_claim(proc: subprocess.Popen, out: Path) -> float:
    """Seconds from now until the run wrote its recipe.yaml (it holds the run directory), or until it exited."""
    start = time.time()
    while proc.poll() is None and not (out / "recipe.yaml").exists():
        time.sleep(0.005)
    return time.time() - start


def crash(out: Path, mode: str, rng: random.Random, training_seconds: float) -> dict:
    """Start a training into `out` and SIGKILL it at a moment chosen by `mode`. Returns what happened."""
    proc = subprocess.Popen(command(out), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.time()
    workers: set[int] = set()
    if mode == "random":
        wait_for_claim(proc, out)
        deadline = time.time() + rng.uniform(0.0, 0.9 * training_seconds)
        while time.time() < deadline and proc.poll() is None:
            workers |= children(proc.pid)
            time.sleep(0.005)
        where = f"killed at {time.time() - start:.2f} s"
    else:
        # Kill inside the k-th save of this kind (or the first one seen after it), a few milliseconds after it began.
        target = rng.randint(1, STEPS) if mode == "checkpoint" else 1
        seen, where = set(), "not killed (the run finished first)"
        while proc.poll() is None:
            workers |= children(proc.pid)
            new = [p for p in temp_dirs(out, mode) if p.name not in seen]
            seen |= {p.name for p in new}
            if new and len(seen) >= target:
                time.sleep(rng.uniform(0.0, 0.05))
                where = f"killed inside {mode} save #{len(seen)} ({new[0].name}) at {time.time() - start:.2f} s"
                break
            time.sleep(0.001)
    finished = proc.poll() is not None
    if not finished:
        workers |= children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Workers must go with the trainer (prctl PDEATHSIG). On a loaded machine the kernel may take a moment to reap them;
    # torch's own watchdog would only notice after 5 s, and only in a worker waiting for work.
    deadline = time.time() + 2.0
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    orphans = [f"{w} ({describe(w)})" for w in sorted(workers) if alive(w)]
    for w in [w for w in workers if alive(w)]:  # clean up so one failure does not slow the next iteration
        os.kill(w, signal.SIGKILL)
    return {"killed": not finished, "where": where if not finished else "not killed (the run finished first)",
            "workers_seen": len(workers), "orphans": orphans}


def weights(policy_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(policy_dir / "model" / "model.safetensors"))


def records(out: Path) -> list:
    """metrics.jsonl without the wall-clock fields (time, samples/s)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    keep = []
    for r in rows:
        if "loss" in r:
            keep.append(("train", r["step"], r["loss"], r["lr"]))
        elif "eval" in r:
            keep.append(("eval", r["step"], r["eval"].get("l1_mean")))
    return keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, cycled through: " + ", ".join(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tinyvla-crash-resume"))
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)

    t0 = time.time()
    ref = subprocess.Popen(command(args.work / "reference"), env=environment(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    startup = wait_for_claim(ref, args.work / "reference")
    _, err = ref.communicate()
    duration = time.time() - t0
    if ref.returncode != 0:
        print(err[-2000:], file=sys.stderr)
        return 1
    ref_weights, ref_records = weights(args.work / "reference" / "final"), records(args.work / "reference")
    print(f"reference: {STEPS} steps in {duration:.1f} s ({duration - startup:.1f} s after claiming its directory), "
          f"{len(ref_weights)} tensors, {len(ref_records)} metric records")

    passed = killed = 0
    for i in range(args.iterations):
        mode = modes[i % len(modes)]
        out = args.work / f"run-{i:02d}"
        for _ in range(3):  # a run that finished before its kill moment crashed nowhere: start that iteration again
            shutil.rmtree(out, ignore_errors=True)
            event = crash(out, mode, rng, duration - startup)
            if event["killed"]:
                break
        killed += event["killed"]
        result = run(out, "--resume")
        how = "--resume"
        if result.returncode == 2 and "no checkpoint" in result.stderr:  # killed before the first checkpoint
            result = run(out, "--overwrite")
            how = "--overwrite"
        problems = []
        if result.returncode != 0:
            problems.append(f"{how} exited {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")
        else:
            got = weights(out / "final")
            differ = [k for k in ref_weights if k not in got or not (got[k].tobytes() == ref_weights[k].tobytes())]
            if differ or set(got) != set(ref_weights):
                problems.append(f"{len(differ)} tensors differ")
            if records(out) != ref_records:
                problems.append(f"metrics differ: {records(out)} vs {ref_records}")
            leftovers = [p.name for p in [*out.glob(".*.tmp"), *(out / "checkpoints").glob(".*.tmp")]]
            if leftovers:
                problems.append(f"temp files left: {leftovers}")
        if event["orphans"]:
            problems.append(f"workers outlived the trainer: {event['orphans']}")
        ok = not problems
        passed += ok
        resumed = next((line.split("checkpoints/")[-1].split()[0] for line in result.stdout.splitlines()
                        if "resumed from" in line), "scratch")
        print(f"[{i + 1}/{args.iterations}] {mode:<10} {event['where']}; {event['workers_seen']} worker(s); "
              f"{how} from {resumed} -> {'identical' if ok else 'FAIL: ' + '; '.join(problems)}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"identical: {passed} / {args.iterations} ({killed} killed mid-run), {time.time() - t0:.0f} s in all")
    return 0 if passed == args.iterations else 1


if __name__ == "__main__":
    sys.exit(main())
