"""One GPU check, under 8 minutes on an H100: training speed, memory and MFU per precision mode, multi-GPU DDP and
FSDP, and inference chunks/s with and without speculation. Writes one JSON file of figures.

    bash scripts/gpu_check.sh                       # -> gpu_check.json
    python scripts/gpu_check.py --tiny --out x.json # the CPU-sized variant (tests/test_gpu_check.py runs it)

Full size (random weights from the stored published configs, real speed and memory, meaningless outputs):
  train      arch:qwen3-2b, LIBERO shapes (224 px, two views, H = 8), micro-batch 8, 20 timed steps per precision
             mode: bf16-mixed + AdamW (fp32 master weights), bf16 weights + adamw-kahan (torch-optimi)
  ddp        the same on every visible GPU (torchrun), if there are 2 or more: samples/s over all of them
  fsdp       arch:qwen3-8b sharded with FSDP2 over every visible GPU (tinyvla/training/fsdp.py units), bf16 weights +
             adamw-kahan, gradient checkpointing, micro-batch 2, a few steps through trainer.train_step; with one
             GPU the 8B does not fit (~88 GB in its leanest mode), so arch:qwen3-2b is sharded over the one GPU to
             exercise the path
  inference  closed-loop BlockFind chunks/s, speculative vs plain greedy (tinyvla/bench.py), identical actions
  serving    `tinyvla serve` requests/s at 1 and 8 loopback clients (scripts/bench_serve.py), speculative, and the
             ratio 8 / 1 (issue #18's goal: >= 4x)
--tiny shrinks every part to the tiny Qwen3-VL on CPU processes (gloo), so the whole script runs in a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"bf16-mixed+adamw": ("bf16-mixed", "adamw"), "bf16+adamw-kahan": ("bf16", "adamw-kahan")}


def make_recipe(model: str, tiny: bool, micro: int, precision: str = "bf16-mixed", optimizer: str = "adamw",
                checkpointing: bool = False):
    from tinyvla.recipe import Recipe

    r = Recipe(name=f"gpu-check-{model}")
    r.model.name, r.model.dtype, r.model.gradient_checkpointing = model, "bf16", checkpointing
    r.train.precision, r.train.optimizer, r.train.batch_size, r.train.lr = precision, optimizer, micro, 4e-5
    r.data.suite = "libero_all"  # LIBERO prompt shapes: 224 px crops of 256 px views, H = 8 x D = 7
    if tiny:
        r.model.dtype, r.data.image_size, r.data.crop_scale = "fp32", 64, 1.0
    return r.validate()


def train_modes(args) -> dict:
    from tinyvla.bench import bench_training

    out = {}
    for name, (precision, optimizer) in MODES.items():
        recipe = make_recipe(args.model, args.tiny, args.micro, precision, optimizer)
        out[name] = bench_training(recipe, steps=args.steps, warmup=2)
    return out


def inference(args) -> dict:
    from tinyvla.bench import bench_inference, policy_from_recipe

    recipe = make_recipe(args.model, args.tiny, args.micro)
    recipe.data.suite = "blockfind-reach"
    policy = policy_from_recipe(recipe)
    res = bench_inference(policy, steps=args.infer_steps, repeats=1, warmup=1)
    return {"chunks_per_s": {m: v["chunks_per_s"] for m, v in res["modes"].items()},
            "ms_per_chunk": {m: v["ms_per_chunk"] for m, v in res["modes"].items()},
            "speedup": res.get("speedup"), "identical": res.get("identical"), "steps": res["steps"]}


def serving(args) -> dict:
    """`tinyvla serve` on loopback at 1 and 8 clients (scripts/bench_serve.py, speculative decoding) with the inference
    model saved as a policy directory: issue #18's "8 clients >= 4x the throughput of 1", measured where a batched
    pass costs about what one row's does (a 2-core CPU gets ~3x: BENCHMARKS.md, serving)."""
    import tempfile

    import torch

    from tinyvla.bench import policy_from_recipe
    from tinyvla.policy_dir import save_policy_dir

    recipe = make_recipe(args.model, args.tiny, args.micro)
    recipe.data.suite = "blockfind-reach"
    with tempfile.TemporaryDirectory(prefix="gpu-check-serve-") as tmp:
        save_policy_dir(policy_from_recipe(recipe), Path(tmp) / "policy", recipe=recipe.to_dict())
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        out = Path(tmp) / "serve.json"
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_serve.py"), str(Path(tmp) / "policy"), "--clients", "1,8",
               "--requests", str(args.serve_requests), "--episode-steps", "10", "--json", str(out)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=min(args.timeout, 300))
        except subprocess.TimeoutExpired:
            return {"error": f"bench_serve.py ran past {min(args.timeout, 300)} s"}
        if not out.exists():
            return {"error": (res.stdout + res.stderr)[-2000:]}
        r = json.loads(out.read_text())
    served = {row["clients"]: row for row in r["served"]}
    # wrong: replies that differ from in-process act (bf16 kernels may round a batch of 8 unlike a batch of 1)
    return {"throughput_8_over_1": r.get("throughput_8_over_1"), "overhead_p50": r.get("overhead_p50"),
            "req_per_s": {n: row["req_per_s"] for n, row in served.items()},
            "p50_ms": {n: row["p50_ms"] for n, row in served.items()},
            "wrong": sum(row["wrong"] for row in served.values()), "requests": args.serve_requests,
            "in_process_req_per_s": r["in_process"]["req_per_s"]}


# ---------------------------------------------------------------------------------------------------------------------
# Multi-process parts: run under torchrun by `distributed` below (every process runs `worker`)
# ---------------------------------------------------------------------------------------------------------------------


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from tinyvla.bench import _peak_memory_gb, bench_training, synthetic_batch
    from tinyvla.training import trainer
    from tinyvla.training.fsdp import shard_model

    result = {}
    # DDP: the 2B training step on every process (accelerate wraps the model in DDP).
    ddp = bench_training(make_recipe(args.model, args.tiny, args.micro), steps=args.steps, warmup=2)
    world = dist.get_world_size()
    result["ddp"] = {"processes": world, "samples_per_s": round(ddp["samples_per_s"] * world, 3),
                     "samples_per_s_per_process": ddp["samples_per_s"], "step_s": ddp["step_s"],
                     "peak_mem_gb": ddp["peak_mem_gb"], "memory_kind": ddp["memory_kind"]}

    # FSDP2: the large config sharded over the processes, a few steps of the trainer's own step.
    from accelerate import Accelerator
    from torch.distributed.device_mesh import init_device_mesh

    recipe = make_recipe(args.fsdp_model, args.tiny, args.fsdp_micro, "bf16", "adamw-kahan", checkpointing=True)
    accelerator = Accelerator(mixed_precision=trainer.mixed_precision(recipe.train), cpu=args.tiny)
    device = accelerator.device
    torch.manual_seed(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model, processor = trainer.build_model(recipe)
    units = shard_model(model, init_device_mesh(device.type, (world,)))
    optimizer = trainer.build_optimizer(model, recipe.train)
    build_s = time.perf_counter() - t0
    micro = [synthetic_batch(recipe, processor, recipe.train.batch_size, seed=dist.get_rank())]
    model.train()
    times, losses = [], []
    for i in range(1 + args.fsdp_steps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        losses.append(trainer.train_step(accelerator, model, micro))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    full = sum(p.numel() for p in model.parameters())
    local = sum(p.to_local().numel() for p in model.parameters())
    step_s = sorted(times)[len(times) // 2]
    result["fsdp"] = {"model": args.fsdp_model, "processes": world, "units": units, "params_b": round(full / 1e9, 3),
                      "local_share": round(local / full, 4), "precision": "bf16+adamw-kahan",
                      "micro_batch": recipe.train.batch_size, "steps": args.fsdp_steps, "step_s": round(step_s, 4),
                      "samples_per_s": round(recipe.train.batch_size * world / step_s, 3), "build_s": round(build_s, 1),
                      "losses": [round(x, 4) for x in losses], **_peak_memory_gb(torch)}
    if dist.get_rank() == 0:
        Path(args.worker_out).write_text(json.dumps(result))
    dist.barrier()


def distributed(args, processes: int) -> dict:
    """Run `worker` in `processes` processes with torchrun; its JSON, or the reason it failed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(args.out).with_suffix(".worker.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={port}",
           __file__, "--worker", "--worker-out", str(out)] + args.passthrough
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if res.returncode != 0 or not out.is_file():
        return {"error": (res.stderr or res.stdout)[-2000:]}
    data = json.loads(out.read_text())
    out.unlink()
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--tiny", action="store_true", help="the CPU-sized variant: tiny model, CPU processes")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per precision mode")
    ap.add_argument("--fsdp-steps", type=int, default=3)
    ap.add_argument("--infer-steps", type=int, default=6)
    ap.add_argument("--serve-requests", type=int, default=96, help="requests per client count (1 and 8 clients)")
    ap.add_argument("--processes", type=int, default=None, help="DDP / FSDP processes (default: the GPU count)")
    ap.add_argument("--timeout", type=int, default=420)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.passthrough = (["--tiny"] if args.tiny else []) + ["--steps", str(args.steps), "--fsdp-steps",
                                                            str(args.fsdp_steps)]
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    args.model = "tiny-qwen3" if args.tiny else "arch:qwen3-2b"
    args.micro = 2 if args.tiny else 8
    args.fsdp_model = "tiny-qwen3" if args.tiny else ("arch:qwen3-8b" if gpus >= 2 else "arch:qwen3-2b")
    args.fsdp_micro = 2
    if args.worker:
        return worker(args)
    if not args.tiny and not gpus:
        sys.exit("gpu_check: no GPU visible (use --tiny for the CPU-sized variant)")
    processes = args.processes or (2 if args.tiny else gpus)
    start = time.time()
    report = {"device": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus": gpus, "torch": torch.__version__,
              "tiny": args.tiny}
    report["train"] = train_modes(args)
    report.update(distributed(args, processes))  # one GPU: DDP of one process, FSDP of the 2B over one GPU
    report["inference"] = inference(args)
    report["serving"] = serving(args)
    report["seconds"] = round(time.time() - start, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
