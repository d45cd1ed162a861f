"""Shared helpers of the kernel tests: which ISAs to run, and float comparisons in float64; and the
GPU the `cuda` tests run on."""
import os

import numpy as np
import pytest

from portgrad import _core


def _choose_gpu():
    """The `cuda` tests run on a CUDA device where there is one, and on the CPU emulator of the
    CUDA kernels (portgrad._gpu_emulator) everywhere else, so they run on every machine."""
    if os.environ.get("PORTGRAD_GPU_EMULATOR"):
        return
    try:
        import portgrad._cuda as cuda
        if cuda.device_count()[0] > 0:
            return
    except ImportError:
        pass
    os.environ["PORTGRAD_GPU_EMULATOR"] = "1"


_choose_gpu()


def isa_params(family):
    """The ISAs a kernel test of `family` runs: the family's variants this CPU can run, reference
    ("scalar") first, as the one list of families (csrc/kernels/families.def) and the CPU say."""
    return _core.kernels.variants(family)


DTYPES = [np.float32, np.float64]
# Relative tolerance of a fast kernel against the exact (float64) value, and the absolute floor
# (around the smallest normal number: denormal results carry absolute, not relative, error).
RTOL = {np.float32: 1e-6, np.float64: 1e-14}
ATOL = {np.float32: 2e-38, np.float64: 3e-308}


def assert_close(got, ref64, dtype, rtol=None, atol=None, what=""):
    """got (array of dtype) against the exact float64 value: non-finite values must match exactly
    (after rounding the exact value to dtype), finite ones within rtol*|ref| + atol."""
    rtol = RTOL[dtype] if rtol is None else rtol
    atol = ATOL[dtype] if atol is None else atol
    got = np.asarray(got)
    assert got.dtype == dtype, (got.dtype, dtype)
    ref64 = np.broadcast_to(np.asarray(ref64, dtype=np.float64), got.shape).ravel()
    got = got.ravel()
    with np.errstate(all="ignore"):
        refd = ref64.astype(dtype).astype(np.float64)
    g = got.astype(np.float64)
    nonfinite = ~np.isfinite(refd)
    bad_nf = nonfinite & ~((g == refd) | (np.isnan(g) & np.isnan(refd)))
    with np.errstate(all="ignore"):
        err = np.abs(g - ref64)
    bad = ~nonfinite & ~(err <= rtol * np.abs(ref64) + atol)
    bad |= bad_nf
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        pytest.fail(f"{what}: {bad.sum()} of {bad.size} wrong; at {i}: got {g[i]}, expected {ref64[i]}")
