#!/usr/bin/env bash
# Install tinyvla with its test extras and the LIBERO simulator into .venv, then run the test suite.
#   bash scripts/test.sh            # everything (CI runs this)
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: a plain `torch` requirement would pull a multi-GB CUDA build on a CPU machine.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -c constraints-cpu.txt -e ".[dev]"
bash scripts/install-sim.sh
export HF_HUB_OFFLINE=1
python -m pytest -q "$@"
