"""Thread-count environment, set before numpy, torch, jax or onnxruntime is imported.

Standard library only: ``bench/__main__.py`` and ``bench/run.py`` call :func:`configure_from_argv`
first thing, because BLAS and OpenMP runtimes read these variables once, when they load.
"""
import os

DEFAULT_THREADS = 2

# Every runtime a peer may load, and the variable it reads at start-up.
_THREAD_VARS = (
    "OMP_NUM_THREADS",          # OpenMP (torch's intra-op pool, MKL, OpenBLAS built with OpenMP)
    "MKL_NUM_THREADS",          # MKL (torch, numpy built against MKL)
    "OPENBLAS_NUM_THREADS",     # OpenBLAS (numpy's wheels)
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",   # Accelerate (macOS)
    "NUMEXPR_NUM_THREADS",
    "PORTGRAD_NUM_THREADS",     # portgrad's GEMM (read at start-up, where supported)
)


def threads_from_argv(argv) -> int:
    """The value of ``--threads N`` / ``--threads=N`` in argv (DEFAULT_THREADS when absent or malformed;
    argparse reports malformed values later)."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                n = int(value)
            except ValueError:
                return DEFAULT_THREADS
            return n if n > 0 else DEFAULT_THREADS
    return DEFAULT_THREADS


def configure(threads: int) -> None:
    """Sets every thread variable to `threads` (overriding the caller's: --threads governs)."""
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    # Several runtimes share one process: an OpenMP pool spinning after its work would steal the
    # cores from the next library timed (seen as 100x slowdowns of NumPy after JAX on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # XLA's CPU client sizes its Eigen pool from the CPU count; a single thread can be forced.
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        flags = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
        os.environ["XLA_FLAGS"] = flags
    os.environ["BENCH_THREADS_CONFIGURED"] = str(threads)


def pin(threads: int) -> list:
    """Restricts this process to `threads` of the CPUs it may run on (when it may run on more), so
    runtimes that size their pools from the affinity mask (XLA, ONNX Runtime's defaults) use that
    many. Returns the CPUs it now runs on ([] where affinity is not supported)."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    # The CPUs the first bench process could use: a child at a higher count than its parent widens again.
    base = os.environ.get("BENCH_CPUS")
    cpus = [int(c) for c in base.split(",")] if base else sorted(os.sched_getaffinity(0))
    os.environ["BENCH_CPUS"] = ",".join(map(str, cpus))
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        cpus = sorted(os.sched_getaffinity(0))
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
        cpus = cpus[:threads]
    return cpus


def configure_from_argv(argv) -> int:
    threads = threads_from_argv(argv)
    configure(threads)
    pin(threads)
    return threads
