"""Registry entries of the structure layers (catenate, threading, total, summation, aggregation,
replicate, transpose, part) and log-softmax, each with an independent NumPy float64 reference.

Multi-input layers have ports "Input1", "Input2", ...; references see batched arrays (leading
batch axis). ConstantArrayLayer has no input port, so it has no batch to vary and is tested in
tests/test_structure_layers.py instead.
"""
from __future__ import annotations

import numpy as np

import portgrad as pg
from layer_registry import LayerCase, Port, f32_exact, normal


class MultiCase(LayerCase):
    """A case whose ports need not include "Input": one example is recognised on the first port."""

    def _single(self, inputs):
        port = next(iter(self.ports))
        return np.asarray(inputs[port]).shape == tuple(self.ports[port].shape)


def _sid(shape):
    return "x".join(map(str, shape)) or "scalar"


def _lift(xs):
    """Batched arrays with right-aligned per-example shapes -> arrays numpy broadcasts the same way."""
    rank = max(x.ndim for x in xs)
    return [x.reshape((x.shape[0],) + (1,) * (rank - x.ndim) + x.shape[1:]) for x in xs]


def uniform(lo, hi):
    def sample(rng, shape):
        return f32_exact(rng.uniform(lo, hi, shape))
    return sample


def away_from_zero(rng, shape):
    return f32_exact(rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape))


def distinct_joint(shapes):
    """Inputs whose values are all distinct, 0.05 apart or more (Max/Min have no ties)."""
    def joint(rng, lead):
        sizes = [int(np.prod(lead + s)) for s in shapes]
        pool = rng.permutation(4 * sum(sizes) + 8)[:sum(sizes)]
        vals = (pool - 2.0 * sum(sizes)) * 0.0625 + 0.01
        out, k = {}, 0
        for i, (s, n) in enumerate(zip(shapes, sizes)):
            out[f"Input{i + 1}"] = f32_exact(vals[k:k + n].reshape(lead + s))
            k += n
        return out
    return joint


def distinct(rng, shape):
    n = int(np.prod(shape))
    return f32_exact(((rng.permutation(4 * n + 8)[:n] - 2.0 * n) * 0.0625 + 0.01).reshape(shape))


# Mod/FMod operands: a / b is an odd multiple of 1/32, never within 1/32 of a jump of the quotient
# (finite differences stay on one branch), and float32-exact.
def odd_sixteenths(rng, shape):
    return rng.integers(-40, 40, shape) / 8 + 1 / 16


def signed_powers_of_two(rng, shape):
    return rng.choice([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0], shape)


# ----------------------------------------------------------------------------- catenate
def _catenate(shapes, axis):
    def ref(P, I):
        return np.concatenate([I[f"Input{i + 1}"] for i in range(len(shapes))], axis=axis + 1 if axis >= 0 else axis)
    return MultiCase(f"Catenate-{'-'.join(map(_sid, shapes))}-axis{axis}",
                     lambda: pg.CatenateLayer(axis, inputs=list(shapes)),
                     {f"Input{i + 1}": Port(s, normal) for i, s in enumerate(shapes)}, ref)


# ----------------------------------------------------------------------------- threading
_NP = {"Plus": np.add, "Subtract": np.subtract, "Times": np.multiply, "Divide": np.divide, "Power": np.power,
       "Max": np.maximum, "Min": np.minimum, "Mod": np.mod, "FMod": np.fmod,
       **{k: (lambda f: lambda a, b: f(a, b).astype(float))(f) for k, f in
          (("Greater", np.greater), ("GreaterEqual", np.greater_equal), ("Less", np.less),
           ("LessEqual", np.less_equal), ("Equal", np.equal))}}


def _threading(f, shapes, samplers=None, total=False):
    def ref(P, I):
        xs = _lift([I[f"Input{i + 1}"] for i in range(len(shapes))])
        y = xs[0]
        for x in xs[1:]:
            y = _NP[f](y, x)
        return np.broadcast_to(y, np.broadcast_shapes(*[x.shape for x in xs])).copy()
    joint = distinct_joint(shapes) if f in ("Max", "Min", "Greater", "GreaterEqual", "Less", "LessEqual") else None
    samplers = samplers or [normal] * len(shapes)
    kind = "Total" if total else f"Threading-{f}"
    make = (lambda: pg.TotalLayer(inputs=list(shapes))) if total else (lambda: pg.ThreadingLayer(f, inputs=list(shapes)))
    return MultiCase(f"{kind}-{'-'.join(map(_sid, shapes))}", make,
                     {f"Input{i + 1}": Port(s, samplers[i]) for i, s in enumerate(shapes)}, ref, joint=joint)


# ----------------------------------------------------------------------------- dot
def _dot(sa, sb):
    def ref(P, I):  # numpy's matmul, one example at a time
        return np.stack([np.matmul(a, b) for a, b in zip(I["Input1"], I["Input2"])])
    return MultiCase(f"Dot-{_sid(sa)}-{_sid(sb)}", lambda: pg.DotLayer(inputs=[sa, sb]),
                     {"Input1": Port(sa, normal), "Input2": Port(sb, normal)}, ref)


# ----------------------------------------------------------------------------- padding
def _padding(shape, pads, value=0.0):
    def ref(P, I):
        x = I["Input"]
        width = [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)] * (len(shape) - len(pads))
        if isinstance(value, str):  # Wolfram's methods are numpy's modes
            return np.pad(x, width, mode={"Fixed": "edge", "Reflected": "reflect", "Periodic": "wrap"}[value])
        return np.pad(x, width, constant_values=value)
    return LayerCase(f"Padding-{_sid(shape)}-{'-'.join(f'{a}{b}' for a, b in pads)}-{value}",
                     lambda: pg.PaddingLayer(pads, value, input=shape), {"Input": Port(shape, normal)}, ref)


# ----------------------------------------------------------------------------- reductions
def _summation(shape):
    return LayerCase(f"Summation-{_sid(shape)}", lambda: pg.SummationLayer(input=shape), {"Input": Port(shape, normal)},
                     lambda P, I: I["Input"].reshape(I["Input"].shape[0], -1).sum(1))


_AGG = {"Max": np.max, "Min": np.min, "Mean": np.mean, "Total": np.sum}


def _aggregation(f, shape, levels="default", label=""):
    rank = len(shape)
    if levels == "default":
        axes = tuple(range(1, rank))
        make = lambda: pg.AggregationLayer(f, input=shape)  # noqa: E731
    else:
        if isinstance(levels, slice):
            axes = tuple(range(rank))[levels]
        elif isinstance(levels, int):
            axes = (levels % rank,)
        else:
            axes = tuple(a % rank for a in levels)
        make = lambda: pg.AggregationLayer(f, levels, input=shape)  # noqa: E731

    def ref(P, I):
        return _AGG[f](I["Input"], axis=tuple(a + 1 for a in axes))
    sample = distinct if f in ("Max", "Min") else normal
    return LayerCase(f"Aggregation-{f}-{_sid(shape)}-{label or levels}", make, {"Input": Port(shape, sample)}, ref)


# ----------------------------------------------------------------------------- rearrangements
def _replicate(n, axis, shape):
    dims = (n,) if isinstance(n, int) else tuple(n)

    def ref(P, I):
        x = I["Input"]
        m = axis if axis >= 0 else axis + len(shape) + 1
        y = x.reshape(x.shape[:1 + m] + (1,) * len(dims) + x.shape[1 + m:])
        return np.broadcast_to(y, x.shape[:1 + m] + dims + x.shape[1 + m:]).copy()
    return LayerCase(f"Replicate-{_sid(dims)}-axis{axis}-{_sid(shape)}", lambda: pg.ReplicateLayer(n, axis, input=shape),
                     {"Input": Port(shape, normal)}, ref)


def _transpose(perm, shape, np_perm, label):
    def ref(P, I):
        return np.transpose(I["Input"], (0,) + tuple(p + 1 for p in np_perm))
    return LayerCase(f"Transpose-{label}-{_sid(shape)}", lambda: pg.TransposeLayer(perm, input=shape),
                     {"Input": Port(shape, normal)}, ref)


def _part(spec, shape, label):
    items = spec if isinstance(spec, tuple) else (spec,)
    key = (slice(None),) + tuple(slice(None) if i == "All" else slice(i.start, i.stop, i.step) if isinstance(i, range)
                                 else i for i in items)

    def ref(P, I):
        return np.array(I["Input"][key])
    return LayerCase(f"Part-{label}-{_sid(shape)}", lambda: pg.PartLayer(spec, input=shape),
                     {"Input": Port(shape, normal)}, ref)


def _log_softmax_ref(P, I):
    x = I["Input"]
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


CASES = (
    [
        _catenate([(2, 3), (4, 3)], 0),
        _catenate([(2, 3), (2, 1), (2, 2)], 1),
        _catenate([(2, 3), (2, 2)], -1),
        _catenate([(3,), (2,)], 0),
        _catenate([(2, 1, 2), (2, 3, 2)], 1),
    ]
    + [_threading(f, [(2, 3), (3,)]) for f in ("Plus", "Subtract", "Times", "Max", "Min", "Greater", "GreaterEqual",
                                                "Less", "LessEqual", "Equal")]
    + [_padding((3,), [(1, 2)]), _padding((2, 3), [(0, 1), (2, 0)], 1.5), _padding((2, 3, 4), [(1, 1)]),
       _padding((1, 2, 3), [(0, 0), (1, 0), (0, 2)], -0.25),
       # the methods: one axis, every axis (corners), the most each allows, size-1 axes, a later axis only
       _padding((4,), [(2, 3)], "Fixed"), _padding((3, 4), [(2, 1), (3, 3)], "Reflected"),
       _padding((2, 3, 2), [(2, 1), (3, 3), (1, 2)], "Periodic"), _padding((2, 1, 3), [(1, 2), (3, 0)], "Fixed"),
       _padding((2, 3, 4), [(0, 0), (2, 1), (1, 3)], "Reflected"), _padding((2, 5), [(0, 0), (4, 4)], "Reflected"),
       _padding((3, 2), [(1, 3), (0, 1)], "Periodic")]
    + [_dot(a, b) for a, b in [((3, 4), (4, 5)), ((4,), (4, 3)), ((3, 4), (4,)), ((5,), (5,)), ((1, 7), (7, 1)),
                               ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 2)), ((3, 4), (2, 4, 3)),
                               ((2, 1, 3, 4), (3, 4, 2)), ((2, 3, 5), (5,))]]
    + [
        _threading("Divide", [(2, 3), (2, 1)], [normal, away_from_zero]),
        _threading("Divide", [(), (4,)], [away_from_zero, away_from_zero]),
        _threading("Power", [(2, 3), (3,)], [uniform(0.5, 2.0), uniform(-1.5, 1.5)]),
        _threading("Power", [(3,), ()], [uniform(0.5, 2.0), uniform(-2.0, 3.0)]),
        _threading("Mod", [(2, 3), (3,)], [odd_sixteenths, signed_powers_of_two]),
        _threading("FMod", [(2, 3), (2, 1)], [odd_sixteenths, signed_powers_of_two]),
        _threading("Mod", [(), (4,)], [odd_sixteenths, signed_powers_of_two]),
        _threading("Plus", [(2, 1, 3), (4, 1)]),
        _threading("Subtract", [(), (5,)]),
        _threading("Times", [(2, 3), (3,), (2, 1)]),
        _threading("Max", [(3,), (2, 3), (2, 1)]),
        _threading("Min", [(4,), (4,), (4,)]),
        _threading("Plus", [(2, 3), (2, 3)], total=True),
        _threading("Plus", [(4,), (4,), (4,)], total=True),
        _summation((2, 3)),
        _summation((5,)),
        _summation(()),
        _aggregation("Max", (2, 3, 4)),
        _aggregation("Mean", (3, 2, 2)),
        _aggregation("Total", (2, 5)),
        _aggregation("Min", (2, 3, 4)),
        _aggregation("Mean", (3, 4), 0),
        _aggregation("Total", (2, 3, 4), [0, 2], "0,2"),
        _aggregation("Min", (2, 3, 4), slice(-2, None), "last2"),
        _aggregation("Max", (3, 5), -1),
        _aggregation("Mean", (2, 3, 2), slice(0, None, 2), "step2"),
        _aggregation("Total", (3,), slice(None), "all"),
        _replicate(3, 0, (2,)),
        _replicate(3, -1, (2,)),
        _replicate((2, 3), 1, (2, 4)),
        _replicate(2, 0, ()),
        _transpose(None, (2, 3), (1, 0), "default"),
        _transpose((2, 0, 1), (2, 3, 4), (2, 0, 1), "perm201"),
        _transpose((0, 2), (2, 3, 4), (2, 1, 0), "swap02"),
        _transpose([(0, 1), (1, 2)], (2, 3, 4), (1, 2, 0), "swaps"),
        _transpose((-1, 0, 1), (2, 3, 4), (2, 0, 1), "negative"),
        _transpose([(0, 1)], (3, 2), (1, 0), "swap-matrix"),
        _part(1, (4,), "int"),
        _part(-1, (3, 2), "negative"),
        _part(slice(1, 3), (4, 3), "slice"),
        _part(("All", 1), (2, 3), "All-1"),
        _part((slice(None, None, -2), 0), (5, 3), "reverse-step"),
        _part(range(0, 4, 2), (5,), "range"),
        _part((1, slice(0, 2), -1), (3, 4, 2), "mixed"),
        _part(slice(-3, 100), (4,), "clamped"),
        LayerCase("LogSoftmax-vector", lambda: pg.SoftmaxLayer(log=True, input=5), {"Input": Port((5,), normal)},
                  _log_softmax_ref),
        LayerCase("LogSoftmax-rank2", lambda: pg.SoftmaxLayer(log=True, input=(3, 4)),
                  {"Input": Port((3, 4), normal)}, _log_softmax_ref),
    ]
)
