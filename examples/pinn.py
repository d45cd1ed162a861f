"""Physics-informed training in portgrad: a 2-D Poisson problem solved through the net's Laplacian.

-Δu = f on the unit square with u = 0 on its edges, f = 2π² sin(πx) sin(πy): the solution is
u*(x, y) = sin(πx) sin(πy). A small tanh net u_θ is trained on the physics alone — no sample of u*
is used: the loss is the mean squared PDE residual Δu_θ + f at random interior points plus 100 times
the mean squared u_θ at random edge points. Its Laplacian comes from NetLaplacian (u_θ, its input
gradient and its Laplacian as one net of first-order layers), whose arrays' gradients are ordinary
reverse mode — the parameter gradient of a second derivative — so NetTrain trains it as any net.
The Laplacian is checked against NetPortHessian (forward over reverse) and finite differences of
the net, and the solution, its error and the residual are drawn.

    pip install ".[plot]" && python examples/pinn.py [out.png] [--steps N]
"""
import argparse
import time

import numpy as np

import portgrad as pg

P = pg.NetPort


def exact(xy):
    return np.sin(np.pi * xy[:, :1]) * np.sin(np.pi * xy[:, 1:])


def source(xy):  # f = -Δu*, one value per point
    return 2 * np.pi ** 2 * exact(xy)


def training_net(net, edge_weight=100.0):
    """Loss = mean (Δu + f)² over "Interior" points + edge_weight · mean u² over "Edge" points.
    Both copies of NetLaplacian(net) share the net's arrays (NetSharedArray), so training moves one net."""
    lap = pg.NetLaplacian(net)
    return pg.NetGraph(
        {"pde": lap, "edge": lap,
         "residual": pg.MeanSquaredLossLayer(), "boundary": pg.MeanSquaredLossLayer(),
         "zero": pg.ConstantArrayLayer(np.zeros(1), learnable=False),
         "weight": pg.ConstantArrayLayer(np.array(edge_weight), learnable=False),
         "weighted": pg.ThreadingLayer("Times"), "total": pg.ThreadingLayer("Plus")},
        [(P("Interior"), "pde"), (P("pde", "Laplacian"), P("residual", "Input")), (P("MinusSource"), P("residual", "Target")),
         (P("Edge"), "edge"), (P("edge", "Output"), P("boundary", "Input")), ("zero", P("boundary", "Target")),
         (["weight", "boundary"], "weighted"), (["residual", "weighted"], "total"), ("total", P("Loss"))])


def batches(rng):
    """NetTrain's source of batches: random interior points and random points on the four edges."""
    def batch(options):
        n = options["BatchSize"]
        inside = rng.uniform(0, 1, (n, 2))
        t, side = rng.uniform(0, 1, n), rng.integers(0, 4, n)
        edge = np.stack([np.where(side < 2, t, side - 2.0), np.where(side < 2, side * 1.0, t)], axis=1)
        return {"Interior": inside, "MinusSource": -source(inside), "Edge": edge}
    return batch


def train(steps, rng):
    net = pg.NetInitialize(pg.NetChain([32, "Tanh", 32, "Tanh", 1], input=2), seed=0)
    per_round = min(steps, 100)
    start = time.perf_counter()
    trained = pg.NetTrain(training_net(net), batches(rng), BatchSize=256, RoundLength=256 * per_round,
                          MaxTrainingRounds=-(-steps // per_round), LearningRate=3e-3, LearningRateSchedule="Cosine",
                          TrainingProgressReporting=None)
    seconds = time.perf_counter() - start
    loss = float(np.mean(trained(batches(np.random.default_rng(2))({"BatchSize": 4096}))["Loss"]))
    print(f"physics-informed training: {steps} Adam steps of 256 + 256 points in {seconds:.1f} s "
          f"({1e3 * seconds / steps:.2f} ms a step); loss on fresh points {loss:.2e}")
    return pg.NetExtract(trained, "pde").net  # the trained u_θ, a plain NetChain


def laplacian(net, xy):
    return pg.NetLaplacian(net)(xy, WorkingPrecision="Real64")["Laplacian"][:, 0]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="pinn.png")
    p.add_argument("--steps", type=int, default=10000)
    args = p.parse_args()
    net = train(args.steps, np.random.default_rng(0))

    # The Laplacian it trained with, against the trace of NetPortHessian (forward over reverse, a
    # different code path) and against central differences of the net itself.
    pts = np.random.default_rng(1).uniform(0.1, 0.9, (20, 2))
    u = lambda a: net(a, WorkingPrecision="Real64")[:, 0]  # noqa: E731
    h = 1e-4
    fd = sum((u(pts + h * e) - 2 * u(pts) + u(pts - h * e)) / h ** 2 for e in np.eye(2))
    lap = laplacian(net, pts)
    hessian = np.trace(net(pts, pg.NetPortHessian("Input"), WorkingPrecision="Real64"), axis1=1, axis2=2)
    err, err_h = float(np.max(np.abs(lap - fd))), float(np.max(np.abs(lap - hessian)))
    print(f"Laplacian vs finite differences of the net: max difference {err:.1e}; vs NetPortHessian: {err_h:.1e}")
    assert err < 1e-4 * max(1.0, float(np.max(np.abs(fd))))
    assert err_h < 1e-9 * max(1.0, float(np.max(np.abs(hessian))))

    n = 64
    g = (np.arange(n) + 0.5) / n
    xy = np.stack(np.meshgrid(g, g, indexing="xy"), axis=-1).reshape(-1, 2)
    sol = net(xy, WorkingPrecision="Real64")[:, 0]
    residual = laplacian(net, xy) + source(xy)[:, 0]  # Δu_θ + f: 0 for the exact solution
    print(f"on a {n}x{n} grid: max |u - u*| = {np.max(np.abs(sol - exact(xy)[:, 0])):.2e}, "
          f"max |f| = {np.max(np.abs(source(xy))):.1f}, PDE residual |Δu + f|: "
          f"mean {np.mean(np.abs(residual)):.2f}, max {np.max(np.abs(residual)):.2f}")
    draw(sol.reshape(n, n), (sol - exact(xy)[:, 0]).reshape(n, n), residual.reshape(n, n), args.out)


def draw(sol, error, residual, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, img, title, cmap in ((axes[0], sol, "u (the net, trained on the PDE)", "viridis"),
                                 (axes[1], error, "error u - u*", "coolwarm"),
                                 (axes[2], residual, "residual Δu + f", "coolwarm")):
        im = ax.imshow(img, origin="lower", extent=(0, 1, 0, 1), cmap=cmap)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
