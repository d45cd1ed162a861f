"""The Laplacian of a net, for physics-informed losses: a 2-D Poisson problem.

-Δu = f on the unit square with u = 0 on its edges, f = 2π² sin(πx) sin(πy): the solution is
u*(x, y) = sin(πx) sin(πy). A small tanh net learns u* from samples (least squares, Adam, gradients
from NetPortGradient); then its Laplacian — the trace of NetPortHessian, exact second derivatives
by forward over reverse — gives the PDE residual Δu + f of what it learned. The Laplacian is checked
against finite differences of the net, and the residual is drawn beside the solution.

    pip install ".[plot]" && python examples/pinn.py [out.png] [--steps N]

What portgrad cannot do yet is the physics-informed training itself: minimising the residual
needs the arrays' gradient of a second derivative (reverse mode over the tangent of the backward).
"""
import argparse

import numpy as np

import portgrad as pg


def exact(xy):
    return np.sin(np.pi * xy[:, :1]) * np.sin(np.pi * xy[:, 1:])


def source(xy):  # f = -Δu*
    return 2 * np.pi ** 2 * exact(xy)[:, 0]


def fit(steps, rng):
    """u_theta ≈ u* by least squares on random points of the square (Adam on NetPortGradient(All))."""
    net = pg.NetInitialize(pg.NetChain([32, "Tanh", 32, "Tanh", 1], input=2), seed=0)
    train = pg.NetChain({"u": net, "loss": pg.MeanSquaredLossLayer()})
    m, v = {}, {}
    lr, b1, b2 = 3e-3, 0.9, 0.999
    for step in range(1, steps + 1):
        xy = rng.uniform(0, 1, (256, 2))
        grads = train({"Input": xy, "Target": exact(xy)}, pg.NetPortGradient(pg.All))
        new = {}
        for k, g in grads.items():
            if not isinstance(k.target, tuple):
                continue  # the input port's gradient
            g = g / 256
            m[k] = b1 * m.get(k, 0) + (1 - b1) * g
            v[k] = b2 * v.get(k, 0) + (1 - b2) * g * g
            mh, vh = m[k] / (1 - b1 ** step), v[k] / (1 - b2 ** step)
            new[k.target] = pg.NetExtract(train, k.target) - lr * mh / (np.sqrt(vh) + 1e-8)
        train = pg.NetReplacePart(train, new)
        if step % 1000 == 0 or step == steps:
            loss = float(train({"Input": xy, "Target": exact(xy)}).mean())
            print(f"step {step:5d}: mean squared error {loss:.2e}")
    return pg.NetExtract(train, "u")


def laplacian(net, xy):
    H = net(xy, pg.NetPortHessian("Input"), WorkingPrecision="Real64")  # (n, 2, 2)
    return np.trace(H, axis1=1, axis2=2)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="pinn.png")
    p.add_argument("--steps", type=int, default=6000)
    args = p.parse_args()
    net = fit(args.steps, np.random.default_rng(0))

    # The Laplacian against central differences of the net itself (exactness of NetPortHessian).
    pts = np.random.default_rng(1).uniform(0.1, 0.9, (20, 2))
    u = lambda a: net(a, WorkingPrecision="Real64")[:, 0]  # noqa: E731
    h = 1e-4
    fd = sum((u(pts + h * e) - 2 * u(pts) + u(pts - h * e)) / h ** 2 for e in np.eye(2))
    lap = laplacian(net, pts)
    err = float(np.max(np.abs(lap - fd)))
    print(f"Laplacian vs finite differences of the net: max difference {err:.1e}")
    assert err < 1e-4 * max(1.0, float(np.max(np.abs(fd))))

    n = 64
    g = (np.arange(n) + 0.5) / n
    xy = np.stack(np.meshgrid(g, g, indexing="xy"), axis=-1).reshape(-1, 2)
    sol = net(xy, WorkingPrecision="Real64")[:, 0]
    residual = laplacian(net, xy) + source(xy)  # Δu_theta + f: 0 for the exact solution
    print(f"on a {n}x{n} grid: max |u - u*| = {np.max(np.abs(sol - exact(xy)[:, 0])):.2e}, "
          f"max |f| = {np.max(np.abs(source(xy))):.1f}, PDE residual |Δu + f|: "
          f"mean {np.mean(np.abs(residual)):.2f}, max {np.max(np.abs(residual)):.2f}")
    draw(sol.reshape(n, n), residual.reshape(n, n), args.out)


def draw(sol, residual, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, img, title, cmap in ((axes[0], sol, "u (the net)", "viridis"),
                                 (axes[1], residual, "residual Δu + f", "coolwarm")):
        im = ax.imshow(img, origin="lower", extent=(0, 1, 0, 1), cmap=cmap)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
