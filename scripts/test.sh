#!/usr/bin/env bash
# Install tinyvla with its test extras and the LIBERO simulator into .venv, then run the test suite.
#   bash scripts/test.sh            # everything (CI runs this)
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
python -m pip install -q -c constraints-cpu.txt -e ".[dev]"
# openpi's client for tests/test_serve.py: --no-deps, because it declares numpy<2 (FACTS §7); its imports are in [dev].
python -m pip install -q --no-deps "openpi-client==0.1.2"
bash scripts/install-sim.sh
python -m pytest -q "$@"
