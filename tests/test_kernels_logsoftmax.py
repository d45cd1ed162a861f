"""Log-softmax kernels over the last axis: forward and backward against numpy float64, finite
differences, stability for huge logits, tails, AVX2 against the reference."""
import numpy as np
import pytest
from conftest import DTYPES, assert_close, isa_params

from portgrad._core import kernels as K

ISAS = isa_params("softmax")

SHAPES = [(1, 1), (3, 1), (2, 7), (4, 8), (3, 9), (2, 15), (2, 17), (5, 1000), (0, 5)]
RT = {np.float32: 4e-6, np.float64: 1e-14}


def np_log_softmax(x):
    x = x.astype(np.float64)
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _atol(dtype, x):
    # y = (x - m) - log(s): the absolute error follows the size of the terms, not of y.
    scale = 1.0 + (np.abs(x).max(initial=0) if x.size else 0)
    return 4 * np.finfo(dtype).eps * scale


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_forward(isa, dtype):
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x = rng.normal(0, 5, shape).astype(dtype)
        y = K.log_softmax_forward(isa, x)
        assert y.shape == shape and y.dtype == dtype
        assert_close(y, np_log_softmax(x), dtype, RT[dtype], _atol(dtype, x), what=f"{shape}")
        if shape[0]:
            np.testing.assert_allclose(np.exp(y.astype(np.float64)).sum(axis=1), 1.0, rtol=0,
                                       atol=1e-5 if dtype == np.float32 else 1e-13)
        assert K.log_softmax_forward(isa, x).tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_large_logits_stable(isa, dtype):
    x = np.array([[1000.0, -1000.0, 999.0, 0.0, 1000.0, -5.0, 3.0, 1.0, 998.0],
                  [-1000.0] * 9, [1e4] + [-1e4] * 8], dtype)
    y = K.log_softmax_forward(isa, x)
    assert np.isfinite(y).all()  # softmax underflows to 0 there; its log must not be -inf
    assert_close(y, np_log_softmax(x), dtype, RT[dtype], _atol(dtype, x), what="large logits")
    np.testing.assert_allclose(y[1], -np.log(9), rtol=1e-6)
    assert y[2, 0] == 0 and np.all(y[2, 1:] == -2e4)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_backward(isa, dtype):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x = rng.normal(0, 2, shape).astype(dtype)
        y = K.log_softmax_forward(isa, x)
        dy = rng.normal(0, 1, shape).astype(dtype)
        y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
        ref = dy64 - np.exp(y64) * dy64.sum(axis=1, keepdims=True)
        dx = K.log_softmax_backward(isa, y, dy)
        scale = np.abs(dy64).sum(axis=1).max(initial=0)
        assert_close(dx, ref, dtype, RT[dtype], 8 * np.finfo(dtype).eps * max(scale, 1e-30), what=f"{shape}")


@pytest.mark.parametrize("isa", ISAS)
def test_finite_differences_f64(isa):
    rng = np.random.default_rng(2)
    for cols in (1, 7, 8, 9, 33):
        x = rng.normal(0, 1, (3, cols))
        w = rng.normal(0, 1, (3, cols))  # loss = sum(w * log_softmax(x))
        dx = K.log_softmax_backward(isa, K.log_softmax_forward(isa, x), w)
        fd = np.zeros_like(x)
        h = 1e-6
        for idx in np.ndindex(*x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += h
            xm[idx] -= h
            fd[idx] = ((w * K.log_softmax_forward(isa, xp)).sum() - (w * K.log_softmax_forward(isa, xm)).sum()) / (2 * h)
        np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.skipif("avx2" not in ISAS, reason="no AVX2")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_avx2_matches_reference(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 10, (37, 131)).astype(dtype)
    y = K.log_softmax_forward("avx2", x)
    ref = K.log_softmax_forward("scalar", x).astype(np.float64)
    assert_close(y, ref, dtype, 2 * RT[dtype], _atol(dtype, x), what="fwd")
    dy = rng.normal(0, 1, x.shape).astype(dtype)
    ref = K.log_softmax_backward("scalar", y, dy).astype(np.float64)
    scale = np.abs(dy.astype(np.float64)).sum(axis=1).max()
    assert_close(K.log_softmax_backward("avx2", y, dy), ref, dtype, 2 * RT[dtype], 8 * np.finfo(dtype).eps * scale,
                 what="bwd")


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        K.log_softmax_forward("scalar", np.zeros(3))
    with pytest.raises(TypeError):
        K.log_softmax_forward("scalar", np.zeros((2, 3), np.float16))
    with pytest.raises(TypeError):
        K.log_softmax_backward("scalar", np.zeros((2, 3)), np.zeros((2, 3), np.float32))
