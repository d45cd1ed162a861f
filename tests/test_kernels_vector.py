"""Vector kernel variants (bias add, column sums, axpy, batched outer product,
rows scaled by a vector) against float64 numpy, with guard values
past the end of outputs, NaN outputs that beta == 0 must not read, and bit-identical reruns."""
import itertools

import numpy as np
import pytest

from conftest import isa_params
from portgrad import _core

K = _core.kernels

ISAS = isa_params("vector")
DTYPES = [np.float32, np.float64]
DTYPE_IDS = lambda d: np.dtype(d).name  # noqa: E731
SIZES = [0, 1, 7, 8, 9, 17, 255, 1000]
ROWS = [0, 1, 3, 33]
SENTINEL = 12345.5
PAD = 11


def guarded(shape, dtype, fill):
    """An array of `shape` at the start of a sentinel-filled buffer with PAD spare elements."""
    size = int(np.prod(shape))
    buf = np.full(size + PAD, SENTINEL, dtype)
    view = buf[:size].reshape(shape)
    view[...] = fill
    return buf, view


def assert_guard(buf, size, what):
    assert np.all(buf[size:] == SENTINEL), f"wrote past the end: {what}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_add_row_vector(isa, dtype):
    rng = np.random.default_rng(11)
    eps = np.finfo(dtype).eps
    for rows, cols in itertools.product(ROWS, SIZES):
        b = rng.standard_normal(cols).astype(dtype)
        y0 = rng.standard_normal((rows, cols)).astype(dtype)
        buf, y = guarded((rows, cols), dtype, y0)
        K.add_row_vector(isa, b, y)
        assert_guard(buf, rows * cols, f"rows={rows} cols={cols}")
        expect = y0.astype(np.float64) + b.astype(np.float64)
        np.testing.assert_allclose(y, expect, rtol=eps, atol=0, err_msg=f"rows={rows} cols={cols}")


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_sum_rows(isa, dtype, beta):
    rng = np.random.default_rng(12)
    eps = np.finfo(dtype).eps
    for rows, cols in itertools.product(ROWS + [1000], SIZES):
        x = rng.standard_normal((rows, cols)).astype(dtype)
        out0 = np.full(cols, np.nan, dtype) if beta == 0 else rng.standard_normal(cols).astype(dtype)
        buf, out = guarded((cols,), dtype, out0)
        K.sum_rows(isa, x, beta, out)
        assert_guard(buf, cols, f"rows={rows} cols={cols}")
        xd = x.astype(np.float64)
        expect = xd.sum(axis=0)
        bound = np.abs(xd).sum(axis=0)
        if beta != 0:
            expect = expect + beta * out0.astype(np.float64)
            bound = bound + abs(beta) * np.abs(out0.astype(np.float64))
        assert np.all(np.isfinite(out)), f"non-finite: rows={rows} cols={cols} beta={beta}"
        err = np.abs(out.astype(np.float64) - expect)
        assert np.all(err <= (rows + 2) * eps * bound), f"rows={rows} cols={cols} beta={beta}: max err {err.max()}"


@pytest.mark.parametrize("alpha", [1.0, -0.75, 0.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_axpy(isa, dtype, alpha):
    rng = np.random.default_rng(13)
    eps = np.finfo(dtype).eps
    for n in SIZES:
        x = rng.standard_normal(n).astype(dtype)
        y0 = rng.standard_normal(n).astype(dtype)
        buf, y = guarded((n,), dtype, y0)
        K.axpy(isa, alpha, x, y)
        assert_guard(buf, n, f"n={n}")
        expect = y0.astype(np.float64) + alpha * x.astype(np.float64)
        bound = np.abs(y0.astype(np.float64)) + abs(alpha) * np.abs(x.astype(np.float64))
        err = np.abs(y.astype(np.float64) - expect)
        assert np.all(err <= 2 * eps * bound), f"n={n} alpha={alpha}: max err {err.max()}"


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_outer(isa, dtype, threads):
    """One rounded product per element: equal to float64 NumPy rounded once, bit for bit, on every
    ISA and thread count (the largest case is big enough to be shared out)."""
    rng = np.random.default_rng(15)
    before = K.num_threads()
    K.set_num_threads(threads)
    try:
        for batch, m, n in [(0, 3, 5), (1, 1, 1), (3, 0, 4), (2, 5, 0), (3, 7, 9), (5, 17, 8), (4, 1, 33),
                            (64, 65, 255), (7, 300, 301)]:
            u = rng.standard_normal((batch, m)).astype(dtype)
            v = rng.standard_normal((batch, n)).astype(dtype)
            buf, out = guarded((batch, m, n), dtype, np.nan)
            K.outer(isa, u, v, out)
            assert_guard(buf, batch * m * n, f"batch={batch} m={m} n={n}")
            expect = (u.astype(np.float64)[:, :, None] * v.astype(np.float64)[:, None, :]).astype(dtype)
            np.testing.assert_array_equal(out, expect, err_msg=f"batch={batch} m={m} n={n}")
    finally:
        K.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_multiply_rows(isa, dtype, threads):
    """One rounded product per element, in place too, bit for bit on every ISA and thread count (the
    larger cases are shared out by rows and by blocks of long rows)."""
    rng = np.random.default_rng(16)
    before = K.num_threads()
    K.set_num_threads(threads)
    try:
        for rows, cols in itertools.product(ROWS + [8], SIZES + [4097, 20000]):
            d = rng.standard_normal(cols).astype(dtype)
            x = rng.standard_normal((rows, cols)).astype(dtype)
            expect = (x.astype(np.float64) * d.astype(np.float64)).astype(dtype)
            buf, y = guarded((rows, cols), dtype, np.nan)
            K.multiply_rows(isa, d, x, y)
            assert_guard(buf, rows * cols, f"rows={rows} cols={cols}")
            np.testing.assert_array_equal(y, expect, err_msg=f"rows={rows} cols={cols}")
            K.multiply_rows(isa, d, x, x)  # in place
            np.testing.assert_array_equal(x, expect, err_msg=f"in place: rows={rows} cols={cols}")
    finally:
        K.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("isa", ISAS)
def test_bit_identical_reruns(isa, dtype):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((129, 77)).astype(dtype)
    b = rng.standard_normal(77).astype(dtype)
    results = []
    for _ in range(2):
        y = x.copy()
        K.add_row_vector(isa, b, y)
        out = np.full(77, 0.5, dtype)
        K.sum_rows(isa, x, 0.5, out)
        z = x[0].copy()
        K.axpy(isa, 0.3, b, z)
        results.append(y.tobytes() + out.tobytes() + z.tobytes())
    assert results[0] == results[1]


def test_bad_arguments():
    y = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="float32"):
        K.add_row_vector("scalar", np.zeros(4, np.float64), y)
    with pytest.raises(ValueError, match="one per column"):
        K.add_row_vector("scalar", np.zeros(5, np.float32), y)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.add_row_vector("scalar", np.zeros(4, np.float32), np.zeros((3, 8), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="one per column"):
        K.sum_rows("scalar", y, 0.0, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="entries"):
        K.axpy("scalar", 1.0, np.zeros(3, np.float32), np.zeros(4, np.float32))
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.axpy("scalar", 1.0, np.zeros(4, np.float32), ro)
    with pytest.raises(ValueError, match="same batch"):
        K.outer("scalar", np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="same batch"):
        K.outer("scalar", np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="one entry per column"):
        K.multiply_rows("scalar", np.zeros(3, np.float32), np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="one entry per column"):
        K.multiply_rows("scalar", np.zeros(4, np.float32), np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="unknown ISA"):
        K.axpy("neon", 1.0, np.zeros(4, np.float32), np.zeros(4, np.float32))
