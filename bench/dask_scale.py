"""Input gradients of the suite's CNN (3x32x32 -> conv 16, conv 32 -> 10, float32) over many
examples: one process against a 2-worker distributed.LocalCluster (portgrad.dask.evaluate), and
the overhead per chunk.

    python -m bench.dask_scale [--examples 1000000] [--chunk 2048] [--markdown out.md]

One process: the chunks evaluated one after another by net(x, NetPortGradient("Input")) with
portgrad's threads (as many as the machine's cores). The cluster: the same chunks, each a task on
one of two single-threaded worker processes (portgrad running one thread in each), the data
generated inside each task in both cases (a chunk's random images: the same cost on both sides), the
saliency reduced to one number per image so that the results do not travel. Per-chunk overhead: the
same number of chunks of one example each, cluster time per chunk minus the in-process one.
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):  # python bench/dask_scale.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

import numpy as np  # noqa: E402

from ._machine import cpu_model, git_commit, publish  # noqa: E402
from .cases import CNN, build_cnn  # noqa: E402


def _images(seed, n):
    return np.random.default_rng(seed).standard_normal((n, *CNN.in_shape)).astype(np.float32)


def _saliency(net, x):
    import portgrad as pg
    return np.abs(net(x, pg.NetPortGradient("Input"))).max(axis=(1, 2, 3))


def in_process(net, sizes):
    t0 = time.perf_counter()
    out = [_saliency(net, _images(i, n)) for i, n in enumerate(sizes)]
    return time.perf_counter() - t0, np.concatenate(out)


def on_cluster(client, net, sizes):
    import dask.array as da
    import portgrad as pg
    import portgrad.dask as pgd

    blocks = [da.from_delayed(_delayed_images(i, n), shape=(n, *CNN.in_shape), dtype=np.float32)
              for i, n in enumerate(sizes)]
    x = da.concatenate(blocks, axis=0)
    lazy = pgd.evaluate(net, x, pg.NetPortGradient("Input"))
    saliency = abs(lazy).max(axis=(1, 2, 3))
    t0 = time.perf_counter()
    out = client.compute(saliency).result()
    return time.perf_counter() - t0, out


def _delayed_images(i, n):
    import dask
    return dask.delayed(_images, pure=True)(i, n)


def _set_worker_threads(n):
    import portgrad as pg
    pg.set_num_threads(n)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=1_000_000)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)
    if args.quick:
        args.examples, args.chunk = 256, 64
    import portgrad as pg
    from distributed import Client, LocalCluster

    net, _positions, _weights = build_cnn(CNN)
    sizes = [args.chunk] * (args.examples // args.chunk) + ([args.examples % args.chunk] if args.examples % args.chunk else [])
    cores = os.cpu_count() or 1
    pg.set_num_threads(cores)
    _saliency(net, _images(0, 8))  # plans compiled before timing, as the workers' are after their first chunk
    t_local, want = in_process(net, sizes)
    t_local_tiny, _ = in_process(net, [1] * len(sizes))
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=40) as cluster, \
            Client(cluster) as client:
        client.run(_set_worker_threads, 1)
        on_cluster(client, net, [8, 8])  # workers warm: the net received, plans compiled
        t_cluster, got = on_cluster(client, net, sizes)
        t_cluster_tiny, _ = on_cluster(client, net, [1] * len(sizes))
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6), "the cluster's saliencies differ from the in-process ones"
    n = args.examples
    overhead = (t_cluster_tiny - t_local_tiny) / len(sizes)
    lines = [f"Input gradients of the CNN 3x32x32, float32, {n:,} examples in chunks of {args.chunk}; "
             f"{cpu_model()}, {cores} cores, commit {git_commit()}.", "",
             "| setting | time (s) | examples / s |", "|---|---|---|",
             f"| one process, {cores} portgrad threads | {t_local:.1f} | {n / t_local:,.0f} |",
             f"| LocalCluster, 2 workers x 1 thread | {t_cluster:.1f} | {n / t_cluster:,.0f} |", "",
             f"Overhead per chunk on the cluster (chunks of one example, {len(sizes)} of them): "
             f"{overhead * 1e3:.2f} ms ({t_cluster_tiny / len(sizes) * 1e3:.2f} ms a chunk on the cluster, "
             f"{t_local_tiny / len(sizes) * 1e3:.2f} ms in process)."]
    publish("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
