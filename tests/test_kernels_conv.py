"""Convolution kernels: the reference against NumPy and the adjoint identities, every variant against
the reference on awkward sizes (odd sizes, stride > kernel, dilation 2-3, groups incl. depthwise,
asymmetric padding, 1-D/2-D/3-D, batch 1 and 3, channels 1 and 5), guard values past the output
ends, both dtypes, bit-identical reruns."""
import numpy as np
import pytest

from portgrad import _core
from conftest import isa_params
from conv_numpy import np_conv

K = _core.kernels
ISAS = isa_params("conv")
FAST_ISAS = [isa for isa in ISAS if isa != "scalar"]  # each against the reference

# (id, batch, c_in, c_out, groups, spatial, kernel, stride, dilation, pad_lo, pad_hi)
CONFIGS = [
    ("1d-basic", 3, 5, 3, 1, (11,), (3,), (1,), (1,), (0,), (0,)),
    ("1d-stride-gt-kernel", 1, 1, 2, 1, (13,), (2,), (3,), (1,), (1,), (2,)),
    ("1d-dilation3-asym", 3, 2, 5, 1, (17,), (3,), (2,), (3,), (2,), (0,)),
    ("1d-depthwise", 3, 5, 5, 5, (9,), (4,), (1,), (2,), (3,), (1,)),
    ("2d-basic", 1, 5, 4, 1, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("2d-odd-stride", 3, 1, 5, 1, (9, 7), (3, 2), (2, 3), (1, 1), (0, 1), (2, 0)),
    ("2d-dilation2", 3, 2, 3, 1, (8, 11), (2, 3), (1, 2), (2, 2), (1, 0), (0, 2)),
    ("2d-groups", 1, 4, 6, 2, (6, 7), (3, 3), (2, 1), (1, 1), (1, 1), (1, 1)),
    ("2d-depthwise", 3, 5, 5, 5, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1)),
    ("2d-depthwise-stride2", 1, 3, 3, 3, (9, 9), (3, 3), (2, 2), (1, 2), (0, 2), (1, 2)),
    ("2d-depthwise-mult2", 3, 3, 6, 3, (5, 6), (2, 2), (1, 1), (1, 1), (0, 0), (0, 0)),
    ("2d-pointwise", 3, 5, 4, 1, (5, 7), (1, 1), (1, 1), (1, 1), (0, 0), (0, 0)),
    ("2d-pointwise-groups", 1, 4, 2, 2, (3, 5), (1, 1), (1, 1), (1, 1), (0, 0), (0, 0)),
    ("2d-1x1-stride2-pad", 3, 2, 3, 1, (6, 5), (1, 1), (2, 2), (1, 1), (1, 0), (0, 1)),
    # negative padding after: the input's last rows are read by no output (a transposed convolution
    # with output_padding past its full output is the adjoint of this one)
    ("2d-unread-tail", 3, 2, 3, 1, (9, 8), (3, 3), (2, 1), (1, 1), (1, 0), (-2, -3)),
    ("2d-large-k", 1, 2, 17, 1, (12, 13), (5, 5), (1, 1), (1, 1), (2, 2), (2, 2)),
    ("3d-basic", 3, 2, 3, 1, (4, 5, 6), (2, 3, 2), (1, 1, 2), (1, 1, 1), (0, 1, 1), (1, 1, 0)),
    ("3d-dilation-groups", 1, 4, 2, 2, (5, 4, 7), (2, 2, 2), (2, 1, 1), (2, 1, 3), (1, 0, 2), (0, 1, 1)),
    ("3d-depthwise", 3, 5, 5, 5, (3, 4, 5), (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
]
IDS = [c[0] for c in CONFIGS]
DTYPES = [np.float32, np.float64]


def geometry(cfg):
    _, B, C, N, g, sp, k, st, dil, lo, hi = cfg
    out = tuple((sp[d] + lo[d] + hi[d] - dil[d] * (k[d] - 1) - 1) // st[d] + 1 for d in range(len(sp)))
    return B, C, N, g, sp, k, st, dil, lo, out


def data(cfg, dtype, seed=0):
    B, C, N, g, sp, k, st, dil, lo, out = geometry(cfg)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C) + sp).astype(dtype)
    w = rng.standard_normal((N, C // g) + k).astype(dtype)
    dy = rng.standard_normal((B, N) + out).astype(dtype)
    return x, w, dy


def tol(dtype, ref):
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    return dict(rtol=1e-12, atol=1e-12 * scale) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_reference_matches_numpy_and_is_adjoint(cfg):
    B, C, N, g, sp, k, st, dil, lo, out = geometry(cfg)
    x, w, dy = data(cfg, np.float64)
    y = K.conv_forward("scalar", x, w, g, st, dil, lo, out)
    np.testing.assert_allclose(y, np_conv(x, w, st, dil, lo, out, g), rtol=1e-12, atol=1e-12)
    dx = K.conv_backward_data("scalar", dy, w, g, st, dil, lo, sp)
    dw = K.conv_backward_weights("scalar", x, dy, g, st, dil, lo, k)
    # <conv(x, w), dy> = <x, conv^T(dy, w)> = <w, dW(x, dy)>
    s = np.sum(y * dy)
    assert np.isclose(np.sum(x * dx), s, rtol=1e-11, atol=1e-11)
    assert np.isclose(np.sum(w * dw), s, rtol=1e-11, atol=1e-11)
    # the weights gradient is linear in x: finite sum check via the forward on a perturbed w
    e = np.zeros_like(w)
    e.flat[w.size // 2] = 1.0
    np.testing.assert_allclose(dw.flat[w.size // 2], np.sum(K.conv_forward("scalar", x, e, g, st, dil, lo, out) * dy),
                               rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("isa", FAST_ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_variant_matches_reference(cfg, dtype, isa):
    B, C, N, g, sp, k, st, dil, lo, out = geometry(cfg)
    x, w, dy = data(cfg, dtype, seed=1)
    pairs = [
        (lambda i, o=None: K.conv_forward(i, x, w, g, st, dil, lo, out, o), "forward"),
        (lambda i, o=None: K.conv_backward_data(i, dy, w, g, st, dil, lo, sp, o), "backward_data"),
        (lambda i, o=None: K.conv_backward_weights(i, x, dy, g, st, dil, lo, k, o), "backward_weights"),
    ]
    for f, what in pairs:
        ref = f("scalar")
        got = f(isa)
        assert got.dtype == dtype and got.shape == ref.shape
        assert not np.isnan(got).any(), what
        np.testing.assert_allclose(got, ref, err_msg=what, **tol(dtype, ref))
        np.testing.assert_array_equal(f(isa), got, err_msg=f"{what}: rerun not bit-identical")
        # guard values past the end stay; NaN-filled outputs are fully overwritten
        buf = np.full(ref.size + 9, np.nan, dtype=dtype)
        buf[ref.size:] = 1234.5
        f(isa, buf)
        assert not np.isnan(buf[:ref.size]).any(), f"{what}: element not written"
        assert (buf[ref.size:] == 1234.5).all(), f"{what}: wrote past the end"
        np.testing.assert_array_equal(buf[:ref.size].reshape(ref.shape), got)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (2, 3, 17), (1, 2, 4, 5)])
def test_bias(shape, dtype, isa):
    rng = np.random.default_rng(2)
    y = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    got = K.conv_bias_forward(isa, y, b)
    np.testing.assert_allclose(got, y.astype(np.float64) + b.reshape(bshape), rtol=1e-6 if dtype == np.float32 else 1e-15)
    db = K.conv_bias_backward(isa, y)
    want = y.astype(np.float64).sum(axis=(0,) + tuple(range(2, len(shape))))
    np.testing.assert_allclose(db, want, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-5)


def test_hook_checks_arguments():
    x = np.zeros((1, 4, 5, 5))
    w = np.zeros((2, 3, 3, 3))
    with pytest.raises(ValueError):
        K.conv_forward("scalar", x, w, 1, (1, 1), (1, 1), (0, 0), (3, 3))  # channels 4 != 3
    with pytest.raises(TypeError):
        K.conv_forward("scalar", x.astype(np.float32), w, 1, (1, 1), (1, 1), (0, 0), (3, 3))
    with pytest.raises(ValueError):
        K.conv_forward("scalar", x, np.zeros((2, 4, 3, 3)), 1, (1,), (1, 1), (0, 0), (3, 3))  # stride rank
