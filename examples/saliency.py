"""Saliency map of a small CNN: the input gradient of a class score, as a PNG.

A CNN learns, on synthetic 16x16 images, whether a bright blob sits in the left or the right half
(a few hundred steps of plain gradient descent, with the gradients from NetPortGradient). The
saliency map of an image is then d(score of its class)/d(image): it lights up where the blob is.

    pip install ".[plot]" && python examples/saliency.py [out.png]
"""
import sys

import numpy as np

import portgrad as pg


def blobs(rng, n, size=16):
    """Images with one Gaussian blob plus noise; label 0 = left half, 1 = right half."""
    yy, xx = np.mgrid[0:size, 0:size]
    labels = rng.integers(0, 2, n)
    cx = np.where(labels == 0, rng.uniform(2, size / 2 - 2, n), rng.uniform(size / 2 + 2, size - 2, n))
    cy = rng.uniform(2, size - 2, n)
    img = np.exp(-((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2) / 4.0)
    img += 0.1 * rng.standard_normal(img.shape)
    return img[:, None].astype(np.float32), labels


def main(out="saliency.png"):
    rng = np.random.default_rng(0)
    cnn = pg.NetChain({"conv1": pg.ConvolutionLayer(4, 3, padding="Same"), "act1": "Ramp",
                       "pool1": pg.PoolingLayer(2, stride=2), "conv2": pg.ConvolutionLayer(8, 3, padding="Same"),
                       "act2": "Ramp", "pool2": pg.PoolingLayer(2, stride=2), "flat": pg.FlattenLayer(),
                       "fc": pg.LinearLayer(2), "prob": pg.SoftmaxLayer()}, input=(1, 16, 16))
    train = pg.NetChain({"cnn": cnn, "loss": pg.CrossEntropyLossLayer("Index")})
    train = pg.NetInitialize(train, seed=0)

    x, y = blobs(rng, 256)
    for step in range(300):
        batch = rng.integers(0, len(x), 32)
        grads = train({"Input": x[batch], "Target": y[batch]}, pg.NetPortGradient(pg.All))
        # Arrays are keyed by their paths (tuples); input ports by name (strings).
        train = pg.NetReplacePart(train, {k.target: pg.NetExtract(train, k.target) - 0.05 / 32 * g
                                          for k, g in grads.items() if isinstance(k.target, tuple)})
        if step % 100 == 0 or step == 299:
            loss = float(train({"Input": x, "Target": y}).mean())
            print(f"step {step:3d}: mean loss {loss:.4f}")

    net = pg.NetExtract(train, "cnn")
    tx, ty = blobs(np.random.default_rng(1), 6)
    accuracy = float((net(tx).argmax(axis=1) == ty).mean())
    print(f"accuracy on 6 new images: {accuracy:.2f}")
    onehot = np.eye(2, dtype=np.float32)[ty]
    saliency = net({"Input": tx, pg.NetPortGradient("Output"): onehot}, pg.NetPortGradient("Input"))
    draw(tx, ty, saliency, out)


def draw(images, labels, saliency, out):
    """The images over |saliency| (both (n, 1, h, w)), as a PNG (matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(images), figsize=(2 * len(images), 4.2))
    for i in range(len(images)):
        axes[0, i].imshow(images[i, 0], cmap="gray")
        axes[0, i].set_title(["left", "right"][labels[i]], fontsize=9)
        axes[1, i].imshow(np.abs(saliency[i, 0]), cmap="hot")
        for ax in axes[:, i]:
            ax.set_axis_off()
    axes[1, 0].set_title("|d score / d image|", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
