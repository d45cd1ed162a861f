"""The benchmark cases: one declarative list, and portgrad's side of each.

Every MLP case builds one portgrad net (``NetInitialize`` with a fixed seed, then non-zero biases
put in with ``NetReplacePart``), extracts its arrays with ``NetExtract`` and hands exactly those
float32 arrays to every peer, so all implementations compute the same function. Inputs are fresh
random non-zero arrays, a pool of them cycled through while timing.
"""
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from .spec import KIND_TEXT, CnnSpec, GemmSpec, Impl, MlpSpec


@dataclass(frozen=True)
class Case:
    name: str
    spec: Union[MlpSpec, CnnSpec, GemmSpec]
    kind: str                       # an MLP kind (spec.KINDS; a CNN: fwd, igrad) or "gemm"
    threads: Optional[int] = None   # None: the --threads of the run
    gflops: bool = False            # show achieved GFLOP/s
    peers: Optional[tuple] = None   # peer keys that take part (None: all)

    @property
    def title(self) -> str:
        s = self.spec
        if isinstance(s, GemmSpec):
            t = f"GEMM {s.m}x{s.n}x{s.k} {s.dtype}"
        elif isinstance(s, CnnSpec):
            conv = " → ".join(f"conv {n} {s.k}x{s.k} + ReLU + maxpool {s.pool}" for n in s.stages)
            t = (f"CNN {'×'.join(map(str, s.in_shape))}: {conv} → linear {s.n_out}, batch {s.batch}: "
                 f"{KIND_TEXT[self.kind]}")
        else:
            act = {"Ramp": "ReLU"}.get(s.act, s.act.lower())
            batch = "batch 1 (one example)" if s.batch is None else f"batch {s.batch}"
            t = f"MLP {'→'.join(map(str, s.dims))} {act}, {batch}: {KIND_TEXT[self.kind]}"
        return t + (f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else "")

    def flops(self) -> int:
        return self.spec.flops(self.kind)


TINY = MlpSpec((2, 64, 64, 1), "Tanh", None)
SMALL = MlpSpec((64, 256, 256, 10), "Ramp", 64)
LARGE = MlpSpec((1024, 4096, 4096, 1024), "Ramp", 1024)
CNN = CnnSpec((3, 32, 32), (16, 32), 10, 32)

CASES = [
    Case("tiny-fwd", TINY, "fwd"),
    Case("tiny-igrad", TINY, "igrad"),
    Case("small-fwd", SMALL, "fwd"),
    Case("small-igrad", SMALL, "igrad"),
    Case("small-pgrad", SMALL, "pgrad"),
    Case("large-fwd", LARGE, "fwd", gflops=True),
    Case("large-fwd-bwd", LARGE, "fwd_bwd", gflops=True),
    Case("cnn-fwd", CNN, "fwd", gflops=True),
    Case("cnn-igrad", CNN, "igrad", gflops=True),
    # GEMM against NumPy's BLAS: the large product at 1 and 2 threads ...
    *[Case(f"gemm-f{dt[5:]}-4096-{t}t", GemmSpec(4096, 4096, 4096, dt), "gemm", threads=t, gflops=True,
           peers=("numpy",))
      for dt in ("float32", "float64") for t in (1, 2)],
    # ... and below 512^3, where a BLAS's set-up cost shows (at the run's thread count).
    *[Case(f"gemm-f{dt[5:]}-{n}", GemmSpec(n, n, n, dt), "gemm", gflops=True, peers=("numpy",))
      for dt in ("float32", "float64") for n in (64, 128, 256, 511)],
]


# --------------------------------------------------------------------------- portgrad's side
def build_net(spec: MlpSpec, seed: int = 0):
    """The portgrad net of an MlpSpec, initialised with non-zero biases, and its arrays as
    [(W (n_out, n_in), b (n_out,)), ...] float32 — the weights every peer copies."""
    import portgrad as pg

    layers = []
    for i, n in enumerate(spec.dims[1:]):
        layers.append(pg.LinearLayer(n))
        if i < spec.n_layers - 1:
            layers.append(pg.ElementwiseLayer(spec.act))
    net = pg.NetInitialize(pg.NetChain(layers, input=spec.dims[0]), seed=seed)
    rng = np.random.default_rng(seed + 1)
    positions = [2 * i for i in range(spec.n_layers)]
    net = pg.NetReplacePart(net, {(p, "Biases"): rng.uniform(-0.1, 0.1, n).astype(np.float32)
                                  for p, n in zip(positions, spec.dims[1:])})
    weights = [(np.ascontiguousarray(pg.NetExtract(net, (p, "Weights"))),
                np.ascontiguousarray(pg.NetExtract(net, (p, "Biases")))) for p in positions]
    return net, positions, weights


def build_cnn(spec: CnnSpec, seed: int = 0):
    """The portgrad net of a CnnSpec (ConvolutionLayer, Ramp, PoolingLayer per stage; FlattenLayer;
    LinearLayer), initialised with non-zero biases, and its arrays [(W, b) per conv, (W, b) of the
    linear layer] as float32: conv weights (n, c, k, k) — PyTorch's and ONNX's layout — and the
    linear one (n_out, n_features)."""
    import portgrad as pg

    layers, positions = [], []
    for n in spec.stages:
        positions.append(len(layers))
        layers += [pg.ConvolutionLayer(n, spec.k, padding="Same"), pg.ElementwiseLayer("Ramp"),
                   pg.PoolingLayer(spec.pool, stride=spec.pool)]
    layers.append(pg.FlattenLayer())
    positions.append(len(layers))
    layers.append(pg.LinearLayer(spec.n_out))
    net = pg.NetInitialize(pg.NetChain(layers, input=spec.in_shape), seed=seed)
    rng = np.random.default_rng(seed + 1)
    net = pg.NetReplacePart(net, {(p, "Biases"): rng.uniform(-0.1, 0.1, n).astype(np.float32)
                                  for p, n in zip(positions, (*spec.stages, spec.n_out))})
    weights = [(np.ascontiguousarray(pg.NetExtract(net, (p, "Weights"))),
                np.ascontiguousarray(pg.NetExtract(net, (p, "Biases")))) for p in positions]
    return net, positions, weights


def portgrad_mlp(spec: MlpSpec, kind: str, net, positions) -> Impl:
    import portgrad as pg

    if kind == "fwd":
        return Impl(lambda x: net(x))
    if kind == "igrad":
        req = pg.NetPortGradient("Input")
        return Impl(lambda x: net(x, req))
    # A tuple request is cached by the net (a list would be resolved again on every call).
    req = tuple(pg.NetPortGradient((p, a)) for p in positions for a in ("Weights", "Biases"))
    if kind == "fwd_bwd":
        req = req + (pg.NetPortGradient("Input"),)
    return Impl(lambda x: net(x, req), lambda d: [d[k] for k in req])


def portgrad_gemm(spec: GemmSpec) -> Impl:
    from portgrad import _core

    gemm = _core.kernels.gemm
    C = np.empty((spec.m, spec.n), spec.dtype)

    def fn(ab):
        gemm("active", ab[0], ab[1], C)
        return C
    return Impl(fn)


# --------------------------------------------------------------------------- inputs
POOL_BYTES = 64 << 20


def input_pool(case: Case, rng: np.random.Generator, max_items: int = 64) -> list:
    """Random non-zero inputs, as many as fit in POOL_BYTES (at least 2, at most max_items)."""
    s = case.spec
    if isinstance(s, GemmSpec):
        shapes, dtype = [(s.m, s.k), (s.k, s.n)], np.dtype(s.dtype)
    else:
        shapes, dtype = [s.input_shape()], np.dtype(np.float32)
    per = sum(int(np.prod(sh)) for sh in shapes) * dtype.itemsize
    count = max(2, min(max_items, POOL_BYTES // max(per, 1)))

    def one(shape):
        a = rng.uniform(-1.0, 1.0, shape).astype(dtype)
        a[a == 0] = 0.5
        return a

    pool = [tuple(one(sh) for sh in shapes) for _ in range(count)]
    return [p if isinstance(s, GemmSpec) else p[0] for p in pool]


# --------------------------------------------------------------------------- goals
# Measured and reported, never asserted. Each goal reads the results ({case name: {impl key: row}})
# and returns (what was measured, True/False, or None when a number it needs is missing).
def _row(results, case, impl):
    r = results.get(case, {}).get(impl)
    return r if r and r.get("status") == "ok" else None


def _fmt_s(s):
    return f"{s * 1e6:.3g} µs" if s < 1e-3 else (f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s")


def _latency(case, limit_s):
    def check(results):
        r = _row(results, case, "portgrad")
        if r is None:
            return "not measured", None
        return _fmt_s(r["median_s"]), r["median_s"] <= limit_s
    return check


def _faster_than(case, peer, factor):
    def check(results):
        p, q = _row(results, case, "portgrad"), _row(results, case, peer)
        if p is None or q is None:
            return "not measured", None
        ratio = q["median_s"] / p["median_s"]
        return f"{ratio:.2f}× ({_fmt_s(p['median_s'])} vs {_fmt_s(q['median_s'])})", ratio >= factor
    return check


def _gflops_vs(cases, peers, factor):
    def check(results):
        parts, ok = [], True
        for case in cases:
            p = _row(results, case, "portgrad")
            if p is None:
                continue
            for peer in peers:
                q = _row(results, case, peer)
                if q is None:
                    continue
                ratio = q["median_s"] / p["median_s"]   # = portgrad GFLOP/s / peer GFLOP/s
                parts.append(f"{case} {ratio:.2f}× {peer}")
                ok = ok and ratio >= factor
        return ("; ".join(parts) or "not measured"), (ok if parts else None)
    return check


GOALS = [
    ("GEMM 4096³ ≥ 95% of NumPy's BLAS (f32, f64; 1 and 2 threads)",
     _gflops_vs([f"gemm-{d}-4096-{t}t" for d in ("f32", "f64") for t in (1, 2)], ["numpy"], 0.95)),
    ("GEMM below 512³ ahead of NumPy's BLAS",
     _gflops_vs([f"gemm-{d}-{n}" for d in ("f32", "f64") for n in (64, 128, 256, 511)], ["numpy"], 1.0)),
    ("tiny MLP forward ≤ 2 µs from Python", _latency("tiny-fwd", 2e-6)),
    ("tiny MLP forward + input gradient ≤ 3 µs from Python", _latency("tiny-igrad", 3e-6)),
    ("tiny MLP forward + input gradient ≥ 6× faster than JAX jit", _faster_than("tiny-igrad", "jax", 6.0)),
    ("64→256→256→10 forward + parameter gradients ≤ 200 µs", _latency("small-pgrad", 200e-6)),
    ("large MLP forward + backward ≥ 1.0× NumPy's GFLOP/s", _gflops_vs(["large-fwd-bwd"], ["numpy"], 1.0)),
    ("large MLP forward + backward ahead of PyTorch and JAX", _gflops_vs(["large-fwd-bwd"], ["torch", "jax"], 1.0)),
    ("CNN forward at or below ONNX Runtime's time", _faster_than("cnn-fwd", "onnxruntime", 1.0)),
    ("CNN forward + input gradient ≤ 2 ms", _latency("cnn-igrad", 2e-3)),
]
