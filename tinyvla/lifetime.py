"""Process lifetime: children that die with their parent (Linux prctl PR_SET_PDEATHSIG; a no-op elsewhere).

A kill -9 of a process leaves its children running unless they asked the kernel otherwise: DataLoader workers spinning
on, ranks started by `accelerate launch` / torchrun training to the end while holding the GPUs, simulator workers of
an eval rendering for nobody. Each of those asks here to be killed with its parent. Stdlib only.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; a no-op elsewhere).

    DataLoader workers and the ranks `accelerate launch` / torchrun start are children that otherwise keep running
    when their parent is killed -9: a worker spinning on, or ranks training to the end while holding the GPUs.
    `parent`: the PID the parent had (known to the parent); if it died before this call, we are already orphaned."""
    parent = parent or os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def worker_dies_with_me() -> functools.partial:
    """A DataLoader worker_init_fn that makes each worker die with this process (the one creating the loader)."""
    return functools.partial(_init_worker, os.getpid())


def _init_worker(parent: int, worker_id: int) -> None:
    die_with_parent(parent)


def launched_by_a_launcher() -> bool:
    """True in a rank started by torchrun / accelerate launch (their agent process is our parent)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)
