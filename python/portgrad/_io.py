"""Saving and loading nets: one file in safetensors layout, written and read by the C++ core.

Python never parses a file: ``_core.load_file`` checks it (layout, header, spec, arrays against the
net) and hands back the spec and the arrays; this module rebuilds the Python net from them.

Arrays are stored in the dtype the net holds them in (float32, as every net function stores them;
float64 where a net was built with float64 arrays), so a round trip is bit-exact.
"""
from __future__ import annotations

import json
import os

import numpy as np

from . import _core

__all__ = ["load", "save"]


def _arrays(net) -> list:
    """[(path, array)] of every learned array, in the engine's order; all must be set."""
    if net._shape_free():
        if net._params:
            raise ValueError("the net declares no input shape but has arrays; it cannot be saved")
        return []
    paths = [path for path, _shape in net._core_net().params]
    missing = [p for p in paths if p not in net._params]
    if missing:
        raise ValueError(f"the net is not initialised: array {missing[0]!r} has no value; call NetInitialize(net) "
                         "before saving it")
    out = []
    for p in paths:
        a = np.asarray(net._params[p])
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
        out.append((p, np.asarray(a, order="C")))  # (ascontiguousarray would make 0-d arrays 1-d)
    return out


def save(net, path) -> None:
    """Writes ``net`` to ``path`` (one file, safetensors layout), atomically: a temporary file in the
    same directory, fsync, then rename, so an interrupted save leaves ``path`` as it was."""
    from ._net import Net

    if not isinstance(net, Net):
        raise TypeError(f"save takes a net, given {type(net).__name__}")
    # The path's bytes (any file name the system allows, UTF-8 or not); messages escape them.
    _core.save_file(os.fsencode(os.fspath(path)), net._json, _arrays(net))


def to_bytes(net) -> bytes:
    """The bytes ``save`` would write (what a pickled net holds)."""
    return _core.save_bytes(net._json, _arrays(net))


def reduce(net):
    """``Net.__reduce__``: the file's bytes, or for an uninitialised net its spec and arrays."""
    if net._shape_free() or all(p in net._params for p, _ in net._core_net().params):
        return (from_bytes, (to_bytes(net),))
    return (_from_parts, (net._json, {p: np.array(a) for p, a in net._params.items()}))


def _from_parts(spec_json, params):
    from ._net import _frozen
    return _from_spec(json.loads(spec_json), {p: _frozen(a) for p, a in params.items()})


def load(path):
    """The net saved at ``path`` by ``net.save(path)``: a Net of the same structure (a NetChain, a
    layer, ...) with the same arrays, bit for bit. A malformed file raises ValueError."""
    name = os.fsdecode(os.fspath(path))
    try:
        spec_json, _meta, arrays, _state = _core.load_file(os.fsencode(os.fspath(path)))
    except ValueError as e:
        kind = _looks_like(name)
        if kind is None:
            raise
        raise ValueError(f"{e}. It looks like {kind}, not a portgrad file (portgrad reads the files net.save "
                         "writes: safetensors with a portgrad net spec)") from None
    return _rebuild(spec_json, arrays)


_FORMATS = (  # (leading bytes, what such a file is)
    (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.pth checkpoint or a NumPy .npz)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x80", "a Python pickle (a PyTorch model saved with torch.save, or a pickled object)"),
)


def _looks_like(path):
    """What kind of file this is, where its first bytes say (None: no idea)."""
    import stat
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO or a device: it could block
            return None
        with open(path, "rb") as f:
            head = f.read(16)
    except (OSError, ValueError):
        return None
    if head[8:9] == b"{":  # a JSON header after the length: a safetensors file, damaged or not
        return None
    for magic, kind in _FORMATS:
        if head.startswith(magic):
            return kind
    if path.lower().endswith(".onnx") or (head[:1] == b"\x08" and head[2:3] == b"\x12"):
        return "an ONNX model (a protobuf ModelProto)"
    return None


def from_bytes(data: bytes, what="pickled net"):
    spec_json, _meta, arrays, _state = _core.load_bytes(bytes(data), what)
    return _rebuild(spec_json, arrays)


def _rebuild(spec_json, arrays):
    params = {}
    for path, a in arrays:
        a.flags.writeable = False
        params[path] = a
    return _from_spec(json.loads(spec_json), params)


def _layer_classes() -> dict:
    """{spec type: Python class} of every layer class (found by their ``_type``), so that layers added
    later need no entry here."""
    from . import layers
    from ._net import Net

    found = {}
    todo = [Net]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        t = cls.__dict__.get("_type")
        if isinstance(t, str) and t and cls.__module__.startswith(layers.__name__.rsplit(".", 1)[0]):
            found.setdefault(t, cls)
    return found


def _from_spec(spec: dict, params: dict):
    """The Python net of a spec (as built by NetChain and the layer classes) with its arrays."""
    from ._graph import NetGraph
    from ._net import Net, NetChain

    kind = spec.get("type")
    if kind in ("NetChain", "NetGraph"):
        container = NetChain if kind == "NetChain" else NetGraph
        by_layer = {}  # arrays grouped by their first path part once: linear in the number of layers
        for p, a in params.items():
            head, slash, rest = p.partition("/")
            if slash:
                by_layer.setdefault(head, {})[rest] = a
        layers = []
        for entry in spec["layers"]:
            name = entry["name"]
            layers.append((name, _from_spec(entry["net"], by_layer.get(name, {}))))
        net = container.__new__(container)
        net._layers = layers
        Net.__init__(net, spec, params)
        return net
    if kind == "NetMapOperator":
        from .layers_sequence import NetMapOperator
        net = NetMapOperator.__new__(NetMapOperator)
        net._net = _from_spec(spec["net"], params)
        if hasattr(net._net, "_layers"):
            net._layers = net._net._layers
        Net.__init__(net, spec, params)
        return net
    cls = _layer_classes().get(kind, Net)
    net = cls.__new__(cls)
    Net.__init__(net, spec, params)
    return net
