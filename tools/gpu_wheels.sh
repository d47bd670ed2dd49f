#!/usr/bin/env bash
# The wheelhouse that tools/gpu_check.sh installs on a GPU machine whose Python 3.12 has torch,
# torchaudio, transformers, numpy and the like, but no package index to fetch the rest from.
#
#   tools/gpu_wheels.sh [DIR]        (default .whl; run from anywhere, on a machine with PyPI)
#
# It holds what aurora and DeepSpeed import beyond that image (tools/gpu_wheels.txt, pinned to
# this checkout's versions, so the GPU runs the library code CI tests), as cp312 manylinux x86-64
# wheels: downloaded where PyPI has wheels, built with `pip wheel --no-deps` where it has only a
# source archive (DeepSpeed, built without its CUDA ops, which it JIT-compiles when used). Then
# it checks what the GPU machine's install will need: one version of each package, under the
# size cap, and every wheel installable offline for CPython 3.12 (tools/wheelhouse.py).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none)
for p in "${PLATFORMS[@]}"; do TARGET+=(--platform "$p"); done

mkdir -p "$DIR"
mapfile -t BINARY < <(grep -v '^#' tools/gpu_wheels.txt | grep -v -E '^(source|image):' | grep .)
mapfile -t SOURCE < <(grep '^source:' tools/gpu_wheels.txt | cut -d: -f2-)
echo "gpu_wheels: ${#BINARY[@]} wheels for CPython 3.12 into $DIR"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$DIR" "${BINARY[@]}"
for spec in "${SOURCE[@]}"; do
  name=${spec%%==*}
  if ls "$DIR"/"${name//-/_}"-*.whl >/dev/null 2>&1; then continue; fi
  echo "gpu_wheels: building $spec (no wheel on PyPI)"
  # DeepSpeed's setup.py imports torch: build against this environment's (no isolation), ops off.
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "$spec"
done
"$PYTHON" -m tools.wheelhouse "$DIR" "${TARGET[@]}"
