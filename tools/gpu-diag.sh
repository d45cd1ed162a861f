#!/usr/bin/env bash
# One-off: where does the AVX-512 host crash? Build with symbols, probe variants, backtrace.
set -uo pipefail
cd "$(dirname "$0")/.."
o=${OUT:-/tmp/diag}; mkdir -p $o
export CUDAARCHS=90
timeout 200 env PORTGRAD_CUDA=ON python3 -m pip install --no-build-isolation --no-deps -v -C install.strip=false \
  -C cmake.define.CMAKE_CXX_FLAGS=-g . > /tmp/install.log 2>&1; echo "install rc=$?" >> $o/diag.txt
tail -3 /tmp/install.log >> $o/diag.txt
cat > /tmp/probe.py <<'PY'
import os, sys
if "torch" in sys.argv: import torch
import numpy as np, portgrad as pg
net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(8), pg.ElementwiseLayer("Tanh"), pg.LinearLayer(1)], input=3), seed=0)
print(net(np.ones((4, 3), np.float32), pg.NetPortGradient("Input")).sum())
c = pg.NetInitialize(pg.NetChain([pg.ConvolutionLayer(4, 3)], input=(2, 9)), seed=0)
print(c(np.ones((2, 2, 9), np.float32)).sum())
PY
( for v in "" "torch" ; do for isa in avx512 avx2 scalar; do for nt in 16 1; do
  echo "== probe $v isa=$isa threads=$nt" >> $o/diag.txt
  PYTHONFAULTHANDLER=1 PORTGRAD_ISA=$isa PORTGRAD_NUM_THREADS=$nt timeout 60 python3 /tmp/probe.py $v >> $o/diag.txt 2>&1; echo "rc=$?" >> $o/diag.txt
done; done; done ) &
( PYTHONFAULTHANDLER=1 PORTGRAD_ISA=avx2 timeout 150 python3 -m pytest -q -p no:cacheprovider -rfEs -m cuda tests/ > $o/cuda-avx2.log 2>&1; echo "rc=$?" >> $o/cuda-avx2.log ) &
( PYTHONFAULTHANDLER=1 PORTGRAD_ISA=avx512 timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_bad_inputs.py tests/test_layers.py > $o/cpu-avx512.log 2>&1; echo "rc=$?" >> $o/cpu-avx512.log ) &
gdbrun() { local name=$1; shift; timeout 100 cuda-gdb -batch -ex "set pagination off" -ex run -ex bt -ex "info registers rip rsp" \
  -ex "x/8i \$pc-16" -ex "thread apply all bt 8" --args "$@" > $o/gdb-$name.log 2>&1; }
gdbrun probe env PORTGRAD_ISA=avx512 python3 /tmp/probe.py torch &
gdbrun pytest env PORTGRAD_ISA=avx512 python3 -m pytest -x -q -p no:cacheprovider tests/test_bad_inputs.py
wait
