"""Saliency of a PyTorch CNN, through ONNX: train in PyTorch, export, import into portgrad, and draw
the input gradient of each image's class score.

PyTorch trains a small CNN on synthetic 16x16 images (is the bright blob in the left or the right
half?) and exports it to ONNX with a dynamic batch axis. portgrad imports the file and computes
d(score of the image's class)/d(image) with NetPortGradient; the gradient is checked against
PyTorch's own autograd before the maps are drawn. The imported net keeps the file's tensor names,
so the gradient with respect to a weight as PyTorch stores it is one call too.

    pip install torch onnx ".[plot]" && python examples/onnx_saliency.py [out.png]

(torch is needed for this example only; portgrad itself needs neither torch nor onnxruntime.)
"""
import io
import sys
import warnings

import numpy as np

import portgrad as pg
from saliency import blobs, draw  # the images and the picture of examples/saliency.py


def train_in_pytorch(x, y):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(0)
    for step in range(150):
        batch = torch.from_numpy(rng.integers(0, len(x), 32))
        loss = nn.functional.cross_entropy(model(xt[batch]), yt[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def export(model):
    import torch

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 16, 16),), f, dynamo=False, input_names=["image"],
                          output_names=["score"], dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}})
    return f.getvalue()


def main(out="onnx_saliency.png"):
    import torch

    x, y = blobs(np.random.default_rng(0), 512)
    model = train_in_pytorch(x, y)
    onnx_bytes = export(model)
    print(f"exported the trained CNN: {len(onnx_bytes)} bytes of ONNX")

    net = pg.import_onnx(onnx_bytes)
    tx, ty = blobs(np.random.default_rng(1), 6)
    onehot = np.eye(2, dtype=np.float32)[ty]
    scores = net(tx)
    print(f"accuracy on 6 new images: {float((scores.argmax(1) == ty).mean()):.2f}")
    saliency = net({"image": tx, pg.NetPortGradient("score"): onehot}, pg.NetPortGradient("image"))

    xt = torch.from_numpy(tx).requires_grad_()
    (model(xt) * torch.from_numpy(onehot)).sum().backward()
    err = float(np.abs(saliency - xt.grad.numpy()).max() / np.abs(xt.grad.numpy()).max())
    print(f"largest difference from PyTorch's autograd, relative: {err:.1e}")
    names = sorted(k.name for k in net.arrays if isinstance(k, pg.NetSharedArray))
    weight = next((n for n in names if n.endswith("weight")), names[0])
    g = net(tx, pg.NetPortGradient(pg.NetSharedArray(weight)))
    print(f"d(sum of scores)/d{weight}: shape {g.shape}, as stored in the file")

    draw(tx, ty, saliency, out)

if __name__ == "__main__":
    main(*sys.argv[1:2])
