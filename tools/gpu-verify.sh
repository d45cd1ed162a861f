#!/usr/bin/env bash
# Everything the CUDA backend needs to have run on a GPU, in one command, on a machine with a CUDA
# device, the CUDA toolkit and (for the peer benchmarks) PyTorch with CUDA:
#   tools/gpu-verify.sh [output-folder]
# 1. builds and installs portgrad with its CUDA module (cuBLASLt where its headers are found);
# 2. runs the `cuda` test suite on the GPU (tests/test_gpu.py, the GPU kernel drivers, bench smoke);
# 3. runs it again under compute-sanitizer memcheck and racecheck (where the toolkit has it);
# 4. runs the GPU benchmarks (python -m bench.gpu), which write bench/results/gpu-*.json.
# Logs go to the output folder (default gpu-verify/). Without network access use
# PIP_FLAGS="--no-build-isolation --no-deps" (the build tools must then be installed already).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-verify}
mkdir -p "$out"
status=0
step() {  # step NAME COMMAND...: runs it, logs it, records a failure
  local name=$1; shift
  echo "== $name: $*" | tee -a "$out/summary.txt"
  if "$@" > "$out/$name.log" 2>&1; then echo "   ok" | tee -a "$out/summary.txt"
  else echo "   FAILED (exit $?; see $out/$name.log)" | tee -a "$out/summary.txt"; status=1; fi
}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
# shellcheck disable=SC2086
step install env PORTGRAD_CUDA=ON pip install ${PIP_FLAGS:-} -v .
step device python -c "import portgrad._cuda as c; n, why = c.device_count(); print(n, why, [c.device_name(i) for i in range(n)]); assert n > 0"
step cuda-tests python -m pytest -q -m cuda tests/
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$sanitizer" ]; then
  # Graph replay hides kernels from the sanitizer's per-launch checks: launch every kernel directly.
  step memcheck env PORTGRAD_CUDA_GRAPHS=0 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 1 \
    python -m pytest -q -m cuda tests/test_gpu.py
  step racecheck env PORTGRAD_CUDA_GRAPHS=0 "$sanitizer" --tool racecheck --error-exitcode 1 \
    python -m pytest -q -m cuda tests/test_gpu.py -k "layer_outputs or nets_every"
else
  echo "== compute-sanitizer not found: memcheck and racecheck NOT run" | tee -a "$out/summary.txt"; status=1
fi
step bench python -m bench.gpu
cp bench/results/gpu-*.json "$out/" 2>/dev/null || true
exit $status
