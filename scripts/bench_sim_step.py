"""Time the bare LIBERO simulator step (two cameras) to compare with the full eval loop.

    python scripts/bench_sim_step.py                       # libero_object task 0, 256x256, 50 steps
    python scripts/bench_sim_step.py --steps 200 --suite libero_spatial --resolution 128

"bare" is LIBERO's own env.step (physics + two renders); "wrapper" adds what LiberoEnv does on top (gripper snap,
180-degree rotation copies, 8-D state). Whatever the eval loop costs beyond the wrapper figure is the policy's.
"""

import argparse
import json
import os
import time

import numpy as np

from tinyvla.envs.libero import LIBERO_SUITES, LiberoEnv, LiberoProtocol


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="libero_object", choices=list(LIBERO_SUITES))
    ap.add_argument("--task-id", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--resolution", type=int, default=256)
    args = ap.parse_args()

    t0 = time.perf_counter()
    # Room for both timed loops inside the env horizon (stepping past it raises inside LIBERO).
    env = LiberoEnv(args.suite, args.task_id, LiberoProtocol(max_steps=2 * args.steps, resolution=args.resolution))
    t1 = time.perf_counter()
    env.reset(options={"init_state_index": 0})
    t2 = time.perf_counter()

    # Small, fixed pseudo-random motions: the arm moves and touches things like a policy would, run to run the same.
    actions = np.random.default_rng(0).uniform(-0.3, 0.3, size=(args.steps, 7))
    bare = env._env  # LIBERO's OffScreenRenderEnv under the wrapper

    def timed(step):
        # Wall time is what an eval waits for; CPU time (all threads, OSMesa renders on several) is the figure that
        # stays put when other processes share the cores.
        wall, cpu = time.perf_counter(), time.process_time()
        for a in actions:
            step(a)
        return (time.perf_counter() - wall) / args.steps, (time.process_time() - cpu) / args.steps

    t_bare, c_bare = timed(bare.step)
    t_wrap, c_wrap = timed(env.step)
    env.close()

    result = {
        "suite": args.suite, "task_id": args.task_id, "resolution": args.resolution, "steps": args.steps,
        "gl": os.environ.get("MUJOCO_GL"), "create_s": round(t1 - t0, 2), "reset_s": round(t2 - t1, 2),
        "bare_ms_per_step": round(1000 * t_bare, 1), "wrapper_ms_per_step": round(1000 * t_wrap, 1),
        "bare_cpu_ms_per_step": round(1000 * c_bare, 1), "wrapper_cpu_ms_per_step": round(1000 * c_wrap, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
    }
    print(f"env creation {result['create_s']} s, reset (+{env.protocol.wait_steps} no-op steps) {result['reset_s']} s")
    print(f"bare simulator step, two {args.resolution}^2 cameras ({result['gl']}): {t_bare * 1e3:.1f} ms/step wall, "
          f"{c_bare * 1e3:.1f} ms/step CPU")
    print(f"LiberoEnv.step: {t_wrap * 1e3:.1f} ms/step wall, {c_wrap * 1e3:.1f} ms/step CPU "
          f"(load average {result['load_avg_1min']} on {result['cpu_count']} cores)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
