#!/usr/bin/env bash
# The embedded default, end to end on a CPU: install, train the tiny Qwen3-VL recipe on BlockFind, evaluate it.
#   bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
tinyvla train recipes/tiny-cpu.yaml --out runs/tiny-cpu "$@"
tinyvla eval runs/tiny-cpu/final --suite blockfind-reach --episodes-per-task 100 --num-envs 10 --num-threads 1 \
  --out runs/tiny-cpu/eval-blockfind-reach
