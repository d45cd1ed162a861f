"""Softmax kernels over the last axis: forward and backward against numpy float64, finite
differences, stability for huge logits, tails."""
import numpy as np
import pytest
from conftest import DTYPES, assert_close, isa_params

from portgrad._core import kernels as K

ISAS = isa_params("softmax")

SHAPES = [(1, 1), (3, 1), (2, 7), (4, 8), (3, 9), (2, 15), (2, 17), (5, 1000), (0, 5)]
RT = {np.float32: 2e-6, np.float64: 1e-14}


def np_softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_forward(isa, dtype):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x = rng.normal(0, 5, shape).astype(dtype)
        y = K.softmax_forward(isa, x)
        ref = np_softmax(x)
        assert_close(y, ref, dtype, RT[dtype], 1e-30 if dtype == np.float32 else 1e-300, what=f"{shape}")
        if shape[0]:
            np.testing.assert_allclose(y.astype(np.float64).sum(axis=1), 1.0, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-13)
        assert K.softmax_forward(isa, x).tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_large_logits_stable(isa, dtype):
    x = np.array([[1000.0, -1000.0, 999.0, 0.0, 1000.0, -5.0, 3.0, 1.0, 998.0],
                  [-1000.0] * 9, [1e4] + [-1e4] * 8], dtype)
    y = K.softmax_forward(isa, x)
    assert np.isfinite(y).all()
    assert_close(y, np_softmax(x), dtype, RT[dtype], 1e-30, what="large logits")
    np.testing.assert_allclose(y[1], 1 / 9, rtol=1e-6)
    assert y[2, 0] == 1 and np.all(y[2, 1:] == 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_backward(isa, dtype):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x = rng.normal(0, 2, shape).astype(dtype)
        y = K.softmax_forward(isa, x)
        dy = rng.normal(0, 1, shape).astype(dtype)
        y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
        ref = y64 * (dy64 - (dy64 * y64).sum(axis=1, keepdims=True))
        dx = K.softmax_backward(isa, y, dy)
        # the row sum cancels: an absolute floor relative to max |y * dy| per row
        scale = np.abs(y64).max(initial=0) * np.abs(dy64).max(initial=0)
        assert_close(dx, ref, dtype, RT[dtype], 8 * np.finfo(dtype).eps * max(scale, 1e-30), what=f"{shape}")


@pytest.mark.parametrize("isa", ISAS)
def test_finite_differences_f64(isa):
    rng = np.random.default_rng(2)
    for cols in (1, 7, 8, 9, 33):
        x = rng.normal(0, 1, (3, cols))
        w = rng.normal(0, 1, (3, cols))  # loss = sum(w * softmax(x))
        dx = K.softmax_backward(isa, K.softmax_forward(isa, x), w)
        fd = np.zeros_like(x)
        h = 1e-6
        for idx in np.ndindex(*x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += h
            xm[idx] -= h
            fd[idx] = ((w * K.softmax_forward(isa, xp)).sum() - (w * K.softmax_forward(isa, xm)).sum()) / (2 * h)
        np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.skipif("avx2" not in ISAS, reason="no AVX2")
def test_avx2_matches_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 10, (37, 131)).astype(np.float32)
    y = K.softmax_forward("avx2", x)
    assert_close(y, K.softmax_forward("scalar", x).astype(np.float64), np.float32, 4e-6, 1e-30, what="fwd")
    dy = rng.normal(0, 1, x.shape).astype(np.float32)
    ref = K.softmax_backward("scalar", y, dy).astype(np.float64)
    assert_close(K.softmax_backward("avx2", y, dy), ref, np.float32, 4e-6, 1e-6, what="bwd")


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        K.softmax_forward("scalar", np.zeros(3))
    with pytest.raises(TypeError):
        K.softmax_forward("scalar", np.zeros((2, 3), np.float16))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_minus_infinity_logits_are_masked_out(isa, dtype):
    """A -inf logit (a masked entry) gets probability 0 and log-probability -inf; the rest of the
    row is the softmax of the finite entries (in every lane position of a vector and in the tail)."""
    for cols in (3, 9, 17):
        for at in range(cols):
            x = np.linspace(-2, 2, cols).astype(dtype)[None]
            x[0, at] = -np.inf
            finite = np.delete(x[0], at)[None]
            want = np.insert(np_softmax(finite)[0], at, 0.0)[None]
            y = K.softmax_forward(isa, x)
            assert_close(y, want, dtype, RT[dtype], 1e-30, what=f"softmax cols={cols} at={at}")
            ly = K.log_softmax_forward(isa, x)
            with np.errstate(divide="ignore"):
                assert_close(ly, np.log(want), dtype, RT[dtype] * 10, 1e-6, what=f"log-softmax cols={cols} at={at}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", ISAS)
def test_many_rows_on_1_2_3_threads_are_bit_identical(isa, dtype):
    """Attention's weights (16 x 4 x 128 rows of 128, and awkward sizes past the threads' threshold)
    shared out to the threads in row blocks: the same bits whatever the count, and right."""
    rng = np.random.default_rng(7)
    n0 = K.num_threads()
    try:
        for rows, cols in [(8192, 128), (3001, 17), (40000, 1)]:
            x = (3 * rng.standard_normal((rows, cols))).astype(dtype)
            dy = rng.standard_normal((rows, cols)).astype(dtype)
            outs = []
            for t in (1, 2, 3):
                K.set_num_threads(t)
                y = K.softmax_forward(isa, x)
                outs.append((y.tobytes(), K.softmax_backward(isa, y, dy).tobytes(),
                             K.log_softmax_forward(isa, x).tobytes()))
            assert outs[0] == outs[1] == outs[2], f"{isa} {rows}x{cols}"
            assert_close(np.frombuffer(outs[0][0], dtype).reshape(rows, cols), np_softmax(x.astype(np.float64)), dtype,
                         rtol=2e-6 if dtype == np.float32 else 1e-13)
    finally:
        K.set_num_threads(n0)


def np_masked(x, mask):
    """The masked softmax in float64: rows over the keys their mask keeps, all-hidden rows zero."""
    x = x.astype(np.float64)
    keep = (mask != 0)[:, None]
    s = np.where(keep, x, -np.inf)
    mx = s.max(-1, keepdims=True)
    e = np.where(keep, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0)
    tot = e.sum(-1, keepdims=True)
    return np.where(tot > 0, e / np.where(tot > 0, tot, 1), 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5), (3, 1, 7, 9), (2, 2, 3, 17), (1, 4, 2, 130), (0, 2, 2, 2)])
def test_masked_forward(isa, dtype, shape):
    rng = np.random.default_rng(7)
    x = rng.normal(0, 5, shape).astype(dtype)
    b, h, m, n = shape
    mask = (rng.random((b, m, n)) < 0.6).astype(dtype)
    if b and m > 1:
        mask[0, 1] = 0  # a query that sees nothing
    if b:
        mask[-1, 0] = 1  # and one that sees everything
    y = K.softmax_masked(isa, x, mask)
    assert_close(y, np_masked(x, mask), dtype, RT[dtype], 1e-30 if dtype == np.float32 else 1e-300, what=f"{shape}")
    assert np.all(y[np.broadcast_to((mask == 0)[:, None], shape)] == 0)
    if b and m > 1:
        assert np.all(y[0, :, 1] == 0)
    if b:  # unmasked rows are the plain softmax, bit for bit
        np.testing.assert_array_equal(y[-1, :, 0], K.softmax_forward(isa, np.ascontiguousarray(x[-1, :, 0])))
    y2 = x.copy()
    assert K.softmax_masked(isa, y2, mask).tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_backward_tangent(isa, dtype):
    """The tangent of dx = y (dy - sum(dy y)) along (ty, tdy), against NumPy and against central
    differences of the backward kernel itself (float64)."""
    rng = np.random.default_rng(9)
    for shape in SHAPES:
        y = np_softmax(rng.normal(0, 2, shape)).astype(dtype)
        ty, dy, tdy = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
        y64, ty64, dy64, tdy64 = (a.astype(np.float64) for a in (y, ty, dy, tdy))
        s = (dy64 * y64).sum(1, keepdims=True)
        u = (ty64 * dy64 + y64 * tdy64).sum(1, keepdims=True)
        want = ty64 * (dy64 - s) + y64 * (tdy64 - u)
        got = K.softmax_backward_tangent(isa, y, ty, dy, tdy)
        assert_close(got, want, dtype, 8 * RT[dtype], 1e-6 if dtype == np.float32 else 1e-13, what=f"{shape}")
        if dtype == np.float64 and shape[0]:
            h = 1e-6
            fd = (K.softmax_backward(isa, y + h * ty, dy + h * tdy) - K.softmax_backward(isa, y - h * ty, dy - h * tdy)) / (2 * h)
            np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)
