"""Layers that combine, reshape and reduce arrays: catenation, threading, totals, aggregation, parts, transposes.

Conventions (Wolfram's layers adapted to Python): axes ("levels") are 0-based and refer to one
example — the batch axis is never addressed; negative axes count from the end. Layers with several
inputs have ports "Input1", "Input2", ...; ``inputs`` is their number, or a list of their shapes
(``None`` for a shape taken from data or context), like Wolfram's ``"Inputs" -> {shape1, shape2}``.
"""
from __future__ import annotations

import numpy as np

from ._net import _frozen, _shape_or_none
from .layers import _Layer

__all__ = [
    "CatenateLayer", "ThreadingLayer", "DotLayer", "TotalLayer", "SummationLayer", "AggregationLayer", "ReplicateLayer",
    "TransposeLayer", "PartLayer", "PaddingLayer", "ConstantArrayLayer",
]

_THREADING = ("Plus", "Subtract", "Times", "Divide", "Power", "Max", "Min", "Greater", "GreaterEqual", "Less",
              "LessEqual", "Equal", "Mod", "FMod")
_AGGREGATION = ("Max", "Min", "Mean", "Total")


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _int(x, what):
    if not _is_int(x):
        raise TypeError(f"{what} must be an int, given {x!r}")
    return int(x)


def _ports(kind, inputs, least):
    """``inputs`` (a count or a list of shapes) -> (count, {port: shape or None})."""
    if _is_int(inputs):
        n, shapes = int(inputs), [None] * max(int(inputs), 0)
    elif isinstance(inputs, (list, tuple)) and all(s is None or _is_int(s) or isinstance(s, (list, tuple))
                                                    for s in inputs):
        n, shapes = len(inputs), list(inputs)
    else:
        raise TypeError(f"{kind}: inputs must be the number of input ports or a list of their shapes, given {inputs!r}")
    if n < least:
        raise ValueError(f"{kind}: needs at least {least} inputs, given {n}")
    return n, {f"Input{i + 1}": s for i, s in enumerate(shapes)}


def _span(s: slice, what):
    for v in (s.start, s.stop, s.step):
        if v is not None and not _is_int(v):
            raise TypeError(f"{what}: slice bounds must be ints or None, given {s!r}")
    if s.step is not None and int(s.step) == 0:
        raise ValueError(f"{what}: slice step cannot be zero")
    return {k: (None if v is None else int(v)) for k, v in (("start", s.start), ("stop", s.stop), ("step", s.step))}


class CatenateLayer(_Layer):
    """``CatenateLayer(axis=0, inputs=2)``: the inputs "Input1", "Input2", ... joined along ``axis``
    (Wolfram's ``CatenateLayer[n]`` is ``axis=n-1``). All inputs have the same rank and agree in every
    other dimension; unlike Wolfram, lower-rank inputs are not replicated up."""

    _type = "CatenateLayer"

    def __init__(self, axis=0, inputs=2):
        n, decl = _ports("CatenateLayer", inputs, 1)
        super().__init__({"axis": _int(axis, "CatenateLayer: axis"), "count": n}, decl)


class ThreadingLayer(_Layer):
    """``ThreadingLayer(f, inputs=2)``: ``f`` applied elementwise to the inputs "Input1", "Input2", ...

    ``f`` is "Plus", "Subtract", "Times", "Divide", "Power" (Input1 ** Input2), "Max" or "Min", or a
    comparison "Greater", "GreaterEqual", "Less", "LessEqual", "Equal" (1 where it holds, else 0, with
    a zero gradient: masks, as Wolfram's ``Boole[#1 > #2] &``), "Mod" (Wolfram's ``Mod``, numpy's mod:
    a - b floor(a/b), with the sign of b) or "FMod" (C's and numpy's fmod: a - b trunc(a/b), with the
    sign of a); Plus, Times, Max and Min take more
    than two inputs (folded left to right). Shapes broadcast by numpy's
    rule (aligned at the last axis, sizes equal or 1); the output has the broadcast shape, and an
    input's gradient is summed over the axes it was broadcast along.

    Gradients at non-smooth points: Max/Min give the whole gradient to the first of tied inputs.
    Power: d/dx x**y = y x**(y-1), taken as 0 where y == 0; d/dy = x**y log(x), taken as 0 where
    x == 0 and y >= 0, and NaN for x < 0 (as PyTorch). x**y itself is NaN for x < 0 and non-integer y.
    Mod/FMod: d/da = 1 and d/db = -floor(a/b) (-trunc(a/b)), as PyTorch's remainder and fmod; the
    jumps where the quotient changes have no gradient. b == 0 gives NaN.
    """

    _type = "ThreadingLayer"

    def __init__(self, f, inputs=2):
        if not isinstance(f, str):
            raise TypeError(f"ThreadingLayer: the function must be given by name (a str), given {f!r}")
        if f not in _THREADING:
            raise ValueError(f"ThreadingLayer: unknown function {f!r}; known: {', '.join(_THREADING)}")
        n, decl = _ports("ThreadingLayer", inputs, 2)
        if n > 2 and f not in ("Plus", "Times", "Max", "Min"):
            raise ValueError(f"ThreadingLayer: {f} takes exactly 2 inputs, given {n} (only Plus, Times, Max and Min "
                             "take more)")
        super().__init__({"function": f, "count": n}, decl)


class DotLayer(_Layer):
    """``DotLayer(inputs=None)``: the matrix product of "Input1" and "Input2", as numpy's ``matmul``
    on each example: (..., m, k) and (..., k, n) give (..., m, n), the leading axes broadcast by
    numpy's rule (sizes equal or 1), and a vector is a matrix with that axis dropped from the result
    ((k,) . (k, n) is (n,), (m, k) . (k,) is (m,), (k,) . (k,) is ()). Wolfram's ``DotLayer[]`` for
    vectors and matrices; the leading axes make it the batched product that attention needs (ONNX's
    MatMul). ``inputs`` may give the two shapes: ``DotLayer(inputs=[(4, 3), (3, 5)])``. Gradients:
    dInput1 = dOutput . Input2^T and dInput2 = Input1^T . dOutput, summed over broadcast axes."""

    _type = "DotLayer"

    def __init__(self, inputs=None):
        if inputs is None:
            inputs = 2
        n, decl = _ports("DotLayer", inputs, 2)
        if n != 2:
            raise ValueError(f"DotLayer: takes exactly 2 inputs, given {n}")
        super().__init__({}, decl)


class TotalLayer(_Layer):
    """``TotalLayer(inputs=2)``: the elementwise sum of "Input1", "Input2", ..., which (as in Wolfram)
    must all have the same shape; use ``ThreadingLayer("Plus")`` to broadcast."""

    _type = "TotalLayer"

    def __init__(self, inputs=2):
        n, decl = _ports("TotalLayer", inputs, 2)
        super().__init__({"count": n}, decl)


class SummationLayer(_Layer):
    """``SummationLayer()``: the sum of every element of an example: one scalar per example."""

    _type = "SummationLayer"

    def __init__(self, *, input=None):
        super().__init__({}, {"Input": input})


class AggregationLayer(_Layer):
    """``AggregationLayer(f, levels=slice(1, None))``: ``f`` ("Max", "Min", "Mean" or "Total") over
    the axes ``levels`` of each example; the output keeps the other axes in order.

    ``levels`` is an axis, a list of axes, or a slice of axes (Python's slice rules). The default,
    every axis but the first, is Wolfram's ``2;;All``: a (channels, spatial...) example becomes a
    vector of channels. Max/Min send the gradient to the first maximum/minimum (row-major order over
    the reduced axes).
    """

    _type = "AggregationLayer"

    def __init__(self, f, levels=slice(1, None), *, input=None):
        if not isinstance(f, str):
            raise TypeError(f"AggregationLayer: the function must be given by name (a str), given {f!r}")
        if f not in _AGGREGATION:
            raise ValueError(f"AggregationLayer: unknown function {f!r}; known: {', '.join(_AGGREGATION)}")
        if isinstance(levels, slice):
            spec = _span(levels, "AggregationLayer: levels")
        elif _is_int(levels):
            spec = int(levels)
        elif isinstance(levels, (list, tuple)) and levels and all(_is_int(v) for v in levels):
            spec = [int(v) for v in levels]
        else:
            raise TypeError("AggregationLayer: levels must be an axis (int), a non-empty list of axes, or a slice; "
                            f"given {levels!r}")
        super().__init__({"function": f, "levels": spec}, {"Input": input})


class ReplicateLayer(_Layer):
    """``ReplicateLayer(n, axis=0)``: ``n`` copies of the input stacked along a new axis at position
    ``axis`` of the output (``n`` may be a tuple: several new axes). The default ``axis=0`` is
    Wolfram's ``ReplicateLayer[n]``; ``axis=-1`` puts the new axes last."""

    _type = "ReplicateLayer"

    def __init__(self, n, axis=0, *, input=None):
        dims = _shape_or_none(n, "ReplicateLayer: n")
        if dims is None or not dims:
            raise ValueError(f"ReplicateLayer: n must be a positive int or a non-empty tuple of them, given {n!r}")
        super().__init__({"n": list(dims), "axis": _int(axis, "ReplicateLayer: axis")}, {"Input": input})


class TransposeLayer(_Layer):
    """``TransposeLayer(perm=None)``: the example's axes rearranged.

    - ``perm`` a tuple with one entry per axis: output axis k is input axis ``perm[k]`` (numpy's
      ``np.transpose`` convention — the inverse of Wolfram's ``TransposeLayer[{n1, n2, ...}]``);
    - ``perm`` a pair ``(i, j)`` for an input of rank other than 2: swap axes i and j (Wolfram's
      ``i <-> j``; on a matrix, ``(0, 1)`` is read as the identity permutation — use ``[(0, 1)]``);
    - a list of pairs ``[(i, j), (k, l)]``: those swaps one after another;
    - ``None`` (default): swap the first two axes, as Wolfram's ``TransposeLayer[]``.
    """

    _type = "TransposeLayer"

    def __init__(self, perm=None, *, input=None):
        if perm is None:
            opts = {"swaps": [[0, 1]]}
        elif isinstance(perm, list) and perm and all(isinstance(p, (tuple, list)) for p in perm):
            swaps = []
            for p in perm:
                if len(p) != 2 or not all(_is_int(v) for v in p):
                    raise TypeError(f"TransposeLayer: each swap is a pair of axes (i, j), given {p!r}")
                swaps.append([int(p[0]), int(p[1])])
            opts = {"swaps": swaps}
        elif isinstance(perm, (tuple, list)) and perm and all(_is_int(v) for v in perm):
            opts = {"perm": [int(v) for v in perm]}
        else:
            raise TypeError("TransposeLayer: perm is a tuple of axes (a permutation or a pair to swap), a list of "
                            f"pairs to swap, or None; given {perm!r}")
        super().__init__(opts, {"Input": input})


class PartLayer(_Layer):
    """``PartLayer(spec)``: a part of each example, as numpy basic indexing ``x[spec]`` with 0-based
    (negative from the end) indices.

    ``spec`` is an int (drops that axis), a ``slice`` or ``range`` (keeps the axis; Python's slice
    rules, negative steps allowed), ``"All"`` (Wolfram's ``All``, same as ``slice(None)``), or a tuple
    of these for the leading axes (Wolfram's ``PartLayer[{spec1, spec2, ...}]``). An index out of
    range raises IndexError; a slice that selects nothing raises ValueError. The gradient is
    scattered back into zeros.
    """

    _type = "PartLayer"

    def __init__(self, spec, *, input=None):
        items = spec if isinstance(spec, tuple) else (spec,)
        if isinstance(spec, list):
            raise TypeError("PartLayer: give several parts as a tuple, e.g. PartLayer((0, slice(1, 3))); lists "
                            "(numpy's fancy indexing) are not supported")
        if not items:
            raise ValueError("PartLayer: needs at least one part")
        parts = []
        for item in items:
            if _is_int(item):
                parts.append(int(item))
            elif isinstance(item, slice):
                parts.append(_span(item, "PartLayer"))
            elif isinstance(item, range):
                parts.append(_span(slice(item.start, item.stop, item.step), "PartLayer"))
            elif item == "All":
                parts.append("All")
            else:
                raise TypeError(f"PartLayer: a part is an int, a slice, a range or 'All'; given {item!r}")
        super().__init__({"part": parts}, {"Input": input})


class PaddingLayer(_Layer):
    """``PaddingLayer(padding, value=0.0)``: each example surrounded by ``value``. ``padding`` is a
    list of ``(before, after)`` pairs of non-negative ints, one for each of the example's first
    axes (axes after the list are not padded): Wolfram's ``PaddingLayer[{{m1, n1}, {m2, n2}, ...},
    "Padding" -> value]``.

    ``value`` may also be one of Wolfram's padding methods, which pad with the example's own
    elements: ``"Fixed"`` repeats the edge element (numpy's and ONNX's ``edge``), ``"Reflected"``
    mirrors about it without repeating it (``reflect``; at most size - 1 on each side) and
    ``"Periodic"`` wraps around (``wrap``, PyTorch's circular; at most the size on each side). The
    gradient is the interior of the output's gradient, plus, for the methods, the gradient of every
    padded element added to the element it shows."""

    _type = "PaddingLayer"
    _METHODS = ("Fixed", "Reflected", "Periodic")

    def __init__(self, padding, value=0.0, *, input=None):
        if not isinstance(padding, (list, tuple)) or not padding:
            raise TypeError(f"PaddingLayer: padding is a list of (before, after) pairs, given {padding!r}")
        pairs = []
        for p in padding:
            if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(_is_int(v) and v >= 0 for v in p):
                raise ValueError(f"PaddingLayer: each padding entry is a pair (before, after) of non-negative ints, "
                                 f"given {p!r}")
            pairs.append([int(p[0]), int(p[1])])
        if isinstance(value, str):
            if value not in self._METHODS:
                raise ValueError(f"PaddingLayer: value must be a finite number or one of {', '.join(self._METHODS)}; "
                                 f"given {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
                not np.isfinite(value):
            raise ValueError(f"PaddingLayer: value must be a finite number or one of {', '.join(self._METHODS)}; "
                             f"given {value!r}")
        else:
            value = float(value)
        super().__init__({"padding": pairs, **({"value": value} if value != 0 else {})}, {"Input": input})


class ConstantArrayLayer(_Layer):
    """``ConstantArrayLayer(array)`` or ``ConstantArrayLayer(shape=...)``: a layer with no input whose
    output is its learned array "Array" (the same for every example; its gradient is summed over the
    batch). Wolfram's ``ConstantArrayLayer`` / ``NetArrayLayer``.

    A numpy array or a (nested) list gives the values; an int or a tuple of ints gives the shape, and
    NetInitialize fills the array with zeros. Evaluated on its own (``layer()`` or ``layer({})``) it
    gives one example. ``learnable=False`` makes the array a constant: ``NetPortGradient(All)`` (and
    training) leave it out, but its gradient is still there when asked for by name (import_onnx
    holds a model's scalars this way, such as an attention scale).
    """

    _type = "ConstantArrayLayer"

    def __init__(self, array=None, *, shape=None, learnable=True):
        values = None
        if array is not None and shape is not None:
            raise TypeError("ConstantArrayLayer: give either the array or its shape, not both")
        if array is not None and (_is_int(array) or (isinstance(array, tuple) and all(_is_int(v) for v in array))):
            shape, array = array, None
        if array is not None:
            values = np.asarray(array)
            if values.dtype.kind not in "biuf" or isinstance(array, (str, bytes)):
                raise TypeError(f"ConstantArrayLayer: the array must hold real numbers, given {array!r}")
            if values.ndim > 16:
                raise ValueError("ConstantArrayLayer: the array has more than 16 dimensions")
            if not np.all(np.isfinite(values)):
                raise ValueError("ConstantArrayLayer: the array's values must be finite")
            if 0 in values.shape:
                raise ValueError(f"ConstantArrayLayer: the array is empty (shape {values.shape})")
            shape = values.shape
        elif shape is None:
            raise TypeError("ConstantArrayLayer needs an array or a shape")
        else:
            shape = _shape_or_none(shape, "ConstantArrayLayer: shape")
        if not isinstance(learnable, bool):
            raise TypeError(f"ConstantArrayLayer: learnable must be True or False, given {learnable!r}")
        super().__init__({"shape": list(shape)} if learnable else {"shape": list(shape), "learnable": False})
        if values is not None:
            self._params["Array"] = _frozen(values.astype(np.float32))
