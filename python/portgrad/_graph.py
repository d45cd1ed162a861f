"""NetGraph (layers joined by edges) and the chain surgery functions NetTake and NetDrop."""
from __future__ import annotations

import numpy as np

from ._net import Net, NetChain, NetPort, _joined_params, _named_layers, _port_shape, _shared_names

__all__ = ["NetGraph", "NetTake", "NetDrop"]


class NetGraph(Net):
    """``NetGraph(layers, edges, input=shape)`` or ``inputs={"A": 4, "B": (3, 8)}``: layers joined by edges.

    ``layers`` is a list (layers named "0", "1", ..., addressed by 0-based position) or a dict of
    named layers (ints and strings are shorthand, as in NetChain). ``edges`` is a list of pairs
    ``(source, target)`` or longer chains ``(a, b, c)`` (a -> b -> c), or a dict ``{source: target}``.
    An endpoint is a layer (name or position), ``NetPort("Input")`` — a port of the graph —, or
    ``NetPort("layer", "Input2")`` — one port of a layer. A list of sources feeding one layer,
    ``(["a", "b"], "cat")``, connects them to its ports "Input1", "Input2", ... in order.
    Ports left unconnected become ports of the graph, named as on their layer.
    """

    def __init__(self, layers, edges, input=None, inputs=None):
        resolved = _named_layers(layers, "NetGraph")
        self._layers = resolved
        names = [n for n, _ in resolved]

        spec_edges = [{"from": self._endpoint(src, names, "source"), "to": self._endpoint(dst, names, "target")}
                      for src, dst in _edge_pairs(edges)]
        spec = {"type": "NetGraph", "layers": [{"name": n, "net": l._spec} for n, l in resolved],
                "edges": spec_edges}
        decl = {}
        if input is not None:
            decl["Input"] = list(_port_shape(input, "NetGraph: input shape"))
        if inputs is not None:
            if not isinstance(inputs, dict):
                raise TypeError("NetGraph: inputs= takes a dict {port: shape}")
            for port, shape in inputs.items():
                decl[str(port)] = list(_port_shape(shape, f"NetGraph: shape of input {port!r}"))
        if decl:
            spec["inputs"] = decl
        super().__init__(spec, _joined_params(resolved, "NetGraph"))

    @staticmethod
    def _endpoint(e, names, which):
        if isinstance(e, NetPort):
            if e.layer is None:
                return {"layer": None, "port": e.port}
            return {"layer": _layer_name(e.layer, names), "port": e.port}
        if isinstance(e, (str, int, np.integer)) and not isinstance(e, bool):
            return {"layer": _layer_name(e, names), "port": None}
        raise TypeError(f"NetGraph: an edge {which} is a layer name, a position, or a NetPort; given {e!r}")


def _layer_name(layer, names):
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not -len(names) <= int(layer) < len(names):
            raise IndexError(f"NetGraph: layer position {layer} is out of range for {len(names)} layers")
        return names[int(layer)]
    if isinstance(layer, str):
        if layer not in names:
            raise ValueError(f"NetGraph: an edge names no layer {layer!r}; the layers are {', '.join(map(repr, names))}")
        return layer
    raise TypeError(f"NetGraph: edges connect direct layers by name or position; given {layer!r}")


def _edge_pairs(edges):
    """Normalises edges (pairs, chains, dicts, lists of sources) to (source, target) pairs."""
    if isinstance(edges, dict):
        items = list(edges.items())
    elif isinstance(edges, (list, tuple)):
        items = []
        for e in edges:
            if not isinstance(e, (tuple, list)) or len(e) < 2:
                raise TypeError(f"NetGraph: an edge is a pair (source, target) or a chain (a, b, c, ...); given {e!r}")
            items.extend(zip(e[:-1], e[1:]))
    else:
        raise TypeError(f"NetGraph: edges are a list of pairs or chains, or a dict; given {type(edges).__name__}")
    pairs = []
    for src, dst in items:
        if isinstance(dst, list):
            raise TypeError(f"NetGraph: an edge target is one layer or port; given {dst!r}")
        if isinstance(src, list):
            if isinstance(dst, NetPort):
                raise TypeError("NetGraph: a list of sources feeds a layer's ports Input1, Input2, ...; "
                                f"its target must be a layer, given {dst!r}")
            pairs.extend((s, NetPort(dst, f"Input{i + 1}")) for i, s in enumerate(src))
        else:
            pairs.append((src, dst))
    return pairs


def _chain_slice(chain, start, stop, what):
    if not isinstance(chain, NetChain):
        raise TypeError(f"{what} takes a NetChain, given {type(chain).__name__}")
    layers = chain._layers[start:stop]
    if not layers:
        raise ValueError(f"{what}: no layers left (the chain has {len(chain._layers)})")
    input_shape = None
    if not chain._shape_free():
        nodes = chain._core_net().nodes
        prefix = layers[0][0]
        node = next(n for n in nodes if n[0] == prefix or n[0].startswith(prefix + "/"))
        input_shape = tuple(node[2][0])
    new = NetChain(dict(layers) if any(n != str(i) for i, (n, _) in enumerate(chain._layers))
                   else [l for _, l in layers], input=input_shape)
    # Arrays move with their layers (renamed when positions shift).
    renames = {old: new_name for (old, _), (new_name, _) in zip(layers, new._layers)}
    shared = _shared_names(new._spec)
    params = {}
    for path, a in chain._params.items():
        head, _, rest = path.partition("/")
        if path in shared:
            params[path] = a
        elif head in renames:
            params[f"{renames[head]}/{rest}"] = a
    return new._with_params(params)


def _position(chain, spec, what):
    if isinstance(spec, str):
        names = [n for n, _ in chain._layers]
        if spec not in names:
            raise KeyError(f"{what}: the chain has no layer {spec!r}; its layers are {', '.join(map(repr, names))}")
        return names.index(spec) + 1
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return int(spec)
    raise TypeError(f"{what}: expected a layer name or a number of layers, given {spec!r}")


def NetTake(chain, spec):
    """The first layers of a chain: ``NetTake(chain, 2)`` (the first two), ``NetTake(chain, "lin2")`` (up to and
    including "lin2"), ``NetTake(chain, (1, 3))`` (positions 1 and 2, Python's half-open slice)."""
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise TypeError(f"NetTake: a range is (start, stop), given {spec!r}")
        start = _position(chain, spec[0], "NetTake") - isinstance(spec[0], str)  # a named start is included
        return _chain_slice(chain, start, _position(chain, spec[1], "NetTake"), "NetTake")
    return _chain_slice(chain, 0, _position(chain, spec, "NetTake"), "NetTake")


def NetDrop(chain, spec):
    """A chain without its first ``n`` layers (``NetDrop(chain, 1)``), or without its last ones (``-n``), or without
    everything up to and including a named layer."""
    n = _position(chain, spec, "NetDrop")
    if n >= 0:
        return _chain_slice(chain, n, None, "NetDrop")
    return _chain_slice(chain, 0, n, "NetDrop")
