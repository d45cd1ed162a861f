"""NetLaplacian: a net's output, its input gradient and its Laplacian as one net of first-order layers.

Second derivatives of the input are what physics-informed losses are made of, and training through
them needs the arrays' gradient of a second derivative. Rather than a third-order pass in the
engine, NetLaplacian writes the second-order forward pass itself as a net (the "forward Laplacian"
of Li et al., 2023): every layer of an MLP-shaped chain carries, next to its value h, the tangents
J = dh/dx (one row per input coordinate) and L = sum_i c_i d2h/dx_i2, by

    LinearLayer:        h' = W h + b      J' = J W^T           L' = W L
    ElementwiseLayer f: h' = f(z)         J' = f'(z) J         L' = f'(z) L + f''(z) sum_i c_i J_i^2

with f' and f'' themselves written as layers of f(z) or of z. The result is an ordinary net whose
arrays are the source net's, shared (NetSharedArray) by the three streams; its reverse mode —
NetPortGradient, NetTrain — gives the arrays' gradient of anything built on the Laplacian, exactly.
Python only builds the graph; the engine computes.
"""
from __future__ import annotations

import numpy as np

from ._graph import NetGraph
from ._net import Net, NetChain, NetExtract, NetPort, NetReplacePart, NetSharedArray
from .layers import ElementwiseLayer, LinearLayer
from .layers_sequence import NetMapOperator
from .layers_structure import AggregationLayer, ConstantArrayLayer, ThreadingLayer, TransposeLayer

__all__ = ["NetLaplacian"]

# f' and f'' of each elementwise function, as recipes over z (the input), t = f(z) and constants.
_FUNCTIONS = ("Tanh", "LogisticSigmoid", "Sigmoid", "SoftPlus", "Sin", "Cos", "Exp", "Square", "Ramp", "ReLU")


class _Builder:
    """Collects the graph's nodes and edges; each value is named by the node that makes it."""

    def __init__(self):
        self.layers, self.edges, self._constants = {}, [], {}

    def node(self, name, layer, *sources):
        self.layers[name] = layer
        if len(sources) == 1:
            self.edges.append((sources[0], name))
        else:
            for k, s in enumerate(sources, 1):
                self.edges.append((s, NetPort(name, f"Input{k}")))
        return name

    def constant(self, value):
        name = f"constant {value:g}"
        if name not in self._constants:
            self._constants[name] = self.node(name, ConstantArrayLayer(np.array(float(value)), learnable=False))
        return name

    def threading(self, name, f, *sources):
        return self.node(name, ThreadingLayer(f, inputs=len(sources)), *sources)

    def derivatives(self, where, f, z, t):
        """(f'(z), f''(z)) as nodes (None where f'' is zero)."""
        th = self.threading
        if f == "Tanh":
            s1 = th(f"{where} f'", "Subtract", self.constant(1), th(f"{where} t^2", "Times", t, t))
            return s1, th(f"{where} f''", "Times", self.constant(-2), t, s1)
        if f in ("LogisticSigmoid", "Sigmoid"):
            s1 = th(f"{where} f'", "Times", t, th(f"{where} 1-t", "Subtract", self.constant(1), t))
            one_minus_2t = th(f"{where} 1-2t", "Subtract", self.constant(1), th(f"{where} 2t", "Times", self.constant(2), t))
            return s1, th(f"{where} f''", "Times", s1, one_minus_2t)
        if f == "SoftPlus":
            s1 = self.node(f"{where} f'", ElementwiseLayer("LogisticSigmoid"), z)
            return s1, th(f"{where} f''", "Times", s1, th(f"{where} 1-f'", "Subtract", self.constant(1), s1))
        if f == "Sin":
            return (self.node(f"{where} f'", ElementwiseLayer("Cos"), z),
                    th(f"{where} f''", "Times", self.constant(-1), t))
        if f == "Cos":
            sin = self.node(f"{where} sin", ElementwiseLayer("Sin"), z)
            return th(f"{where} f'", "Times", self.constant(-1), sin), th(f"{where} f''", "Times", self.constant(-1), t)
        if f == "Exp":
            return t, t
        if f == "Square":
            return th(f"{where} f'", "Times", self.constant(2), z), self.constant(2)
        # Ramp: f' is the step (0 at 0, as the engine's first derivative), f'' is 0 everywhere
        # but at the kink, as the engine's second derivative (DESIGN: conventions at kinks).
        return th(f"{where} f'", "Greater", z, self.constant(0)), None


def _flat_layers(net, prefix=()):
    """[(path tuple, layer)] of a chain, nested chains flattened in order."""
    out = []
    for name, layer in net._layers:
        if layer._spec.get("type") == "NetChain":
            out += _flat_layers(layer, prefix + (name,))
        else:
            out.append((prefix + (name,), layer))
    return out


def _array_name(path, layer, array):
    """The source net's engine name of one of its layer's arrays: "0/Weights", or the shared name it uses."""
    shared = layer._spec.get("shared", {})
    return shared[array] if array in shared else "/".join(path + (array,))


def _array_key(path, layer, array):
    """The same array as NetReplacePart takes it: its path, or its NetSharedArray."""
    shared = layer._spec.get("shared", {})
    return NetSharedArray(shared[array]) if array in shared else "/".join(path + (array,))


class NetLaplacian(NetGraph):
    """``NetLaplacian(net, coefficients=None)``: a net with the same input as ``net`` and three
    outputs — "Output" (``net``'s output), "Gradient" (its Jacobian, ``(*output, d)``, as
    ``NetPortJacobian("Input")``) and "Laplacian" (``sum_i c_i d2u/dx_i2`` for each output element,
    the output's shape) — computed in one forward pass of first-order layers, so that their
    arrays' gradients come from ordinary reverse mode: ``NetPortGradient``, ``NetTrain`` and losses
    attached to "Laplacian" train ``net`` through its second derivatives (physics-informed training).

    ``net`` is a NetChain (nested chains allowed) of LinearLayer and ElementwiseLayer on a declared
    vector input ``(d,)``; elementwise functions: Tanh, LogisticSigmoid, SoftPlus, Sin, Cos, Exp,
    Square and Ramp (f'' = 0). ``coefficients`` (``d`` numbers; default all 1) weight the second
    derivatives: ``[1, 1, 0]`` on inputs (x, y, t) is the Laplacian in x and y of a heat equation.

    Its arrays are ``net``'s, each a NetSharedArray named by its path in ``net`` (``"0/Weights"``;
    an array ``net`` already shares keeps its name), used by every stream. ``lap.net`` is ``net``
    with the arrays ``lap`` holds now (after training; ``NetExtract(trained, "name").net`` where it is
    a node of a training graph). Saved and loaded, or pickled, it is the plain NetGraph it is built
    as (its arrays keep their names; ``.net`` is gone). Evaluation costs about ``d + 2`` forward
    passes of ``net``.
    """

    def __init__(self, net, coefficients=None):
        if not isinstance(net, NetChain):
            raise TypeError(f"NetLaplacian takes a NetChain of LinearLayer and ElementwiseLayer, given "
                            f"{type(net).__name__}")
        ports = net.input_ports
        shape = ports.get("Input")
        if list(ports) != ["Input"] or shape is None or len(shape) != 1:
            raise ValueError("NetLaplacian needs a net with one input port declared as a vector (input=d); given "
                             f"input ports {ports}")
        d = int(shape[0])
        if coefficients is not None:
            try:
                c = np.asarray(coefficients, dtype=np.float64)
            except (TypeError, ValueError):
                c = np.full(0, np.nan)
            if c.shape != (d,) or not np.all(np.isfinite(c)):
                raise ValueError(f"NetLaplacian: coefficients must be {d} finite numbers (one per input), given "
                                 f"{coefficients!r}")
        b = _Builder()
        h = NetPort("Input")
        J = b.node("eye", ConstantArrayLayer(np.eye(d), learnable=False))
        L = None  # the Laplacian stream is zero until the first nonlinearity
        rank = 1  # of h
        values = {}
        for path, layer in _flat_layers(net):
            spec, where = layer._spec, ".".join(path)
            kind = spec.get("type")
            if kind == "LinearLayer":
                w = NetSharedArray(_array_name(path, layer, "Weights"))
                bias = NetSharedArray(_array_name(path, layer, "Biases")) if spec.get("biases", True) else None
                size, transposed = tuple(spec["size"]), bool(spec.get("transposed", False))
                for key, array in ((w, "Weights"), (bias, "Biases")):
                    if key is not None and key.name in net._params:
                        values[key] = net._params[key.name]
                h = b.node(where, LinearLayer(size, weights=w, biases=bias if bias else None, transposed=transposed), h)
                J = b.node(f"{where} J", NetMapOperator(LinearLayer(size, weights=w, biases=None, transposed=transposed)), J)
                if L is not None:
                    L = b.node(f"{where} L", LinearLayer(size, weights=w, biases=None, transposed=transposed), L)
                rank = len(size)
            elif kind == "ElementwiseLayer":
                f = spec["function"]
                if f not in _FUNCTIONS:
                    raise ValueError(f"NetLaplacian: layer {where!r} is ElementwiseLayer({f!r}), which has no "
                                     f"second-derivative rule here yet; supported: {', '.join(_FUNCTIONS)}")
                z = h
                h = b.node(where, ElementwiseLayer(f), z)
                s1, s2 = b.derivatives(where, f, z, h)
                J_in = J
                J = b.threading(f"{where} J", "Times", J_in, s1)
                terms = []
                if L is not None:
                    terms.append(b.threading(f"{where} f' L", "Times", s1, L))
                if s2 is not None:
                    squares = b.threading(f"{where} J^2", "Times", J_in, J_in)
                    if coefficients is not None:
                        mask = b.node("coefficients", ConstantArrayLayer(c.reshape((d,) + (1,) * rank),
                                                                         learnable=False))
                        squares = b.threading(f"{where} c J^2", "Times", squares, mask)
                    total = b.node(f"{where} sum c J^2", AggregationLayer("Total", levels=0), squares)
                    terms.append(b.threading(f"{where} f'' sum c J^2", "Times", s2, total))
                if terms:
                    L = terms[0] if len(terms) == 1 else b.threading(f"{where} L", "Plus", *terms)
            else:
                raise ValueError(f"NetLaplacian: layer {where!r} is a {kind}; only LinearLayer and ElementwiseLayer "
                                 "(with nested NetChains of them) have second-order rules here yet")
        if L is None:  # an affine net: its Laplacian is zero
            L = b.threading("zero L", "Times", h, b.constant(0))
        b.edges += [(h, NetPort("Output")),
                    (b.node("Gradient", TransposeLayer(tuple(range(1, rank + 1)) + (0,)), J) if rank else J,
                     NetPort("Gradient")),
                    (L, NetPort("Laplacian"))]
        super().__init__(b.layers, b.edges, input=d)
        if values:  # the source's arrays, checked and stored as NetReplacePart stores them (caches reset)
            Net.__init__(self, self._spec, NetReplacePart(self, values)._params)
        self._source = net

    @property
    def net(self):
        """The source net with the arrays this net holds (trained ones after NetTrain)."""
        src = self._source
        new = {}
        for path, layer in _flat_layers(src):
            for array in ("Weights", "Biases"):
                name = _array_name(path, layer, array)
                if name in self._params:  # shared arrays are held under their names
                    new[_array_key(path, layer, array)] = NetExtract(self, NetSharedArray(name))
        return NetReplacePart(src, new) if new else src
