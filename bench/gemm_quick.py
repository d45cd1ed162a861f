"""Quick GEMM throughput check: portgrad's AVX2 GEMM against numpy's BLAS, 1 and 2 threads.

    PYTHONPATH=python python3 bench/gemm_quick.py [--sizes 256,512,1024,4096] [--reps 5]

Prints GFLOP/s medians (2*m*n*k / time) for C = A @ B (square, row-major) in float32 and
float64. numpy's thread count is set through threadpoolctl if installed, else through the
bundled OpenBLAS's own set_num_threads (found with ctypes), else left alone (then run with
OPENBLAS_NUM_THREADS=1 for a 1-thread comparison). Self-contained: no bench/ helpers needed.
"""
import argparse
import ctypes
import glob
import os
import statistics
import time

import numpy as np

from portgrad import _core

K = _core.kernels


def blas_threads_setter():
    try:
        from threadpoolctl import threadpool_limits
        return lambda n: threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        pass
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*"))
    libs += glob.glob(os.path.join(os.path.dirname(np.__file__), ".libs", "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                return lambda n, fn=fn: fn(ctypes.c_int(n))
    return None


CLOCK = time.perf_counter


def median_time(fn, reps, budget):
    fn()  # warm up (arenas, pool, page faults)
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512,1024,4096")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--isa", default="avx2" if _core.isa_supported("avx2") else "scalar")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, robust to a busy machine but meaningful for 1 thread only")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    set_blas = blas_threads_setter()
    if set_blas is None:
        print("note: cannot set numpy's BLAS threads; numpy uses its default")
    print(f"isa={args.isa}  cpus={os.cpu_count()}  load={os.getloadavg()[0]:.2f}  clock={args.clock}")
    print("| dtype | size | threads | portgrad GFLOP/s | numpy GFLOP/s | ratio | spread pg / np |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for dtype in [np.dtype(d) for d in args.dtypes.split(",")]:
        for n in [int(s) for s in args.sizes.split(",")]:
            A = rng.standard_normal((n, n)).astype(dtype)
            B = rng.standard_normal((n, n)).astype(dtype)
            C = np.empty((n, n), dtype)
            flop = 2.0 * n * n * n
            reps = args.reps if n < 2048 else 3
            budget = 2.0 if n < 2048 else 30.0
            for nt in [int(t) for t in args.threads.split(",")]:
                K.set_num_threads(nt)
                if set_blas:
                    set_blas(nt)
                t_pg, all_pg = median_time(lambda: K.gemm(args.isa, A, B, C), reps, budget)
                t_np, all_np = median_time(lambda: np.matmul(A, B, out=C), reps, budget)
                spread = lambda ts: (max(ts) - min(ts)) / statistics.median(ts)
                print(f"| {dtype.name} | {n} | {nt} | {flop / t_pg / 1e9:.1f} | {flop / t_np / 1e9:.1f} | "
                      f"{t_np / t_pg:.2f} | {spread(all_pg):.0%} / {spread(all_np):.0%} |", flush=True)
    K.set_num_threads(os.cpu_count() or 1)


if __name__ == "__main__":
    main()
