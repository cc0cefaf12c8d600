# Sourced by quickstart.sh and test.sh: create/activate .venv and install torch first, pinned. A plain `torch`
# requirement would pull a multi-GB CUDA build on a CPU machine; on a CUDA machine the same pin gets the CUDA wheel.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
python -m pip install -q "torch==2.13.0"
