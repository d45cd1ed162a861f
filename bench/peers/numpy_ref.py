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


def cnn(spec, weights, kind):
    """The CNN by im2col: activations kept channels-last (N, H, W, C); each conv is one BLAS product
    of the (N*H*W, C*k*k) patch matrix (a copy of a sliding-window view of the padded input) with
    the (n, C*k*k) weights; max pooling by reshaping (pool | H, W). The input gradient runs it back:
    pool gradient to the window's maximum (mask of equality; ties only where ReLU made the whole
    window 0, and those get no gradient), ReLU mask, dcols = dZ @ W, then col2im as k*k shifted adds."""
    if kind not in ("fwd", "igrad"):
        raise NotApplicable(f"CNN kind {kind}")
    from numpy.lib.stride_tricks import sliding_window_view

    k, p, pad = spec.k, spec.pool, (spec.k - 1) // 2
    convs = [(np.ascontiguousarray(W.reshape(W.shape[0], -1)), b) for W, b in weights[:-1]]
    convs_T = [np.ascontiguousarray(Wm.T) for Wm, _ in convs]
    Wl, bl = weights[-1]
    WlT = np.ascontiguousarray(Wl.T)

    def forward(x):
        h = np.ascontiguousarray(x.transpose(0, 2, 3, 1))           # NCHW -> NHWC
        saved = []
        for (Wm, b), WmT in zip(convs, convs_T):
            N, H, W, C = h.shape
            hp = np.pad(h, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            cols = sliding_window_view(hp, (k, k), axis=(1, 2)).reshape(N * H * W, C * k * k)  # (c, kh, kw)
            z = cols @ WmT
            z += b
            a = np.maximum(z, 0.0, out=z).reshape(N, H, W, -1)
            h = a.reshape(N, H // p, p, W // p, p, -1).max(axis=(2, 4))
            saved.append((a, h))
        flat = h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)     # Flatten in (c, h, w) order
        y = flat @ WlT
        y += bl
        return y, saved

    if kind == "fwd":
        return Impl(lambda x: forward(x)[0])

    def igrad(x):
        y, saved = forward(x)
        N = x.shape[0]
        dflat = np.ones_like(y) @ Wl
        a_last, h_last = saved[-1]
        dh = np.ascontiguousarray(dflat.reshape(N, h_last.shape[3], h_last.shape[1], h_last.shape[2])
                                  .transpose(0, 2, 3, 1))
        for i in range(len(convs) - 1, -1, -1):
            a, h = saved[i]
            _, H, W, n = a.shape
            a6 = a.reshape(N, H // p, p, W // p, p, n)
            mask = (a6 == h[:, :, None, :, None, :]) & (a6 > 0)
            dz = (mask * dh[:, :, None, :, None, :]).reshape(N * H * W, n)
            dcols = (dz @ convs[i][0]).reshape(N, H, W, -1, k, k)
            C = dcols.shape[3]
            dxp = np.zeros((N, H + 2 * pad, W + 2 * pad, C), np.float32)
            for di in range(k):
                for dj in range(k):
                    dxp[:, di:di + H, dj:dj + W, :] += dcols[:, :, :, :, di, dj]
            dh = dxp[:, pad:pad + H, pad:pad + W, :]
        return np.ascontiguousarray(dh.transpose(0, 3, 1, 2))

    return Impl(igrad)
