"""Forward passes per chunk: chunk-shift speculative decoding vs greedy, in a closed-loop BlockFind-reach rollout.

    python scripts/bench_speculative.py --policy runs/tiny-cpu/final --steps 40 --num-envs 1
    python scripts/bench_speculative.py                      # a tiny random model (H=4, D=7, B=1000)

Every variant runs the same rollout from the same seeds; the policy re-queries every step (VLA-0's setting) with its
ensembling. Variants:
  greedy          transformers' generate with the action grammar (the reference)
  spec            previous chunk shifted as the draft, checked in one pass, offered again after each miss (the
                  policy's default; a row's draft length halves after a miss and doubles after a full accept)
  spec-full       spec, always offering the whole remaining draft (fewest passes, longest passes)
  spec-once       the draft on the first pass only (then greedy from the first miss)
  spec-reprefill  like spec-once, but the pass after the check recomputes prompt + accepted tokens instead of
                  reusing the KV cache (same passes, more compute per pass)
`identical` compares each variant's actions with greedy's on every step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "greedy": None,
    "spec": {"redraft": True, "reuse_cache": True, "adaptive": True},
    "spec-full": {"redraft": True, "reuse_cache": True, "adaptive": False},
    "spec-once": {"redraft": False, "reuse_cache": True, "adaptive": True},
    "spec-reprefill": {"redraft": False, "reuse_cache": False, "adaptive": True},
}


def _steady(run: dict):
    later = [p for p, fresh in zip(run["call_passes"], run["call_fresh"]) if not fresh]
    return round(sum(later) / len(later), 3) if later else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", help="policy directory (default: a tiny random tiny-qwen3 policy)")
    ap.add_argument("--steps", type=int, default=30, help="closed-loop steps (one query per step)")
    ap.add_argument("--num-envs", type=int, default=1, help="envs queried together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from tinyvla.bench import closed_loop, policy_from_recipe, resolve_target
    from tinyvla.policy import Policy

    torch.set_num_threads(args.threads)
    if args.policy:
        policy = Policy.from_pretrained(args.policy)
        label = args.policy
    else:
        torch.manual_seed(0)
        policy = policy_from_recipe(resolve_target(None, "tiny-qwen3")[0])
        label = "tiny-qwen3, random weights"
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {list(VARIANTS)}")
    if "greedy" not in names:
        names.insert(0, "greedy")

    closed_loop(policy, steps=2, num_envs=args.num_envs, seed=args.seed + 1, speculative=False)  # warm-up
    rows, ref = {}, None
    for name in names:
        opts = VARIANTS[name]
        t = time.perf_counter()
        with policy.decoding(**(opts or {})):  # every variant names all three options
            run = closed_loop(policy, steps=args.steps, num_envs=args.num_envs, seed=args.seed,
                              speculative=opts is not None)
        c = run["counts"]
        if ref is None:
            ref = run["actions"]
        rows[name] = {
            "passes_per_chunk": round(c["passes"] / c["calls"], 3),
            # Without the queries where an env starts an episode (no draft of its own yet): the steady state.
            "passes_per_chunk_steady": _steady(run),
            "tokens_per_chunk": round(c["tokens"] / c["chunks"], 2),
            "acceptance": round(c["accepted"] / c["drafted"], 4) if c["drafted"] else None,
            "ms_per_query": round(1000 * run["seconds"] / c["calls"], 2),
            "wall_s": round(time.perf_counter() - t, 2),
            "identical": bool(np.array_equal(run["actions"], ref)),
        }
    g = rows["greedy"]
    for name, r in rows.items():
        r["passes_ratio"] = round(r["passes_per_chunk"] / g["passes_per_chunk"], 4)
        r["time_ratio"] = round(r["ms_per_query"] / g["ms_per_query"], 4)
    out = {"policy": label, "steps": args.steps, "num_envs": args.num_envs, "seed": args.seed,
           "horizon": policy.prompt.horizon, "dim": policy.prompt.dim, "bins": policy.prompt.bins,
           "threads": torch.get_num_threads(), "variants": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{label}: closed-loop BlockFind-reach, {args.steps} steps x {args.num_envs} env(s), "
          f"H={out['horizon']} D={out['dim']} B={out['bins']}, {out['threads']} thread(s)")
    print(f"{'variant':16s} {'passes/chunk':>12s} {'x greedy':>9s} {'steady':>7s} {'ms/query':>9s} {'x greedy':>9s} "
          f"{'accept':>7s} {'tokens':>7s}  identical")
    for name, r in rows.items():
        acc = "-" if r["acceptance"] is None else f"{r['acceptance']:.3f}"
        steady = "-" if r["passes_per_chunk_steady"] is None else f"{r['passes_per_chunk_steady']:.2f}"
        print(f"{name:16s} {r['passes_per_chunk']:12.2f} {r['passes_ratio']:9.3f} {steady:>7s} "
              f"{r['ms_per_query']:9.1f} {r['time_ratio']:9.3f} {acc:>7s} {r['tokens_per_chunk']:7.1f}  {r['identical']}")
    print("steady = passes per chunk on queries where no env starts an episode (every env has a draft of its own)")
    return 0 if all(r["identical"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
