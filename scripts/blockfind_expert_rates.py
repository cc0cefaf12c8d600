"""Success rates of the scripted expert, a random policy and a colour-blind policy on both BlockFind levels, plus
render and demonstration-generation speed.

    python scripts/blockfind_expert_rates.py [--episodes 200] [--seed 0] [--image-size 64]

A level is useful when the expert is near 1.0 and the random policy near 0; on `blockfind` the colour-blind policy
(always the red block) must fail most episodes, so a learner has to read the instruction.
"""

import argparse
import time

import numpy as np

from tinyvla.envs.blockfind import (
    SUITES,
    expert_action,
    generate_episodes,
    make_env,
    random_policy_action,
    run_policy,
    time_render,
)

POLICIES = {
    "expert": lambda env, obs, rng: expert_action(env, rng),
    "random": lambda env, obs, rng: random_policy_action(rng),
    "colour-blind (red)": lambda env, obs, rng: expert_action(env, rng, color="red"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()

    print(f"render: {time_render(args.image_size) * 1e6:.0f} us per {args.image_size}px view")
    for suite in SUITES:
        for name, fn in POLICIES.items():
            rate = run_policy(lambda: make_env(suite, image_size=args.image_size), fn, args.episodes, args.seed)
            print(f"{suite:16s} {name:20s} success {rate:.3f}  ({args.episodes} episodes)")
        t = time.perf_counter()
        eps = list(generate_episodes(suite, args.episodes, args.seed, image_size=args.image_size))
        dt = time.perf_counter() - t
        frames = sum(len(e["actions"]) for e in eps)
        lens = [len(e["actions"]) for e in eps]
        print(f"{suite:16s} generation: {len(eps) / dt:.0f} episodes/s, {frames / dt:.0f} frames/s, "
              f"{frames} frames, length mean {np.mean(lens):.1f} max {max(lens)}")


if __name__ == "__main__":
    main()
