"""One entry per layer configuration, plus the numerical helpers the layer tests share.

Each `LayerCase` says how to build the layer (with declared input shapes, so NetInitialize works),
how to sample valid inputs for every port (inside the function's domain and away from kinks, so
central finite differences are meaningful), and an independent NumPy float64 reference of the
forward pass, written from the definitions in csrc/kernels/unary.h and csrc/kernels/loss.h —
never by calling portgrad. Adding a layer is one entry here; tests/test_layers.py tests it.

Every sampled value is float32-representable, so Real32 and Real64 evaluations see the same data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

import portgrad as pg

# ----------------------------------------------------------------------------- numerics
_erf = np.vectorize(math.erf, otypes=[np.float64])
SELU_L = 1.0507009873554805
SELU_A = 1.6732632423543772


def f32_exact(x):
    """float64 values that float32 holds exactly."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def quantize(a, q=2.0 ** -10):
    """Multiples of q (float32-exact, and so are a +- 2**-12, a +- 2**-13 while |a| < 2**10)."""
    return np.round(np.asarray(a, dtype=np.float64) / q) * q


def away_from(x, kinks, gap=0.05):
    """Moves values within `gap` of a kink to kink +- 2*gap (keeping their side)."""
    x = np.array(x, dtype=np.float64)
    for k in kinks:
        near = np.abs(x - k) < gap
        x[near] = k + np.where(x[near] >= k, 2 * gap, -2 * gap)
    return x


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.logaddexp(0.0, x)


UNARY_REF = {
    "Ramp": lambda x: np.maximum(x, 0.0),
    "LogisticSigmoid": sigmoid,
    "Tanh": np.tanh,
    "SoftPlus": softplus,
    "ELU": lambda x: np.where(x >= 0, x, np.expm1(np.minimum(x, 0.0))),
    "SELU": lambda x: SELU_L * np.where(x >= 0, x, SELU_A * np.expm1(np.minimum(x, 0.0))),
    "GELU": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "Swish": lambda x: x * sigmoid(x),
    "Mish": lambda x: x * np.tanh(softplus(x)),
    "SoftSign": lambda x: x / (1.0 + np.abs(x)),
    "HardTanh": lambda x: np.clip(x, -1.0, 1.0),
    "HardSigmoid": lambda x: np.clip((x + 1.0) / 2.0, 0.0, 1.0),
    "HardSwish": lambda x: x * np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0,
    "Sin": np.sin,
    "Cos": np.cos,
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Abs": np.abs,
    "Erf": _erf,
    "Square": np.square,
}
ALIASES = {"ReLU": "Ramp", "Sigmoid": "LogisticSigmoid"}
KINKS = {"Ramp": [0.0], "Abs": [0.0], "ELU": [0.0], "SELU": [0.0], "HardTanh": [-1.0, 1.0],
         "HardSigmoid": [-1.0, 1.0], "HardSwish": [-3.0, 3.0]}
POSITIVE = {"Log", "Sqrt"}
# Functions smooth everywhere on the reals (used by the random chains).
SMOOTH = ["LogisticSigmoid", "Tanh", "SoftPlus", "GELU", "Swish", "Mish", "SoftSign", "Sin", "Cos", "Erf",
          "Square"]


def unary_sampler(name):
    name = ALIASES.get(name, name)

    def sample(rng, shape):
        if name in POSITIVE:
            return f32_exact(rng.uniform(0.2, 3.0, shape))
        x = rng.uniform(-2.5, 2.5, shape) if name != "HardSwish" else rng.uniform(-4.5, 4.5, shape)
        return f32_exact(away_from(x, KINKS.get(name, [])))
    return sample


def probabilities(rng, shape):
    return f32_exact(rng.uniform(0.05, 0.95, shape))


def distributions(rng, shape):
    t = rng.uniform(0.1, 1.0, shape)
    return f32_exact(t / t.sum(-1, keepdims=True))


def normal(rng, shape):
    return f32_exact(rng.standard_normal(shape))


# ----------------------------------------------------------------------------- the registry
@dataclass
class Port:
    shape: tuple                     # per-example shape
    sample: Callable                 # (rng, shape with batch axis) -> array
    real: bool = True                # False for class-index ports (no gradient)


@dataclass
class LayerCase:
    id: str
    make: Callable[[], pg.Net]       # the layer, with declared input shapes
    ports: dict                      # {port name: Port}
    ref: Callable                    # (params {name: float64 array}, inputs {port: batched float64}) -> batched output
    out: str = "Output"
    params: tuple = ()               # array names, e.g. ("Weights", "Biases")
    # A sampler for MeanAbsoluteLoss must keep |x - t| away from 0: a joint sampler wins.
    joint: Callable | None = None
    bug: str | None = None           # a known engine/front-end bug: the case's tests are strict xfails
    # Why the layer has no second derivatives (forward over reverse) yet, or None: its requests are
    # then refused with a ValueError that says so (test_second_order.py checks the refusal).
    no_second_order: str | None = None

    @property
    def param(self):
        """This case as a pytest parameter (carrying its xfail mark when it has a known bug)."""
        import pytest
        marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {self.bug}")] if self.bug else []
        return pytest.param(self, id=self.id, marks=marks)

    def sample(self, rng, batch):
        """{port: array}: one example when batch is None, else a leading batch axis."""
        lead = () if batch is None else (batch,)
        if self.joint is not None:
            return self.joint(rng, lead)
        return {p: port.sample(rng, lead + tuple(port.shape)) for p, port in self.ports.items()}

    def net(self, seed=0):
        """The layer with float32-exact, quantized arrays (biases non-zero too)."""
        net = self.make()
        if not self.params:
            return net
        net = pg.NetInitialize(net, seed=seed)
        rng = np.random.default_rng(seed + 1000)
        new = {}
        for name in self.params:
            a = np.asarray(pg.NetExtract(net, name), dtype=np.float64)
            if name.endswith("Biases"):  # (initialised to zeros: non-zero ones test more)
                a = rng.uniform(-0.5, 0.5, a.shape)
            new[name] = quantize(a)
        return pg.NetReplacePart(net, new)

    def reference(self, net, inputs):
        """The float64 reference output for `inputs` (one example or a batch)."""
        single = self._single(inputs)
        batched = {p: np.asarray(v, dtype=np.float64)[None] if single else np.asarray(v, dtype=np.float64)
                   for p, v in inputs.items()}
        params = {n: np.asarray(pg.NetExtract(net, n), dtype=np.float64) for n in self.params}
        y = self.ref(params, batched)
        return y[0] if single else y

    def _single(self, inputs):
        v = np.asarray(inputs["Input"])
        return v.shape == tuple(self.ports["Input"].shape)

    @property
    def real_ports(self):
        return [p for p, port in self.ports.items() if port.real]


def _elementwise(name, shape=(5,)):
    f = UNARY_REF[ALIASES.get(name, name)]
    sid = "x".join(map(str, shape)) or "scalar"
    return LayerCase(id=f"Elementwise-{name}-{sid}", make=lambda: pg.ElementwiseLayer(name, input=shape),
                     ports={"Input": Port(shape, unary_sampler(name))}, ref=lambda P, I: f(I["Input"]))


def _linear_ref(size, transposed=False):
    def ref(P, I):
        x = I["Input"]
        B = x.shape[0]
        W = P["Weights"]
        if transposed:  # (n_in, *size): the same matrix, stored the other way round
            W = np.moveaxis(W, 0, -1)
        n_in = W.shape[-1]
        y = x.reshape(B, n_in) @ W.reshape(-1, n_in).T
        if "Biases" in P:
            y = y + P["Biases"].reshape(-1)
        return y.reshape((B,) + tuple(size))
    return ref


def _linear(cid, n, in_shape, biases=True, bug=None, transposed=False):
    size = (n,) if isinstance(n, int) else tuple(n)
    return LayerCase(id=cid, bug=bug, make=lambda: pg.LinearLayer(n, biases=biases, transposed=transposed, input=in_shape),
                     ports={"Input": Port(tuple(in_shape) if isinstance(in_shape, tuple) else (in_shape,), normal)},
                     ref=_linear_ref(size, transposed), params=("Weights", "Biases") if biases else ("Weights",))


def _softmax_ref(P, I):
    x = I["Input"]
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _bce_ref(P, I):
    p, t = I["Input"], I["Target"]
    v = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    return v.reshape(v.shape[0], -1).mean(1)


def _ce_prob_ref(P, I):
    p, t = I["Input"], I["Target"]
    v = -(t * np.log(p)).sum(-1)                     # (B, groups...)
    return v.reshape(v.shape[0], -1).mean(1)


def _ce_index_ref(P, I):
    p, t = I["Input"], np.asarray(I["Target"]).astype(np.int64)
    picked = np.take_along_axis(p, t[..., None], axis=-1)[..., 0]
    v = -np.log(picked)
    return v.reshape(v.shape[0], -1).mean(1)


def _mse_ref(P, I):
    d = I["Input"] - I["Target"]
    return (d * d).reshape(d.shape[0], -1).mean(1)


def _mae_ref(P, I):
    d = np.abs(I["Input"] - I["Target"])
    return d.reshape(d.shape[0], -1).mean(1)


def _index_sampler(classes):
    def sample(rng, shape):
        return rng.integers(0, classes, shape).astype(np.int64)
    return sample


def _mae_joint(shape):
    def joint(rng, lead):
        x = normal(rng, lead + shape)
        t = normal(rng, lead + shape)
        d = x - t
        t = np.where(np.abs(d) < 0.1, x - 0.25 * np.where(d >= 0, 1, -1), t)
        return {"Input": x, "Target": f32_exact(t)}
    return joint


def _loss(cid, make, in_shape, target, ref, t_shape=None, joint=None):
    t_shape = in_shape if t_shape is None else t_shape
    t_port = Port(t_shape, target, real=not cid.startswith("CE-Index"))
    return LayerCase(id=cid, make=make, ports={"Input": Port(in_shape, probabilities if "CE" in cid else normal),
                                                 "Target": t_port}, ref=ref, out="Loss", joint=joint)


def _reshape_ref(shape):
    def ref(P, I):
        x = I["Input"]
        return x.reshape((x.shape[0],) + shape)
    return ref


REGISTRY = (
    [_elementwise(name) for name in UNARY_REF]
    + [_elementwise("ReLU"), _elementwise("Sigmoid"), _elementwise("Tanh", (2, 3)), _elementwise("Square", ())]
    + [
        _linear("Linear-int", 3, 4),
        _linear("Linear-tuple", (2, 3), 4),
        _linear("Linear-scalar", (), 3),
        _linear("Linear-scalar-nobias", (), 3, biases=None),
        _linear("Linear-nobias", 3, 4, biases=None),
        _linear("Linear-rank2-input", 3, (2, 3)),
        _linear("Linear-transposed", 3, 4, transposed=True),
        _linear("Linear-transposed-tuple-rank2-input", (2, 3), (2, 3), transposed=True),
        _linear("Linear-transposed-nobias", 5, 7, biases=None, transposed=True),
        LayerCase("Softmax-vector", lambda: pg.SoftmaxLayer(input=5), {"Input": Port((5,), normal)}, _softmax_ref),
        LayerCase("Softmax-rank2", lambda: pg.SoftmaxLayer(input=(3, 4)), {"Input": Port((3, 4), normal)},
                  _softmax_ref),
        _loss("CE-Binary-vector", lambda: pg.CrossEntropyLossLayer("Binary", input=4), (4,), probabilities, _bce_ref),
        _loss("CE-Binary-rank2", lambda: pg.CrossEntropyLossLayer("Binary", input=(2, 3)), (2, 3), probabilities,
              _bce_ref),
        _loss("CE-Probabilities-vector", lambda: pg.CrossEntropyLossLayer("Probabilities", input=4), (4,),
              distributions, _ce_prob_ref),
        _loss("CE-Probabilities-rank2", lambda: pg.CrossEntropyLossLayer("Probabilities", input=(2, 4)), (2, 4),
              distributions, _ce_prob_ref),
        _loss("CE-Index-vector", lambda: pg.CrossEntropyLossLayer("Index", input=4), (4,), _index_sampler(4),
              _ce_index_ref, t_shape=()),
        _loss("CE-Index-rank2", lambda: pg.CrossEntropyLossLayer("Index", input=(2, 4)), (2, 4), _index_sampler(4),
              _ce_index_ref, t_shape=(2,)),
        _loss("MeanSquared-vector", lambda: pg.MeanSquaredLossLayer(input=5), (5,), normal, _mse_ref),
        _loss("MeanSquared-rank2", lambda: pg.MeanSquaredLossLayer(input=(2, 3)), (2, 3), normal, _mse_ref),
        _loss("MeanAbsolute-vector", lambda: pg.MeanAbsoluteLossLayer(input=5), (5,), normal, _mae_ref,
              joint=_mae_joint((5,))),
        _loss("MeanAbsolute-rank2", lambda: pg.MeanAbsoluteLossLayer(input=(2, 3)), (2, 3), normal, _mae_ref,
              joint=_mae_joint((2, 3))),
        LayerCase("Flatten", lambda: pg.FlattenLayer(input=(2, 3)), {"Input": Port((2, 3), normal)},
                  _reshape_ref((6,))),
        LayerCase("Reshape-auto-None", lambda: pg.ReshapeLayer((3, None), input=(2, 3)),
                  {"Input": Port((2, 3), normal)}, _reshape_ref((3, 2))),
        LayerCase("Reshape-auto-minus1", lambda: pg.ReshapeLayer((-1, 2), input=6),
                  {"Input": Port((6,), normal)}, _reshape_ref((3, 2))),
        LayerCase("Reshape-flat", lambda: pg.ReshapeLayer((6,), input=(3, 2)),
                  {"Input": Port((3, 2), normal)}, _reshape_ref((6,))),
    ]
)
# Each layer family beyond the first keeps its cases in its own module (registry_<family>.py, a
# list named CASES), so families are added without touching this file.
for _family in ("conv", "norm", "sequence", "structure"):
    try:
        _module = __import__(f"registry_{_family}")
    except ModuleNotFoundError as _e:
        if _e.name != f"registry_{_family}":
            raise
        continue
    REGISTRY = REGISTRY + list(_module.CASES)

assert len({c.id for c in REGISTRY}) == len(REGISTRY)
BY_ID = {c.id: c for c in REGISTRY}
PARAMS = [c.param for c in REGISTRY]


# ----------------------------------------------------------------------------- gradient checks
def assert_close(got, want, rtol, atol=0.0, what=""):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    err = np.abs(got - want)
    bad = ~(err <= rtol * np.abs(want) + atol)
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} differ; at flat {i}: got {got.ravel()[i]}, "
                             f"expected {want.ravel()[i]} (max abs err {err.max():.3g})")


def grad_close(got, fd, rtol=1e-6, what=""):
    """A gradient against its finite-difference estimate: relative, with a floor scaled by the largest entry."""
    fd = np.asarray(fd, dtype=np.float64)
    scale = float(np.max(np.abs(fd))) if fd.size else 0.0
    assert_close(got, fd, rtol=rtol, atol=rtol * (1e-2 + scale), what=what)


def weighted_sum(out, g):
    return float(np.sum(np.asarray(out, dtype=np.float64) * g))


def fd_input_gradient(f, x, h=1e-6):
    """Central differences of a scalar f at x (float64), element by element."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for k in range(flat.size):
        v = flat[k]
        flat[k] = v + h
        fp = f(x)
        flat[k] = v - h
        fm = f(x)
        flat[k] = v
        gflat[k] = (fp - fm) / (2 * h)
    return g


def fd_array_gradient(f, a, h=2.0 ** -12):
    """Central differences with Richardson extrapolation, for arrays that are stored as float32: `a`
    holds multiples of 2**-10 (see quantize), so a +- h and a +- h/2 are float32-exact."""
    a = np.array(a, dtype=np.float64)
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for k in range(flat.size):
        v = flat[k]
        d = []
        for step in (h, h / 2):
            flat[k] = v + step
            fp = f(a)
            flat[k] = v - step
            fm = f(a)
            d.append((fp - fm) / (2 * step))
        flat[k] = v
        gflat[k] = (4 * d[1] - d[0]) / 3
    return g
