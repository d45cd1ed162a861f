"""Registry entries for ConvolutionLayer, DeconvolutionLayer and PoolingLayer, with independent NumPy
float64 references written from the definitions (zero-padded, strided, dilated windows), never by
calling portgrad. The `np_conv`, `np_deconv` and `np_pool` helpers are shared with the kernel tests.

Sizes are small (inputs under ~100 elements per example) so the finite-difference checks stay fast.
"""
from __future__ import annotations

import math

import numpy as np

import portgrad as pg
from layer_registry import LayerCase, Port, normal


# ----------------------------------------------------------------------------- NumPy references
def _tap_slices(t, dilation, stride, out):
    return tuple(slice(t[d] * dilation[d], t[d] * dilation[d] + (out[d] - 1) * stride[d] + 1, stride[d])
                 for d in range(len(t)))


def np_conv(x, W, stride, dilation, pad_lo, out, groups=1):
    """y[b, o, p] = sum_{i, t} W[o, i, t] x[b, g(o)*C/g + i, p*stride + t*dilation - pad_lo] (zeros outside)."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    B, C = x.shape[:2]
    N, k, nd = W.shape[0], W.shape[2:], x.ndim - 2
    cig, cog = C // groups, N // groups
    hi = [max(0, (out[d] - 1) * stride[d] + (k[d] - 1) * dilation[d] + 1 - pad_lo[d] - x.shape[2 + d])
          for d in range(nd)]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pad_lo[d], hi[d]) for d in range(nd)])
    y = np.zeros((B, N) + tuple(out))
    for t in np.ndindex(*k):
        patch = xp[(slice(None), slice(None)) + _tap_slices(t, dilation, stride, out)]
        for q in range(groups):
            w = W[(slice(q * cog, (q + 1) * cog), slice(None)) + t]
            y[:, q * cog:(q + 1) * cog] += np.einsum("oc,bc...->bo...", w, patch[:, q * cig:(q + 1) * cig])
    return y


def np_deconv(x, W, stride, dilation, crop_lo, out, groups=1):
    """The transposed convolution: every x[b, c, p] spreads W[c, n, t] * x to position
    p*stride + t*dilation - crop_lo of output channel g(c)*N/g + n; W is (C, N/g, k...)."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    B, C = x.shape[:2]
    nog, k, nd = W.shape[1], W.shape[2:], x.ndim - 2
    N, cig = nog * groups, C // groups
    s = x.shape[2:]
    full = [max((s[d] - 1) * stride[d] + (k[d] - 1) * dilation[d] + 1, crop_lo[d] + out[d]) for d in range(nd)]
    yf = np.zeros((B, N) + tuple(full))
    for t in np.ndindex(*k):
        sl = _tap_slices(t, dilation, stride, s)
        for q in range(groups):
            w = W[(slice(q * cig, (q + 1) * cig), slice(None)) + t]
            yf[(slice(None), slice(q * nog, (q + 1) * nog)) + sl] += np.einsum("cn,bc...->bn...", w,
                                                                               x[:, q * cig:(q + 1) * cig])
    return yf[(slice(None), slice(None)) + tuple(slice(crop_lo[d], crop_lo[d] + out[d]) for d in range(nd))]


def np_pool(x, fn, k, stride, pad_lo, out):
    """Pooling of x (planes, spatial...): padding is never a maximum, adds nothing to a total, and
    counts in a mean's divisor prod(k); a window with no input position gives 0."""
    x = np.asarray(x, np.float64)
    nd = x.ndim - 1
    hi = [max(0, (out[d] - 1) * stride[d] + k[d] - pad_lo[d] - x.shape[1 + d]) for d in range(nd)]
    xp = np.pad(x, [(0, 0)] + [(pad_lo[d], hi[d]) for d in range(nd)], constant_values=np.nan)
    taps = np.stack([xp[(slice(None),) + _tap_slices(t, [1] * nd, stride, out)] for t in np.ndindex(*k)])
    empty = np.all(np.isnan(taps), axis=0)
    if fn == "Max":
        y = np.max(np.where(np.isnan(taps), -np.inf, taps), axis=0)
        return np.where(empty, 0.0, y)
    total = np.nansum(taps, axis=0)
    return total / math.prod(k) if fn == "Mean" else total


# ----------------------------------------------------------------------------- geometry (from the definitions)
def _tuple(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def conv_geometry(sp, k, stride, dilation, padding, transposed=False):
    """(pad/crop before, output size) per spatial dimension, following the documented rules."""
    nd = len(sp)
    k, stride, dilation = _tuple(k, nd), _tuple(stride, nd), _tuple(dilation, nd)
    lo, out = [], []
    for d in range(nd):
        ext = dilation[d] * (k[d] - 1) + 1
        if padding == "Same":
            if transposed:
                total = ext - stride[d]
            else:
                total = max((math.ceil(sp[d] / stride[d]) - 1) * stride[d] + ext - sp[d], 0)
            a, b = total // 2, total - total // 2
        else:
            p = _tuple(padding, nd)[d]
            a, b = (p if isinstance(p, (tuple, list)) else (p, p))
        lo.append(a)
        if transposed:
            out.append((sp[d] - 1) * stride[d] + ext - a - b)
        else:
            out.append((sp[d] + a + b - ext) // stride[d] + 1)
    return lo, out


# ----------------------------------------------------------------------------- cases
def _conv_case(cid, n, k, in_shape, stride=1, padding=0, dilation=1, groups=1, biases=True):
    nd = len(in_shape) - 1
    lo, out = conv_geometry(in_shape[1:], k, stride, dilation, padding)

    def ref(P, I):
        y = np_conv(I["Input"], P["Weights"], _tuple(stride, nd), _tuple(dilation, nd), lo, out, groups)
        if "Biases" in P:
            y = y + P["Biases"].reshape((1, -1) + (1,) * nd)
        return y

    return LayerCase(id=cid, make=lambda: pg.ConvolutionLayer(n, k, stride, padding, dilation, groups, biases,
                                                              input=in_shape),
                     ports={"Input": Port(tuple(in_shape), normal)}, ref=ref,
                     params=("Weights", "Biases") if biases else ("Weights",))


def _deconv_case(cid, n, k, in_shape, stride=1, padding=0, dilation=1, groups=1, biases=True):
    nd = len(in_shape) - 1
    lo, out = conv_geometry(in_shape[1:], k, stride, dilation, padding, transposed=True)

    def ref(P, I):
        y = np_deconv(I["Input"], P["Weights"], _tuple(stride, nd), _tuple(dilation, nd), lo, out, groups)
        if "Biases" in P:
            y = y + P["Biases"].reshape((1, -1) + (1,) * nd)
        return y

    return LayerCase(id=cid, make=lambda: pg.DeconvolutionLayer(n, k, stride, padding, dilation, groups, biases,
                                                                input=in_shape),
                     ports={"Input": Port(tuple(in_shape), normal)}, ref=ref,
                     params=("Weights", "Biases") if biases else ("Weights",))


def _pool_case(cid, fn, k, in_shape, stride=1, padding=0):
    nd = len(in_shape) - 1
    lo, out = conv_geometry(in_shape[1:], k, stride, 1, padding)

    def ref(P, I):
        x = I["Input"]
        y = np_pool(x.reshape((-1,) + x.shape[2:]), fn, _tuple(k, nd), _tuple(stride, nd), lo, out)
        return y.reshape(x.shape[:2] + y.shape[1:])

    return LayerCase(id=cid, make=lambda: pg.PoolingLayer(k, stride, padding, fn, input=in_shape),
                     ports={"Input": Port(tuple(in_shape), normal)}, ref=ref)


CASES = [
    _conv_case("Conv-1D", 3, 3, (2, 7)),
    _conv_case("Conv-2D", 3, 3, (2, 5, 5)),
    _conv_case("Conv-3D", 2, 2, (2, 3, 4, 4)),
    _conv_case("Conv-2D-stride2", 2, 3, (2, 7, 7), stride=2),
    _conv_case("Conv-2D-stride-gt-kernel", 2, 2, (2, 7, 6), stride=3, padding=1),
    _conv_case("Conv-2D-dilation2", 2, 2, (2, 6, 5), dilation=2),
    _conv_case("Conv-2D-dilation3-perdim", 2, (2, 2), (2, 7, 5), dilation=(3, 1), stride=(1, 2)),
    _conv_case("Conv-2D-same-stride2", 2, 3, (2, 6, 5), stride=2, padding="Same"),
    _conv_case("Conv-1D-same-even-kernel", 2, 4, (2, 6), padding="Same"),
    _conv_case("Conv-2D-perside-padding", 2, (2, 3), (2, 5, 4), padding=((1, 0), (0, 2))),
    _conv_case("Conv-2D-groups2", 4, 3, (4, 5, 5), groups=2),
    _conv_case("Conv-2D-depthwise", 3, 3, (3, 5, 5), padding=1, groups=3),
    _conv_case("Conv-1D-depthwise-multiplier2", 4, 3, (2, 7), stride=2, padding=1, groups=2),
    _conv_case("Conv-2D-nobias", 2, 3, (2, 5, 5), biases=False),
    _conv_case("Conv-2D-pointwise", 2, 1, (3, 4, 4)),
    _conv_case("Conv-2D-1x1-stride2", 2, 1, (3, 5, 5), stride=2),
    _conv_case("Conv-3D-same-groups", 2, 3, (2, 3, 3, 4), padding="Same", groups=2),
    _deconv_case("Deconv-2D-stride2", 2, 3, (3, 3, 3), stride=2),
    _deconv_case("Deconv-2D-same-stride2", 2, 4, (2, 3, 3), stride=2, padding="Same"),
    _deconv_case("Deconv-2D-perside-crop", 2, 3, (2, 3, 4), stride=(2, 1), padding=((1, 0), (0, 1))),
    _deconv_case("Deconv-1D-dilation2", 2, 3, (2, 5), stride=2, padding=1, dilation=2),
    _deconv_case("Deconv-3D-stride2", 2, 2, (2, 2, 2, 3), stride=2),
    _deconv_case("Deconv-2D-groups2-nobias", 2, 2, (4, 3, 3), groups=2, biases=False),
    _pool_case("Pool-Max-1D-stride2-pad1", "Max", 3, (2, 7), stride=2, padding=1),
    _pool_case("Pool-Max-2D-stride2", "Max", 2, (3, 5, 5), stride=2),
    _pool_case("Pool-Max-2D-same", "Max", 3, (2, 5, 4), stride=2, padding="Same"),
    _pool_case("Pool-Max-3D", "Max", 2, (2, 3, 4, 3)),
    _pool_case("Pool-Mean-1D", "Mean", 3, (2, 6)),
    _pool_case("Pool-Mean-2D-stride2-pad1", "Mean", 3, (2, 5, 6), stride=2, padding=1),
    _pool_case("Pool-Mean-3D-stride2-pad1", "Mean", 2, (1, 4, 4, 3), stride=2, padding=1),
    _pool_case("Pool-Total-1D-perside", "Total", 4, (3, 8), stride=3, padding=((2, 1),)),
    _pool_case("Pool-Total-2D-perdim", "Total", (2, 3), (2, 5, 5), stride=(1, 2), padding=((0, 1), (1, 1))),
    _pool_case("Pool-Total-3D-stride2", "Total", (1, 2, 2), (2, 3, 4, 4), stride=2),
]
