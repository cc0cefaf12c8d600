"""Test-wide settings: no hub access (a hub lookup here hangs for about a minute before failing), and one torch
thread per test process, which is much faster than two on a 2-core machine running other work."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the pure-core tests need no torch
    pass
