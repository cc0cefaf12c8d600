"""Is this machine ready, and how long will a recipe take here?

    tinyvla doctor                          # torch, GPU, bf16, attention kernels, simulator, rendering, tokenizers
    tinyvla doctor recipes/qwen3-2b-h100.yaml   # + the recipe's training time, from a few timed steps

Each check is (name, status, detail) with status ok / warn (works, but slower or limited) / fail (a verb will not
work) / info. Nothing here installs or changes anything; the rendering probe runs in a child process so a broken GL
stack cannot take this one down.
"""

from __future__ import annotations

import ctypes.util
import glob
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import time

from tinyvla.errors import UserError

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


def _check(name: str, status: str, detail: str) -> dict:
    return {"name": name, "status": status, "detail": detail}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_torch() -> list[dict]:
    import torch

    out = [_check("python", OK, f"{platform.python_version()} ({sys.executable})")]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    out.append(_check("torch", OK, f"{torch.__version__}, {build}, {torch.get_num_threads()} threads"))
    if torch.cuda.is_available():
        names = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            names.append(f"{p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor})")
        out.append(_check("cuda", OK, f"{torch.cuda.device_count()} GPU(s): " + "; ".join(names)))
        bf16 = torch.cuda.is_bf16_supported()
        out.append(_check("bf16", OK if bf16 else WARN,
                          "supported on the GPU" if bf16 else "not supported: use model.dtype=fp16 or fp32 recipes"))
    else:
        cuda_hint = ("this torch has no CUDA" if not torch.version.cuda
                     else "CUDA build but no GPU visible (driver? CUDA_VISIBLE_DEVICES?)")
        out.append(_check("cuda", INFO, f"no GPU: {cuda_hint}; the tiny-cpu recipe and eval run on CPU"))
        out.append(_check("bf16", INFO, "CPU: bf16 runs but slowly; CPU recipes use fp32"))
    return out


def check_attention() -> list[dict]:
    import torch

    out = []
    has_sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    if has_sdpa and torch.cuda.is_available():
        kinds = [n for n, on in (("flash", torch.backends.cuda.flash_sdp_enabled()),
                                 ("mem-efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                                 ("math", torch.backends.cuda.math_sdp_enabled())) if on]
        out.append(_check("attention: sdpa", OK, "torch SDPA, backends enabled: " + ", ".join(kinds)))
    else:
        out.append(_check("attention: sdpa", OK if has_sdpa else FAIL,
                          "torch SDPA (CPU kernels)" if has_sdpa else "torch lacks scaled_dot_product_attention"))
    fa = _version("flash-attn") or _version("flash_attn")
    if fa and importlib.util.find_spec("flash_attn") is not None:
        out.append(_check("attention: flash-attn", OK, f"flash-attn {fa}: model.attn_implementation=flash_attention_2"))
    else:
        out.append(_check("attention: flash-attn", INFO,
                          "not installed; sdpa is the default and needs nothing (pip install flash-attn on CUDA)"))
    return out


def check_libraries() -> list[dict]:
    out = []
    tf = _version("transformers")
    try:
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration  # noqa: F401

        out.append(_check("transformers", OK, f"{tf}: Qwen3-VL and Qwen2.5-VL classes present"))
    except ImportError as err:
        out.append(_check("transformers", FAIL, f"{tf}: {err}; pip install 'transformers>=5,<6'"))
    for dist, use in (("accelerate", "training"), ("peft", "LoRA (model.lora.enabled)"),
                      ("bitsandbytes", "train.optimizer=adamw8bit (CUDA)")):
        v = _version(dist)
        status = OK if v else (FAIL if dist == "accelerate" else INFO)
        out.append(_check(dist, status, f"{v} ({use})" if v else f"not installed: needed for {use}"))
    # torchvision: optional, but a wheel built for another torch fails at import (FACTS §3); say so before a run does.
    if importlib.util.find_spec("torchvision") is None:
        out.append(_check("torchvision", INFO, "not installed: not needed (tinyvla's processor is torchvision-free)"))
    else:
        code = "import torchvision, sys; sys.stdout.write(torchvision.__version__)"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if res.returncode == 0:
            out.append(_check("torchvision", OK, res.stdout.strip()))
        else:
            last = (res.stderr.strip().splitlines() or ["import failed"])[-1][:160]
            out.append(_check("torchvision", WARN, f"installed but does not import ({last}); transformers may fail to "
                              "build video processors: uninstall it or install the build matching torch"))
    return out


def check_simulator(probe_render: bool = True) -> list[dict]:
    from tinyvla.envs.libero import libero_installed

    out = []
    installed = libero_installed()
    out.append(_check("LIBERO simulator", OK if installed else INFO,
                      f"libero + robosuite {_version('robosuite')} + mujoco {_version('mujoco')}" if installed
                      else "not installed: BlockFind works; for LIBERO run scripts/install-sim.sh"))
    gl = os.environ.get("MUJOCO_GL", "").strip().lower()
    has_gpu_node = os.path.exists("/dev/nvidia0") or bool(glob.glob("/dev/dri/renderD*"))
    libs = {"egl": ctypes.util.find_library("EGL"), "osmesa": ctypes.util.find_library("OSMesa")}
    # What the LIBERO wrapper will pick (tinyvla/envs/libero.py): MUJOCO_GL if set, else EGL where a GPU device node
    # exists and EGL starts, else OSMesa.
    backend = gl or ("egl" if has_gpu_node and libs["egl"] else "osmesa")
    found = ", ".join(f"lib{k.upper() if k == 'egl' else 'OSMesa'}: {'yes' if v else 'no'}" for k, v in libs.items())
    detail = f"{backend} ({'MUJOCO_GL' if gl else 'auto'}); {found}"
    status = OK if (backend not in libs or libs[backend]) else WARN
    if status == WARN:
        detail += f"; lib for {backend} not found (OSMesa: apt-get install libosmesa6)"
    if installed and probe_render and backend in ("egl", "osmesa") and libs[backend]:
        code = "import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free()"
        env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
        try:
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
            ok = res.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        detail += "; a GL context starts" if ok else "; a GL context did NOT start"
        status = status if ok else WARN
    out.append(_check("rendering", status if installed else INFO, detail))
    return out


def check_tokenizers() -> list[dict]:
    from tinyvla.tokenizers import load_tokenizer

    out = []
    for name, use in (("tiny", "tiny-* models"), ("qwen", "real Qwen vocabulary (arch:*, inspect-tokens)")):
        t = time.perf_counter()
        try:
            tok = load_tokenizer(name)
        except UserError as err:
            out.append(_check(f"tokenizer: {name}", WARN if name == "qwen" else FAIL, f"{err} ({use})"))
            continue
        ids = tok.encode("12 0 1000", add_special_tokens=False)
        digits_ok = len(ids) == len("12 0 1000")  # one token per digit and per space: what the grammar relies on
        out.append(_check(f"tokenizer: {name}", OK if digits_ok else FAIL,
                          f"{len(tok)} tokens, ready in {time.perf_counter() - t:.2f} s (cached after the first build)"
                          + ("" if digits_ok else "; digits are NOT one token each")))
    return out


def run_checks(probe_render: bool = True) -> list[dict]:
    return check_torch() + check_attention() + check_libraries() + check_simulator(probe_render) + check_tokenizers()


def estimate_training_time(recipe, steps: int = 3, force: bool = False) -> dict:
    """Time a few real optimizer steps of the recipe here (synthetic batches; tinyvla/bench.py) and multiply by the
    steps the trainer will run. Data loading, held-out evaluation and checkpoints are not included."""
    import torch

    from tinyvla.bench import bench_training, recipe_frames, total_steps
    from tinyvla.modeling.registry import resolve_model_name

    tiny = resolve_model_name(recipe.model.name).kind == "tiny"
    if not tiny and not torch.cuda.is_available() and not force:
        return {"skipped": f"{recipe.model.name} is a full-size model and no GPU is visible: timing its steps on this "
                           "CPU would say nothing about the GPU it is meant for (pass --force to time it anyway)"}
    frames, source = recipe_frames(recipe)
    timing = bench_training(recipe, steps=steps, warmup=1)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plan = {}
    for procs in sorted({1, max(1, gpus)}):
        n = total_steps(recipe, frames, procs)
        seconds = n * timing["step_s"]
        plan[str(procs)] = {"steps": n, "seconds": round(seconds, 1), "hours": round(seconds / 3600, 4)}
    return {"recipe": recipe.name, "frames": frames, "frames_source": source, "step_s": timing["step_s"],
            "samples_per_s": timing["samples_per_s"], "peak_mem_gb": timing["peak_mem_gb"],
            "memory_kind": timing["memory_kind"], "device": timing["device"], "mfu": timing["mfu"],
            "max_steps": recipe.train.max_steps, "epochs": recipe.train.epochs, "by_processes": plan,
            "note": "per-process step time x the trainer's steps; excludes data loading, evaluation and checkpoints; "
                    "with N processes each takes 1/N of every epoch (accelerate launch)"}
