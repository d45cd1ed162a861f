"""Optimiser kernels (kernels/optim.h: SGD with momentum, ADAM with decoupled weight decay,
RMSProp, and BatchNorm's moving average) against a NumPy transcription of the documented formulas:
bit for bit, in float64 and float32, on every ISA, over several steps, with gradient clipping and
L2 regularisation, on awkward lengths (tails) and arrays long enough to be shared out to threads."""
import numpy as np
import pytest

from conftest import isa_params
from portgrad import _core

K = _core.kernels
ISAS = isa_params("optim")
DTYPES = [np.float32, np.float64]
SIZES = [0, 1, 7, 8, 9, 33, 70001]


def numpy_step(method, dtype, g, w, a, b, lr, scale, clip, l2, momentum, beta1, beta2, eps, weight_decay, c1, c2,
               rho):
    """The formulas of kernels/optim.h, operation by operation, in `dtype`."""
    T = dtype
    g = T(scale) * g
    if clip > 0:
        g = np.where(g > T(clip), T(clip), np.where(g < T(-clip), T(-clip), g))
    if l2 != 0:
        g = g + T(l2) * w
    if method == "SGD":
        a = T(momentum) * a + g
        return w - T(lr) * a, a, b
    if method == "RMSProp":
        a = T(rho) * a + (T(1.0 - rho) * g) * g
        return w + T(-lr) * (g / (np.sqrt(a) + T(eps))), a, b
    w = w * T(1.0 - lr * weight_decay)
    a = T(beta1) * a + T(1.0 - beta1) * g
    b = T(beta2) * b + (T(1.0 - beta2) * g) * g
    return w + T(-lr / c1) * (a / (np.sqrt(b) / T(np.sqrt(c2)) + T(eps))), a, b


CONFIGS = {
    "SGD": dict(lr=0.1, momentum=0.9),
    "SGD-plain": dict(lr=0.05, momentum=0.0),
    "SGD-clip-l2": dict(lr=0.1, momentum=0.5, clip=0.3, l2=1e-2, scale=1 / 7),
    "ADAM": dict(lr=1e-3),
    "ADAM-decay-clip": dict(lr=3e-3, weight_decay=1e-2, clip=0.5, beta1=0.8, beta2=0.99, eps=1e-6, scale=0.25),
    "RMSProp": dict(lr=1e-2, rho=0.9),
    "RMSProp-l2": dict(lr=1e-2, rho=0.99, l2=1e-3, eps=1e-5),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_steps_match_numpy_bit_for_bit(isa, dtype, config):
    method = config.split("-")[0]
    opts = {**dict(scale=1.0, clip=0.0, l2=0.0, momentum=0.0, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                   rho=0.99), **CONFIGS[config]}
    rng = np.random.default_rng(len(config))
    for n in SIZES:
        w = rng.standard_normal(n).astype(dtype)
        a = np.zeros(n, dtype)
        b = np.zeros(n, dtype) if method == "ADAM" else None
        ww, aa, bb = w.copy(), a.copy(), None if b is None else b.copy()
        for t in range(1, 5):
            g = (rng.standard_normal(n) * 3).astype(dtype)
            c1, c2 = 1 - opts["beta1"] ** t, 1 - opts["beta2"] ** t
            K.optim_step(isa, method, g, w, a, b, c1=c1, c2=c2, **opts)
            ww, aa, bb = numpy_step(method, dtype, g, ww, aa, bb, c1=c1, c2=c2, **opts)
            what = f"{config} {np.dtype(dtype).name} n={n} step {t}"
            assert w.tobytes() == ww.tobytes(), f"weights: {what}"
            assert a.tobytes() == aa.tobytes(), f"state: {what}"
            if b is not None:
                assert b.tobytes() == bb.tobytes(), f"second moment: {what}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_the_step_descends_a_quadratic(isa, dtype):
    """Every method brings w toward the minimum of |w - 3|^2 / 2 (a kernel that moved the wrong way,
    or not at all, fails here whatever NumPy says)."""
    for method, opts in [("SGD", dict(lr=0.1, momentum=0.9)), ("ADAM", dict(lr=0.1)), ("RMSProp", dict(lr=0.05))]:
        w = np.zeros(5, dtype)
        a, b = np.zeros(5, dtype), np.zeros(5, dtype)
        for t in range(1, 301):
            K.optim_step(isa, method, (w - 3).astype(dtype), w, a, b if method == "ADAM" else None,
                         c1=1 - 0.9 ** t, c2=1 - 0.999 ** t, **opts)
        np.testing.assert_allclose(w, 3, atol=0.05, err_msg=method)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_nan_gradients_stay_visible_and_clipping_keeps_the_sign(isa, dtype):
    w = np.ones(9, dtype)
    a = np.zeros(9, dtype)
    g = np.array([np.nan, np.inf, -np.inf, 5, -5, 0.1, -0.1, 0, -0.0], dtype)
    K.optim_step(isa, "SGD", g, w, a, lr=1.0, clip=1.0)
    assert np.isnan(w[0]) and np.isnan(a[0])  # NaN is not clipped away into a plausible number
    np.testing.assert_array_equal(a[1:], np.array([1, -1, 1, -1, 0.1, -0.1, 0, 0], dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_moving_average(isa, dtype):
    rng = np.random.default_rng(3)
    for n in SIZES:
        x = rng.standard_normal(n).astype(dtype)
        avg = rng.standard_normal(n).astype(dtype)
        want = dtype(0.9) * avg + dtype((1 - 0.9) * 1.25) * x
        K.moving_average(isa, 0.9, 1.25, x, avg)
        assert avg.tobytes() == want.tobytes(), f"n={n}"


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "scalar"])
def test_threads_give_the_same_bits(isa):
    rng = np.random.default_rng(4)
    n = 300001
    g = rng.standard_normal(n).astype(np.float32)
    out = []
    before = K.num_threads()
    try:
        for threads in (1, 2, 3):
            K.set_num_threads(threads)
            w, a, b = np.ones(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
            K.optim_step(isa, "ADAM", g, w, a, b, lr=0.01, c1=0.1, c2=0.001)
            out.append(w.tobytes() + a.tobytes() + b.tobytes())
    finally:
        K.set_num_threads(before)
    assert out[0] == out[1] == out[2]


def test_bad_arguments():
    w = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="unknown method"):
        K.optim_step("scalar", "Adagrad", w, w.copy(), w.copy())
    with pytest.raises(ValueError, match="two state arrays"):
        K.optim_step("scalar", "ADAM", w, w.copy(), w.copy())
    with pytest.raises(ValueError, match="entries"):
        K.optim_step("scalar", "SGD", np.zeros(3, np.float32), w.copy(), w.copy())
    with pytest.raises(TypeError, match="float32"):
        K.optim_step("scalar", "SGD", np.zeros(4), w.copy(), w.copy())
    with pytest.raises(TypeError, match="dtype of 'w'"):
        K.optim_step("scalar", "ADAM", w, w.copy(), w.copy(), np.zeros(4))
