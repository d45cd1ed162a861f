"""Loss kernels: per-example losses against numpy float64, gradients against analytic formulas
and finite differences, the eps clamp at p = 0 and 1, and the null-gradient paths."""
import numpy as np
import pytest
from conftest import DTYPES, assert_close, isa_params

from portgrad._core import kernels as K

ISAS = isa_params("loss")

RT = {np.float32: 1e-5, np.float64: 1e-13}
SIZES = [(1, 1), (2, 7), (3, 8), (2, 9), (2, 17), (4, 1000)]
KINDS = ["mse", "mae", "bce", "ce_prob", "ce_index"]


def eps(dtype):
    return float(np.finfo(dtype).eps) ** 2


def make(kind, batch, n, dtype, seed=0):
    rng = np.random.default_rng(seed + n)
    if kind in ("mse", "mae"):
        return rng.normal(0, 2, (batch, n)).astype(dtype), rng.normal(0, 2, (batch, n)).astype(dtype)
    if kind == "bce":
        return rng.uniform(0.01, 0.99, (batch, n)).astype(dtype), rng.uniform(0, 1, (batch, n)).astype(dtype)
    groups, classes = 3, n
    p = rng.uniform(0.01, 1, (batch, groups, classes))
    p = (p / p.sum(axis=2, keepdims=True)).astype(dtype)
    if kind == "ce_prob":
        t = rng.uniform(0, 1, p.shape)
        return p, (t / t.sum(axis=2, keepdims=True)).astype(dtype)
    return p, rng.integers(0, classes, (batch, groups)).astype(np.int64)


def np_loss(kind, p, t, e):
    p = p.astype(np.float64)
    if kind == "mse":
        return ((p - t) ** 2).mean(axis=1)
    if kind == "mae":
        return np.abs(p - t).mean(axis=1)
    if kind == "bce":
        return -(t * np.log(np.maximum(p, e)) + (1 - t) * np.log(np.maximum(1 - p, e))).mean(axis=1)
    if kind == "ce_prob":
        return -(t * np.log(np.maximum(p, e))).sum(axis=2).mean(axis=1)
    picked = np.take_along_axis(p, t[..., None], axis=2)[..., 0]
    return -np.log(np.maximum(picked, e)).mean(axis=1)


def np_grads(kind, p, t, dl, e):
    """(dp, dt) of sum_b dl[b] * loss[b], written from the definitions."""
    p = p.astype(np.float64)
    if kind in ("mse", "mae", "bce"):
        n = p.shape[1]
        k = dl[:, None] / n
        if kind == "mse":
            g = k * 2 * (p - t)
            return g, -g
        if kind == "mae":
            g = k * np.sign(p - t)
            return g, -g
        a, c = np.maximum(p, e), np.maximum(1 - p, e)
        return k * (-t / a + (1 - t) / c), -k * (np.log(a) - np.log(c))
    k = dl[:, None, None] / p.shape[1]
    if kind == "ce_prob":
        a = np.maximum(p, e)
        return -k * t / a, -k * np.log(a)
    dp = np.zeros_like(p)
    picked = np.take_along_axis(p, t[..., None], axis=2)
    np.put_along_axis(dp, t[..., None], -k / np.maximum(picked, e), axis=2)
    return dp, None


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
def test_forward(kind, isa, dtype):
    for batch, n in SIZES:
        p, t = make(kind, batch, n, dtype)
        loss = K.loss_forward(isa, kind, p, t)
        assert loss.shape == (batch,)
        t64 = t if kind == "ce_index" else t.astype(np.float64)
        assert_close(loss, np_loss(kind, p, t64, eps(dtype)), dtype, RT[dtype], 0, what=f"{kind} {n}")
        assert K.loss_forward(isa, kind, p, t).tobytes() == loss.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
def test_backward(kind, isa, dtype):
    for batch, n in SIZES:
        p, t = make(kind, batch, n, dtype, seed=1)
        dl = np.random.default_rng(n).uniform(-2, 2, batch).astype(dtype)
        t64 = t if kind == "ce_index" else t.astype(np.float64)
        rdp, rdt = np_grads(kind, p, t64, dl.astype(np.float64), eps(dtype))
        dp, dt = K.loss_backward(isa, kind, p, t, dl)
        assert_close(dp, rdp, dtype, RT[dtype], 0, what=f"{kind} dp {n}")
        if kind == "ce_index":
            assert dt is None
        else:
            assert_close(dt, rdt, dtype, RT[dtype], 0, what=f"{kind} dt {n}")
        # null paths: each gradient alone is the same as both together
        dp_only, none = K.loss_backward(isa, kind, p, t, dl, want_dp=True, want_dt=False)
        assert none is None and dp_only.tobytes() == dp.tobytes()
        none, dt_only = K.loss_backward(isa, kind, p, t, dl, want_dp=False, want_dt=True)
        assert none is None
        if kind != "ce_index":
            assert dt_only.tobytes() == dt.tobytes()
        assert K.loss_backward(isa, kind, p, t, dl, False, False) == (None, None)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", KINDS)
def test_finite_differences_f64(kind, isa):
    p, t = make(kind, 2, 5, np.float64, seed=2)
    if kind == "mae":  # keep away from the kink at x == t
        t = np.where(np.abs(p - t) < 1e-3, t + 0.1, t)
    dl = np.array([0.7, -1.3])
    dp, dt = K.loss_backward(isa, kind, p, t, dl)
    h = 1e-6

    def total(pp, tt):
        return float((dl * K.loss_forward(isa, kind, pp, tt)).sum())

    for which, arr, grad in (("p", p, dp), ("t", t, dt)):
        if grad is None:
            continue
        fd = np.zeros_like(arr)
        for idx in np.ndindex(*arr.shape):
            ap, am = arr.copy(), arr.copy()
            ap[idx] += h
            am[idx] -= h
            fd[idx] = (total(ap, t) - total(am, t)) / (2 * h) if which == "p" else \
                      (total(p, ap) - total(p, am)) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8, err_msg=f"{kind} d{which}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_probabilities_at_zero_and_one(isa, dtype):
    e = eps(dtype)
    big = -np.log(e)  # the clamped -log(0)
    # BCE with p at the ends: finite loss, finite gradient of the right sign
    n = 9
    p = np.array([[0.0] * n, [1.0] * n, [0.0] * n, [1.0] * n], dtype)
    t = np.array([[1.0] * n, [0.0] * n, [0.0] * n, [1.0] * n], dtype)
    loss = K.loss_forward(isa, "bce", p, t)
    assert np.isfinite(loss).all()
    np.testing.assert_allclose(loss, [big, big, 0, 0], rtol=1e-5)
    dp, dt = K.loss_backward(isa, "bce", p, t, np.ones(4, dtype))
    assert np.isfinite(dp).all() and np.isfinite(dt).all()
    assert (dp[0] < 0).all() and (dp[1] > 0).all()  # move p towards t
    np.testing.assert_allclose(dp[0].astype(np.float64), -1 / (e * n), rtol=1e-5)
    # CE with a zero probability where the target has mass
    pc = np.array([[[0.0, 1.0, 0.0] + [0.0] * 6]], dtype)
    tc = np.array([[[1.0, 0.0, 0.0] + [0.0] * 6]], dtype)
    np.testing.assert_allclose(K.loss_forward(isa, "ce_prob", pc, tc), [big], rtol=1e-5)
    dp, dt = K.loss_backward(isa, "ce_prob", pc, tc, np.ones(1, dtype))
    assert np.isfinite(dp).all() and np.isfinite(dt).all() and dp[0, 0, 0] < 0
    idx = np.array([[0]], np.int64)
    np.testing.assert_allclose(K.loss_forward(isa, "ce_index", pc, idx), [big], rtol=1e-5)
    dp, _ = K.loss_backward(isa, "ce_index", pc, idx, np.ones(1, dtype))
    assert np.isfinite(dp).all() and dp[0, 0, 0] < 0 and np.all(dp[0, 0, 1:] == 0)


@pytest.mark.parametrize("isa", ISAS)
def test_mae_sign_of_zero(isa):
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    dp, dt = K.loss_backward(isa, "mae", x, x.copy(), np.ones(1, np.float32))
    assert np.all(dp == 0) and np.all(dt == 0)


def test_bad_arguments():
    p = np.full((1, 2, 3), 1 / 3)
    with pytest.raises(IndexError):
        K.loss_forward("scalar", "ce_index", p, np.array([[0, 3]], np.int64))
    with pytest.raises(TypeError):
        K.loss_forward("scalar", "ce_index", p, np.array([[0, 1]], np.int32))
    with pytest.raises(ValueError, match="unknown loss"):
        K.loss_forward("scalar", "hinge", p[0], p[0])
