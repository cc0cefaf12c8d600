"""What machine a figure came from: CPU model and instruction sets (or GPUs) recorded in policy.json and results.json.

Training is deterministic on one machine, but another CPU picks other kernels (AVX2 vs. AVX-512 vs. AMX reduce in
another order), and a tiny recipe that stops near its success jump can land several points apart. A figure that
records where it was made can be compared with the right ones.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The instruction-set flags that decide which torch CPU kernels run (x86 /proc/cpuinfo names; asimd/sve on ARM).
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")


def _cpuinfo() -> tuple[str, list[str]]:
    """(CPU model name, the ISA_FLAGS it has) from /proc/cpuinfo; the platform's processor string elsewhere."""
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), [f for f in ISA_FLAGS if f in flags]


def machine_info() -> dict:
    """A small JSON-able description of this machine's compute: CPU model, ISA summary, cores, torch's kernel level,
    threads, and the GPUs when CUDA is up."""
    model, isa = _cpuinfo()
    info = {"cpu": model, "arch": platform.machine(), "isa": isa, "cores": os.cpu_count(), "os": platform.system()}
    try:
        import torch
    except ImportError:
        return info
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the kernel level torch chose: AVX2, ...
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def describe(info: dict) -> str:
    """One line for tables and logs: 'Intel Xeon ... (AVX2, 2 cores)' or the GPUs."""
    if info.get("gpus"):
        return f"{len(info['gpus'])} x {info['gpus'][0]}"
    level = info.get("torch_cpu_capability") or ", ".join(info.get("isa", [])) or "?"
    return f"{info.get('cpu', '?')} ({level}, {info.get('cores', '?')} cores)"
