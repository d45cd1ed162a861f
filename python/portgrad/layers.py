"""Layer specs: pure data describing each layer. The C++ engine owns shapes and computation."""
from __future__ import annotations

from ._net import Net, NetSharedArray, _port_shape, _shape_or_none, _shared_option

__all__ = [
    "LinearLayer", "ElementwiseLayer", "SoftmaxLayer", "CrossEntropyLossLayer",
    "MeanSquaredLossLayer", "MeanAbsoluteLossLayer", "FlattenLayer", "ReshapeLayer",
]


class _Layer(Net):
    """A single layer: a net of one node."""

    _type = ""

    def __init__(self, options: dict, inputs: dict | None = None):
        spec = {"type": self._type, **options}
        decl = {k: _port_shape(v, f"{self._type}: shape of port {k!r}") for k, v in (inputs or {}).items()}
        decl = {k: v for k, v in decl.items() if v is not None}
        if decl:
            spec["inputs"] = decl
        super().__init__(spec)


class LinearLayer(_Layer):
    """``LinearLayer(n)``: y = W . flatten(x) + b.

    ``n`` is an int, a shape tuple, or ``()`` for a scalar output. Arrays: ``"Weights"`` of shape
    ``(*n, n_in)`` (so ``(n_out, n_in)`` for an int) and ``"Biases"`` of shape ``n``; ``biases=None``
    (or ``False``) drops the bias. ``weights=NetSharedArray("w")`` (or ``biases=``) makes the array
    one that every layer naming "w" uses. ``transposed=True`` stores the weights the other way round,
    ``(n_in, *n)`` (y = x W: the layout of ONNX's MatMul and of Gemm with transB=0).
    """

    _type = "LinearLayer"

    def __init__(self, n=(), *, weights=None, biases=True, transposed=False, input=None):
        size = _shape_or_none(n, "LinearLayer: output size")
        shared_biases = biases if isinstance(biases, NetSharedArray) else None
        if shared_biases is None and biases not in (True, False, None):
            raise TypeError(f"LinearLayer: biases must be True, False, None or a NetSharedArray, given {biases!r}")
        if transposed not in (True, False):
            raise TypeError(f"LinearLayer: transposed must be True or False, given {transposed!r}")
        super().__init__({"size": list(size), "biases": bool(biases), **({"transposed": True} if transposed else {}),
                          **_shared_option("LinearLayer", Weights=weights, Biases=shared_biases)}, {"Input": input})


class ElementwiseLayer(_Layer):
    """``ElementwiseLayer(f)``: f applied to every element. ``f`` is a Wolfram name such as
    "Ramp" (alias "ReLU"), "LogisticSigmoid" ("Sigmoid"), "Tanh", "GELU", ...; see the README."""

    _type = "ElementwiseLayer"

    def __init__(self, f, *, input=None):
        if not isinstance(f, str):
            raise TypeError(f"ElementwiseLayer: the function must be given by name (a str), given {f!r}")
        super().__init__({"function": f}, {"Input": input})


class SoftmaxLayer(_Layer):
    """``SoftmaxLayer()``: softmax over the last axis; ``SoftmaxLayer(log=True)``: log-softmax,
    x - max(x) - log(sum(exp(x - max(x)))), computed without forming the softmax."""

    _type = "SoftmaxLayer"

    def __init__(self, *, log=False, input=None):
        if log not in (True, False):
            raise TypeError(f"SoftmaxLayer: log must be True or False, given {log!r}")
        super().__init__({"log": True} if log else {}, {"Input": input})


class CrossEntropyLossLayer(_Layer):
    """``CrossEntropyLossLayer(form)`` with form "Binary", "Probabilities" (default) or "Index".

    Ports "Input" (probabilities) and "Target"; output "Loss" (one scalar per example: the mean
    over elements for "Binary", over distributions for the others). "Index" targets are 0-based
    integers. Logs are clamped at eps = (machine epsilon)^2 so probabilities of exactly 0 or 1
    give a finite loss and gradient.
    """

    _type = "CrossEntropyLossLayer"

    def __init__(self, form="Probabilities", *, input=None, target=None):
        if form not in ("Binary", "Probabilities", "Index"):
            raise ValueError(f"CrossEntropyLossLayer: form must be 'Binary', 'Probabilities' or 'Index', given {form!r}")
        super().__init__({"target": form}, {"Input": input, "Target": target})


class MeanSquaredLossLayer(_Layer):
    """``MeanSquaredLossLayer()``: mean of (input - target)^2 over the elements of each example."""

    _type = "MeanSquaredLossLayer"

    def __init__(self, *, input=None, target=None):
        super().__init__({}, {"Input": input, "Target": target})


class MeanAbsoluteLossLayer(_Layer):
    """``MeanAbsoluteLossLayer()``: mean of |input - target| over the elements of each example."""

    _type = "MeanAbsoluteLossLayer"

    def __init__(self, *, input=None, target=None):
        super().__init__({}, {"Input": input, "Target": target})


class FlattenLayer(_Layer):
    """``FlattenLayer()``: every element of an example as one vector."""

    _type = "FlattenLayer"

    def __init__(self, *, input=None):
        super().__init__({}, {"Input": input})


class ReshapeLayer(_Layer):
    """``ReshapeLayer(shape)``: the same elements in a new shape; one dimension may be -1 (automatic)."""

    _type = "ReshapeLayer"

    def __init__(self, shape, *, input=None):
        dims = _shape_or_none(shape, "ReshapeLayer: shape", allow_auto=True)
        super().__init__({"shape": list(dims)}, {"Input": input})
