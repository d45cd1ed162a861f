"""Registry cases of the normalisation family (see layer_registry.py): BatchNormalizationLayer in
"Test" mode, NormalizationLayer, DropoutLayer ("Test" mode: the identity) and EmbeddingLayer.

The generic tests evaluate in "Test" mode; Train-mode behaviour (batch statistics, moving-stat
updates, dropout masks) is tested in test_norm_layers.py. Only learnable arrays are listed in
`params` (the generic gradient checks ask for them, and NetPortGradient(All) returns exactly those);
batch norm's running state gets fixed non-trivial values in `make` and the reference closes over
them. Embedding inputs are class-index ports (`real=False`): no input gradient is asked for.
"""
from __future__ import annotations

import numpy as np

import portgrad as pg
from layer_registry import LayerCase, Port, _index_sampler, normal, quantize


def _fixed(rng_seed, shape, lo, hi):
    """float32-exact values (multiples of 2**-10) in [lo, hi)."""
    return quantize(np.random.default_rng(rng_seed).uniform(lo, hi, shape))


# ----------------------------------------------------------------------------- batch normalisation
def _batchnorm(cid, shape, eps=0.001):
    c = shape[0]
    mm, mv, sc = _fixed(1, c, -0.5, 0.5), _fixed(2, c, 0.3, 2.0), _fixed(3, c, 0.5, 1.5)

    def make():
        layer = pg.BatchNormalizationLayer(epsilon=eps, input=shape)
        return pg.NetReplacePart(layer, {"MovingMean": mm, "MovingVariance": mv, "Scaling": sc})

    def ref(P, I):
        x = I["Input"]
        bshape = (1, c) + (1,) * (len(shape) - 1)
        r = lambda a: np.asarray(a, np.float64).reshape(bshape)  # noqa: E731
        mvf = np.asarray(mv, np.float32).astype(np.float64)  # stored as float32
        return r(P["Scaling"]) * (x - r(mm)) / np.sqrt(r(mvf) + eps) + r(P["Biases"])

    return LayerCase(cid, make, {"Input": Port(tuple(shape), normal)}, ref, params=("Scaling", "Biases"))


# ----------------------------------------------------------------------------- layer normalisation
def _normalization(cid, shape, levels="Default", eps=0.001):
    if isinstance(levels, int):  # the last -levels axes, arrays of their shape
        pshape = tuple(shape[levels:])
        rows, per_element = int(np.prod(shape[:levels], dtype=np.int64)), True
    else:
        per_element = levels == "All" or len(shape) == 1
        pshape = tuple(shape) if per_element else (shape[0],)
        rows = 1 if per_element else shape[0]

    def make():
        layer = pg.NormalizationLayer(levels, epsilon=eps, input=shape)
        return pg.NetReplacePart(layer, {"Scaling": _fixed(4, pshape, 0.5, 1.5)})

    def ref(P, I):
        x = I["Input"]
        B = x.shape[0]
        xr = x.reshape(B, rows, -1)
        mu = xr.mean(2, keepdims=True)
        var = xr.var(2, keepdims=True)
        z = ((xr - mu) / np.sqrt(var + eps)).reshape(x.shape)
        if isinstance(levels, int):
            bshape = (1,) * (1 + len(shape) - len(pshape)) + pshape
        else:
            bshape = (1,) + (tuple(shape) if per_element else (shape[0],) + (1,) * (len(shape) - 1))
        return P["Scaling"].reshape(bshape) * z + P["Biases"].reshape(bshape)

    return LayerCase(cid, make, {"Input": Port(tuple(shape), normal)}, ref, params=("Scaling", "Biases"))


# ----------------------------------------------------------------------------- embedding
def _embedding(cid, size, n, shape):
    def ref(P, I):
        return P["Weights"][np.asarray(I["Input"]).astype(np.int64)]

    return LayerCase(cid, lambda: pg.EmbeddingLayer(size, n, input=shape),
                     {"Input": Port(tuple(shape), _index_sampler(n), real=False)}, ref, params=("Weights",))


CASES = [
    _batchnorm("BatchNorm-Test-vector", (4,)),
    _batchnorm("BatchNorm-Test-rank3", (3, 2, 5)),
    _batchnorm("BatchNorm-Test-eps0.1", (2, 3), eps=0.1),
    _normalization("Normalization-vector", (6,)),
    _normalization("Normalization-rank3", (3, 4, 5)),
    _normalization("Normalization-rank2", (2, 7)),
    _normalization("Normalization-rank3-All", (2, 3, 4), levels="All"),
    _normalization("Normalization-last-axis", (5, 6), levels=-1),
    _normalization("Normalization-last-axis-rank3", (2, 3, 7), levels=-1),
    _normalization("Normalization-last-two-axes", (2, 3, 4), levels=-2),
    _normalization("Normalization-last-axis-vector", (9,), levels=-1),
    LayerCase("Dropout-Test-rank2", lambda: pg.DropoutLayer(0.3, input=(3, 4)), {"Input": Port((3, 4), normal)},
              lambda P, I: I["Input"]),
    LayerCase("Dropout-Test-scalar", lambda: pg.DropoutLayer(input=()), {"Input": Port((), normal)},
              lambda P, I: I["Input"]),
    _embedding("Embedding-scalar", 3, 5, ()),
    _embedding("Embedding-vector", 4, 6, (7,)),  # more positions than classes: repeated indices
    _embedding("Embedding-rank2", 2, 3, (2, 3)),
]
