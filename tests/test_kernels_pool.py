"""Pooling kernels (Max, Mean, Total): the reference against NumPy (forward) and against its own
adjoint (Mean, Total) or the first-maximum rule (Max); every variant against the reference on
awkward sizes, guard values past the output ends, both dtypes, bit-identical reruns."""
import numpy as np
import pytest

from portgrad import _core
from conftest import isa_params
from conv_numpy import np_pool

K = _core.kernels
ISAS = isa_params("pool")
FAST_ISAS = [isa for isa in ISAS if isa != "scalar"]  # each against the reference
FNS = ["Max", "Mean", "Total"]

# (id, planes, spatial, kernel, stride, pad_lo, pad_hi)
CONFIGS = [
    ("1d", 3, (11,), (3,), (1,), (0,), (0,)),
    ("1d-stride-gt-kernel", 1, (13,), (2,), (3,), (1,), (2,)),
    ("1d-pad-asym", 5, (17,), (4,), (2,), (2,), (1,)),
    ("1d-long", 2, (67,), (3,), (1,), (1,), (1,)),
    ("2d", 5, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    ("2d-stride2", 3, (9, 8), (2, 2), (2, 2), (0, 0), (0, 0)),
    ("2d-odd", 1, (5, 19), (3, 2), (2, 3), (0, 1), (2, 0)),
    ("2d-wide", 2, (4, 40), (2, 5), (1, 1), (1, 2), (0, 2)),
    ("3d", 3, (4, 5, 6), (2, 3, 2), (1, 1, 2), (0, 1, 1), (1, 1, 0)),
    ("3d-stride2-pad", 1, (5, 4, 7), (2, 2, 3), (2, 2, 2), (1, 1, 1), (0, 1, 1)),
]
IDS = [c[0] for c in CONFIGS]


def geometry(cfg):
    _, P, sp, k, st, lo, hi = cfg
    out = tuple((sp[d] + lo[d] + hi[d] - k[d]) // st[d] + 1 for d in range(len(sp)))
    return P, sp, k, st, lo, out


def data(cfg, dtype, seed=0):
    P, sp, k, st, lo, out = geometry(cfg)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((P,) + sp).astype(dtype), rng.standard_normal((P,) + out).astype(dtype)


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_reference_matches_numpy(cfg, fn):
    P, sp, k, st, lo, out = geometry(cfg)
    x, dy = data(cfg, np.float64)
    y = K.pool_forward("scalar", fn, x, k, st, lo, out)
    np.testing.assert_allclose(y, np_pool(x, fn, k, st, lo, out), rtol=1e-13, atol=1e-13)
    dx = K.pool_backward("scalar", fn, x, dy, k, st, lo)
    if fn != "Max":  # linear: the backward is the adjoint
        assert np.isclose(np.sum(x * dx), np.sum(y * dy), rtol=1e-11, atol=1e-11)
    else:  # each dy lands on its window's maximum: sum(dx * x) = sum(dy * y)
        assert np.isclose(np.sum(dx * x), np.sum(dy * y), rtol=1e-11, atol=1e-11)
        assert np.isclose(dx.sum(), dy.sum(), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("isa", ISAS)
def test_max_ties_go_to_first_maximum(isa):
    x = np.array([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]])  # 1 plane, 2 x 3: both windows tie
    dy = np.array([[[1.0, 10.0]]])
    dx = K.pool_backward(isa, "Max", x, dy, (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(dx, [[[1.0, 10.0, 0.0], [0.0, 0.0, 0.0]]])
    x = np.zeros((1, 4))
    dx = K.pool_backward(isa, "Max", x, np.ones((1, 3)), (2,), (1,), (0,))
    np.testing.assert_array_equal(dx, [[1.0, 1.0, 1.0, 0.0]])


@pytest.mark.parametrize("isa", ISAS)
def test_window_entirely_in_padding_gives_zero(isa):
    x = -np.ones((1, 2))
    y = K.pool_forward(isa, "Max", x, (2,), (3,), (3,), (2,))  # windows [-3,-2] and [0,1]
    np.testing.assert_array_equal(y, [[0.0, -1.0]])
    dx = K.pool_backward(isa, "Max", x, np.ones((1, 2)), (2,), (3,), (3,))
    np.testing.assert_array_equal(dx, [[1.0, 0.0]])


@pytest.mark.parametrize("isa", FAST_ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_variant_matches_reference(cfg, fn, dtype, isa):
    P, sp, k, st, lo, out = geometry(cfg)
    x, dy = data(cfg, dtype, seed=1)
    pairs = [(lambda i, o=None: K.pool_forward(i, fn, x, k, st, lo, out, o), "forward"),
             (lambda i, o=None: K.pool_backward(i, fn, x, dy, k, st, lo, o), "backward")]
    for f, what in pairs:
        ref = f("scalar")
        got = f(isa)
        assert got.dtype == dtype and got.shape == ref.shape
        scale = float(np.max(np.abs(ref)))
        t = dict(rtol=1e-13, atol=1e-13 * scale) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(got, ref, err_msg=f"{fn} {what}", **t)
        np.testing.assert_array_equal(f(isa), got, err_msg=f"{what}: rerun not bit-identical")
        buf = np.full(ref.size + 7, np.nan, dtype=dtype)
        buf[ref.size:] = -99.0
        f(isa, buf)
        assert not np.isnan(buf[:ref.size]).any(), f"{fn} {what}: element not written"
        assert (buf[ref.size:] == -99.0).all(), f"{fn} {what}: wrote past the end"
        np.testing.assert_array_equal(buf[:ref.size].reshape(ref.shape), got)
    if fn == "Max":  # max is exact: the forward is bit-identical to the reference
        np.testing.assert_array_equal(K.pool_forward(isa, fn, x, k, st, lo, out),
                                      K.pool_forward("scalar", fn, x, k, st, lo, out))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_max_tangent_is_the_tangent_at_the_backward_s_maximum(cfg, dtype, isa):
    # The forward mode of max pooling reads tx where the backward sends dy: the two are adjoint,
    # <ty, u> = <tx, backward(u)>, and ty picks one element of each window (a gather, exact).
    P, sp, k, st, lo, out = geometry(cfg)
    x, u = data(cfg, dtype, seed=5)
    tx = np.random.default_rng(6).standard_normal(x.shape).astype(dtype)
    ty = K.pool_max_tangent(isa, x, tx, k, st, lo, out)
    assert ty.dtype == dtype and ty.shape == u.shape
    dx = K.pool_backward("scalar", "Max", x, u.astype(np.float64).astype(dtype), k, st, lo)
    assert np.isclose(np.sum(ty.astype(np.float64) * u), np.sum(tx.astype(np.float64) * dx), rtol=1e-4 if
                      dtype == np.float32 else 1e-11, atol=1e-4 if dtype == np.float32 else 1e-11)
    assert np.all(np.isin(ty[ty != 0], tx))  # every entry is one of the tangents (or 0: an empty window)
    np.testing.assert_array_equal(ty, K.pool_max_tangent("scalar", x, tx, k, st, lo, out))
    # ties: the first maximum's tangent, as the backward
    x2 = np.zeros((1, 4), dtype)
    np.testing.assert_array_equal(K.pool_max_tangent(isa, x2, np.arange(1, 5, dtype=dtype)[None], (2,), (2,), (0,), (2,)),
                                  [[1, 3]])
