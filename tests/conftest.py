"""Test-wide settings: no hub access (a hub lookup here hangs for about a minute before failing), one torch thread
per test process (much faster than two on a 2-core machine running other work), and the video frame cache of recipes
with data.video_cache in a temporary directory, not the user's ~/.cache."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TINYVLA_CACHE", tempfile.mkdtemp(prefix="tinyvla-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the pure-core tests need no torch
    pass
