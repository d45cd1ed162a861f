"""Training speed: NetTrain against a PyTorch eager loop and a JAX jitted step, side by side in one run.

    python -m bench.train [--threads 2] [--quick] [--markdown out.md]

Cases (issue 14): the 2 -> 64 -> 64 -> 1 tanh MLP at batch 256 (mean squared loss), the
64 -> 256 -> 256 -> 10 ReLU MLP at batch 64 and the CNN of bench/cases.py at batch 32 (softmax
cross-entropy on class indices), ADAM (lr 1e-3) everywhere, the same initial weights. Each peer runs
whole rounds over the same data: a shuffled order per round, each batch gathered from the arrays,
forward, loss, backward and the optimiser's update (PyTorch: torch.optim.Adam, foreach off as for
small nets, OpenMP's default wait policy; JAX: one jitted function per step, ADAM written out, the
batch gathered inside it).
Reported: training steps per second (median of 3 runs of `--rounds` rounds; higher is better) and
ratio = portgrad's steps per second over the peer's (> 1: portgrad faster).
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):  # python bench/train.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

from ._threads import configure_from_argv  # noqa: E402

THREADS = configure_from_argv(sys.argv)
# A training loop is a stream of small parallel regions: with OMP_WAIT_POLICY=PASSIVE (the suite's
# default, so that one runtime's spinning threads do not slow the next) PyTorch's OpenMP threads
# sleep between them and its steps took 3x as long as in a plain process. OpenMP's own default
# (spin briefly, then sleep) is what a PyTorch user runs with; each peer here runs for about a
# second, so a few milliseconds of spinning after it cost the next one nothing measurable.
os.environ.pop("OMP_WAIT_POLICY", None)

import numpy as np  # noqa: E402

from ._machine import cpu_model, git_commit  # noqa: E402
from .cases import CNN, build_cnn  # noqa: E402


def mlp_case(pg, sizes, act, batch, classes, seed=0):
    layers = []
    for n in sizes[1:-1]:
        layers += [pg.LinearLayer(n), act]
    layers.append(pg.LinearLayer(sizes[-1]))
    if classes:
        layers.append(pg.SoftmaxLayer())
    net = pg.NetInitialize(pg.NetChain(layers, input=sizes[0]), seed=seed)
    lin = [k for k, layer in enumerate(layers) if isinstance(layer, pg.LinearLayer)]
    weights = [(np.asarray(pg.NetExtract(net, (k, "Weights"))), np.asarray(pg.NetExtract(net, (k, "Biases"))))
               for k in lin]
    return net, weights


def data_for(n, in_shape, classes, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *in_shape)).astype(np.float32)
    if classes:
        return x, rng.integers(0, classes, n).astype(np.int64)
    return x, np.sin(x.reshape(n, -1).sum(1, keepdims=True)).astype(np.float32)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)
    import portgrad as pg

    pg.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        jax = None
    rounds = 1 if args.quick else args.rounds
    batches = 4 if args.quick else 50
    runs = 1 if args.quick else 3

    cases = []
    net, w = mlp_case(pg, (2, 64, 64, 1), "Tanh", 256, 0)
    cases.append(("MLP 2-64-64-1 tanh, batch 256, MSE", net, w, "Tanh", 256, (2,), 0, None))
    net, w = mlp_case(pg, (64, 256, 256, 10), "Ramp", 64, 10)
    cases.append(("MLP 64-256-256-10 ReLU, batch 64, cross-entropy", net, w, "Ramp", 64, (64,), 10, None))
    cnn, _pos, cw = build_cnn(CNN)
    cnn = pg.NetChain([cnn, pg.SoftmaxLayer()], input=CNN.in_shape)
    cases.append((f"CNN {'x'.join(map(str, CNN.in_shape))}, batch {CNN.batch}, cross-entropy", cnn, cw, "Ramp",
                  CNN.batch, CNN.in_shape, CNN.n_out, CNN))

    rows = []
    for name, net, weights, act, batch, in_shape, classes, cnn_spec in cases:
        n = batch * batches
        x, y = data_for(n, in_shape, classes)
        row = {"case": name}

        def pg_rate():
            res = pg.NetTrain(net, (x, y), pg.All, MaxTrainingRounds=rounds, BatchSize=batch, Method="ADAM",
                              LearningRate=1e-3, TrainingProgressReporting=None)
            return res.BatchCount / res.TotalTrainingTime
        row["portgrad"] = float(np.median([pg_rate() for _ in range(runs)]))

        if torch is not None:
            row["PyTorch eager"] = float(np.median([torch_rate(torch, weights, act, cnn_spec, x, y, batch, rounds,
                                                               classes) for _ in range(runs)]))
        if jax is not None:
            row["JAX jit"] = float(np.median([jax_rate(jax, jnp, weights, act, cnn_spec, x, y, batch, rounds, classes)
                                              for _ in range(runs)]))
        rows.append(row)

    peers = [k for k in ("PyTorch eager", "JAX jit") if any(k in r for r in rows)]
    head = f"Training steps per second (ADAM), float32, {args.threads} thread(s); {cpu_model()}, commit {git_commit()}."
    lines = [head, "", "| case | portgrad | " + " | ".join(f"{p} | ratio" for p in peers) + " |",
             "|---|---|" + "---|---|" * len(peers)]
    for r in rows:
        cells = [f"{r['portgrad']:,.0f}"]
        for peer in peers:
            cells += [f"{r[peer]:,.0f}", f"{r['portgrad'] / r[peer]:.2f}"] if peer in r else ["—", "—"]
        lines.append(f"| {r['case']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


def torch_rate(torch, weights, act, cnn_spec, x, y, batch, rounds, classes):
    nn = torch.nn
    if cnn_spec is None:
        layers = []
        for k, (w, b) in enumerate(weights):
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if k < len(weights) - 1:
                layers.append(nn.Tanh() if act == "Tanh" else nn.ReLU())
        model = nn.Sequential(*layers)
    else:
        layers, c = [], cnn_spec.in_shape[0]
        for (w, b), n in zip(weights[:-1], cnn_spec.stages):
            conv = nn.Conv2d(c, n, cnn_spec.k, padding="same")
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w))
                conv.bias.copy_(torch.from_numpy(b))
            layers += [conv, nn.ReLU(), nn.MaxPool2d(cnn_spec.pool)]
            c = n
        w, b = weights[-1]
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        model = nn.Sequential(*layers, nn.Flatten(), lin)
    loss_fn = nn.CrossEntropyLoss() if classes else nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=False)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    n = len(x)
    steps = 0
    t0 = time.perf_counter()
    for r in range(rounds):
        order = torch.randperm(n)
        for b in range(0, n, batch):
            idx = order[b:b + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), Y[idx])
            loss.backward()
            opt.step()
            steps += 1
    return steps / (time.perf_counter() - t0)


def jax_rate(jax, jnp, weights, act, cnn_spec, x, y, batch, rounds, classes):
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]
    f = jnp.tanh if act == "Tanh" else jax.nn.relu

    def forward(params, v):
        if cnn_spec is None:
            for k, (w, b) in enumerate(params):
                v = v @ w.T + b
                if k < len(params) - 1:
                    v = f(v)
            return v
        for w, b in params[:-1]:
            v = jax.lax.conv_general_dilated(v, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
            v = jax.nn.relu(v + b[None, :, None, None])
            p = cnn_spec.pool
            v = jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 1, p, p), (1, 1, p, p), "VALID")
        w, b = params[-1]
        return v.reshape(v.shape[0], -1) @ w.T + b

    def loss_fn(params, xb, yb):
        out = forward(params, xb)
        if classes:
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), yb[:, None], axis=1))
        return jnp.mean((out - yb) ** 2)

    @jax.jit
    def step(params, m, v, t, X, Y, idx):  # the batch gathered inside the jitted step: one dispatch a step
        g = jax.grad(loss_fn)(params, X[idx], Y[idx])
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        params = jax.tree_util.tree_map(lambda p, m, v: p - 1e-3 * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), params, m, v)
        return params, m, v, t

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    m, v, t = zeros, zeros, jnp.asarray(0.0)
    X, Y = jnp.asarray(x), jnp.asarray(y)
    n = len(x)
    rng = np.random.default_rng(0)
    step(params, m, v, t, X, Y, jnp.arange(batch))[0][0][0].block_until_ready()  # compile
    steps = 0
    t0 = time.perf_counter()
    for r in range(rounds):
        order = rng.permutation(n)
        for b in range(0, n, batch):
            params, m, v, t = step(params, m, v, t, X, Y, order[b:b + batch])
            steps += 1
    params[0][0].block_until_ready()
    return steps / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
