"""Independent NumPy float64 references for convolution, transposed convolution and pooling, written
from the definitions (zero-padded, strided, dilated windows), never by calling portgrad; shared by
tests/registry_conv.py and the conv/pool kernel tests."""
from __future__ import annotations

import math

import numpy as np


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


def conv_geometry(sp, k, stride, dilation, padding, transposed=False, output_padding=0):
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
            out.append((sp[d] - 1) * stride[d] + ext - a - b + _tuple(output_padding, nd)[d])
        else:
            out.append((sp[d] + a + b - ext) // stride[d] + 1)
    return lo, out
