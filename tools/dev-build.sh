#!/usr/bin/env bash
# Developer build without pip: configures once, rebuilds incrementally, and drops the extension
# next to the Python sources so `PYTHONPATH=python pytest` runs against it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build/dev}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} -DPORTGRAD_PYTHON=ON \
    -DPORTGRAD_CUDA=OFF -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" "$@" >/dev/null
fi
cmake --build "$build"
cp "$build"/_core*.so "$build"/_gpu_emulator*.so python/portgrad/
if ls "$build"/_cuda*.so >/dev/null 2>&1; then cp "$build"/_cuda*.so python/portgrad/; fi
