"""Norm, dropout and embedding kernels against NumPy float64 on awkward sizes (channels 1, 3, 17;
spatial 1, 7, 33; batch 1, 5), both dtypes and every ISA. The hooks fill outputs with NaN and check
guard values past their ends (a write out of bounds raises)."""
import itertools

import numpy as np
import pytest
from conftest import DTYPES, isa_params

from portgrad._core import kernels as K

ISAS = isa_params("norm")

SIZES = list(itertools.product([1, 5], [1, 3, 17], [1, 7, 33]))  # batch, channels, spatial
TOL = {np.float32: 3e-5, np.float64: 1e-12}


def close(got, want, dtype, what="", rtol=None, scale=None):
    got = np.asarray(got)
    assert got.dtype == dtype, (got.dtype, dtype)
    assert np.isfinite(got).all(), f"{what}: non-finite (an element not written?)"
    want = np.asarray(want, np.float64)
    rtol = TOL[dtype] if rtol is None else rtol
    if scale is None:  # the absolute floor: relative to the largest value, or to the terms that cancel
        scale = float(np.max(np.abs(want), initial=0.0))
    scale = max(scale, 1e-3)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=rtol * scale, err_msg=what)


def sample(rng, shape, dtype, loc=0.0):
    return (loc + rng.standard_normal(shape)).astype(dtype)


def np_channel_stats(x):
    x = x.astype(np.float64)
    xs = x.transpose(1, 0, 2).reshape(x.shape[1], -1)
    return xs.mean(1), xs.var(1)


def params(rng, c, dtype):
    return (rng.uniform(0.5, 1.5, c).astype(dtype), rng.uniform(-0.5, 0.5, c).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_channel_moments_and_forward(isa, dtype):
    rng = np.random.default_rng(0)
    for B, C, S in SIZES:
        x = sample(rng, (B, C, S), dtype, loc=3.0)  # an offset, so a one-pass variance would show
        mean, var = K.norm_channel_moments(isa, x)
        mu, v = np_channel_stats(x)
        close(mean, mu, dtype, f"mean {B, C, S}")
        close(var, v, dtype, f"var {B, C, S}", rtol=TOL[dtype] * 10)
        invstd = K.norm_inv_std(isa, var, 1e-3)
        close(invstd, 1 / np.sqrt(var.astype(np.float64) + 1e-3), dtype, "invstd")
        g, b = params(rng, C, dtype)
        y = K.norm_channel_forward(isa, x, mean, invstd, g, b)
        ref = g.astype(np.float64)[:, None] * (x - mean.astype(np.float64)[:, None]) * invstd.astype(np.float64)[:, None] \
            + b.astype(np.float64)[:, None]
        close(y, ref, dtype, f"forward {B, C, S}")
        assert K.norm_channel_forward(isa, x, mean, invstd, g, b).tobytes() == y.tobytes()


def np_channel_backward(x, dy, mean, invstd, g, batch_stats):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean, invstd, g = (a.astype(np.float64)[None, :, None] for a in (mean, invstd, g))
    xh = (x - mean) * invstd
    m = x.shape[0] * x.shape[2]
    sdy = dy.sum((0, 2), keepdims=True)
    sdyx = (dy * xh).sum((0, 2), keepdims=True)
    dx = g * invstd * (dy - sdy / m - xh * sdyx / m) if batch_stats else g * invstd * dy
    return dx, sdyx.ravel(), sdy.ravel()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch_stats", [False, True], ids=["constant-stats", "batch-stats"])
def test_channel_backward(isa, dtype, batch_stats):
    rng = np.random.default_rng(1)
    for B, C, S in SIZES:
        x = sample(rng, (B, C, S), dtype)
        dy = sample(rng, (B, C, S), dtype)
        mean, var = K.norm_channel_moments("scalar", x)
        invstd = K.norm_inv_std("scalar", var, 1e-3)
        g, _ = params(rng, C, dtype)
        dx, dg, db = K.norm_channel_backward(isa, x, dy, mean, invstd, g, batch_stats)
        rdx, rdg, rdb = np_channel_backward(x, dy, mean, invstd, g, batch_stats)
        # dx with batch statistics cancels: an absolute floor relative to |g invstd dy|
        terms = float(np.max(np.abs(g * invstd)) * np.max(np.abs(dy)))
        close(dx, rdx, dtype, f"dx {B, C, S}", rtol=TOL[dtype] * (30 if batch_stats else 1), scale=terms)
        close(dg, rdg, dtype, f"dgamma {B, C, S}", rtol=TOL[dtype] * 10)
        close(db, rdb, dtype, f"dbeta {B, C, S}", rtol=TOL[dtype] * 10)
        only_dx = K.norm_channel_backward(isa, x, dy, mean, invstd, g, batch_stats, True, False, False)
        assert only_dx[1] is None and only_dx[2] is None and only_dx[0].tobytes() == dx.tobytes()
        only_dg = K.norm_channel_backward(isa, x, dy, mean, invstd, g, batch_stats, False, True, False)
        assert only_dg[0] is None and only_dg[1].tobytes() == dg.tobytes()


@pytest.mark.parametrize("isa", ISAS)
def test_batch_stats_backward_vs_finite_differences(isa):
    """The batch-statistics backward is the exact VJP of moments -> inv_std -> forward (float64)."""
    rng = np.random.default_rng(2)
    for B, C, S in [(5, 3, 1), (2, 2, 7), (1, 1, 9)]:
        x = rng.standard_normal((B, C, S))
        w = rng.standard_normal((B, C, S))
        g, b = rng.uniform(0.5, 1.5, C), rng.uniform(-0.5, 0.5, C)

        def f(xv):
            mean, var = K.norm_channel_moments(isa, xv)
            return float((w * K.norm_channel_forward(isa, xv, mean, K.norm_inv_std(isa, var, 1e-3), g, b)).sum())

        mean, var = K.norm_channel_moments(isa, x)
        dx, _, _ = K.norm_channel_backward(isa, x, w, mean, K.norm_inv_std(isa, var, 1e-3), g, True)
        fd = np.zeros_like(x)
        h = 1e-6
        for idx in np.ndindex(*x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += h
            xm[idx] -= h
            fd[idx] = (f(xp) - f(xm)) / (2 * h)
        np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_running_update(isa, dtype):
    rng = np.random.default_rng(3)
    for C in (1, 3, 17):
        mean, var = sample(rng, C, dtype), rng.uniform(0.1, 2, C).astype(dtype)
        rm, rv = sample(rng, C, dtype), rng.uniform(0.1, 2, C).astype(dtype)
        nm, nv = K.norm_running_update(isa, 0.9, 6, mean, var, rm, rv)
        close(nm, 0.9 * rm.astype(np.float64) + 0.1 * mean, dtype, "running mean")
        close(nv, 0.9 * rv.astype(np.float64) + 0.1 * var.astype(np.float64) * 6 / 5, dtype, "running var")


ROW_SIZES = list(itertools.product([1, 5], [1, 3], [1, 7, 33]))  # batch, rows, cols


def np_row_forward(x, g, b, per_element, eps):
    x = x.astype(np.float64)
    mu = x.mean(2, keepdims=True)
    var = x.var(2, keepdims=True)
    invstd = 1 / np.sqrt(var + eps)
    shape = (1,) + x.shape[1:] if per_element else (1, x.shape[1], 1)
    g, b = g.astype(np.float64).reshape(shape), b.astype(np.float64).reshape(shape)
    return g * (x - mu) * invstd + b, mu[..., 0], invstd[..., 0]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("per_element", [False, True], ids=["per-row", "per-element"])
def test_row_forward_backward(isa, dtype, per_element):
    rng = np.random.default_rng(4)
    for B, R, N in ROW_SIZES:
        P = R * N if per_element else R
        x = sample(rng, (B, R, N), dtype, loc=2.0)
        g, b = params(rng, P, dtype)
        y, mean, invstd = K.norm_row_forward(isa, x, g, b, per_element, 1e-3)
        ry, rmu, ris = np_row_forward(x, g, b, per_element, 1e-3)
        close(y, ry, dtype, f"y {B, R, N}", rtol=TOL[dtype] * 3)
        close(mean, rmu, dtype, "mean")
        close(invstd, ris, dtype, "invstd", rtol=TOL[dtype] * 10)
        dy = sample(rng, (B, R, N), dtype)
        dx, dg, db = K.norm_row_backward(isa, x, dy, mean, invstd, g, per_element)
        x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
        mu64, is64 = mean.astype(np.float64)[..., None], invstd.astype(np.float64)[..., None]
        xh = (x64 - mu64) * is64
        gs = g.astype(np.float64).reshape((1, R, N) if per_element else (1, R, 1))
        gg = dy64 * gs
        rdx = is64 * (gg - gg.mean(2, keepdims=True) - xh * (gg * xh).mean(2, keepdims=True))
        axes = (0,) if per_element else (0, 2)
        close(dx, rdx, dtype, f"dx {B, R, N}", rtol=TOL[dtype] * 30, scale=float(np.max(np.abs(is64 * gg))))
        close(dg, (dy64 * xh).sum(axes).ravel(), dtype, "dgamma", rtol=TOL[dtype] * 10)
        close(db, dy64.sum(axes).ravel(), dtype, "dbeta", rtol=TOL[dtype] * 10)
        none = K.norm_row_backward(isa, x, dy, mean, invstd, g, per_element, False, True, True)
        assert none[0] is None and none[1].tobytes() == dg.tobytes()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("per_element", [False, True], ids=["per-row", "per-element"])
def test_row_backward_vs_finite_differences(isa, per_element):
    rng = np.random.default_rng(5)
    B, R, N = 2, 2, 5
    P = R * N if per_element else R
    x = rng.standard_normal((B, R, N))
    w = rng.standard_normal((B, R, N))
    g, b = rng.uniform(0.5, 1.5, P), rng.uniform(-0.5, 0.5, P)

    def f(xv):
        return float((w * K.norm_row_forward(isa, xv, g, b, per_element, 1e-3)[0]).sum())

    _, mean, invstd = K.norm_row_forward(isa, x, g, b, per_element, 1e-3)
    dx, _, _ = K.norm_row_backward(isa, x, w, mean, invstd, g, per_element)
    fd = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += 1e-6
        xm[idx] -= 1e-6
        fd[idx] = (f(xp) - f(xm)) / 2e-6
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)


def py_bits(key, i):
    def mix(v):
        v &= 0xFFFFFFFF
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)
    return mix(mix((i & 0xFFFFFFFF) ^ (key & 0xFFFFFFFF)) ^ (((i >> 32) + (key >> 32)) & 0xFFFFFFFF))


def test_dropout_hash_is_the_documented_one():
    key = K.dropout_key(123, 456)
    for i in [0, 1, 7, 8, 1000, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 3]:
        assert K.dropout_bits(key, i) == py_bits(key, i)
    assert K.dropout_key(123, 456) == key != K.dropout_key(124, 456) != K.dropout_key(123, 457)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_dropout(isa, dtype):
    rng = np.random.default_rng(6)
    for n, p in [(1, 0.5), (7, 0.3), (9, 0.5), (33, 0.9), (255, 0.1), (20000, 0.5), (20001, 0.25), (17, 0.0)]:
        x = rng.uniform(0.5, 2.0, n).astype(dtype)  # never 0, so the mask reads off y
        key = K.dropout_key(n, 99)
        y = K.norm_dropout(isa, x, p, key)
        thr = int(p * 2 ** 32)
        keep = np.array([py_bits(key, i) >= thr for i in range(n)]) if n < 1000 else (y != 0)
        assert np.array_equal(y != 0, keep)
        close(y[keep], x[keep].astype(np.float64) / (1 - p), dtype, "kept values scaled")
        assert K.norm_dropout(isa, x, p, key).tobytes() == y.tobytes()
        ref = K.norm_dropout("scalar", x, p, key)
        assert np.array_equal(ref != 0, y != 0), "every ISA draws the same mask"
        if n >= 20000:
            assert abs(keep.mean() - (1 - p)) < 0.02
    x = np.ones(1000, dtype)
    assert not np.array_equal(K.norm_dropout(isa, x, 0.5, 1) != 0, K.norm_dropout(isa, x, 0.5, 2) != 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", isa_params("embed"))
def test_embedding_gather_scatter(isa, dtype):
    rng = np.random.default_rng(7)
    for rows, size, n in [(1, 1, 1), (3, 7, 5), (17, 33, 40), (5, 8, 1), (4, 9, 0)]:
        W = rng.standard_normal((rows, size)).astype(dtype)
        idx = rng.integers(0, rows, n)
        y = K.embed_gather(isa, idx, W)
        assert y.shape == (n, size) and np.array_equal(y, W[idx])
        dy = rng.standard_normal((n, size)).astype(dtype)
        dW = K.embed_scatter_add(isa, idx, dy, rows)
        ref = np.zeros((rows, size))
        np.add.at(ref, idx, dy.astype(np.float64))
        close(dW, ref, dtype, f"scatter {rows, size, n}", rtol=TOL[dtype] * 10)
        assert K.embed_scatter_add("scalar", idx, dy, rows).tobytes() == dW.tobytes(), "same bits as the reference"
    with pytest.raises(IndexError):
        K.embed_gather(isa, np.array([3]), np.zeros((3, 2), dtype))
