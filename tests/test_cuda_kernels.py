"""The CUDA kernel tables (csrc/kernels/cuda/*.cu) against the reference tables (csrc/kernels/ref),
kernel by kernel, on awkward sizes, aliasing, null outputs and special values: standalone C++
drivers (tests/cuda_kernels/*.cc) that compile the .cu files as C++, where they run in the CPU
emulator of the device (csrc/cuda/emulator.cc). No Python module is involved, so these check the
kernel sources on every machine with a C++ compiler.

Objects and drivers are cached under build/cuda-kernel-tests, keyed by a hash of the compiler, the
flags and every source and header involved, so a second run (CI runs pytest twice) only runs the
drivers. Compiling, linking and running use every core (about a minute cold, 20 s cached, on 2)."""
import os

import pytest

from _cxx_drivers import CSRC, ROOT, build_and_run

HERE = os.path.join(ROOT, "tests", "cuda_kernels")
CACHE = os.path.join(ROOT, "build", "cuda-kernel-tests")
FLAGS = ["-std=c++17", "-O1"]

pytestmark = pytest.mark.cuda

_STUBS = "tests/cuda_kernels/runtime_stubs.cc"
_EMU = "csrc/cuda/emulator.cc"
# driver: its sources (repository-relative; .cu files are compiled as C++), each also linked with
# the runtime stubs and the emulator.
DRIVERS = {
    "gemm": ["tests/cuda_kernels/gemm.cc", "csrc/kernels/cuda/gemm.cu", "csrc/kernels/ref/gemm_ref.cc",
             "csrc/kernels/ref/unary_ref.cc", "csrc/kernels/unary_names.cc"],
    "gemm_ltplan": ["tests/cuda_kernels/gemm_ltplan.cc", "csrc/kernels/ref/gemm_ref.cc",
                    "csrc/kernels/ref/unary_ref.cc", "csrc/kernels/unary_names.cc"],
    "elementwise": ["tests/cuda_kernels/elementwise.cc"]
    + [f"csrc/kernels/cuda/{f}.cu" for f in ("unary", "softmax", "loss", "vector", "optim")]
    + [f"csrc/kernels/ref/{f}_ref.cc" for f in ("unary", "softmax", "loss", "vector", "optim")]
    + ["csrc/kernels/unary_names.cc"],
    "spatial": ["tests/cuda_kernels/spatial.cc"]
    + [f"csrc/kernels/cuda/{f}.cu" for f in ("conv", "pool", "norm")]
    + [f"csrc/kernels/ref/{f}_ref.cc" for f in ("conv", "pool", "norm")],
    "mlp": ["tests/cuda_kernels/mlp.cc", "csrc/kernels/cuda/mlp.cu", "csrc/kernels/ref/mlp_ref.cc",
            "csrc/kernels/ref/unary_ref.cc", "csrc/kernels/unary_names.cc"],
    "shape": ["tests/cuda_kernels/shape.cc", "csrc/kernels/cuda/shape_ops.cu", "csrc/kernels/cuda/embed.cu",
              "csrc/kernels/ref/shape_ops_ref.cc", "csrc/kernels/ref/embed_ref.cc"],
    "recurrent": ["tests/cuda_kernels/recurrent.cc", "csrc/kernels/cuda/recurrent.cu", "csrc/kernels/ref/recurrent_ref.cc"],
}
# Sources that include another source (besides headers, which every object's key covers).
_INCLUDES = {"tests/cuda_kernels/gemm_ltplan.cc": ["csrc/kernels/cuda/gemm.cu"]}
# Seconds each driver runs (one core, roughly): the longest start first.
_COST = {"mlp": 10, "spatial": 12, "shape": 9, "elementwise": 8, "gemm": 3, "recurrent": 1, "gemm_ltplan": 0.2}
_HEADER_DIRS = ["csrc", "tests/cuda_kernels", "tests/kernel_checks"]


@pytest.fixture(scope="module")
def results(request):
    """name -> (exit code, stdout, stderr) of the driver, or its build error (a str). The drivers are
    built, then run, on every core: the tests only collect their results."""
    if not os.path.isdir(CSRC) or not os.path.isdir(HERE):
        pytest.skip("needs the repository's csrc/ and tests/cuda_kernels/ (run from a checkout)")
    drivers = {n: [*srcs, _STUBS, _EMU] for n, srcs in DRIVERS.items()}
    return build_and_run(request, CACHE, drivers, FLAGS, _HEADER_DIRS, _INCLUDES, _COST)


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_cuda_kernels_match_reference(results, name):
    r = results[name]
    if isinstance(r, str):
        pytest.fail(r)  # the build error
    code, out, err = r
    assert code == 0 and f"PASS {name}:" in out, \
        f"tests/cuda_kernels/{name}.cc failed (exit code {code}):\n{(out + err)[-6000:]}"
