"""Registry cases of the sequence family (see layer_registry.py): BasicRecurrentLayer,
GatedRecurrentLayer and LongShortTermMemoryLayer over (time, k) inputs, with references written
from Wolfram's recurrence relations (layers_sequence.py), stepping through time in NumPy float64.
Lengths 1 (no recurrence) and several; state sizes and input sizes that differ."""
from __future__ import annotations

import numpy as np

import portgrad as pg
from layer_registry import UNARY_REF, LayerCase, Port, normal, sigmoid

GATES = {"BasicRecurrentLayer": ("",), "GatedRecurrentLayer": ("InputGate", "ResetGate", "MemoryGate"),
         "LongShortTermMemoryLayer": ("InputGate", "OutputGate", "ForgetGate", "MemoryGate")}


def _names(layer):
    return tuple(f"{g}{a}" for g in GATES[layer] for a in ("InputWeights", "StateWeights", "Biases"))


def _recurrent_ref(layer, n, f="Tanh"):
    act = UNARY_REF[f]

    def ref(P, I):
        x = I["Input"]
        B, T, _ = x.shape
        s = I["State"] if "State" in I else np.zeros((B, n))
        c = I["CellState"] if "CellState" in I else np.zeros((B, n))

        def part(g, xt, state):
            return xt @ P[g + "InputWeights"].T + state @ P[g + "StateWeights"].T + P[g + "Biases"]

        out = []
        for t in range(T):
            xt = x[:, t]
            if layer == "BasicRecurrentLayer":
                s = act(part("", xt, s))
            elif layer == "GatedRecurrentLayer":
                i, r = sigmoid(part("InputGate", xt, s)), sigmoid(part("ResetGate", xt, s))
                m = np.tanh(xt @ P["MemoryGateInputWeights"].T
                            + r * (s @ P["MemoryGateStateWeights"].T + P.get("MemoryGateStateBiases", 0.0))
                            + P["MemoryGateBiases"])
                s = (1 - i) * m + i * s
            else:
                i, o = sigmoid(part("InputGate", xt, s)), sigmoid(part("OutputGate", xt, s))
                f_, m = sigmoid(part("ForgetGate", xt, s)), np.tanh(part("MemoryGate", xt, s))
                c = f_ * c + i * m
                s = o * np.tanh(c)
            out.append(s)
        return np.stack(out, axis=1)
    return ref


def _case(layer, n, shape, f=None, initial=False, state_biases=False):
    args = (n,) if f is None else (n, f)
    cid = (f"{layer.replace('Layer', '')}-n{n}-{shape[0]}x{shape[1]}" + (f"-{f}" if f else "") + ("-state" if initial else "")
           + ("-statebiases" if state_biases else ""))
    names = _names(layer) + (("MemoryGateStateBiases",) if state_biases else ())
    extra = {"state_biases": True} if state_biases else {}
    ports = {"Input": Port(shape, normal)}
    if initial:  # the initial state(s) as input ports
        ports["State"] = Port((n,), normal)
        if layer == "LongShortTermMemoryLayer":
            ports["CellState"] = Port((n,), normal)

    def make():
        return getattr(pg, layer)(*args, initial_state=initial, input=shape, **extra)

    return LayerCase(cid, make, ports, _recurrent_ref(layer, n, f or "Tanh"), params=names,
                     no_second_order=rf"{layer}: it has no second derivatives yet")


CASES = [
    _case("BasicRecurrentLayer", 3, (4, 2)),
    _case("BasicRecurrentLayer", 2, (1, 3)),
    _case("BasicRecurrentLayer", 3, (3, 2), "LogisticSigmoid"),
    _case("GatedRecurrentLayer", 3, (4, 2)),
    _case("GatedRecurrentLayer", 5, (1, 3)),
    _case("LongShortTermMemoryLayer", 3, (4, 2)),
    _case("LongShortTermMemoryLayer", 4, (1, 5)),
    _case("LongShortTermMemoryLayer", 2, (6, 3)),
    _case("BasicRecurrentLayer", 3, (3, 2), initial=True),
    _case("GatedRecurrentLayer", 3, (3, 2), initial=True),
    _case("LongShortTermMemoryLayer", 3, (3, 2), initial=True),
    _case("LongShortTermMemoryLayer", 2, (1, 4), initial=True),
    _case("GatedRecurrentLayer", 3, (4, 2), state_biases=True),
    _case("GatedRecurrentLayer", 2, (3, 2), initial=True, state_biases=True),
]


def _part_case(layer, shape, ref):
    return LayerCase(f"{layer.replace('Layer', '')}-{'x'.join(map(str, shape))}", lambda: getattr(pg, layer)(input=shape),
                     {"Input": Port(shape, normal)}, lambda P, I: ref(I["Input"]))


CASES += [
    _part_case("SequenceLastLayer", (4, 3), lambda x: x[:, -1]),
    _part_case("SequenceLastLayer", (1, 2, 2), lambda x: x[:, -1]),
    _part_case("SequenceMostLayer", (4, 3), lambda x: x[:, :-1]),
    _part_case("SequenceRestLayer", (4, 3), lambda x: x[:, 1:]),
    _part_case("SequenceRestLayer", (2,), lambda x: x[:, 1:]),
    _part_case("SequenceReverseLayer", (5, 2), lambda x: x[:, ::-1]),
    _part_case("SequenceReverseLayer", (1, 3), lambda x: x[:, ::-1]),
]


# ----------------------------------------------------------------------------- attention
def _attention_ref(mask, scale=None):
    def ref(P, I):
        K, V, Q = I["Key"], I["Value"], I["Query"]
        heads = K.ndim == 4
        Kh, Vh, Qh = [x if heads else x[:, :, None] for x in (K, V, Q)]
        s = scale if scale else 1 / np.sqrt(K.shape[-1])
        S = s * np.einsum("bmhd,bnhd->bhmn", Qh, Kh)
        if mask:
            S = np.where(np.triu(np.ones(S.shape[-2:]), 1) > 0, -np.inf, S)
        W = np.exp(S - S.max(-1, keepdims=True))
        W = W / W.sum(-1, keepdims=True)
        O = np.einsum("bhmn,bnhd->bmhd", W, Vh)
        return O if heads else O[:, :, 0]
    return ref


def _attention(ks, vs, qs, mask=None, scale=None):
    from registry_structure import MultiCase
    cid = f"Attention-{'x'.join(map(str, ks))}-{'x'.join(map(str, vs))}-{'x'.join(map(str, qs))}" + \
          (f"-{mask}" if mask else "") + (f"-scale{scale}" if scale else "")
    return MultiCase(cid, lambda: pg.AttentionLayer(mask, scale, key=ks, value=vs, query=qs),
                     {"Key": Port(ks, normal), "Value": Port(vs, normal), "Query": Port(qs, normal)},
                     _attention_ref(mask, scale), out="Output")


CASES += [
    _attention((4, 3), (4, 2), (3, 3)),
    _attention((5, 3), (5, 4), (5, 3), mask="Causal"),
    _attention((4, 2, 3), (4, 2, 2), (4, 2, 3), mask="Causal"),
    _attention((1, 2), (1, 3), (2, 2)),
    _attention((3, 2, 5), (3, 2, 1), (2, 2, 5), scale=0.5),
]
