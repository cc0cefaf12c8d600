"""Train and evaluate one recipe over several training seeds; print each seed's success and mean [min-max].

    python scripts/seed_sweep.py recipes/tiny-cpu.yaml --seeds 0-4
    python scripts/seed_sweep.py recipes/tiny-cpu.yaml --seeds 0-4 --set actions.mask_prob=0 --out runs/sweep-nomask
    python scripts/seed_sweep.py recipes/tiny-cpu.yaml --seeds 0,3,7 --jobs 2     # two trainings at once
    # a two-stage curriculum per seed: each seed's stage 2 starts from the same seed's stage 1
    python scripts/seed_sweep.py recipes/tiny-cpu-blockfind.yaml --seeds 0-2 --suite blockfind \
        --set model.init_from=runs/sweep-tiny-cpu/seed-{seed}/final

One training seed says little: a tiny recipe that stops near its success jump lands anywhere from 87 % to 99 % with
the seed (BENCHMARKS.md). Every success figure we quote is therefore mean [min-max] over seeds, from this script.

Each seed runs the real CLI (`tinyvla train RECIPE --set train.seed=S --out OUT/seed-S`, then `tinyvla eval`), its
output in OUT/seed-S.log. A sweep is resumable: a seed whose policy exists is not retrained, and the eval resumes
its episodes. The dataset is generated once before any training starts, so parallel jobs share it. The summary goes
to OUT/sweep.json with the machine it ran on (success depends on the CPU's kernels; tinyvla/machine.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,3,7' -> [0, 3, 7]; '1-2,9' -> [1, 2, 9]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
        except ValueError:
            raise SystemExit(f"error: --seeds takes e.g. 0-4 or 0,3,7; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: --seeds must name distinct seeds, got {text!r}")
    return seeds


def summarize(per_seed: dict[int, float]) -> dict:
    rates = list(per_seed.values())
    return {"seeds": len(rates), "mean": statistics.fmean(rates), "min": min(rates), "max": max(rates),
            "per_seed": {str(s): r for s, r in per_seed.items()}}


def format_summary(summary: dict) -> str:
    """'95.4 % [90.0-99.0] over 5 seeds' (percent)."""
    return (f"{100 * summary['mean']:.1f} % [{100 * summary['min']:.0f}-{100 * summary['max']:.0f}] "
            f"over {summary['seeds']} seeds")


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "tinyvla.cli.main", *map(str, args)]


def seed_overrides(overrides: list[str], seed: int) -> list[str]:
    """The --set values with "{seed}" replaced by this seed (e.g. each seed's own stage-1 policy to start from)."""
    return [s.replace("{seed}", str(seed)) for s in overrides]


def run_seed(args, seed: int, out: Path) -> dict:
    run = out / f"seed-{seed}"
    log = out / f"seed-{seed}.log"
    sets = [x for s in seed_overrides(args.set, seed) for x in ("--set", s)]
    started = time.time()
    with log.open("a") as f:
        if not (run / "final" / "policy.json").is_file():
            subprocess.run(cli("train", args.recipe, *sets, "--set", f"train.seed={seed}", "--out", run),
                           stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
        trained = time.time()
        eval_dir = run / f"eval-{args.suite}"
        subprocess.run(cli("eval", run / "final", "--suite", args.suite, "--episodes-per-task", args.episodes_per_task,
                           "--num-envs", args.num_envs, "--num-threads", 1, "--out", eval_dir),
                       stdout=f, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    rate = json.loads((eval_dir / "results.json").read_text())["success_rate"]
    result = {"seed": seed, "success_rate": rate, "train_wall_s": round(trained - started, 1),
              "eval_wall_s": round(time.time() - trained, 1)}
    print(f"seed {seed}: {100 * rate:.1f} %  (train {result['train_wall_s']:.0f} s wall, log {log})", flush=True)
    return result


def prepare_data(args) -> None:
    """Generate the recipe's BlockFind demos once, before parallel trainings would race to write them."""
    from tinyvla.envs.suites import BLOCKFIND_SUITES
    from tinyvla.recipe import load_recipe
    from tinyvla.training.data import resolve_dataset

    recipe = load_recipe(Path(args.recipe), seed_overrides(args.set, 0))
    if recipe.data.suite in BLOCKFIND_SUITES:
        resolve_dataset(recipe)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe")
    p.add_argument("--seeds", default="0-4", help="training seeds: 0-4, or 0,3,7 (default 0-4)")
    p.add_argument("--set", action="append", default=[],
                   help="recipe override for every seed (repeatable); {seed} becomes the seed")
    p.add_argument("--suite", default="blockfind-reach", help="evaluation suite (default blockfind-reach)")
    p.add_argument("--episodes-per-task", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (each uses the recipe's threads)")
    p.add_argument("--out", help="sweep directory (default runs/sweep-<recipe file name>)")
    args = p.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    out = Path(args.out or ROOT / "runs" / f"sweep-{Path(args.recipe).stem}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.recipe = str(Path(args.recipe).resolve())
    prepare_data(args)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda s: run_seed(args, s, out), seeds))

    from tinyvla.machine import describe, machine_info

    summary = summarize({r["seed"]: r["success_rate"] for r in results})
    machine = machine_info()
    record = {"recipe": args.recipe, "overrides": args.set, "suite": args.suite,
              "episodes_per_task": args.episodes_per_task, "runs": results, "summary": summary, "machine": machine}
    (out / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n{Path(args.recipe).name} {' '.join(args.set)} on {args.suite}, {describe(machine)}")
    print("| seed | success | train wall s |\n|---|---|---|")
    for r in results:
        print(f"| {r['seed']} | {100 * r['success_rate']:.1f} % | {r['train_wall_s']:.0f} |")
    print(f"mean [min-max]: {format_summary(summary)}  -> {out / 'sweep.json'}")
    return record


if __name__ == "__main__":
    main()
