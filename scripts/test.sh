#!/usr/bin/env bash
# Install tinyvla with its test extras and the LIBERO simulator into .venv, then run the test suite.
#   bash scripts/test.sh            # everything (CI runs this)
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
bash scripts/install-sim.sh
python -m pytest -q "$@"
