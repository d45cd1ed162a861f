"""The AVX-512 GEMM table (csrc/kernels/cpu/gemm_avx512.cc) against the reference GEMM on any AVX2
machine: the standalone driver tests/avx512_emulated/gemm.cc, linked with the kernel compiled
through SIMDe's AVX-512 emulation (tests/avx512_emulated/simde_avx512.h; -mavx2 -mfma, no
-mavx512*), checks sizes around the tiles, strides, every epilogue and prologue, pre-packed B and
thread counts. The same driver built against the AVX2 table (gemm_avx2) runs without SIMDe: it
proves the driver, and checks the AVX2 kernel where the Python tests do not (guard pages after
the operands, NaN in their padding).

SIMDe is the Debian package libsimde-dev (not on PyPI): without its headers the AVX-512 driver is
skipped. Objects and drivers are cached under build/avx512-emulated-tests (tests/_cxx_drivers.py)."""
import os
import subprocess

import pytest

from _cxx_drivers import CSRC, ROOT, build_and_run, compiler
from portgrad import _core

CACHE = os.path.join(ROOT, "build", "avx512-emulated-tests")
FLAGS = ["-std=c++17", "-O1"]
AVX2 = ("-mavx2", "-mfma", "-mf16c")  # as CMakeLists.txt gives *_avx2.cc
# The emulated kernel: -O2 so SIMDe's 512-bit loops vectorise into AVX2 (a faster run).
EMULATED = ("-mavx2", "-mfma", "-O2", "-Wno-psabi")

DRIVER = "tests/avx512_emulated/gemm.cc"
KERNEL = "csrc/kernels/cpu/gemm_avx512.cc"
WRAPPER = "tests/avx512_emulated/gemm_avx512_simde.cc"
_COMMON = ["csrc/kernels/ref/gemm_ref.cc", "csrc/kernels/ref/unary_ref.cc", "csrc/kernels/unary_names.cc",
           "csrc/kernels/cpu/threadpool.cc", ("csrc/kernels/cpu/unary_avx2.cc", AVX2)]
NAMES = ["gemm_avx2", "gemm_avx512"]
_HEADER_DIRS = ["csrc", "tests/avx512_emulated", "tests/kernel_checks"]
_COST = {"gemm_avx512": 10, "gemm_avx2": 3}
_LINK = ["-pthread"]


def _simde_headers(cxx):
    """The SIMDe headers the emulation includes (their contents key its objects), or None when
    the compiler cannot find them."""
    r = subprocess.run([cxx, "-std=c++17", *EMULATED, "-x", "c++", "-M", "-"], input="#include <simde/x86/avx512.h>\n",
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return sorted(p for p in r.stdout.replace("\\\n", " ").split()[1:] if "/simde/" in p)


@pytest.fixture(scope="module")
def results(request):
    """name -> the driver's (exit code, stdout, stderr), its build error (a str), or why it is
    skipped (a tuple ("skip", reason))."""
    if not os.path.isdir(CSRC) or not os.path.isdir(os.path.join(ROOT, "tests", "avx512_emulated")):
        pytest.skip("needs the repository's csrc/ and tests/avx512_emulated/ (run from a checkout)")
    if not _core.isa_supported("avx2"):
        pytest.skip("CPU lacks AVX2+FMA (the AVX2 kernel and the emulation's native half need them)")
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    drivers = {"gemm_avx2": [(DRIVER, ("-DGEMM_UNDER_TEST=avx2",)), ("csrc/kernels/cpu/gemm_avx2.cc", AVX2), *_COMMON]}
    skipped = {}
    simde = _simde_headers(cxx)
    if simde is None:
        skipped["gemm_avx512"] = "SIMDe's headers (<simde/x86/avx512.h>, Debian libsimde-dev) not found"
    else:
        drivers["gemm_avx512"] = [DRIVER, (WRAPPER, EMULATED), *_COMMON]
    includes = {WRAPPER: [KERNEL, *(simde or [])]}
    res = build_and_run(request, CACHE, drivers, FLAGS, _HEADER_DIRS, includes, _COST, _LINK)
    res.update({n: ("skip", why) for n, why in skipped.items()})
    return res


@pytest.mark.parametrize("name", NAMES)
def test_gemm_table_matches_reference(results, name):
    r = results[name]
    if isinstance(r, tuple) and r[0] == "skip":
        pytest.skip(r[1])
    if isinstance(r, str):
        hint = ("\n(an AVX-512 intrinsic SIMDe does not emulate fell through to the native one: add it to "
                "tests/avx512_emulated/simde_avx512.h)" if "target specific option mismatch" in r else "")
        pytest.fail(r + hint)  # the build error
    code, out, err = r
    assert code == 0 and f"PASS {name}:" in out, \
        f"{DRIVER} ({name}) failed (exit code {code}):\n{(out + err)[-6000:]}"
