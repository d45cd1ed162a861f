"""Beyond one gradient: per-example Jacobians and Jacobian-vector products, portgrad against
torch.func (vmap over jacrev / jacfwd / jvp) and JAX (vmap(jacfwd), jvp under jit) where installed,
side by side in one run.

    python -m bench.derivatives [--threads 2] [--quick] [--markdown out.md]

Cases (issue 13): the per-sample Jacobian of the tanh MLP 8 -> 128 -> 128 -> 16 at batch 256, and
the JVP (one input tangent per example), the HVP (of the summed outputs, per example) and the
per-example gradients of every array of the tanh MLP 64 -> 256 -> 256 -> 10 at batch 64, float32, the
same weights everywhere; and a physics-informed training step's gradient (the arrays' gradient of
the mean squared Poisson residual Δu + f, portgrad through NetLaplacian) of the tanh MLPs
2-32-32-1 at batch 256 and 3-128-128-128-1 at batch 1024, against torch.func (grad of vmap of
hessian), PyTorch's usual double backward (autograd.grad with create_graph) and JAX. portgrad's Jacobian is one batched forward-mode evaluation (a tangent
per input element); its JVP is a forward pass with a tangent pass beside it. Medians of batches of
back-to-back calls, each row's peers' batches interleaved (bench/_timing.py time_side_by_side);
ratio = portgrad's time over the peer's (< 1: portgrad faster).
Every peer's result is checked against portgrad's before it is timed.
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # python bench/derivatives.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

from ._threads import configure_from_argv  # noqa: E402

THREADS = configure_from_argv(sys.argv)

import numpy as np  # noqa: E402

from ._machine import cpu_model, git_commit, publish  # noqa: E402
from ._timing import time_side_by_side  # noqa: E402


def mlp(pg, sizes, seed):
    layers = []
    for n in sizes[1:-1]:
        layers += [pg.LinearLayer(n), "Tanh"]
    net = pg.NetInitialize(pg.NetChain(layers + [pg.LinearLayer(sizes[-1])], input=sizes[0]), seed=seed)
    weights = [(np.asarray(pg.NetExtract(net, (k, "Weights"))), np.asarray(pg.NetExtract(net, (k, "Biases"))))
               for k in range(0, 2 * len(sizes) - 2, 2)]
    return net, weights


def forward_fn(weights, tanh):
    """The tanh MLP of (W, b) pairs as a function of its input, for a peer's arrays and tanh."""
    def f(v):
        for k, (w, b) in enumerate(weights):
            v = v @ w.T + b
            if k < len(weights) - 1:
                v = tanh(v)
        return v
    return f


def pinn_row(pg, torch, jax, sizes, batch, rng, t):
    """The gradient of one physics-informed training step: d/dθ mean_x (Δu_θ(x) + f(x))², a tanh MLP."""
    net, W = mlp(pg, sizes, 3)
    d = sizes[0]
    lap = pg.NetLaplacian(net)
    graph = pg.NetGraph({"pde": lap, "loss": pg.MeanSquaredLossLayer()},
                        [(pg.NetPort("pde", "Laplacian"), pg.NetPort("loss", "Input")),
                         (pg.NetPort("loss", "Loss"), pg.NetPort("Loss"))])
    arrays = [pg.NetSharedArray(f"{k}/{n}") for k in range(0, 2 * len(sizes) - 2, 2) for n in ("Weights", "Biases")]
    spec = [pg.NetPortGradient(a) for a in arrays]
    pool = [(rng.uniform(0, 1, (batch, d)).astype(np.float32), rng.standard_normal((batch, 1)).astype(np.float32))
            for _ in range(4)]
    mean = np.full(batch, 1 / batch, np.float32)

    def pg_step(xf):
        return graph({"Input": xf[0], "Target": -xf[1], pg.NetPortGradient("Loss"): mean}, spec)

    want = pg_step(pool[0])[spec[2]]  # the second layer's weights' gradient
    name = "-".join(map(str, sizes))
    row = {"case": f"PINN step: d/dθ mean (Δu + f)², MLP {name} tanh, batch {batch}", "pg": t(pg_step, pool)}
    scale = float(np.max(np.abs(want)))
    if torch is not None:
        import torch.func as tf
        params = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in W]

        def loss_func(p, x, f):
            u = lambda z: forward_fn(p, torch.tanh)(z).sum()  # noqa: E731
            lapl = tf.vmap(lambda z: torch.diagonal(tf.hessian(u)(z)).sum())(x)
            return ((lapl + f[:, 0]) ** 2).mean()

        tgrad = tf.grad(loss_func)
        tpool = [(torch.from_numpy(x), torch.from_numpy(f)) for x, f in pool]
        got = tgrad(params, *tpool[0])[1][0].numpy()
        assert np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale), "torch.func"
        row["torch.func grad(vmap(hessian))"] = t(lambda xf: tgrad(params, *xf), tpool)
        leaves = [torch.from_numpy(a).requires_grad_() for pair in W for a in pair]

        def eager(xf):  # the usual PyTorch PINN: double backward with create_graph
            x = xf[0].clone().requires_grad_()
            u = forward_fn(list(zip(leaves[::2], leaves[1::2])), torch.tanh)(x)
            g = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
            lapl = sum(torch.autograd.grad(g[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(d))
            return torch.autograd.grad(((lapl + xf[1][:, 0]) ** 2).mean(), leaves, allow_unused=True)

        assert np.allclose(eager(tpool[0])[2].numpy(), want, rtol=1e-3, atol=1e-4 * scale), "PyTorch autograd"
        row["PyTorch autograd create_graph"] = t(eager, tpool)
    if jax is not None:
        import jax.numpy as jnp
        pj = [(jnp.asarray(w), jnp.asarray(b)) for w, b in W]

        def jloss(p, x, f):
            u = lambda z: forward_fn(p, jnp.tanh)(z).sum()  # noqa: E731
            lapl = jax.vmap(lambda z: jnp.trace(jax.hessian(u)(z)))(x)
            return jnp.mean((lapl + f[:, 0]) ** 2)

        jg = jax.jit(jax.grad(jloss))
        assert np.allclose(np.asarray(jg(pj, *pool[0])[1][0]), want, rtol=1e-3, atol=1e-4 * scale), "JAX"
        row["JAX grad(vmap(hessian)) jit"] = t(lambda xf: jax.block_until_ready(jg(pj, *xf)), pool)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)
    import portgrad as pg

    pg.set_num_threads(args.threads)
    repeat, min_time, warmup = (3, 0.0, 0.0) if args.quick else (11, 0.5, 0.3)
    try:
        import torch
        import torch.func as tf
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        jax = None

    def t(fn, pool):  # a peer's call, timed when its row is complete (side by side with the others)
        return fn, pool

    def timed(row):
        fns = {k: v for k, v in row.items() if k != "case"}
        return {"case": row["case"], **time_side_by_side(fns, repeat, min_time, warmup, smoke=args.quick)}

    rng = np.random.default_rng(0)
    rows = []

    # --- B5: per-sample Jacobian, 8 -> 128 -> 128 -> 16, batch 256
    net, W = mlp(pg, [8, 128, 128, 16], 1)
    pool = [rng.standard_normal((256, 8)).astype(np.float32) for _ in range(4)]
    jac = pg.NetPortJacobian("Input")
    want = net(pool[0], jac)
    row = {"case": "per-sample Jacobian, MLP 8-128-128-16 tanh, batch 256", "pg": t(lambda x: net(x, jac), pool)}
    if torch is not None:
        f = forward_fn([(torch.from_numpy(w), torch.from_numpy(b)) for w, b in W], torch.tanh)
        jr, jf = tf.vmap(tf.jacrev(f)), tf.vmap(tf.jacfwd(f))
        tpool = [torch.from_numpy(x) for x in pool]
        for name, fn in (("torch.func jacrev", jr), ("torch.func jacfwd", jf)):
            with torch.no_grad():
                assert np.allclose(fn(tpool[0]).numpy(), want, rtol=1e-4, atol=1e-5), name
            row[name] = t(lambda x, fn=fn: fn(x), tpool)
    if jax is not None:
        g = forward_fn([(jnp.asarray(w), jnp.asarray(b)) for w, b in W], jnp.tanh)
        jj = jax.jit(jax.vmap(jax.jacfwd(g)))
        assert np.allclose(np.asarray(jj(pool[0])), want, rtol=1e-4, atol=1e-5)
        row["JAX vmap(jacfwd) jit"] = t(lambda x: jj(x).block_until_ready(), pool)
    rows.append(timed(row))

    # --- JVP, 64 -> 256 -> 256 -> 10, batch 64
    net, W = mlp(pg, [64, 256, 256, 10], 2)
    pool = [(rng.standard_normal((64, 64)).astype(np.float32), rng.standard_normal((64, 64)).astype(np.float32))
            for _ in range(4)]
    NPT = pg.NetPortTangent
    want = net({"Input": pool[0][0], NPT("Input"): pool[0][1]}, NPT("Output"))
    row = {"case": "JVP (J v per example), MLP 64-256-256-10 tanh, batch 64",
           "pg": t(lambda xv: net({"Input": xv[0], NPT("Input"): xv[1]}, NPT("Output")), pool)}
    if torch is not None:
        f2 = forward_fn([(torch.from_numpy(w), torch.from_numpy(b)) for w, b in W], torch.tanh)
        tpool = [(torch.from_numpy(x), torch.from_numpy(v)) for x, v in pool]

        def tjvp(xv):
            with torch.no_grad():
                return tf.jvp(f2, (xv[0],), (xv[1],))[1]

        assert np.allclose(tjvp(tpool[0]).numpy(), want, rtol=1e-4, atol=1e-5)
        row["torch.func jvp"] = t(tjvp, tpool)
    if jax is not None:
        g2 = forward_fn([(jnp.asarray(w), jnp.asarray(b)) for w, b in W], jnp.tanh)
        jv = jax.jit(lambda x, v: jax.jvp(g2, (x,), (v,))[1])
        assert np.allclose(np.asarray(jv(*pool[0])), want, rtol=1e-4, atol=1e-4)
        row["JAX jvp jit"] = t(lambda xv: jv(*xv).block_until_ready(), pool)
    rows.append(timed(row))

    # --- HVP (the summed outputs' Hessian times v, per example), the same MLP, batch 64
    hvp_spec = NPT(pg.NetPortGradient("Input"))
    want = net({"Input": pool[0][0], NPT("Input"): pool[0][1]}, hvp_spec)
    row = {"case": "HVP (H v per example, summed outputs), MLP 64-256-256-10 tanh, batch 64",
           "pg": t(lambda xv: net({"Input": xv[0], NPT("Input"): xv[1]}, hvp_spec), pool)}
    if torch is not None:
        def fsum(v):
            return f2(v).sum()

        thvp = tf.vmap(lambda a, v: tf.jvp(tf.grad(fsum), (a,), (v,))[1])
        with torch.no_grad():
            assert np.allclose(thvp(*tpool[0]).numpy(), want, rtol=1e-3, atol=1e-4)
        row["torch.func jvp(grad)"] = t(lambda xv: thvp(*xv), tpool)
    if jax is not None:
        jh = jax.jit(jax.vmap(lambda a, v: jax.jvp(jax.grad(lambda z: g2(z).sum()), (a,), (v,))[1]))
        assert np.allclose(np.asarray(jh(*pool[0])), want, rtol=1e-3, atol=1e-4)
        row["JAX jvp(grad) jit"] = t(lambda xv: jh(*xv).block_until_ready(), pool)
    rows.append(timed(row))

    # --- per-example gradients of every array, the same MLP, batch 64, loss = sum of the outputs
    names = [(k, n) for k in range(0, 6, 2) for n in ("Weights", "Biases")]
    spec = [pg.NetPortGradient(a, PerExample=True) for a in names]
    xs = [x for x, _ in pool]
    want = net(xs[0], spec)
    row = {"case": "per-example gradients of every array, MLP 64-256-256-10 tanh, batch 64",
           "pg": t(lambda x: net(x, spec), xs)}
    if torch is not None:
        params = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in W]
        pe = tf.vmap(tf.grad(lambda p, v: forward_fn(p, torch.tanh)(v).sum()), in_dims=(None, 0))
        txs = [torch.from_numpy(x) for x in xs]
        got = pe(params, txs[0])
        assert np.allclose(got[0][0].numpy(), want[spec[0]], rtol=1e-4, atol=1e-4)
        row["torch.func vmap(grad)"] = t(lambda x: pe(params, x), txs)
    if jax is not None:
        pj = [(jnp.asarray(w), jnp.asarray(b)) for w, b in W]
        jpe = jax.jit(jax.vmap(jax.grad(lambda p, v: forward_fn(p, jnp.tanh)(v).sum()), in_axes=(None, 0)))
        assert np.allclose(np.asarray(jpe(pj, xs[0])[0][0]), want[spec[0]], rtol=1e-4, atol=1e-4)
        row["JAX vmap(grad) jit"] = t(lambda x: jax.block_until_ready(jpe(pj, x)), xs)
    rows.append(timed(row))

    # --- physics-informed training's gradient: the arrays' gradient of mean (Δu + f)² (NetLaplacian)
    for sizes, batch in (([2, 32, 32, 1], 256), ([3, 128, 128, 128, 1], 1024)):
        rows.append(timed(pinn_row(pg, torch, jax, sizes, batch, rng, t)))

    peers = [k for k in ("torch.func jacrev", "torch.func jacfwd", "torch.func jvp", "torch.func jvp(grad)",
                         "torch.func vmap(grad)", "torch.func grad(vmap(hessian))", "PyTorch autograd create_graph",
                         "JAX vmap(jacfwd) jit", "JAX jvp jit", "JAX jvp(grad) jit", "JAX vmap(grad) jit",
                         "JAX grad(vmap(hessian)) jit") if any(k in r for r in rows)]
    lines = [f"Derivatives beyond one gradient, float32, {args.threads} thread(s); {cpu_model()}, commit {git_commit()}. "
             "Times in µs (medians); ratio = portgrad / peer. "
             + ("JAX is not installed here. " if jax is None else "") + ("PyTorch is not installed here." if torch is None else ""),
             "", "| case | portgrad | " + " | ".join(f"{k} | ratio" for k in peers) + " |",
             "|---|---|" + "---|---|" * len(peers)]
    for r in rows:
        cells = [r["case"], f"{r['pg'] * 1e6:,.0f}"]
        for k in peers:
            cells += [f"{r[k] * 1e6:,.0f}", f"{r['pg'] / r[k]:.2f}"] if k in r else ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    publish("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
