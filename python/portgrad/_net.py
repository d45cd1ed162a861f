"""Nets as values: a spec (pure JSON-able data) plus learned arrays, evaluated by the C++ engine.

Python resolves *what* is asked (ports, arrays, positions) and hands one call to C++, which owns
shapes, plans and arithmetic.
"""
from __future__ import annotations

import copy
import json
import random as _random_module
from collections import OrderedDict

import numpy as np

from . import _gpu

from . import _core

__all__ = ["Net", "NetChain", "NetPort", "NetPortGradient", "All", "NetInitialize", "NetExtract", "NetReplacePart"]


class _AllType:
    """The symbol ``All``: ``NetPortGradient(All)`` asks for every input and array gradient."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return "All"

    def __reduce__(self):
        return (_AllType, ())


All = _AllType()
_random = _random_module.Random()  # fresh Train-mode seeds; independent of the user's `random` state

_NO_IMPOSED: list = []  # never mutated: the imposed-gradient list of calls that impose none


VARYING = "Varying"


def _mark_varying(at_two, at_three):
    """A shape compiled at sequence lengths 2 and 3, with "Varying" where the two differ."""
    return tuple(a if a == b else VARYING for a, b in zip(at_two, at_three))


def _port_shape(value, what):
    """A port's declared shape: as _shape_or_none, and the first dimension may be "Varying" (a
    sequence of any length: ``("Varying", 8)``)."""
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], str):
        if value[0] != VARYING:
            raise ValueError(f'{what}: a dimension is a positive int or, first, "Varying"; given {value!r}')
        return (VARYING, *_shape_or_none(tuple(value[1:]), what))
    return _shape_or_none(value, what)


def _shape_or_none(value, what, allow_auto=False):
    """An int, a tuple/list of ints, or () -> a tuple of ints; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        dims = (int(value),)
    elif isinstance(value, (tuple, list)):
        dims = tuple(value)
    else:
        raise TypeError(f"{what}: expected an int or a tuple of ints, given {value!r}")
    out = []
    for d in dims:
        if d is None and allow_auto:
            d = -1
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"{what}: dimensions must be ints, given {value!r}")
        if int(d) < 1 and not (allow_auto and int(d) == -1):
            raise ValueError(f"{what}: dimensions must be positive, given {value!r}")
        out.append(int(d))
    return tuple(out)


class NetPortGradient:
    """The gradient of a net's outputs with respect to an input port, a learned array, or ``All``.

    ``NetPortGradient("Input")`` — an input port; ``NetPortGradient((0, "Weights"))`` — an array by
    0-based position; ``NetPortGradient(("lin1", "Weights"))`` — by layer name; nested:
    ``("block", 2, "Weights")``; ``NetPortGradient("Weights")`` on a single layer;
    ``NetPortGradient(All)`` — every input and array. As a key of the input dict,
    ``{NetPortGradient("Output"): g}`` imposes the gradient ``g`` on output port "Output".

    ``PerExample=True`` (arrays): the gradient of each example's outputs alone, ``(batch, *array
    shape)``, instead of their sum over the batch (which is its sum over the first axis).
    """

    __slots__ = ("target", "per_example")

    def __init__(self, target, *more, PerExample=False):
        if more:
            raise TypeError(f"NetPortGradient takes one target; for an array of a layer give a tuple: "
                            f"NetPortGradient({(target, *more)!r})")
        if isinstance(target, list):
            target = tuple(target)
        if target == "All":
            target = All
        ok = target is All or isinstance(target, (str, NetSharedArray)) or (
            isinstance(target, tuple) and len(target) >= 1
            and all(isinstance(t, str) or (isinstance(t, (int, np.integer)) and not isinstance(t, bool)) for t in target))
        if not ok:
            raise TypeError("NetPortGradient takes a port or array name (str), a tuple of positions/names ending in "
                            f"an array name, a NetSharedArray, or All; given {target!r}")
        if isinstance(target, tuple):
            target = tuple(int(t) if isinstance(t, np.integer) else t for t in target)
        if PerExample not in (True, False):
            raise TypeError(f"NetPortGradient: PerExample must be True or False, given {PerExample!r}")
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "per_example", bool(PerExample))

    def __setattr__(self, name, value):
        raise AttributeError("NetPortGradient is immutable")

    def __eq__(self, other):
        return isinstance(other, NetPortGradient) and (self.target, self.per_example) == (other.target,
                                                                                           other.per_example)

    def __hash__(self):
        return hash(("NetPortGradient", self.target, self.per_example))

    def __repr__(self):
        return f"NetPortGradient({self.target!r}{', PerExample=True' if self.per_example else ''})"

    def __reduce__(self):
        return (_make_gradient, (self.target, self.per_example))


def _make_gradient(target, per_example):
    return NetPortGradient(target, PerExample=per_example)


class NetPortTangent:
    """Forward mode: a tangent (a direction) imposed on an input or an array, and the tangent it gives
    an output — the Jacobian-vector product J·v, per example.

    As a key of the input dict, ``NetPortTangent("Input"): v`` imposes the tangent ``v`` (shaped as the
    input's data, one per example) on input port "Input"; ``NetPortTangent((0, "Weights")): V`` (or an
    array named as NetPortGradient names it, or a NetSharedArray) imposes ``V`` (the array's shape,
    shared by the batch) on an array. Several imposed tangents add. Asked for,
    ``NetPortTangent("Output")`` is the output's tangent: sum over the imposed v of J_v · v.

        net({"Input": x, NetPortTangent("Input"): v}, NetPortTangent("Output"))

    Second order: ``NetPortTangent(NetPortGradient("Input"))`` is the tangent of that gradient —
    with a tangent v imposed on the input, the Hessian-vector product H v of the summed (or
    output-gradient-weighted) outputs, per example; ``NetPortTangent(NetPortGradient((0, "Weights")))``
    the tangent of an array's (batch-summed) gradient, from tangents on inputs and arrays.
    """

    __slots__ = ("target",)

    def __init__(self, target, *more):
        if more:
            raise TypeError(f"NetPortTangent takes one target; for an array of a layer give a tuple: "
                            f"NetPortTangent({(target, *more)!r})")
        if isinstance(target, list):
            target = tuple(target)
        if isinstance(target, NetPortGradient):
            if target.target is All or target.per_example:
                raise ValueError(f"NetPortTangent({target!r}): the tangent of one gradient at a time (not All, not "
                                 "PerExample)")
            object.__setattr__(self, "target", target)
            return
        ok = isinstance(target, (str, NetSharedArray)) or (
            isinstance(target, tuple) and len(target) >= 1
            and all(isinstance(t, str) or (isinstance(t, (int, np.integer)) and not isinstance(t, bool)) for t in target))
        if not ok:
            raise TypeError("NetPortTangent takes a port name (str), an array (a tuple of positions/names ending in an "
                            f"array name, or a NetSharedArray); given {target!r}")
        if isinstance(target, tuple):
            target = tuple(int(t) if isinstance(t, np.integer) else t for t in target)
        object.__setattr__(self, "target", target)

    def __setattr__(self, name, value):
        raise AttributeError("NetPortTangent is immutable")

    def __eq__(self, other):
        return isinstance(other, NetPortTangent) and self.target == other.target

    def __hash__(self):
        return hash(("NetPortTangent", self.target))

    def __repr__(self):
        return f"NetPortTangent({self.target!r})"

    def __reduce__(self):
        return (NetPortTangent, (self.target,))


class NetPortJacobian:
    """The whole Jacobian of an output with respect to an input port, per example:
    ``net(x, NetPortJacobian("Input"))`` has shape ``(batch, *output_shape, *input_shape)`` (no batch
    axis for one example). ``NetPortJacobian("Input", "Out")`` names the output; without one, a net
    with several outputs gives a dict {output name: Jacobian}.

    ``Method="Forward"`` computes it a column at a time (one tangent per input element),
    ``"Reverse"`` a row at a time (one output gradient per output element); by default the one with
    fewer passes. Both run every direction of every example in one batched evaluation and give the
    same numbers. Jacobians are taken in Test mode.

    Arrays too, named as NetPortGradient names them: ``NetPortJacobian((0, "Weights"))`` is
    ``(batch, *output_shape, *array_shape)``, each example's own (reverse mode, from per-example
    array gradients).
    """

    __slots__ = ("target", "output", "method")

    def __init__(self, target, output=None, *, Method=None):
        if isinstance(target, list):
            target = tuple(target)
        NetPortGradient(target)  # the same names as a gradient's (checks the form)
        if target is All:
            raise ValueError("NetPortJacobian takes one input port or array, not All")
        if output is not None and not isinstance(output, str):
            raise TypeError(f"NetPortJacobian: the output is named by a str, given {output!r}")
        if Method not in (None, "Forward", "Reverse"):
            raise ValueError(f"NetPortJacobian: Method must be 'Forward', 'Reverse' or None (chosen by size), "
                             f"given {Method!r}")
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "method", Method)

    def __setattr__(self, name, value):
        raise AttributeError("NetPortJacobian is immutable")

    def __eq__(self, other):
        return isinstance(other, NetPortJacobian) and (self.target, self.output, self.method) == (
            other.target, other.output, other.method)

    def __hash__(self):
        return hash(("NetPortJacobian", self.target, self.output, self.method))

    def __repr__(self):
        extra = (f", {self.output!r}" if self.output is not None else "") + (
            f", Method={self.method!r}" if self.method is not None else "")
        return f"NetPortJacobian({self.target!r}{extra})"

    def __reduce__(self):
        return (_make_jacobian, (self.target, self.output, self.method))


def _make_jacobian(target, output, method):
    return NetPortJacobian(target, output, Method=method)


class NetPortHessian:
    """The Hessian of an output with respect to an input port, per example:
    ``net(x, NetPortHessian("Input"))`` has shape ``(batch, *input_shape, *input_shape)``. Of the
    sum of the outputs' elements (for a scalar output, of that output); ``NetPortHessian("Input",
    "Out")`` takes one output port (the sum of its elements). Built from Hessian-vector products
    (forward over reverse), one per input element, in one batched evaluation; Test mode. For small
    inputs: the result has batch * n^2 elements."""

    __slots__ = ("target", "output")

    def __init__(self, target, output=None):
        if not isinstance(target, str):
            raise NotImplementedError(f"NetPortHessian({target!r}): Hessians with respect to arrays are not "
                                      "implemented yet (their Hessian-vector products are: NetPortTangent("
                                      "NetPortGradient(array)) with a tangent imposed on the array)")
        if output is not None and not isinstance(output, str):
            raise TypeError(f"NetPortHessian: the output is named by a str, given {output!r}")
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "output", output)

    def __setattr__(self, name, value):
        raise AttributeError("NetPortHessian is immutable")

    def __eq__(self, other):
        return isinstance(other, NetPortHessian) and (self.target, self.output) == (other.target, other.output)

    def __hash__(self):
        return hash(("NetPortHessian", self.target, self.output))

    def __repr__(self):
        return f"NetPortHessian({self.target!r}{f', {self.output!r}' if self.output is not None else ''})"

    def __reduce__(self):
        return (NetPortHessian, (self.target, self.output))


class NetSharedArray:
    """``NetSharedArray("w")``: an array that several layers use (weight tying), as Wolfram's
    NetSharedArray. Give it where a layer takes an array — ``LinearLayer(8, weights=NetSharedArray("w"))``
    — and every layer naming "w" uses one array, of one shape. It is named by this object everywhere
    an array is: ``NetPortGradient(NetSharedArray("w"))`` (the gradient summed over every use),
    ``NetExtract``, ``NetReplacePart``, ``net.arrays``; chains and graphs keep one copy however
    deep its layers are."""

    __slots__ = ("name",)

    def __init__(self, name):
        if not isinstance(name, str) or not name:
            raise TypeError(f"NetSharedArray takes a non-empty name (str), given {name!r}")
        object.__setattr__(self, "name", name)

    def __setattr__(self, name, value):
        raise AttributeError("NetSharedArray is immutable")

    def __eq__(self, other):
        return isinstance(other, NetSharedArray) and self.name == other.name

    def __hash__(self):
        return hash(("NetSharedArray", self.name))

    def __repr__(self):
        return f"NetSharedArray({self.name!r})"

    def __reduce__(self):
        return (NetSharedArray, (self.name,))


def _shared_option(what, **arrays):
    """{array name: NetSharedArray or None} of a layer's options -> its spec's "shared" entry."""
    shared = {}
    for array, value in arrays.items():
        if isinstance(value, NetSharedArray):
            shared[array] = value.name
        elif value is not None:
            raise TypeError(f"{what}: {array.lower()}= takes a NetSharedArray (or None), given {value!r}")
    return {"shared": shared} if shared else {}


def _shared_names(spec) -> set:
    """The names of the shared arrays a spec's layers use, at any depth."""
    names = set()
    stack = [spec]
    while stack:
        s = stack.pop()
        if isinstance(s, dict):
            names.update(s.get("shared", {}).values() if isinstance(s.get("shared"), dict) else ())
            stack.extend(v for k, v in s.items() if k != "shared")
        elif isinstance(s, list):
            stack.extend(s)
    return names


def _joined_params(resolved, kind) -> dict:
    """The arrays of layers joined into one net: each layer's own under "name/...", and each shared
    array once, under its name (layers that share it must agree on its values)."""
    params = {}
    for name, layer in resolved:
        shared = _shared_names(layer._spec)
        for path, a in layer._params.items():
            if path not in shared:
                params[f"{name}/{path}"] = a
            elif path in params and not np.array_equal(params[path], a):
                raise ValueError(f"{kind}: NetSharedArray({path!r}) has different values in two of its layers; give it "
                                 f"one value (NetReplacePart(net, {{NetSharedArray({path!r}): values}}))")
            else:
                params[path] = a
    return params


class NetPort:
    """A port: ``NetPort("Input")`` is a port of the net itself; ``NetPort("layer", "Output")`` (or
    ``NetPort(("block", "act"), "Output")``, positions allowed) is a port of a layer inside it.
    As a request, ``net(x, NetPort(("block", "act"), "Output"))`` returns that internal value."""

    __slots__ = ("layer", "port")

    def __init__(self, *args):
        if len(args) == 1:
            layer, port = None, args[0]
        elif len(args) == 2:
            layer, port = args
        else:
            raise TypeError("NetPort takes a port name, or a layer (name, position or tuple of them) and a port name")
        if not isinstance(port, str):
            raise TypeError(f"NetPort: the port name must be a str, given {port!r}")
        if isinstance(layer, list):
            layer = tuple(layer)
        if not (layer is None or isinstance(layer, (str, int, tuple))) or isinstance(layer, bool):
            raise TypeError(f"NetPort: a layer is a name, a 0-based position, or a tuple of them; given {layer!r}")
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "port", port)

    def __setattr__(self, name, value):
        raise AttributeError("NetPort is immutable")

    def __eq__(self, other):
        return isinstance(other, NetPort) and (self.layer, self.port) == (other.layer, other.port)

    def __hash__(self):
        return hash(("NetPort", self.layer, self.port))

    def __repr__(self):
        return f"NetPort({self.port!r})" if self.layer is None else f"NetPort({self.layer!r}, {self.port!r})"

    def __reduce__(self):
        return (NetPort, (self.port,) if self.layer is None else (self.layer, self.port))


class Net:
    """A net: an immutable spec plus its learned arrays. Call it to evaluate.

    ``net(x)``, ``net(x, spec)``, ``net({"Input": x, "Target": t}, spec)``; ``spec`` is an output port
    name, a ``NetPortGradient``, or a list of these (then a dict keyed by them is returned).
    Options: ``WorkingPrecision`` "Real32" (default) or "Real64"; ``TargetDevice`` "CPU" (default),
    "GPU" or ("GPU", i); ``DeviceResults`` True to get GPU results as DeviceArrays (DLPack,
    __cuda_array_interface__), False for NumPy arrays, None (default) for device results exactly
    when an input was a GPU array (CuPy, PyTorch CUDA, DeviceArray); ``NetEvaluationMode`` "Test"
    (default) or "Train" (dropout on, batch statistics);
    ``RandomSeeding`` an int for reproducible Train-mode randomness (default: fresh each call).
    No call changes the net: Train mode uses each batch's own statistics for that call, and moving
    statistics change only in training, which returns a new net.
    """

    def __init__(self, spec: dict, params: dict | None = None):
        self._spec = spec
        self._params = dict(params or {})
        self._json = json.dumps(spec, separators=(",", ":"))
        # validates the spec; [(port, shape or None)], a varying length as "Varying"
        self._declared = [(name, None if shape is None else tuple(VARYING if d == -1 else d for d in shape))
                          for name, shape in _core.declared_inputs(self._json)]
        self._free = bool(self._declared) and all(shape is None for _name, shape in self._declared)
        self._varying = tuple(name for name, shape in self._declared if shape and shape[0] == VARYING)
        # Bounded caches (least recently used out): a service that sees every spec, option and data
        # shape once must not grow without end.
        # input-shape key -> _core.Net with arrays loaded (a varying net: one per sequence length seen)
        self._compiled = _Lru(32 if self._varying else 16)
        self._requests = _Lru(256)   # (spec, imposed names, options, shape key) -> resolved request
        self._fast = _Lru(64)        # (spec, options) -> (core net, request, assemble) for net(array, spec)
        self._hot = None             # the last of those with one result: (key, run_pick, request, kind, index)
        if self._declared and all(shape is not None for _name, shape in self._declared):
            self._core_net()  # every shape is known: an inconsistent net is an error now, not at its first call
            if self._varying:
                self._check_varying()

    # ----------------------------------------------------------------- structure
    def _with_params(self, params: dict) -> "Net":
        return self._with_spec(self._spec, params)

    def _with_spec(self, spec: dict, params: dict) -> "Net":
        """A copy (same class and structure) with another spec and other arrays."""
        new = copy.copy(self)
        Net.__init__(new, spec, params)
        return new

    def _core_net(self, data_shapes=None) -> "_core.Net":
        """The compiled engine for this net; `data_shapes` gives ports' shapes for undeclared nets."""
        if data_shapes is None and self._varying:  # the structure: as for sequences of length 2
            data_shapes = self._probe_shapes(2)
        key = None if data_shapes is None else tuple(data_shapes)
        cnet = self._compiled.get(key)
        if cnet is None:
            cnet = _core.Net(self._json, [] if data_shapes is None else list(data_shapes))
            for index, (path, _shape) in enumerate(cnet.params):
                array = self._params.get(path)
                if array is not None:
                    cnet.set_param(index, array)
            self._compiled[key] = cnet
        return cnet

    def _declared_inputs(self):
        return self._declared

    # ----------------------------------------------------------------- "Varying" lengths
    # A port declared ("Varying", ...) is compiled for each length its data has (plans are cached per
    # length); a batch of sequences of different lengths is evaluated as one batch per length.
    def _probe_shapes(self, length):
        return tuple((name, (length, *shape[1:])) for name, shape in self._declared if name in self._varying)

    def _check_varying(self):
        """An array whose shape follows the sequence length is a net that only fits one length."""
        two, three = self._core_net(), self._core_net(self._probe_shapes(3))
        for (path, s2), (_, s3) in zip(two.params, three.params):
            if tuple(s2) != tuple(s3):
                raise ValueError(
                    f"array {path!r} would have a shape that follows the sequence length ({tuple(s2)} for length 2, "
                    f"{tuple(s3)} for length 3): a layer that reads a \"Varying\" sequence as one vector (LinearLayer "
                    "flattens its input) fits one length only; apply it to every element with NetMapOperator(layer), "
                    "or take an element first (SequenceLastLayer())")

    def _varying_shapes(self, inputs):
        """((port, one example's shape), ...) of the varying ports, from their data (one sequence, or a
        batch of sequences of one length), with clear errors."""
        shapes = []
        for (name, declared), a in zip(self._declared, inputs):
            if name not in self._varying:
                continue
            rank = len(declared)
            example = tuple(a.shape) if a.ndim == rank else tuple(a.shape[1:]) if a.ndim == rank + 1 else None
            want = "(n, " + ", ".join(str(d) for d in declared[1:]) + ")" if rank > 1 else "(n,)"
            if example is None or example[1:] != declared[1:]:
                raise ValueError(f"port {name!r}: expected a sequence of shape {want} (any length n), a batch of "
                                 f"such sequences of one length, or a list of sequences; given shape {tuple(a.shape)}")
            if example[0] < 1:
                raise ValueError(f"port {name!r}: a sequence of length 0; every sequence needs at least one element")
            shapes.append((name, example))
        return tuple(shapes)

    def _call_varying(self, data, spec, options):
        """net(data, spec) where a varying port is given a list of sequences: one evaluation per group
        of equal lengths, results put back in the caller's order. Per-example results come back as a
        list (one array per sequence, each with its own length), batch-summed array gradients as one
        array (the groups' sums added in a fixed order)."""
        names = self._declared_inputs()
        if not isinstance(data, dict):
            if len(names) != 1:
                raise ValueError(f"the net has {len(names)} input ports ({', '.join(repr(n) for n, _ in names)}); "
                                 "pass a dict {port: array}")
            data = {names[0][0]: data}
        in_names = {n for n, _ in names}

        def per_example(key):  # data the batch splits (the rest, a tangent on an array, all groups share)
            return isinstance(key, (str, NetPortGradient)) or (isinstance(key, NetPortTangent) and
                                                                isinstance(key.target, str) and key.target in in_names)

        batch = {len(v) for k, v in data.items() if k in self._varying and isinstance(v, (list, tuple))}
        if len(batch) != 1:
            raise ValueError("the lists of sequences given for the \"Varying\" ports " +
                             ", ".join(repr(k) for k in self._varying) + " must have one length (the batch size); "
                             f"given lengths {sorted(batch)}")
        batch = batch.pop()
        if batch == 0:
            raise ValueError("an empty list of sequences: a batch needs at least one example")

        def example(key, value, i):
            if isinstance(value, (list, tuple)):
                if len(value) != batch:
                    raise ValueError(f"{key!r}: a list of {len(value)} examples for a batch of {batch}")
                return _as_array(value[i], key)
            value = _as_array(value, key)
            if value.ndim == 0 or len(value) != batch:
                raise ValueError(f"{key!r}: an array of shape {value.shape} for a batch of {batch} sequences; give "
                                 "one example per sequence (a list, or an array with the batch first)")
            return value[i]

        split = {k: [example(k, v, i) for i in range(batch)] for k, v in data.items() if per_example(k)}
        groups = {}  # (each varying port's length) -> the examples with those lengths, in order of appearance
        declared = dict(names)
        for i in range(batch):
            lengths = []
            for k in self._varying:
                if k not in split:
                    raise ValueError(f"no data for input port {k!r}")
                x, want = split[k][i], declared[k]
                if x.ndim != len(want) or x.shape[1:] != want[1:] or x.shape[0] < 1:
                    raise ValueError(f"port {k!r}: sequence {i} has shape {x.shape}; each sequence is "
                                     f"(n, {', '.join(map(str, want[1:]))}) with n >= 1" if len(want) > 1 else
                                     f"port {k!r}: sequence {i} has shape {x.shape}; each sequence is (n,) with n >= 1")
                lengths.append(x.shape[0])
            groups.setdefault(tuple(lengths), []).append(i)
        if (len(groups) > 1 and options.get("NetEvaluationMode") == "Train"
                and '"BatchNormalizationLayer"' in self._json):
            raise ValueError("NetEvaluationMode='Train' with batch statistics (BatchNormalizationLayer) over sequences "
                             f"of {len(groups)} different lengths: they are evaluated one length at a time, so the "
                             "statistics would not be the whole batch's; evaluate one length at a time, or in 'Test' "
                             "mode")
        parts = []
        for indices in groups.values():
            part = {k: (np.stack([split[k][i] for i in indices]) if k in split else v) for k, v in data.items()}
            parts.append(self._call(part, spec, **options))

        def merge(results, is_summed):
            if isinstance(results[0], dict):
                return {k: merge([r[k] for r in results], is_summed or _is_batch_summed(k, in_names))
                        for k in results[0]}
            if is_summed:
                total = results[0]
                for r in results[1:]:
                    total = total + r
                return total
            out = [None] * batch
            for indices, r in zip(groups.values(), results):
                for j, i in enumerate(indices):
                    out[i] = r[j]
            return out

        return merge(parts, spec is not None and not isinstance(spec, (list, tuple)) and _is_batch_summed(spec, in_names))

    def _shape_free(self) -> bool:
        """True when no input port has a declared shape: the data's shapes are then taken as one example.
        A net without input ports (a ConstantArrayLayer) is not shape-free: its shapes are all known."""
        return self._free

    def _structure_net(self):
        if self._shape_free():
            raise ValueError(f"{self._type_name()} has no declared input shape, so its arrays have no shapes yet; "
                             "declare one with input=... (e.g. LinearLayer(3, input=2))")
        return self._core_net()

    def _type_name(self):
        return self._spec.get("type", "Net")

    @property
    def input_ports(self) -> dict:
        """{port: per-example shape} of the input ports (None where it is only known from data)."""
        if self._shape_free():
            return {name: None for name, _ in self._declared_inputs()}
        declared = dict(self._declared)
        return {name: declared[name] if name in self._varying else shape
                for name, shape, _bound in self._core_net().inputs}

    @property
    def output_ports(self) -> dict:
        """{port: per-example shape} of the output ports ("Varying" where it follows a sequence's length)."""
        outputs = {name: shape for name, shape in self._structure_net().outputs}
        if self._varying:
            longer = dict(self._core_net(self._probe_shapes(3)).outputs)
            outputs = {name: _mark_varying(shape, longer[name]) for name, shape in outputs.items()}
        return outputs

    @property
    def arrays(self) -> dict:
        """{path: shape} of every array; paths look like "0/Weights" or "block/2/Biases", and a shared
        array is keyed by its NetSharedArray."""
        return {_array_key(info): tuple(info["shape"]) for info in self._structure_net().param_info}

    def __repr__(self):
        return _describe(self)

    # ----------------------------------------------------------------- files (see _io.py)
    def save(self, path) -> None:
        """Writes the net to ``path`` (safetensors layout, atomically); ``portgrad.load(path)`` reads it."""
        from . import _io
        _io.save(self, path)

    def __reduce__(self):
        # A pickle holds the bytes of the saved file (an uninitialised net: its spec and the arrays it has).
        from . import _io
        return _io.reduce(self)

    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        return self.__copy__()  # nets are immutable values: a shallow copy shares nothing mutable

    # ----------------------------------------------------------------- evaluation
    def __call__(self, data=None, spec=None, *, WorkingPrecision="Real32", TargetDevice="CPU", NetEvaluationMode="Test",
                 RandomSeeding=None, DeviceResults=None):
        # The common call — one array, a request seen before, Test mode — goes straight to the engine;
        # the last such request is compared first (a tuple compare: identical objects, the usual case,
        # cost no __eq__), the others are found in the LRU by their key.
        if type(data) is np.ndarray and RandomSeeding is None and DeviceResults is None:
            hot = self._hot
            if hot is not None and hot[0] == (spec, WorkingPrecision, TargetDevice, NetEvaluationMode):
                return hot[1](hot[2], data, hot[3], hot[4])
            try:
                cnet, prepared, assemble = self._fast[(_spec_key(spec), WorkingPrecision, TargetDevice,
                                                       NetEvaluationMode)]
            except (KeyError, TypeError):
                pass
            else:
                if type(spec) is not list and type(assemble) is _Pick:  # (a list can change between calls)
                    self._hot = ((spec, WorkingPrecision, TargetDevice, NetEvaluationMode), cnet.run_pick, prepared,
                                 assemble.kind, assemble.index)
                return assemble(*cnet.run(prepared, [data], _NO_IMPOSED, 0))
        return self._call(data, spec, WorkingPrecision, TargetDevice, NetEvaluationMode, RandomSeeding, DeviceResults)

    def _call(self, data, spec, WorkingPrecision, TargetDevice, NetEvaluationMode, RandomSeeding, DeviceResults=None,
              directions=1):
        if self._varying and any(isinstance(v, (list, tuple)) for k, v in
                                 (data.items() if isinstance(data, dict) else [(self._varying[0], data)])
                                 if k in self._varying):
            return self._call_varying(data, spec, dict(
                WorkingPrecision=WorkingPrecision, TargetDevice=TargetDevice, NetEvaluationMode=NetEvaluationMode,
                RandomSeeding=RandomSeeding, DeviceResults=DeviceResults))
        # directions > 1 (NetPortJacobian's forward mode): every imposed input tangent is (directions,
        # batch, ...) and every output tangent comes back so, from one forward pass.
        if isinstance(spec, (NetPortJacobian, NetPortHessian)) or (
                isinstance(spec, (list, tuple)) and any(isinstance(s, (NetPortJacobian, NetPortHessian)) for s in spec)):
            from ._jacobian import evaluate_with_jacobians
            return evaluate_with_jacobians(self, data, spec, dict(
                WorkingPrecision=WorkingPrecision, TargetDevice=TargetDevice, NetEvaluationMode=NetEvaluationMode,
                RandomSeeding=RandomSeeding, DeviceResults=DeviceResults))
        fast_key = (_spec_key(spec), WorkingPrecision, TargetDevice, NetEvaluationMode)
        options = _core.evaluation_options(WorkingPrecision, TargetDevice, NetEvaluationMode)
        device = options.device
        if DeviceResults not in (None, True, False):
            raise TypeError(f"DeviceResults must be None, True or False, given {DeviceResults!r}")
        if device == "GPU":
            _gpu.module()  # loads and registers the backend, or says why there is none
        elif DeviceResults:
            raise ValueError('DeviceResults=True needs TargetDevice="GPU"')
        train = options.train
        if RandomSeeding is None:
            seed = _random.getrandbits(64) if train else 0
        elif isinstance(RandomSeeding, (int, np.integer)) and not isinstance(RandomSeeding, bool):
            seed = int(RandomSeeding) & 0xFFFFFFFFFFFFFFFF
        else:
            raise TypeError(f"RandomSeeding must be an int or None, given {RandomSeeding!r}")

        names = self._declared_inputs()
        imposed_in = tangents_in = ()
        if isinstance(data, dict):
            arrays = {}
            imposed_list, tangent_list = [], []
            for key, value in data.items():
                if isinstance(key, NetPortGradient):
                    imposed_list.append((key.target, value))
                elif isinstance(key, NetPortTangent):
                    if isinstance(key.target, NetPortGradient):
                        raise TypeError(f"{key!r} is a result (the Hessian-vector product), not something to impose; "
                                        "impose a tangent on an input or array and ask for it: "
                                        "net({'Input': x, NetPortTangent('Input'): v}, "
                                        "NetPortTangent(NetPortGradient('Input')))")
                    tangent_list.append((key.target, value))
                elif isinstance(key, str):
                    arrays[key] = value
                else:
                    raise TypeError("input keys must be port names (str), NetPortGradient(output port) or "
                                    f"NetPortTangent(input port or array); given {key!r}")
            in_set = {n for n, _ in names}  # the engine takes the inputs' tangents first, then the arrays'
            tangents_in = tuple(sorted(tangent_list, key=lambda tv: not (isinstance(tv[0], str) and tv[0] in in_set)))
            unknown = [k for k in arrays if k not in {n for n, _ in names}]
            if unknown and not self._shape_free() and unknown[0] in {n for n, _ in self._core_net().outputs}:
                raise KeyError(f"{unknown[0]!r} is an output port, not an input; to impose a gradient on it, use "
                               f"NetPortGradient({unknown[0]!r}) as the key: {{NetPortGradient({unknown[0]!r}): g}}")
            if unknown:
                raise KeyError(f"the net has no input port {unknown[0]!r}; its input ports are "
                               f"{', '.join(repr(n) for n, _ in names)}")
            missing = [n for n, _ in names if n not in arrays]
            if missing:
                raise ValueError(f"no data for input port {missing[0]!r}; pass a dict with "
                                 f"{', '.join(repr(n) for n, _ in names)}")
            inputs = [_as_array(arrays[n], n) for n, _ in names]
            imposed_in = tuple(imposed_list)
        elif data is None and not names:  # a net without inputs: one example
            inputs = []
        else:
            if len(names) != 1:
                raise ValueError(f"the net has {len(names)} input ports ({', '.join(repr(n) for n, _ in names)}); "
                                 "pass a dict {port: array}")
            inputs = [_as_array(data, names[0][0])]

        if self._shape_free():
            shapes = tuple((n, a.shape) for (n, _), a in zip(names, inputs))
        else:
            shapes = self._varying_shapes(inputs) if self._varying else None
        cnet = self._core_net(shapes)

        imposed_names = tuple(t for t, _ in imposed_in)
        tangent_names = tuple(t for t, _ in tangents_in)
        key = (_spec_key(spec), imposed_names, tangent_names, options.bits, device, options.device_index, train, shapes)
        try:
            req = self._requests.get(key)
        except TypeError:  # an unhashable spec (a list): resolve it each time
            key, req = None, None
        if req is None:
            names, assemble = _resolve(self, cnet, spec, imposed_names, tangent_names)
            if imposed_names and not names.input_grads and not names.array_grads and not names.grad_tangent_inputs \
                    and not names.grad_tangent_arrays:
                raise ValueError(f"a gradient is imposed on {', '.join(repr(n) for n in imposed_names)} but no gradient is "
                                 "asked for, so it would be ignored; ask for one, e.g. "
                                 "net({..., NetPortGradient('Output'): g}, NetPortGradient('Input'))")
            if tangent_names and not names.tangent_outputs and not names.grad_tangent_inputs and \
                    not names.grad_tangent_arrays:
                raise ValueError(f"a tangent is imposed on {', '.join(repr(n) for n in tangent_names)} but no tangent is "
                                 "asked for, so it would be ignored; ask for an output's, e.g. "
                                 "net({'Input': x, NetPortTangent('Input'): v}, NetPortTangent('Output'))")
            asked = list(names.tangent_outputs) + list(names.grad_tangent_inputs) + list(names.grad_tangent_arrays)
            if asked and not tangent_names:
                raise ValueError(f"NetPortTangent({asked[0]!r}) is asked for but no tangent is imposed; "
                                 "impose one as a key of the input dict: "
                                 "net({'Input': x, NetPortTangent('Input'): v}, NetPortTangent('Output'))")
            req = (cnet.request(options, names), assemble)
            if key is not None:
                self._requests[key] = req
        prepared, assemble = req
        imposed_arrays = [_as_array(v, f"NetPortGradient({t!r})") for t, v in imposed_in]
        tangent_arrays = [_as_array(v, f"NetPortTangent({t!r})") for t, v in tangents_in]
        if DeviceResults is None:  # results live where the data came from
            DeviceResults = device == "GPU" and any(_gpu.is_device_array(a) for a in inputs + imposed_arrays
                                                    + tangent_arrays)
        results = cnet.run(prepared, inputs, imposed_arrays, seed, DeviceResults, tangent_arrays, directions)
        if (key is not None and not train and not self._free and not self._varying and not imposed_in
                and type(data) is np.ndarray
                and not DeviceResults):
            self._fast[fast_key] = (cnet, prepared, assemble)
        return assemble(*results)


class _Pick:
    """The assembly of a request with one result: that result, run()[kind][index] (kind 0 outputs, 1
    input gradients, 2 array gradients, 4 output tangents, 5 and 6 the gradients' tangents). A net
    remembers its last such request, and repeats it through _core.Net.run_pick."""

    __slots__ = ("kind", "index")

    def __init__(self, kind, index):
        self.kind, self.index = kind, index

    def __call__(self, *results):
        return results[self.kind][self.index]


def _is_batch_summed(item, in_names) -> bool:
    """Whether a request item's result is summed over the batch (an array's gradient, or its tangent)
    rather than one per example; dict keys of a result (NetPortGradient(All)'s) are items too."""
    if isinstance(item, NetPortTangent):
        item = item.target
        if not isinstance(item, NetPortGradient):
            return False
    return (type(item) is NetPortGradient and not item.per_example and item.target is not All
            and not (isinstance(item.target, str) and item.target in in_names))


class _Lru:
    """A mapping that keeps its `size` most recently used entries; get and set are O(1). Like a dict,
    an unhashable key raises TypeError."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size):
        self._entries = OrderedDict()
        self._size = size

    def __getitem__(self, key):
        value = self._entries[key]
        self._entries.move_to_end(key)
        return value

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key, value):
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self):
        return len(self._entries)


_LIST = object()  # marks a request given as a list in cache keys


def _spec_key(spec):
    """A request as a cache key: a list (the README's spelling of several results) becomes a tuple
    that no tuple request can equal, so it is resolved once, not on every call."""
    return (_LIST, *spec) if type(spec) is list else spec


def _as_array(value, port):
    if isinstance(value, np.ndarray) or _gpu.is_device_array(value):
        return value
    if getattr(value, "requires_grad", False) and callable(getattr(value, "detach", None)):
        # A PyTorch tensor in an autograd graph: NumPy cannot take it, and portgrad computes the
        # gradients itself
        raise TypeError(f"port {port!r}: a PyTorch tensor that requires grad cannot be read as data; pass "
                        "tensor.detach() (portgrad computes gradients itself: ask with NetPortGradient)")
    try:
        return np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as e:
        if isinstance(value, (list, tuple)) and len(value) > 1:
            shapes = [np.shape(v) if isinstance(v, (np.ndarray, list, tuple)) else None for v in value]
            if all(s is not None for s in shapes) and len(set(shapes)) > 1:
                seen = ", ".join(str(s) for s in dict.fromkeys(shapes))
                raise ValueError(f"port {port!r}: a ragged batch (examples of shapes {seen}): every example of a "
                                 "batch has the port's shape; for sequences of different lengths declare the port's "
                                 "length \"Varying\" (input=(\"Varying\", ...))") from None
        raise ValueError(f"port {port!r}: cannot make an array of the given data ({e})") from None


def _resolve(net: Net, cnet, spec, imposed_names, tangent_names=()):
    """Turns a request spec into what the engine resolves (names: ports, array paths and probes) plus a
    function that shapes the result."""
    in_names = [name for name, _shape, _bound in cnet.inputs]
    in_bounds = [bound for _name, _shape, bound in cnet.inputs]
    out_names = [name for name, _shape in cnet.outputs]
    param_paths = [path for path, _shape in cnet.params]

    for t in imposed_names:
        if not isinstance(t, str):
            raise KeyError(f"NetPortGradient({t!r}) as an input key imposes a gradient on an output port; the net's "
                           f"output ports are {', '.join(repr(n) for n in out_names)}")

    outputs, input_grads, param_grads, probes, tangent_outputs = [], [], [], [], []
    grad_tangent_inputs, grad_tangent_arrays = [], []
    # Imposed tangents: input ports by name, arrays as NetPortGradient names them (in the order the
    # engine takes their values: the inputs', then the arrays').
    for t in tangent_names:
        if isinstance(t, str) and t in out_names and t not in in_names:
            raise KeyError(f"NetPortTangent({t!r}) as an input key imposes a tangent on an input port (or an array); "
                           f"{t!r} is an output port, whose tangent is asked for: net({{..., NetPortTangent('Input'): v}}, "
                           f"NetPortTangent({t!r}))")
    tangent_inputs = [t for t in tangent_names if isinstance(t, str) and t in in_names]
    tangent_arrays = [_array_path(net, t, in_names, param_paths) for t in tangent_names if t not in tangent_inputs]
    if len(set(tangent_inputs)) + len(set(tangent_arrays)) != len(tangent_names):
        raise ValueError("a tangent is imposed twice on the same input or array")

    def want(lst, index):
        if index not in lst:
            lst.append(index)
        return lst.index(index)

    def one(item):
        """-> a getter (outs, igs, pgs) -> result for one request item."""
        if isinstance(item, str):  # checked by the engine's resolver
            return _Pick(0, want(outputs, item))
        if isinstance(item, NetPort):
            if item.layer is None:
                return one(item.port)
            layer = item.layer if isinstance(item.layer, tuple) else (item.layer,)
            return _Pick(3, want(probes, ("/".join(_walk(net, layer)), item.port)))
        if isinstance(item, NetPortTangent) and isinstance(item.target, NetPortGradient):
            g = item.target.target
            if isinstance(g, str) and g in in_names:
                if in_bounds[in_names.index(g)]:
                    raise ValueError(f"{item!r}: port {g!r} takes integer indices and has no gradient")
                return _Pick(5, want(grad_tangent_inputs, g))
            return _Pick(6, want(grad_tangent_arrays, _array_path(net, g, in_names, param_paths)))
        if isinstance(item, NetPortTangent):
            if not isinstance(item.target, str) or item.target not in out_names:
                raise KeyError(f"{item!r}: a tangent is asked for on an output port (it is imposed on an input or an "
                               f"array as a key of the input dict); the net's output ports are "
                               f"{', '.join(repr(n) for n in out_names)}")
            return _Pick(4, want(tangent_outputs, item.target))
        if isinstance(item, NetPortGradient):
            if item.target is All:
                getters = {}
                for j, name in enumerate(in_names):
                    if in_bounds[j] == 0:
                        getters[NetPortGradient(name)] = one(NetPortGradient(name))
                for info in cnet.param_info:
                    if not info["learnable"]:
                        continue
                    # arrays keyed by tuple paths (or NetSharedArray), so they never look like port names
                    key = _array_key(info)
                    key = key if isinstance(key, NetSharedArray) else tuple(_path_key(net, key))
                    getters[NetPortGradient(key, PerExample=item.per_example)] = _param_getter(info["path"],
                                                                                              item.per_example)
                return lambda o, i, p, q, t, gi, gp: {key: g(o, i, p, q, t, gi, gp) for key, g in getters.items()}
            if isinstance(item.target, str) and item.target in in_names:
                if item.per_example:
                    raise ValueError(f"{item!r}: an input port's gradient is per example already; PerExample is for "
                                     "arrays")
                return _Pick(1, want(input_grads, item.target))
            path = _array_path(net, item.target, in_names, param_paths)
            return _param_getter(path, item.per_example)
        raise TypeError("a request is an output port name, a NetPort, a NetPortGradient, a NetPortTangent, or a list of "
                        "these; "
                        f"given {item!r}")

    def _param_getter(path, per_example=False):
        return _Pick(2, want(param_grads, (path, per_example)))

    if spec is None:
        outputs[:] = out_names
        if len(out_names) == 1:
            assemble = _Pick(0, 0)
        else:
            assemble = lambda o, i, p, q, t, gi, gp: dict(zip(out_names, o))  # noqa: E731
    elif isinstance(spec, (list, tuple)) and not isinstance(spec, str):
        items = list(spec)
        getters = [one(item) for item in items]
        assemble = lambda o, i, p, q, t, gi, gp: {item: g(o, i, p, q, t, gi, gp) for item, g in zip(items, getters)}  # noqa: E731
    else:
        assemble = one(spec)
    # The engine takes imposed tangents in its order (inputs, then arrays): the caller's values follow it.
    names = _core.RequestNames(outputs, input_grads, [path for path, _ in param_grads], list(imposed_names), probes,
                               tangent_inputs, tangent_arrays, tangent_outputs,
                               [flag for _, flag in param_grads] if any(f for _, f in param_grads) else [],
                               grad_tangent_inputs, grad_tangent_arrays)
    return names, assemble


def _array_key(info):
    """How Python names an array of param_info: its path, or its NetSharedArray."""
    return NetSharedArray(info["path"]) if info["shared"] else info["path"]


def _path_key(net, path):
    """An array's path as the NetPortGradient key that requests exactly it again: a layer is named
    by its position where its name is that position (a list entry), and by its name otherwise (a
    layer named "1" at position 0 stays "1")."""
    *layer_names, array = path.split("/")
    key, current = [], net
    for name in layer_names:
        layers = current._layers
        position = next(k for k, (n, _) in enumerate(layers) if n == name)
        key.append(position if name == str(position) else name)
        current = layers[position][1]
    return key + [array]


def _array_path(net: Net, target, in_names, param_paths) -> str:
    """Resolves an array reference ("Weights", (0, "Weights"), ("block", 2, "Weights"),
    NetSharedArray("w")) to its path."""
    if isinstance(target, NetSharedArray):
        shared = [info["path"] for info in net._structure_net().param_info if info["shared"]]
        if target.name not in shared:
            raise KeyError(f"the net has no {target!r}" + (f"; its shared arrays are "
                           f"{', '.join(repr(NetSharedArray(n)) for n in shared)}" if shared else " (it shares no arrays)"))
        return target.name
    if isinstance(target, str):
        if target in param_paths:
            return target
        outs = [n for n, _ in net._core_net().outputs] if not net._shape_free() else []
        if target in outs:
            raise ValueError(f"NetPortGradient({target!r}): {target!r} is an output port; gradients are taken with "
                             "respect to inputs and arrays (NetPortGradient('Input'), NetPortGradient((0, 'Weights'))). "
                             f"To impose a gradient on output {target!r} (a vector-Jacobian product), give it as a key "
                             f"of the data: net({{'Input': x, NetPortGradient({target!r}): g}}, NetPortGradient('Input'))")
        inner = [p for p in param_paths if p.rsplit("/", 1)[-1] == target]
        if inner:
            key = tuple(_path_key(net, inner[0]))
            raise KeyError(f"NetPortGradient({target!r}): the net has no array {target!r} of its own; its layers have "
                           f"{', '.join(inner)}: name the layer, e.g. NetPortGradient({key!r})")
        raise KeyError(f"NetPortGradient({target!r}): the net has no input port {target!r} "
                       f"(inputs: {', '.join(repr(n) for n in in_names)}) and no array {target!r}"
                       + (f" (arrays: {', '.join(param_paths)})" if param_paths else " (it has no arrays)"))
    names = _walk(net, target[:-1])
    path = "/".join(names + [target[-1]])
    if path not in param_paths:
        owner = f"layer {'/'.join(names)}" if names else "the net"
        prefix = "/".join(names) + "/" if names else ""
        have = [p[len(prefix):] for p in param_paths if p.startswith(prefix) and "/" not in p[len(prefix):]]
        if have:
            raise KeyError(f"{target!r}: {owner} has no array {target[-1]!r}; its arrays are {', '.join(have)}")
        inner = [p for p in param_paths if p.startswith(prefix) and p.rsplit("/", 1)[-1] == target[-1]]
        if inner:
            raise KeyError(f"{target!r}: {owner} has no array {target[-1]!r} of its own; its layers have "
                           f"{', '.join(inner)}: name the layer, e.g. {tuple(_path_key(net, inner[0]))!r}")
        raise KeyError(f"{target!r}: {owner} has no array {target[-1]!r}"
                       + (f"; the arrays under it are {', '.join(p for p in param_paths if p.startswith(prefix))}"
                          if any(p.startswith(prefix) for p in param_paths) else "; it has no arrays"))
    return path


def _walk(net: Net, positions) -> list:
    """Layer positions/names -> the names along the path, with clear errors."""
    names = []
    current = net
    for pos in positions:
        layers = getattr(current, "_layers", None)
        where = "/".join(names) or "the net"
        if layers is None:
            raise KeyError(f"{where} is a single layer ({current._type_name()}); it has no layer {pos!r}")
        if isinstance(pos, int):
            if not -len(layers) <= pos < len(layers):
                raise IndexError(f"position {pos} is out of range: {where} has {len(layers)} layers "
                                 f"(positions 0 to {len(layers) - 1})")
            name, current = layers[pos]
        else:
            found = [(n, l) for n, l in layers if n == pos]
            if not found:
                raise KeyError(f"{where} has no layer named {pos!r}; its layers are "
                               f"{', '.join(repr(n) for n, _ in layers)}")
            name, current = found[0]
        names.append(name)
    return names


def _named_layers(layers, kind):
    """A list or dict of layers (ints meaning LinearLayer(n), strings ElementwiseLayer(name)) ->
    [(name, Net)], with list entries named "0", "1", ..."""
    from .layers import ElementwiseLayer, LinearLayer

    if isinstance(layers, dict):
        for k in layers:
            if not isinstance(k, str):
                raise TypeError(f"{kind}: layer names must be strings, given {k!r}")
        items = list(layers.items())
    elif isinstance(layers, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(layers)]
    else:
        raise TypeError(f"{kind} takes a list or a dict of layers, given {type(layers).__name__}")
    if not items:
        raise ValueError(f"{kind} needs at least one layer")
    resolved = []
    for name, layer in items:
        if not name or "/" in name:
            raise ValueError(f"{kind}: layer name {name!r} must be non-empty and contain no '/'")
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            layer = LinearLayer(int(layer))
        elif isinstance(layer, str):
            layer = ElementwiseLayer(layer)
        elif not isinstance(layer, Net):
            raise TypeError(f"{kind}: layer {name} is {layer!r}, not a layer (an int means LinearLayer(n), "
                            "a string ElementwiseLayer(name))")
        resolved.append((name, layer))
    return resolved


class NetChain(Net):
    """``NetChain(layers, input=shape)``: layers applied one after another.

    ``layers`` is a list (layers named "0", "1", ... and addressed by 0-based position) or a dict
    of named layers. An int is shorthand for ``LinearLayer(n)``, a string for
    ``ElementwiseLayer(name)``. Chains nest. Ports other than "Input" of any layer (a loss's
    "Target") become input ports of the chain; the last layer's outputs are the chain's outputs.
    """

    def __init__(self, layers, input=None):
        resolved = _named_layers(layers, "NetChain")
        spec = {"type": "NetChain", "layers": [{"name": n, "net": l._spec} for n, l in resolved]}
        shape = _port_shape(input, "NetChain: input shape")
        if shape is not None:
            spec["inputs"] = {"Input": list(shape)}
        params = _joined_params(resolved, "NetChain")
        self._layers = resolved
        super().__init__(spec, params)

    def __len__(self):
        return len(self._layers)


# --------------------------------------------------------------------- functions on nets
def NetInitialize(net: Net, seed=None, method="Kaiming", reinitialize=False) -> Net:
    """A copy of ``net`` with its uninitialised arrays filled (all of them with ``reinitialize=True``).

    Weights: "Kaiming" (normal, std sqrt(2 / fan_in)), "Xavier" (uniform, limit sqrt(6 / (fan_in +
    fan_out))), or "Orthogonal" (scaled by sqrt(2)); biases start at 0. Deterministic for a seed.
    """
    if not isinstance(net, Net):
        raise TypeError(f"NetInitialize takes a net, given {type(net).__name__}")
    if method not in ("Kaiming", "Xavier", "Orthogonal"):
        raise ValueError(f"NetInitialize: method must be 'Kaiming', 'Xavier' or 'Orthogonal', given {method!r}")
    rng = np.random.default_rng(seed)
    params = dict(net._params)
    for info in net._structure_net().param_info:
        path, shape = info["path"], tuple(info["shape"])
        if path in params and not reinitialize:
            continue
        if info["init"] == "ones":
            w = np.ones(shape)
        elif info["init"] == "zeros":
            w = np.zeros(shape)
        else:
            fan_in, fan_out = max(info["fan_in"], 1), max(info["fan_out"], 1)
            if method == "Kaiming":
                w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            elif method == "Xavier":
                limit = np.sqrt(6.0 / (fan_in + fan_out))
                w = rng.uniform(-limit, limit, shape)
            else:  # Orthogonal: a (numel / fan_in) x fan_in matrix with orthonormal rows or columns, gain sqrt(2)
                rows = int(np.prod(shape)) // fan_in
                q, r = np.linalg.qr(rng.standard_normal((max(rows, fan_in), min(rows, fan_in))))
                q = q * np.sign(np.diag(r))
                w = (q if rows >= fan_in else q.T).reshape(shape) * np.sqrt(2.0)
        params[path] = _frozen(w.astype(np.float32))
    return net._with_params(params)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, order="C")  # a copy; unlike ascontiguousarray it keeps 0-d arrays 0-d
    a.flags.writeable = False
    return a


def _array_target(net: Net, part):
    """("block", 2, "Weights") / (0, "Weights") / "Weights" -> an array path of the net."""
    paths = [p for p, _ in net._structure_net().params]
    if isinstance(part, str):
        return _array_path(net, part, list(net.input_ports), paths)
    if isinstance(part, NetSharedArray) or (isinstance(part, tuple) and part and isinstance(part[-1], str)):
        return _array_path(net, part, list(net.input_ports), paths)
    raise TypeError("an array is named by a string, a tuple of positions/names ending in its name, or a "
                    f"NetSharedArray; given {part!r}")


def NetExtract(net: Net, part):
    """An array (a read-only float32 copy) — ``NetExtract(net, (0, "Weights"))``, or
    ``NetExtract(layer, "Weights")`` — or a layer — ``NetExtract(net, 0)``,
    ``NetExtract(net, ("block", 2))`` — of a net."""
    if not isinstance(net, Net):
        raise TypeError(f"NetExtract takes a net, given {type(net).__name__}")
    is_chain = getattr(net, "_layers", None) is not None
    if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
        part = (int(part),)
    elif isinstance(part, str) and is_chain:
        part = (part,)
    if isinstance(part, tuple) and part and not isinstance(part[-1], str):
        _walk(net, part)  # a layer path: positions and names only; raises IndexError/KeyError when wrong
    if is_chain and isinstance(part, tuple) and part and _is_layer_path(net, part):
        names = _walk(net, part)
        layer = net
        for name in names:
            layer = dict(layer._layers)[name]
        path = "/".join(names)
        prefix = path + "/"
        shared = _shared_names(layer._spec)
        params = {p[len(prefix):]: a for p, a in net._params.items() if p.startswith(prefix)}
        params.update((p, a) for p, a in net._params.items() if p in shared)
        spec = layer._spec
        if not net._shape_free() and layer._shape_free():
            # Give the extracted layer the input shape it has inside the net.
            first = next(n for n in net._core_net().nodes if n[0] == path or n[0].startswith(prefix))
            spec = dict(spec, inputs={"Input": list(first[2][0])})
        return layer._with_spec(spec, params)
    path = _array_target(net, part)
    if path not in net._params:
        raise ValueError(f"array {path!r} is not initialised yet; call NetInitialize(net) first")
    return net._params[path].copy()


def _is_layer_path(net, part):
    try:
        _walk(net, part)
        return True
    except (KeyError, IndexError, TypeError):
        return False


def NetReplacePart(net: Net, replacements: dict) -> Net:
    """A copy of ``net`` with arrays replaced: ``NetReplacePart(net, {(0, "Weights"): w})``. Shapes are
    checked; values are stored as float32 (float64 arrays keep their values for Real64 evaluation
    only to float32 precision)."""
    if not isinstance(replacements, dict):
        raise TypeError("NetReplacePart takes a dict {array: values}")
    shapes = dict(net._structure_net().params)
    params = dict(net._params)
    for part, value in replacements.items():
        path = _array_target(net, part)
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"array {path!r}: expected real numbers, given dtype {a.dtype}")
        if a.shape != tuple(shapes[path]):
            raise ValueError(f"array {path!r}: expected shape {tuple(shapes[path])}, given shape {a.shape}")
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"array {path!r}: values must be finite; given {a.flat[bad[0]]} at flat index {bad[0]}")
        with np.errstate(over="ignore"):  # reported below, with the value and where
            a32 = a.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(a32))
        if bad.size:
            raise ValueError(f"array {path!r}: the value {a.flat[bad[0]]} at flat index {bad[0]} is outside float32's "
                             "range (arrays are stored as float32)")
        params[path] = _frozen(a32)
    # Net.__init__ builds the engine of a net whose shapes are declared (as here), which checks
    # every array now (a negative variance, ...), not at a later call.
    return net._with_params(params)


def _describe(net: Net) -> str:
    kind = net._type_name()
    if net._shape_free():
        return f"{kind}<input shape from data; {json.dumps(net._spec)}>"
    try:
        cnet = net._core_net()
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return f"{kind}<invalid: {e}>"
    nodes = cnet.nodes
    if net._varying:  # a dimension that follows the sequence length shows as "Varying"
        longer = net._core_net(net._probe_shapes(3))
        ins = ", ".join(f"{n} {s}" for n, s in net.input_ports.items())
        outs = ", ".join(f"{n} {s}" for n, s in net.output_ports.items())
        nodes = [(path, type_, [_mark_varying(a, b) for a, b in zip(i2, i3)],
                  [_mark_varying(a, b) for a, b in zip(o2, o3)])
                 for (path, type_, i2, o2), (_, _, i3, o3) in zip(cnet.nodes, longer.nodes)]
    else:
        ins = ", ".join(f"{n} {tuple(s)}" for n, s, _ in cnet.inputs)
        outs = ", ".join(f"{n} {tuple(s)}" for n, s in cnet.outputs)
    params = cnet.params
    count = sum(int(np.prod(s)) for _, s in params)
    initialised = all(p in net._params for p, _ in params)
    lines = [f"{kind}<inputs: {ins}; outputs: {outs}; {count} parameters"
             f"{'' if initialised or not params else ', uninitialised'}>"]
    if kind == "NetChain" or len(nodes) > 1:
        for path, type_, in_shapes, out_shapes in nodes:
            arrays = ", ".join(f"{p.rsplit('/', 1)[-1]} {tuple(s)}" for p, s in params
                               if p.rsplit("/", 1)[0] == path)
            lines.append(f"  {path:<10} {type_:<22} {tuple(in_shapes[0]) if in_shapes else '-'} -> {tuple(out_shapes[0])}"
                         + (f"   [{arrays}]" if arrays else ""))
        for info in cnet.param_info:
            if info["shared"]:
                lines.append(f"  {'shared':<10} {_array_key(info)!r} {tuple(info['shape'])}")
    return "\n".join(lines)

