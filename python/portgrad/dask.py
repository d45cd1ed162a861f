"""Outputs and gradients over Dask: ``portgrad.dask.evaluate(net, data, spec)`` is ``net(data, spec)``
for data too large for one call or one machine, as a lazy Dask graph.

``data`` is a ``dask.array`` chunked along the batch axis (only), or a dict of them (and of NumPy
arrays for what the whole batch shares, such as a tangent on an array) with the same batch chunks;
``spec`` and the options are exactly ``net(...)``'s. The result has the structure of
``net(data, spec)``: per-example results (outputs, input gradients, tangents, Jacobians,
per-example array gradients) are dask arrays chunked like the input; batch-summed array gradients
are dask arrays built by a tree of pairwise sums of the chunks' partial gradients in a fixed order
(the same result for the same chunking). ``dask.compute`` gives NumPy arrays.

The net is one node of the graph that every chunk's task depends on, so it reaches each worker once
(not pickled into every task), and a worker keeps its compiled plans from chunk to chunk. A chunk
whose data the net refuses fails with the same error as in-process, naming the chunk. Needs the
optional extra (``pip install "portgrad[dask]"``); ``import portgrad`` never imports dask.
"""
from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np

from ._net import Net, NetPortTangent, _is_batch_summed

__all__ = ["evaluate"]

# One evaluation at a time per process: a worker running several tasks in threads shares its net
# (and the net's plans and arenas) between them; portgrad's own threads do the parallel work.
_LOCK = threading.Lock()


def evaluate(net: Net, data, spec=None, **options):
    """``net(data, spec, **options)`` over the chunks of dask arrays, lazily (see the module)."""
    if not isinstance(net, Net):
        raise TypeError(f"portgrad.dask.evaluate takes a net first, given {type(net).__name__}")
    entries = dict(data) if isinstance(data, dict) else {None: data}
    batched = {k: v for k, v in entries.items() if isinstance(v, da.Array)}
    if not batched:
        raise TypeError("portgrad.dask.evaluate: the data must include a dask array chunked along the batch axis "
                        "(dask.array.from_array(x, chunks=(n, ...)))")
    first = next(iter(batched.values()))
    chunks = first.chunks[0]
    for key, v in batched.items():
        name = "the data" if key is None else repr(key)
        if v.ndim == 0:
            raise ValueError(f"portgrad.dask.evaluate: {name} has no batch axis")
        if any(len(c) != 1 for c in v.chunks[1:]):
            raise ValueError(f"portgrad.dask.evaluate: {name} is chunked along an axis other than the batch axis "
                             f"(chunks {v.chunks}); chunk the batch axis only: x.rechunk({{0: n, 1: -1, ...}})")
        if v.chunks[0] != chunks:
            raise ValueError(f"portgrad.dask.evaluate: {name} has batch chunks {v.chunks[0]}, another array "
                             f"{chunks}; give every array the same batch chunks")
    for key, v in entries.items():
        if key not in batched and not isinstance(key, NetPortTangent):
            raise TypeError(f"portgrad.dask.evaluate: {key!r} must be a dask array with the batch's chunks (only a "
                            "tangent on an array, shared by the batch, may be a NumPy array)")

    meta = _meta(net, entries, batched, spec, options)
    net_node = dask.delayed(net, pure=True)  # one key: every chunk's task depends on it
    # What every chunk shares (tangents on arrays): one node too, not copied into each task.
    shared = dask.delayed({k: v for k, v in entries.items() if k not in batched}, pure=True, traverse=False)
    keys = list(batched)
    # One Delayed per chunk, all of them over one graph (x.blocks[i] would carry a graph per block).
    delayed_blocks = {k: v.to_delayed().ravel() for k, v in batched.items()}
    offsets = np.concatenate([[0], np.cumsum(chunks)]).astype(int)
    parts = []
    for i in range(len(chunks)):
        blocks = [delayed_blocks[k][i] for k in keys]
        parts.append(dask.delayed(_evaluate_chunk, pure=True)(
            net_node, keys, shared, spec, options, i, int(offsets[i]), int(offsets[i + 1]), *blocks))
    in_names = {name for name, _ in net._declared_inputs()}
    return _assemble(meta, parts, chunks, in_names, spec)


def _evaluate_chunk(net, keys, shared, spec, options, index, lo, hi, *blocks):
    data = dict(zip(keys, blocks))
    data.update(shared)
    data = data[None] if list(data) == [None] else data
    try:
        with _LOCK:
            return net(data, spec, **options)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise type(e)(f"{message} (in chunk {index}: examples {lo} to {hi - 1})") from None


def _meta(net, entries, batched, spec, options):
    """The result's structure with each leaf's shape and dtype, from one example evaluated here (the
    first of the first chunk: data the net would also see)."""
    one = {k: np.asarray(v[:1].compute()) for k, v in batched.items()}
    one.update({k: v for k, v in entries.items() if k not in batched})
    one = one[None] if list(one) == [None] else one
    return net(one, spec, **{k: v for k, v in options.items() if k != "DeviceResults"})


def _assemble(meta, parts, chunks, in_names, spec):
    def leaf(path, example, summed):
        getters = [dask.delayed(_pick, pure=True)(p, path) for p in parts]
        example = np.asarray(example)
        if summed:  # a balanced tree of pairwise sums, in a fixed order
            level = getters
            while len(level) > 1:
                level = [dask.delayed(np.add, pure=True)(level[j], level[j + 1]) if j + 1 < len(level) else level[j]
                         for j in range(0, len(level), 2)]
            return da.from_delayed(level[0], shape=example.shape, dtype=example.dtype)
        return da.concatenate([da.from_delayed(g, shape=(n, *example.shape[1:]), dtype=example.dtype)
                               for g, n in zip(getters, chunks)], axis=0)

    def walk(value, path, summed):
        if isinstance(value, dict):
            return {k: walk(v, path + (k,), summed or _is_batch_summed(k, in_names)) for k, v in value.items()}
        return leaf(path, value, summed)

    top = spec is not None and not isinstance(spec, (list, tuple)) and _is_batch_summed(spec, in_names)
    return walk(meta, (), top)


def _pick(result, path):
    for k in path:
        result = result[k]
    return result
