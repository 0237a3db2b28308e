#!/usr/bin/env bash
# Create .venv and install edgefirst-toolkit with its pinned dependencies (CPU build of torch).
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu ./scripts/setup.sh   # where PyPI's torch would be a CUDA build
#   PIP_FIND_LINKS=/path/to/wheels ./scripts/setup.sh                     # a prebuilt llama-cpp-python wheel
#   DEVICE=1 ./scripts/setup.sh           # a device that only profiles (and serves): no torch, no build tools
#   DEVICE=1 EXTRAS=onnx ./scripts/setup.sh                               # ... that runs ONNX variants too
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# llama-cpp-python compiles llama.cpp from source when no wheel is found (10-25 minutes on 2 cores).
if [ "${DEVICE:-0}" = 1 ]; then  # the device's half: profile, recommend, deploy (README, "Profile on another device")
  .venv/bin/python -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
  exec .venv/bin/toolkit --version
fi
# torch first, alone, so that nothing else can pull a different (CUDA) build.
.venv/bin/python -m pip install --quiet ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch==2.13.0
# [build]: compress and evaluate (torch, converters, exporters, lm-eval); [images]: kaleido, for PNG plots in the
# Markdown reports (it uses an installed Chromium; without one, no images).
.venv/bin/python -m pip install --quiet -e ".[build,test,images,ray]"
# GPTQ (GPTQModel 5.7.0, the last release for transformers < 5): CPU-only build of its extension, no
# build isolation (it compiles against the installed torch), and pypcre first. SKIP_GPTQ=1 skips it.
if [ "${SKIP_GPTQ:-0}" != 1 ] && ! .venv/bin/python -c 'import gptqmodel' >/dev/null 2>&1; then  # (its import prints a banner)
  .venv/bin/python -m pip install --quiet pypcre
  BUILD_CUDA_EXT=0 GPTQMODEL_FORCE_BUILD=1 .venv/bin/python -m pip install --quiet --no-build-isolation \
    -c scripts/constraints.txt gptqmodel==5.7.0
fi
.venv/bin/toolkit --version
