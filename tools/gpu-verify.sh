#!/usr/bin/env bash
# Everything the CUDA backend (and the AVX-512 kernels) need to have run on a GPU machine, in one
# command, on a machine with a CUDA device, the CUDA toolkit and (for the peer benchmarks) PyTorch:
#   tools/gpu-verify.sh [output-folder]
# 1. records the machine (GPU, driver, CPU, toolchain) and builds and installs portgrad with its
#    CUDA module for this GPU's architecture (cuBLASLt where found; retried without it if that fails);
# 2. runs at once, each on its own: the `cuda` test suite on the GPU; the same suite's layer and net
#    tests under compute-sanitizer memcheck (with leak check) and racecheck; and the whole CPU suite
#    under PORTGRAD_ISA=avx512 where the CPU has AVX-512;
# 3. runs the GPU benchmarks (python -m bench.gpu, against PyTorch eager and CUDA graphs) and the CPU
#    GEMM benchmarks against NumPy's BLAS, side by side on disjoint cores.
# Every step has a time limit inside an overall deadline (GPU_VERIFY_DEADLINE seconds, default 540),
# so a short lease still brings back everything that ran. Logs and results are kept in the output
# folder (default gpu-verify/); where $OUT is set (the device tool), summary.txt and logs.tgz (all
# logs and JSON results) are refreshed there after every step.
# Without network access the build tools must be installed already: PIP_FLAGS defaults to
# "--no-build-isolation --no-deps".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=${1:-gpu-verify}
mkdir -p "$work"
work=$(cd "$work" && pwd)
summary=$work/summary.txt
: > "$summary"
start=$(date +%s)
deadline=${GPU_VERIFY_DEADLINE:-540}

publish() {  # copies the summary and every log and result to $OUT, where the device tool collects it
  [ -n "${OUT:-}" ] || return 0
  local tmp=$OUT/.logs.$BASHPID.tgz  # steps run side by side: one temporary file each
  cp "$summary" "$OUT/summary.txt"
  tar czf "$tmp" --warning=no-file-changed -C "$work" . 2>/dev/null; mv -f "$tmp" "$OUT/logs.tgz"
}
note() { echo "$*" | tee -a "$summary"; }
left() { echo $(( deadline - ($(date +%s) - start) )); }
step() {  # step NAME LIMIT COMMAND...: runs it with a time limit (cut to what the deadline leaves)
  local name=$1 limit=$2; shift 2
  local rest; rest=$(( $(left) - 10 ))
  if [ "$rest" -lt 20 ]; then note "== $name: SKIPPED (deadline)"; return 1; fi
  [ "$limit" -gt "$rest" ] && limit=$rest
  local t0; t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*" > "$work/$name.log"
  timeout -k 5 "$limit" "$@" >> "$work/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  local verdict="ok (${took}s)"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="TIMED OUT after ${took}s (see $name.log)"
  elif [ $rc -ne 0 ]; then verdict="FAILED, exit $rc (${took}s; see $name.log)"; fi
  # one write, so that steps running side by side do not interleave their lines
  local block; block=$(echo "== $name: $verdict"; tail -n 3 "$work/$name.log" | sed 's/^/     /')
  echo "$block" | tee -a "$summary"
  publish
  return $rc
}

# --- 1. the machine, then the build
{
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  nvidia-smi
  lscpu
  grep -o -w 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
  nproc; free -g
  nvcc --version
  command -v compute-sanitizer && compute-sanitizer --version
  $PY -c "import sys, numpy, torch; print(sys.version); print('numpy', numpy.__version__); numpy.show_config(); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
  $PY -m pip list 2>/dev/null | grep -i -E 'scikit-build|pybind11|cmake|ninja|pytest|hypothesis|safetensors|onnx|jax|cupy'
} > "$work/machine.txt" 2>&1
note "machine: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null) / $(lscpu | sed -n 's/^Model name: *//p')"
publish

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
export CUDAARCHS=${CUDAARCHS:-${arch:-90}}   # this GPU only: half the nvcc time of the default 80;90
export PIP_FLAGS=${PIP_FLAGS:---no-build-isolation --no-deps}
# shellcheck disable=SC2086
if ! step install 300 env PORTGRAD_CUDA=ON $PY -m pip install $PIP_FLAGS -v .; then
  # shellcheck disable=SC2086
  step install-without-cublaslt 240 env PORTGRAD_CUDA=ON $PY -m pip install $PIP_FLAGS -v \
    -C cmake.define.PORTGRAD_CUBLASLT=OFF . || { publish; exit 1; }
fi
grep -h "portgrad: cuBLASLt\|portgrad: CUDA backend" "$work"/install*.log | sed 's/^/     /' >> "$summary"
{ echo "--- toolchain"; ldd "$(command -v $PY)"; c++ -v 2>&1 | tail -1; c++ -print-file-name=libstdc++.so
  ldd "$($PY -c 'import portgrad._core as c; print(c.__file__)')"; } >> "$work/machine.txt" 2>&1
# A net, its output and its input gradient on the CPU: nothing below can pass without it.
step smoke 60 $PY -c "import numpy as np, portgrad as pg; net = pg.NetInitialize(pg.NetChain([8, 'Tanh', 1], input=3), seed=0); print(net(np.ones((4, 3)), pg.NetPortGradient('Input')))" || { publish; exit 1; }
step device 60 $PY -c "import portgrad._cuda as c; n, why = c.device_count(); print(n, why, [c.device_name(i) for i in range(n)]); assert n > 0" || { publish; exit 1; }
step info 60 $PY -m portgrad info

# --- 2. tests and benchmarks. The GPU's processes run on cores 0-5, the CPU's on 6-15 (where the
# machine has 16): the GPU tests and sanitizers side by side, then the GPU benchmarks alone on the
# GPU; meanwhile the CPU suite under AVX-512, then the CPU GEMM benchmarks.
ncpu=$(nproc)
pin_gpu=() pin_cpu=() pin_gemm=()
if command -v taskset > /dev/null && [ "$ncpu" -ge 16 ]; then
  pin_gpu=(taskset -c 0-5) pin_cpu=(taskset -c 6-15) pin_gemm=(taskset -c 12-15)
fi
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
pytest_flags=(-p no:cacheprovider -rfEs)
gpu_jobs=()
step cuda-tests 120 "${pin_gpu[@]}" $PY -m pytest -q "${pytest_flags[@]}" -m cuda tests/ &
gpu_jobs+=($!)
if [ -n "$sanitizer" ]; then
  # Graph replay hides kernels from the sanitizer's per-launch checks: launch every kernel directly.
  step memcheck 120 env PORTGRAD_CUDA_GRAPHS=0 "${pin_gpu[@]}" "$sanitizer" --tool memcheck --error-exitcode 1 \
    $PY -m pytest -v "${pytest_flags[@]}" -m cuda tests/test_gpu.py -k "layer_outputs or nets_every or train_mode or random_chains or large_linear or repeated or fused" &
  gpu_jobs+=($!)
  # Leaks: a process that drops its nets and empties the cache (the allocator keeps freed memory).
  step leakcheck 120 env PORTGRAD_CUDA_GRAPHS=0 "${pin_gpu[@]}" "$sanitizer" --tool memcheck --leak-check full \
    --error-exitcode 1 $PY -m pytest -v "${pytest_flags[@]}" -m cuda tests/test_gpu.py -k "dropped_nets" &
  gpu_jobs+=($!)
  step racecheck 120 env PORTGRAD_CUDA_GRAPHS=0 "${pin_gpu[@]}" "$sanitizer" --tool racecheck --error-exitcode 1 \
    $PY -m pytest -v "${pytest_flags[@]}" -m cuda tests/test_gpu.py -k "layer_outputs and b3 or nets_every and Real32 or fused" &
  gpu_jobs+=($!)
else
  note "== compute-sanitizer not found: memcheck and racecheck NOT run"
fi
cpu_chain() {
  if grep -q -w avx512f /proc/cpuinfo; then
    # (pytest-benchmark, where installed, warns under xdist, and the suite turns warnings into errors)
    local xdist=()
    $PY -c "import xdist" 2>/dev/null && xdist=(-n 8 --dist loadfile -p no:benchmark)
    step cpu-avx512 170 env PORTGRAD_ISA=avx512 "${pin_cpu[@]}" $PY -m pytest -q "${pytest_flags[@]}" "${xdist[@]}" \
      -m "not cuda" tests/
  else
    note "== no AVX-512 on this CPU: the avx512 suite NOT run"
  fi
  step cpu-gemm-bench 120 "${pin_gemm[@]}" $PY -m bench --cases 'gemm-f32|gemm-f64-(64|128|256|511)$' --peers numpy \
    --json "$work/cpu-gemm-bench.json"
}
cpu_chain &
cpu_job=$!
wait "${gpu_jobs[@]}"

gpu_bench() {  # one process per group, the fused MLP's first: a failure costs its group alone
  local i=0 rc=0 cases
  for cases in '^small' '^tiny|^cnn' '^matmul|^large'; do
    i=$((i + 1))
    "${pin_gpu[@]}" $PY -m bench.gpu --cases "$cases" --min-time 0.2 --warmup 0.2 --repeat 7 \
      --json "$work/gpu-bench-$i.json" || rc=1
  done
  return $rc
}
export -f gpu_bench
export PY work pin_gpu_list="${pin_gpu[*]}"
step gpu-bench 170 bash -c 'pin_gpu=($pin_gpu_list); gpu_bench'
wait "$cpu_job"
note "total: $(( $(date +%s) - start ))s"
publish
! grep -q "FAILED\|TIMED OUT\|SKIPPED\|NOT run" "$summary"
