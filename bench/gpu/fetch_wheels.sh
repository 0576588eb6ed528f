#!/usr/bin/env bash
# Download the small pure-Python / binary wheels bench/gpu/check.sh installs on the GPU machine, which has
# torch (CUDA), torchvision, onnx and onnxruntime but no open_clip and no internet. Run it here (with internet
# or a package mirror); the wheels land in bench/gpu/wheels/ (gitignored) and travel with the repo to the
# GPU machine (64 MiB at most in all: this list is about 7 MiB for Python 3.11).
#
#   bench/gpu/fetch_wheels.sh [PYTHON_VERSION]      # default: this interpreter's, e.g. 3.11
set -euo pipefail
cd "$(dirname "$0")"
PYVER=${1:-$(python -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')}
mkdir -p wheels
# Pure Python: open_clip and its light imports, the CLI's click/rich, the dynamo ONNX exporter's onnxscript.
pip download --no-deps --dest wheels open_clip_torch ftfy wcwidth tqdm click rich markdown-it-py mdurl pygments \
    onnxscript onnx_ir typing_extensions packaging
# Binary (must match the GPU machine's Python and platform): regex for open_clip's tokenizer, safetensors,
# ml_dtypes for onnx_ir.
pip download --no-deps --dest wheels --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    regex safetensors ml_dtypes
du -sh wheels
