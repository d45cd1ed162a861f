"""Plain NumPy: a hand-written forward and backward pass (and NumPy's BLAS for GEMM)."""
import numpy as np

from ..spec import Impl, NotApplicable

KEY = "numpy"
NAME = "NumPy (hand-written)"
GEMM_NAME = "NumPy matmul (BLAS)"


def version():
    return np.__version__


def setup(threads: int) -> None:
    """NumPy's BLAS takes its thread count from the environment (set before import)."""


def _act(name):
    if name == "Tanh":
        return np.tanh, lambda y, z, dy: dy * (1.0 - y * y)
    if name == "Ramp":
        return (lambda z: np.maximum(z, 0.0, out=z)), lambda y, z, dy: dy * (y > 0)
    raise NotApplicable(f"activation {name}")


def mlp(spec, weights, kind):
    f, df = _act(spec.act)
    Ws = [w for w, _ in weights]
    bs = [b for _, b in weights]
    WTs = [np.ascontiguousarray(w.T) for w in Ws]   # (n_in, n_out): x @ WT is a plain row-major product
    last = len(Ws) - 1
    one = spec.batch is None

    def forward(x):
        acts = [x]
        h = x
        for i, (WT, b) in enumerate(zip(WTs, bs)):
            z = h @ WT
            z += b
            h = f(z) if i < last else z
            acts.append(h)
        return acts

    if kind == "fwd":
        def fn(x):
            return forward(x[None] if one else x)[-1][0 if one else slice(None)]
        return Impl(fn)

    want_params = kind in ("pgrad", "fwd_bwd")
    want_input = kind in ("igrad", "fwd_bwd")

    def grads(x):
        x2 = x[None] if one else x
        acts = forward(x2)
        dz = np.ones_like(acts[-1])
        out = []
        for i in range(last, -1, -1):
            if i < last:
                dz = df(acts[i + 1], None, dz)
            if want_params:
                db = dz.sum(axis=0)
                dW = dz.T @ acts[i]
                out.append(db)
                out.append(dW)
            if i > 0 or want_input:
                dz = dz @ Ws[i]
        res = out[::-1] if want_params else []   # [dW0, db0, dW1, db1, ...]
        if want_input:
            res.append(dz[0] if one else dz)
        return res if want_params else res[0]

    return Impl(grads)


def gemm(spec):
    dtype = np.dtype(spec.dtype)
    C = np.empty((spec.m, spec.n), dtype)

    def fn(ab):
        np.matmul(ab[0], ab[1], out=C)
        return C
    return Impl(fn)
