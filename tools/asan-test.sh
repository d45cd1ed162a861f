#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer (PORTGRAD_SANITIZE=ON) in
# build/asan and runs the loader, file-format, engine and I/O tests under it. Extra arguments go
# to pytest (default: the loader and evaluation tests).
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/asan
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPORTGRAD_PYTHON=ON -DPORTGRAD_SANITIZE=ON \
    -DPORTGRAD_CUDA=OFF -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
fi
cmake --build "$build"
rm -rf "$build/py" && cp -r python "$build/py" && rm -f "$build"/py/portgrad/_core*.so && cp "$build"/_core*.so "$build/py/portgrad/"
# Python itself is not instrumented: preload the ASan runtime, and libstdc++ with it (python3 does
# not link libstdc++, so otherwise ASan's __cxa_throw interceptor finds no real __cxa_throw and
# aborts at the first C++ exception). CPython's arenas are not leaks. A huge allocation must fail
# (return null) as it does without ASan, which aborts instead by default: the hostile-input tests
# ask for 16 TiB copies and expect a MemoryError.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" PYTHONPATH="$build/py" \
  python3 -m pytest -q -p no:cacheprovider ${@:-tests/test_file_format.py tests/test_io.py tests/test_engine.py}
