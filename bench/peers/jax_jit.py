"""JAX with jax.jit: a functional MLP, jax.grad for gradients, compiled once per case."""
import numpy as np

from ..spec import Impl, NotApplicable

try:
    import jax
    import jax.numpy as jnp
except Exception as e:  # noqa: BLE001
    jax = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    IMPORT_ERROR = None

KEY = "jax"
NAME = "JAX jit"


def version():
    return None if jax is None else jax.__version__


def setup(threads: int) -> None:
    """XLA sizes its CPU pool from the process's CPUs (bench pins them) and XLA_FLAGS (set before import)."""
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", True)  # float64 GEMM; float32 inputs stay float32


def _np(r):
    if isinstance(r, (tuple, list)):
        return [np.asarray(t) for t in r]
    return np.asarray(r)


def _block(r):
    return jax.block_until_ready(r)


def mlp(spec, weights, kind):
    act = {"Tanh": jnp.tanh, "Ramp": jax.nn.relu}.get(spec.act)
    if act is None:
        raise NotApplicable(f"activation {spec.act}")
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in weights]
    last = len(params) - 1

    def f(params, x):
        h = x
        for i, (W, b) in enumerate(params):
            h = h @ W.T + b
            if i < last:
                h = act(h)
        return h

    def total(params, x):
        return f(params, x).sum()

    def flat(grads):
        return [g for Wb in grads for g in Wb]

    if kind == "fwd":
        jf = jax.jit(f)
        return Impl(lambda x: _block(jf(params, x)), _np)
    if kind == "igrad":
        jf = jax.jit(jax.grad(total, argnums=1))
        return Impl(lambda x: _block(jf(params, x)), _np)
    if kind == "pgrad":
        jf = jax.jit(jax.grad(total, argnums=0))
        return Impl(lambda x: _block(jf(params, x)), lambda r: _np(flat(r)))
    jf = jax.jit(jax.grad(total, argnums=(0, 1)))
    return Impl(lambda x: _block(jf(params, x)), lambda r: _np(flat(r[0]) + [r[1]]))



def cnn(spec, weights, kind):
    """The CNN with lax.conv_general_dilated (NCHW, OIHW) and lax.reduce_window (max), under jit."""
    if kind not in ("fwd", "igrad"):
        raise NotApplicable(f"CNN kind {kind}")
    from jax import lax

    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in weights]
    pad, p = (spec.k - 1) // 2, spec.pool

    def f(params, x):
        h = x
        for W, b in params[:-1]:
            h = lax.conv_general_dilated(h, W, (1, 1), [(pad, pad), (pad, pad)],
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
            h = jax.nn.relu(h + b[None, :, None, None])
            h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, p, p), (1, 1, p, p), "VALID")
        W, b = params[-1]
        return h.reshape(h.shape[0], -1) @ W.T + b

    if kind == "fwd":
        jf = jax.jit(f)
    else:
        jf = jax.jit(jax.grad(lambda params, x: f(params, x).sum(), argnums=1))
    return Impl(lambda x: _block(jf(params, x)), _np)
