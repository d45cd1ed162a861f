"""Convolution, deconvolution and pooling layers (channels first: (channels, spatial...)).

Shapes are the C++ engine's business; these classes check option *types* early (TypeError) and
pass the options on as data.
"""
from __future__ import annotations

import numpy as np

from ._net import NetSharedArray, _shared_option
from .layers import _Layer

__all__ = ["ConvolutionLayer", "DeconvolutionLayer", "PoolingLayer"]


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _positive(v, what):
    if not _is_int(v):
        raise TypeError(f"{what} must be a positive int, given {v!r}")
    if int(v) < 1:
        raise ValueError(f"{what} must be positive, given {v!r}")
    return int(v)


def _kernel(k, what):
    """An int (spatial rank from the input) or a tuple of 1 to 3 positive ints (fixes the rank)."""
    if _is_int(k):
        return _positive(k, what)
    if isinstance(k, (tuple, list)):
        if not 1 <= len(k) <= 3:
            raise ValueError(f"{what} must have 1 to 3 dimensions, given {k!r}")
        return [_positive(d, what) for d in k]
    raise TypeError(f"{what} must be an int or a tuple of 1 to 3 ints, given {k!r}")


def _per_dim(v, what, rank, minimum=1):
    """An int or one per spatial dimension, each >= minimum (1, or 0 for output_padding)."""
    def check(d):
        if minimum == 1:
            return _positive(d, what)
        if not _is_int(d) or int(d) < 0:
            raise ValueError(f"{what} must be non-negative integers, given {v!r}")
        return int(d)

    if _is_int(v):
        return check(v)
    if isinstance(v, (tuple, list)):
        if rank is not None and len(v) != rank:
            raise ValueError(f"{what} must be an int or a tuple of {rank} ints (one per spatial dimension), given {v!r}")
        return [check(d) for d in v]
    raise TypeError(f"{what} must be an int or a tuple of ints, given {v!r}")


def _padding(p, what, rank):
    """n, (n1, ...), ((before1, after1), ...) or "Same"."""
    form = f"{what} must be an int, a tuple of ints, a tuple of (before, after) pairs, or 'Same'"
    if isinstance(p, str):
        if p != "Same":
            raise ValueError(f"{form}; given {p!r}")
        return p

    def nonneg(v):
        if not _is_int(v):
            raise TypeError(f"{form}; given {p!r}")
        if int(v) < 0:
            raise ValueError(f"{what} must be non-negative, given {p!r}")
        return int(v)

    if _is_int(p):
        return nonneg(p)
    if not isinstance(p, (tuple, list)):
        raise TypeError(f"{form}; given {p!r}")
    if rank is not None and len(p) != rank:
        raise ValueError(f"{form}, with one entry per spatial dimension ({rank}); given {p!r}")
    out = []
    for e in p:
        if isinstance(e, (tuple, list)):
            if len(e) != 2:
                raise ValueError(f"{form}; given {p!r}")
            out.append([nonneg(e[0]), nonneg(e[1])])
        else:
            out.append(nonneg(e))
    return out


def _biases(b, what):
    if b not in (True, False, None) and not isinstance(b, NetSharedArray):
        raise TypeError(f"{what}: biases must be True, False, None or a NetSharedArray, given {b!r}")
    return bool(b)


class _Conv(_Layer):
    def __init__(self, n, k, stride, padding, dilation, channel_groups, biases, weights, input, extra=None):
        t = self._type
        kernel = _kernel(k, f"{t}: kernel size")
        rank = len(kernel) if isinstance(kernel, list) else None
        opts = {
            "channels": _positive(n, f"{t}: number of output channels"),
            "kernel": kernel,
            "stride": _per_dim(stride, f"{t}: stride", rank),
            "dilation": _per_dim(dilation, f"{t}: dilation", rank),
            "padding": _padding(padding, f"{t}: padding", rank),
            "channel_groups": _positive(channel_groups, f"{t}: channel_groups"),
            "biases": _biases(biases, t),
            **_shared_option(t, Weights=weights, Biases=biases if isinstance(biases, NetSharedArray) else None),
            **(extra or {}),
        }
        super().__init__(opts, {"Input": input})


class ConvolutionLayer(_Conv):
    """``ConvolutionLayer(n, k, stride=1, padding=0, dilation=1, channel_groups=1, biases=True)``.

    A trainable convolution with ``n`` output channels over 1 to 3 spatial dimensions, channels
    first: input (c, spatial...), output (n, spatial'...). An int ``k`` takes the spatial rank from
    the input ((c, w) 1-D, (c, h, w) 2-D, (c, d, h, w) 3-D); a tuple ``k`` fixes it. ``stride`` and
    ``dilation``: an int or one per dimension. ``padding`` (zeros added to the input): an int, one per
    dimension, ``((before, after), ...)`` per side, or ``"Same"`` (output size ceil(size/stride), the
    odd element of padding at the end, as in TensorFlow). ``channel_groups`` g splits the input and
    output channels into g groups convolved separately (g = c is depthwise).

    spatial' = floor((s + before + after - dilation*(k-1) - 1) / stride) + 1.

    Arrays: ``"Weights"`` (n, c/g, k...) (PyTorch's layout; NetInitialize uses fan_in = (c/g)*prod(k),
    fan_out = n*prod(k), PyTorch's fans) and ``"Biases"`` (n,) unless ``biases`` is False/None.
    """

    _type = "ConvolutionLayer"

    def __init__(self, n, k, stride=1, padding=0, dilation=1, channel_groups=1, biases=True, *, weights=None,
                 input=None):
        super().__init__(n, k, stride, padding, dilation, channel_groups, biases, weights, input)


class DeconvolutionLayer(_Conv):
    """``DeconvolutionLayer(n, k, stride=1, padding=0, dilation=1, channel_groups=1, biases=True,
    output_padding=0)``.

    A transposed convolution (the adjoint of ConvolutionLayer) with ``n`` output channels over 1 to
    3 spatial dimensions. ``padding`` is cropped from the output (Wolfram's meaning): an int, one per
    dimension, ``((before, after), ...)``, or ``"Same"`` (output size = input size * stride; needs
    stride <= dilation*(k-1)+1). Output size (s-1)*stride - before - after + dilation*(k-1) + 1
    + output_padding.

    ``output_padding`` (an int or one per dimension, each smaller than the stride or the dilation; as
    in PyTorch's ConvTranspose and ONNX) adds that many positions at the end of each spatial dimension:
    the ones cropped by ``after`` first, then positions no input reaches (they hold the bias). It picks
    among the input sizes a strided convolution maps to the same output size: a decoder's stride-2
    transposed convolution doubles 5 to 10 with padding 1, kernel 3 and output_padding 1.

    Arrays: ``"Weights"`` (c, n/g, k...) — PyTorch's ConvTranspose layout (c = input channels;
    fans as PyTorch computes them: fan_in = (n/g)*prod(k), fan_out = c*prod(k)) — and ``"Biases"`` (n,).
    """

    _type = "DeconvolutionLayer"

    def __init__(self, n, k, stride=1, padding=0, dilation=1, channel_groups=1, biases=True, output_padding=0, *,
                 weights=None, input=None):
        rank = len(k) if isinstance(k, (tuple, list)) else None
        op = _per_dim(output_padding, f"{self._type}: output_padding", rank, minimum=0)
        super().__init__(n, k, stride, padding, dilation, channel_groups, biases, weights, input,
                         {"output_padding": op} if op else None)


class PoolingLayer(_Layer):
    """``PoolingLayer(k, stride=1, padding=0, function="Max")``: pooling over 1 to 3 spatial dimensions,
    each channel on its own; ``function`` "Max", "Mean" or "Total". Stride 1 by default, as in Wolfram
    (``PoolingLayer[n]`` is ``PoolingLayer[n, 1]``).

    Padding (int, per dimension, per side, or "Same") is never chosen as a maximum; "Total" adds its
    zeros; "Mean" divides by the whole kernel volume prod(k), counting padded positions (PyTorch's
    ``count_include_pad=True``). Max's gradient goes to the first maximum of each window (d, h, w order).
    """

    _type = "PoolingLayer"

    def __init__(self, k, stride=1, padding=0, function="Max", *, input=None):
        t = self._type
        kernel = _kernel(k, f"{t}: kernel size")
        rank = len(kernel) if isinstance(kernel, list) else None
        if not isinstance(function, str):
            raise TypeError(f"{t}: function must be 'Max', 'Mean' or 'Total', given {function!r}")
        if function not in ("Max", "Mean", "Total"):
            raise ValueError(f"{t}: function must be 'Max', 'Mean' or 'Total', given {function!r}")
        opts = {"kernel": kernel, "stride": _per_dim(stride, f"{t}: stride", rank),
                "padding": _padding(padding, f"{t}: padding", rank), "function": function}
        super().__init__(opts, {"Input": input})
