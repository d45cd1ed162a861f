"""Input-gradient saliency over a large dask array on a LocalCluster, with Dask's progress bar.

A CNN (random weights: the point is the plumbing) maps 3x32x32 images to 10 class scores; for
every image of a lazily generated dask array, portgrad.dask.evaluate gives the gradient of its
summed scores with respect to the image (the saliency), reduced here to one number per image (the
gradient's largest absolute value), plus the gradient of the first layer's weights summed over all
images — on two worker processes, each receiving the net once and keeping its compiled plans.

    pip install ".[dask]" && python examples/dask_saliency.py [images]
"""
import sys

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, progress

import portgrad as pg
import portgrad.dask as pgd


def cnn():
    return pg.NetInitialize(pg.NetChain([
        pg.ConvolutionLayer(16, 3, padding="Same"), "Ramp", pg.PoolingLayer(2, stride=2),
        pg.ConvolutionLayer(32, 3, padding="Same"), "Ramp", pg.PoolingLayer(2, stride=2),
        pg.FlattenLayer(), pg.LinearLayer(10)], input=(3, 32, 32)), seed=0)


def main(images=20000, chunk=1000):
    net = cnn()
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        x = da.random.default_rng(0).standard_normal((images, 3, 32, 32), chunks=(chunk, 3, 32, 32),
                                                      dtype=np.float32)
        lazy = pgd.evaluate(net, x, [pg.NetPortGradient("Input"), pg.NetPortGradient((0, "Weights"))])
        saliency = abs(lazy[pg.NetPortGradient("Input")]).max(axis=(1, 2, 3))  # one number per image
        futures = client.compute([saliency, lazy[pg.NetPortGradient((0, "Weights"))]])
        progress(futures)  # Dask's own progress bar
        per_image, weight_grad = client.gather(futures)
    print(f"\n{images} images: saliency (max |d score / d image|) from {per_image.min():.3g} to {per_image.max():.3g}; "
          f"first layer's weight gradient summed over all of them: shape {weight_grad.shape}, "
          f"norm {np.linalg.norm(weight_grad):.4g}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
