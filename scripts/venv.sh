# Sourced by quickstart.sh and test.sh: create/activate .venv and install exactly requirements/main.lock (every
# package at the version the figures were measured with; `python scripts/lock.py` writes it), then tinyvla itself.
# --no-deps: the lock is complete (tests/test_lock.py checks it), so pip resolves nothing and can never reach for a
# multi-GB CUDA torch on a CPU machine. The lock is for CPU machines; on a GPU machine, install tinyvla beside your
# own torch with `pip install -e .` (pyproject keeps ranges, without a torch ceiling).
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# --no-compile: pip byte-compiles every .py it installs (torch alone has thousands); Python compiles the few a run
# imports on first use instead. 166 s vs 279 s for this lock on the shared 2-core machine (BENCHMARKS.md).
python -m pip install -q --no-deps --no-compile -r requirements/main.lock
python -m pip install -q --no-deps --no-build-isolation -e .
