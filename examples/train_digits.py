"""NetTrain on scikit-learn's 8x8 digits: an MLP classifier trained with ADAM, a held-out validation
set, the loss curves as a picture, and the trained net's NetPortGradient (which pixels move the
predicted class's probability).

    pip install scikit-learn matplotlib && python examples/train_digits.py   # writes examples/train_digits.png
"""
import os

import matplotlib
import numpy as np
from sklearn.datasets import load_digits

import portgrad as pg

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]

    net = pg.NetChain([128, "Ramp", 64, "Ramp", 10, pg.SoftmaxLayer()], input=64)
    res = pg.NetTrain(net, (xtr, ytr), pg.All, MaxTrainingRounds=30, BatchSize=32, ValidationSet=(xte, yte),
                      LearningRateSchedule="Cosine")
    trained = res.TrainedNet
    accuracy = np.mean(np.argmax(trained(xte), axis=1) == yte)
    print(f"{res.RoundCount} rounds, {res.MeanBatchesPerSecond:,.0f} batches/s; held-out accuracy {accuracy:.3f}")

    # Saliency of the first held-out digit: the gradient of its predicted class's probability.
    probs = trained(xte[:1])[0]
    k = int(np.argmax(probs))
    onehot = np.eye(10, dtype=np.float32)[k][None]
    saliency = trained({"Input": xte[:1], pg.NetPortGradient("Output"): onehot}, pg.NetPortGradient("Input"))[0]

    fig = res.LossPlot
    fig.set_size_inches(9, 3.5)
    ax_loss = fig.axes[0]
    ax_loss.set_position([0.08, 0.15, 0.5, 0.75])
    ax_loss.set_title("NetTrain: digits MLP (cross-entropy)")
    ax_img = fig.add_axes([0.64, 0.15, 0.15, 0.75])
    ax_img.imshow(xte[0].reshape(8, 8), cmap="gray_r")
    ax_img.set_title(f"digit, predicted {k}")
    ax_img.axis("off")
    ax_sal = fig.add_axes([0.82, 0.15, 0.15, 0.75])
    lim = np.abs(saliency).max()
    ax_sal.imshow(saliency.reshape(8, 8), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax_sal.set_title("d p / d pixel")
    ax_sal.axis("off")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_digits.png")
    fig.savefig(out, dpi=100)
    print("wrote", out)


if __name__ == "__main__":
    main()
