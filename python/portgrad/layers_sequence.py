"""Layer specs for sequences: recurrent layers over a sequence of vectors, shape (time, k)."""
from __future__ import annotations

from ._net import Net, _named_layers, _port_shape, _shared_option
from .layers import _Layer

__all__ = ["BasicRecurrentLayer", "GatedRecurrentLayer", "LongShortTermMemoryLayer"]


def _states(type_name, initial_state, final_state):
    for name, v in (("initial_state", initial_state), ("final_state", final_state)):
        if v not in (True, False):
            raise TypeError(f"{type_name}: {name} must be True or False, given {v!r}")
    return {**({"initial_state": True} if initial_state else {}), **({"final_state": True} if final_state else {})}


_STATE_DOC = """

    ``initial_state=True`` adds the input port ``"State"`` (the LSTM also ``"CellState"``), a vector
    of size n per example, in place of the zero initial state; ``final_state=True`` adds the output
    ports of the same names: the state after the last step. Connect them in a ``NetGraph`` with
    ``NetPort(layer, "State")`` (as a target: the input; as a source: the output).
    ``shared={"InputGateBiases": NetSharedArray("b"), ...}`` makes arrays shared ones."""


def _shared(type_name, shared):
    """shared={array name: NetSharedArray}: those arrays are shared ones (weight tying; an imported
    model's)."""
    if shared is None:
        return {}
    if not isinstance(shared, dict):
        raise TypeError(f"{type_name}: shared= takes a dict {{array name: NetSharedArray}}, given {shared!r}")
    return _shared_option(type_name, **shared)


def _size(type_name, n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{type_name}: the state size n must be an int >= 1, given {n!r}")
    return n


class BasicRecurrentLayer(_Layer):
    """``BasicRecurrentLayer(n, f="Tanh")``: s_t = f(W_x x_t + W_s s_(t-1) + b) from s_0 = 0, over
    an input sequence of shape (time, k); the output is every state, shape (time, n). Arrays:
    ``"InputWeights"`` (n, k), ``"StateWeights"`` (n, n), ``"Biases"`` (n)."""

    _type = "BasicRecurrentLayer"

    def __init__(self, n, activation="Tanh", *, initial_state=False, final_state=False, shared=None, input=None):
        if not isinstance(activation, str):
            raise TypeError(f"BasicRecurrentLayer: the activation must be given by name (a str), given {activation!r}")
        super().__init__({"size": _size(self._type, n), "activation": activation,
                          **_states(self._type, initial_state, final_state), **_shared(self._type, shared)},
                         {"Input": input})


class GatedRecurrentLayer(_Layer):
    """``GatedRecurrentLayer(n)``: Wolfram's GRU over a sequence (time, k) from s_0 = 0:
    i = sigmoid(W_ix x + W_is s + b_i), r = sigmoid(W_rx x + W_rs s + b_r),
    m = tanh(W_mx x + r * (W_ms s) + b_m), s' = (1 - i) m + i s. Output: every state, (time, n).
    Arrays ``"InputGate..."``, ``"ResetGate..."``, ``"MemoryGate..."``, each ``InputWeights`` (n, k),
    ``StateWeights`` (n, n) and ``Biases`` (n). (PyTorch's GRU is this with its update gate z as i,
    its b_hn = 0 and b_ir + b_hr as b_r.) ``state_biases=True`` adds ``"MemoryGateStateBiases"`` (n),
    a bias inside the reset product, m = tanh(W_mx x + r * (W_ms s + b_ms) + b_m): PyTorch's b_hn and
    ONNX's Rbh, for imported models (Wolfram's GRU has none)."""

    _type = "GatedRecurrentLayer"

    def __init__(self, n, *, state_biases=False, initial_state=False, final_state=False, shared=None, input=None):
        if state_biases not in (True, False):
            raise TypeError(f"GatedRecurrentLayer: state_biases must be True or False, given {state_biases!r}")
        super().__init__({"size": _size(self._type, n), **({"state_biases": True} if state_biases else {}),
                          **_states(self._type, initial_state, final_state), **_shared(self._type, shared)},
                         {"Input": input})


class LongShortTermMemoryLayer(_Layer):
    """``LongShortTermMemoryLayer(n)``: Wolfram's LSTM over a sequence (time, k) from s_0 = c_0 = 0:
    input, output and forget gates sigmoid(W_qx x + W_qs s + b_q), memory gate tanh(...),
    c' = f c + i m, s' = o tanh(c'). Output: every state, (time, n). Arrays ``"InputGate..."``,
    ``"OutputGate..."``, ``"ForgetGate..."``, ``"MemoryGate..."``, each ``InputWeights`` (n, k),
    ``StateWeights`` (n, n) and ``Biases`` (n)."""

    _type = "LongShortTermMemoryLayer"

    def __init__(self, n, *, initial_state=False, final_state=False, shared=None, input=None):
        super().__init__({"size": _size(self._type, n), **_states(self._type, initial_state, final_state),
                          **_shared(self._type, shared)}, {"Input": input})


for _cls in (BasicRecurrentLayer, GatedRecurrentLayer, LongShortTermMemoryLayer):
    _cls.__doc__ += _STATE_DOC


class _SequencePart(_Layer):
    def __init__(self, *, input=None):
        super().__init__({}, {"Input": input})


class SequenceLastLayer(_SequencePart):
    """``SequenceLastLayer()``: the last element of a sequence (the first axis of each example):
    (time, ...) -> (...)."""

    _type = "SequenceLastLayer"


class SequenceMostLayer(_SequencePart):
    """``SequenceMostLayer()``: every element but the last, (time, ...) -> (time - 1, ...); a sequence
    of one element is an error (nothing would be left)."""

    _type = "SequenceMostLayer"


class SequenceRestLayer(_SequencePart):
    """``SequenceRestLayer()``: every element but the first, (time, ...) -> (time - 1, ...); a sequence
    of one element is an error (nothing would be left)."""

    _type = "SequenceRestLayer"


class SequenceReverseLayer(_SequencePart):
    """``SequenceReverseLayer()``: the elements in reverse order."""

    _type = "SequenceReverseLayer"


__all__ += ["SequenceLastLayer", "SequenceMostLayer", "SequenceRestLayer", "SequenceReverseLayer"]


class AttentionLayer(_Layer):
    """``AttentionLayer(mask=None, scale=None)``: Wolfram's AttentionLayer with dot-product scoring.
    Ports ``"Key"`` (n, d), ``"Value"`` (n, dv) and ``"Query"`` (m, d) give ``"Output"`` (m, dv):
    each query's values weighted by softmax(scale q . k) over the keys, scale = 1/sqrt(d) (Wolfram's
    ScoreRescaling "DimensionSqrt") unless given. With a head axis, Key (n, heads, d), Value (n, heads,
    dv), Query (m, heads, d) -> (m, heads, dv): every head attends on its own (multi-head attention
    between the LinearLayers that make the heads). ``mask="Causal"``: query i sees keys 0..i only
    (m = n). ``mask="Port"`` adds the input port ``"Mask"``, (m, n) per example: query i sees key j
    where Mask[i, j] != 0 (padding, or any pattern; a query that sees no key gives 0; the mask gets a
    zero gradient). Forward mode and second derivatives (forward over reverse) too."""

    _type = "AttentionLayer"

    def __init__(self, mask=None, scale=None, *, key=None, value=None, query=None):
        if mask not in (None, "Causal", "Port"):
            raise ValueError(f"AttentionLayer: mask must be None, 'Causal' or 'Port' (a \"Mask\" input), given {mask!r}")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
            raise ValueError(f"AttentionLayer: scale must be a positive number, given {scale!r}")
        super().__init__({**({"mask": mask} if mask else {}), **({"scale": float(scale)} if scale else {})},
                         {"Key": key, "Value": value, "Query": query})


__all__ += ["AttentionLayer"]


class NetMapOperator(Net):
    """``NetMapOperator(net)``: ``net`` applied to every element of a sequence, on its own (Wolfram's
    NetMapOperator). Its input (n, *element) gives (n, *out): element i of the output is ``net`` of
    element i of the input — LinearLayer, NormalizationLayer or a whole chain applied per position.
    ``net`` may be a layer or a net (an int means LinearLayer(n), a string ElementwiseLayer(name)); its
    arrays are shared by every element and keep their paths (``NetMapOperator(LinearLayer(4))`` at
    position 0 of a chain has "0/Weights"). The engine runs it as one evaluation over the batch's
    elements (batch x n examples), forward, backward and forward mode. Per-example array gradients
    through it are not available (its elements' gradients are summed)."""

    def __init__(self, net, *, input=None):
        (_name, inner), = _named_layers([net], "NetMapOperator")
        spec = {"type": "NetMapOperator", "net": inner._spec}
        shape = _port_shape(input, "NetMapOperator: input shape")
        if shape is not None:
            spec["inputs"] = {"Input": list(shape)}
        self._net = inner
        if hasattr(inner, "_layers"):
            self._layers = inner._layers  # transparent: its layers are addressed as the mapped net's
        super().__init__(spec, dict(inner._params))


__all__ += ["NetMapOperator"]
