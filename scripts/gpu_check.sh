#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): training samples/s, peak memory and MFU per precision mode on the Qwen3-VL-2B
# architecture, DDP over the visible GPUs, FSDP2 on the 8B config, inference chunks/s with and without speculation,
# `tinyvla serve` requests/s at 1 and 8 clients.
# Random weights from the stored configs: nothing is downloaded. Under 8 minutes on an H100. Writes gpu_check.json.
#   bash scripts/gpu_check.sh [--out FILE] [--steps 20]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec python scripts/gpu_check.py "$@"
