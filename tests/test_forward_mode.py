"""Forward mode (NetPortTangent: Jacobian-vector products) for every layer configuration of
tests/layer_registry.py: the tangent of the output against central differences of the forward along
the input tangent (float64); array tangents through the adjoint identity <J_W V, u> = <V, J_W^T u>
with the gradients test_layers.py checks against finite differences; Real32 against Real64; a
batch against its examples one by one; and the layers that have no forward-mode rule yet refuse
with a clear error naming the layer."""
import zlib

import numpy as np
import pytest

import portgrad as pg
from layer_registry import PARAMS, REGISTRY, assert_close, grad_close

NPT = pg.NetPortTangent
NPG = pg.NetPortGradient

# Configurations whose layer has no forward-mode rule yet (the error names the layer and says so).
NO_JVP_YET = set()


def rng_for(case, batch, salt=0):
    return np.random.default_rng(zlib.crc32(f"jvp/{case.id}/{batch}/{salt}".encode()))


def tangents(rng, case, inputs):
    """A float32-exact tangent for every real input port."""
    return {p: np.asarray(rng.uniform(-1, 1, np.shape(inputs[p])), np.float32).astype(np.float64)
            for p in case.real_ports}


def with_tangents(inputs, vs):
    data = dict(inputs)
    data.update({NPT(p): v for p, v in vs.items()})
    return data


def test_the_refusal_names_the_layer_in_a_chain():
    net = pg.NetChain([pg.LinearLayer(4, input=3), pg.BatchNormalizationLayer(), 2])
    net = pg.NetInitialize(net, seed=0)
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r'NetPortTangent: layer 1 \(BatchNormalizationLayer\): in NetEvaluationMode '
                                         r'"Train"'):
        net({"Input": x, NPT("Input"): x}, NPT("Output"), NetEvaluationMode="Train")
    # a tangent that does not reach the batch norm needs no rule for it
    net2 = pg.NetGraph({"a": pg.BatchNormalizationLayer(), "c": pg.ElementwiseLayer("Tanh")},
                       [(pg.NetPort("X"), "a", pg.NetPort("P")), (pg.NetPort("Y"), "c", pg.NetPort("Q"))],
                       inputs={"X": 2, "Y": 3})
    net2 = pg.NetInitialize(net2, seed=0)
    out = net2({"X": np.random.default_rng(0).standard_normal((4, 2)), "Y": np.zeros((4, 3)), NPT("Y"): np.ones((4, 3))},
               [NPT("P"), NPT("Q")], NetEvaluationMode="Train")
    np.testing.assert_array_equal(out[NPT("P")], 0)  # no tangent flows there
    np.testing.assert_allclose(out[NPT("Q")], 1)     # tanh'(0) = 1


jvp_cases = pytest.mark.parametrize("case", [c for c in PARAMS if c.values[0].id not in NO_JVP_YET])


@jvp_cases
@pytest.mark.parametrize("batch", [None, 1, 5], ids=["single", "b1", "b5"])
def test_input_tangents_vs_central_differences(case, batch):
    if not case.real_ports:
        pytest.skip("no real input (indices only)")
    net = case.net()
    rng = rng_for(case, batch)
    inputs = case.sample(rng, batch)
    vs = tangents(rng, case, inputs)
    t = net(with_tangents(inputs, vs), NPT(case.out), WorkingPrecision="Real64")
    y = net(inputs, WorkingPrecision="Real64")
    assert t.dtype == np.float64 and t.shape == np.shape(y)
    h = 1e-6

    def f(s):
        return np.asarray(net({**inputs, **{p: inputs[p] + s * vs[p] for p in vs}}, WorkingPrecision="Real64"))

    fd = (f(h) - f(-h)) / (2 * h)
    grad_close(t, fd, rtol=1e-6, what=f"{case.id}: J v")
    # one port at a time: the imposed tangents add
    if len(vs) > 1:
        parts = [net(with_tangents(inputs, {p: v}), NPT(case.out), WorkingPrecision="Real64") for p, v in vs.items()]
        assert_close(t, np.sum(parts, axis=0), rtol=1e-12, atol=1e-12, what=f"{case.id}: tangents add")


@pytest.mark.parametrize("case", [c for c in PARAMS if c.values[0].params and c.values[0].id not in NO_JVP_YET])
@pytest.mark.parametrize("batch", [None, 4], ids=["single", "b4"])
def test_array_tangents_are_the_adjoint_of_array_gradients(case, batch):
    net = case.net()
    rng = rng_for(case, batch, 3)
    inputs = case.sample(rng, batch)
    y = np.asarray(net(inputs, WorkingPrecision="Real64"))
    u = rng.uniform(-1, 1, y.shape)
    for name in case.params:
        a = np.asarray(pg.NetExtract(net, name))
        V = rng.uniform(-1, 1, a.shape)
        t = net({**inputs, NPT(name): V}, NPT(case.out), WorkingPrecision="Real64")
        g = net({**inputs, NPG(case.out): u}, NPG(name), WorkingPrecision="Real64")
        lhs, rhs = float(np.sum(t * u)), float(np.sum(V * g))
        assert abs(lhs - rhs) <= 1e-10 * (1 + abs(rhs)), f"{case.id}: <J_{name} V, u> = {lhs} vs <V, J^T u> = {rhs}"
    # the arrays' and the inputs' tangents together: the sum of each alone
    vs = tangents(rng, case, inputs)
    Vs = {name: rng.uniform(-1, 1, np.shape(pg.NetExtract(net, name))) for name in case.params}
    both = net({**with_tangents(inputs, vs), **{NPT(n): V for n, V in Vs.items()}}, NPT(case.out),
               WorkingPrecision="Real64")
    alone = [net({**inputs, NPT(n): V}, NPT(case.out), WorkingPrecision="Real64") for n, V in Vs.items()]
    if vs:
        alone.append(net(with_tangents(inputs, vs), NPT(case.out), WorkingPrecision="Real64"))
    assert_close(both, np.sum(alone, axis=0), rtol=1e-11, atol=1e-11, what=f"{case.id}: tangents add")


@jvp_cases
def test_real32_matches_real64_and_a_batch_is_its_examples(case):
    net = case.net()
    rng = rng_for(case, 3, 4)
    inputs = case.sample(rng, 3)
    vs = tangents(rng, case, inputs)
    Vs = {name: np.asarray(rng.uniform(-1, 1, np.shape(pg.NetExtract(net, name))), np.float32).astype(np.float64)
          for name in case.params}
    data = {**with_tangents(inputs, vs), **{NPT(n): V for n, V in Vs.items()}}
    t64 = net(data, NPT(case.out), WorkingPrecision="Real64")
    t32 = net(data, NPT(case.out), WorkingPrecision="Real32")
    assert t32.dtype == np.float32
    scale = float(np.max(np.abs(t64))) if t64.size else 0.0
    assert_close(t32, t64, rtol=2e-4, atol=2e-5 * (1 + scale), what=f"{case.id}: Real32 vs Real64")
    for b in range(3):
        one = {**{p: np.asarray(v)[b] for p, v in inputs.items()}, **{NPT(p): v[b] for p, v in vs.items()},
               **{NPT(n): V for n, V in Vs.items()}}
        tb = net(one, NPT(case.out), WorkingPrecision="Real64")
        assert_close(tb, t64[b], rtol=1e-12, atol=1e-12, what=f"{case.id}: example {b} alone")


def test_train_mode_dropout_tangents_share_the_mask_and_batch_norm_refuses():
    net = pg.NetChain([pg.DropoutLayer(0.5)], input=6)
    x = np.random.default_rng(0).standard_normal((4, 6))
    v = np.random.default_rng(1).standard_normal((4, 6))
    y = net(x, NetEvaluationMode="Train", RandomSeeding=7, WorkingPrecision="Real64")
    t = net({"Input": x, NPT("Input"): v}, NPT("Output"), NetEvaluationMode="Train", RandomSeeding=7,
            WorkingPrecision="Real64")
    mask = y / x  # 0 or 2 (kept and scaled by 1 / (1 - p))
    np.testing.assert_allclose(t, mask * v, rtol=1e-12)
    bn = pg.NetInitialize(pg.NetChain([pg.BatchNormalizationLayer()], input=(2, 3)))
    xb = np.random.default_rng(2).standard_normal((4, 2, 3))
    with pytest.raises(ValueError, match=r'BatchNormalizationLayer.*NetEvaluationMode "Train".*"Test" mode'):
        bn({"Input": xb, NPT("Input"): xb}, NPT("Output"), NetEvaluationMode="Train")


def test_request_errors():
    net = pg.NetInitialize(pg.NetChain([3, "Tanh"], input=2), seed=0)
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match="a tangent is imposed on 'Input' but no tangent is asked for"):
        net({"Input": x, NPT("Input"): x}, "Output")
    with pytest.raises(ValueError, match=r"NetPortTangent\('Output'\) is asked for but no tangent is imposed"):
        net({"Input": x}, NPT("Output"))
    with pytest.raises(KeyError, match="a tangent is asked for on an output port"):
        net({"Input": x, NPT("Input"): x}, NPT("Input"))
    with pytest.raises(KeyError, match="imposes a tangent on an input port"):
        net({"Input": x, NPT("Output"): x}, NPT("Output"))
    with pytest.raises(ValueError, match=r"tangent imposed on input \"Input\": expected shape \(2, 2\) \(the "
                                         r"input's\), given shape \(2, 3\)"):
        net({"Input": x, NPT("Input"): np.ones((2, 3))}, NPT("Output"))
    with pytest.raises(ValueError, match=r'tangent imposed on array "0/Weights": expected shape \(3, 2\)'):
        net({"Input": x, NPT((0, "Weights")): np.ones(3)}, NPT("Output"))
    with pytest.raises(ValueError, match=r'tangent imposed on input "Input" is not finite at flat index 1'):
        net({"Input": x, NPT("Input"): np.array([[0, np.nan], [0, 0]])}, NPT("Output"))
    with pytest.raises(ValueError, match="one gradient at a time"):
        NPT(NPG((0, "Weights"), PerExample=True))
    with pytest.raises(TypeError):
        NPT(3.5)
    emb = pg.NetInitialize(pg.NetChain([pg.EmbeddingLayer(2, 4)], input=3), seed=0)
    with pytest.raises(ValueError, match="takes integer indices, which have no tangent"):
        emb({"Input": np.zeros((1, 3), int), NPT("Input"): np.zeros((1, 3))}, NPT("Output"))
    bn = pg.NetInitialize(pg.NetChain([pg.BatchNormalizationLayer()], input=(2,)))
    with pytest.raises(ValueError, match="running state"):
        bn({"Input": np.ones((2, 2)), NPT((0, "MovingMean")): np.ones(2)}, NPT("Output"))


def several_directions(net, data, out, k, precision="Real64", device="CPU"):
    """The engine's tangent directions (NetPortJacobian's forward mode): imposed tangents (k, batch, ...)."""
    return net._call(data, NPT(out), precision, device, "Test", None, False, directions=k)


@jvp_cases
@pytest.mark.parametrize("precision", ["Real64", "Real32"])
def test_several_directions_at_once_are_the_tangents_one_by_one(case, precision):
    """k tangents per example in one evaluation (one forward pass; each layer's tangent rule over all
    k, in one call where the layer takes them, else one call per direction) equal k evaluations."""
    if not case.real_ports:
        pytest.skip("no real input (indices only)")
    net = case.net()
    rng = rng_for(case, 3, 7)
    inputs = case.sample(rng, 3)
    k = 3
    per_direction = [tangents(rng, case, inputs) for _ in range(k)]
    data = {**inputs, **{NPT(p): np.stack([vs[p] for vs in per_direction]) for p in case.real_ports}}
    t = np.asarray(several_directions(net, data, case.out, k, precision))
    tol = 1e-12 if precision == "Real64" else 2e-6
    for d, vs in enumerate(per_direction):
        one = np.asarray(net(with_tangents(inputs, vs), NPT(case.out), WorkingPrecision=precision))
        assert t.shape == (k, *one.shape), f"{case.id}: shape {t.shape}"
        scale = float(np.max(np.abs(one))) if one.size else 0.0
        assert_close(t[d], one, rtol=tol, atol=tol * (1 + scale), what=f"{case.id}: direction {d}")


def test_several_directions_refusals():
    net = pg.NetInitialize(pg.NetChain([4, "Tanh", 2], input=3), seed=2)
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="expected shape \\(2, 2, 3\\)"):
        several_directions(net, {"Input": x, NPT("Input"): np.ones((2, 3))}, "Output", 2)
    with pytest.raises(ValueError, match="need a batch"):
        several_directions(net, {"Input": np.ones(3), NPT("Input"): np.ones((2, 3))}, "Output", 2)
    with pytest.raises(ValueError, match="at least 1"):
        several_directions(net, {"Input": x, NPT("Input"): np.ones((0, 2, 3))}, "Output", 0)
    with pytest.raises(ValueError, match="no array tangents"):
        several_directions(net, {"Input": x, NPT("Input"): np.ones((2, 2, 3)), NPT((0, "Weights")): np.ones((4, 3))},
                           "Output", 2)


def test_one_request_with_outputs_gradients_and_tangents():
    net = pg.NetInitialize(pg.NetChain([4, "Tanh", 2], input=3), seed=2)
    rng = np.random.default_rng(3)
    x, v = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    res = net({"Input": x, NPT("Input"): v}, ["Output", NPG("Input"), NPT("Output")], WorkingPrecision="Real64")
    np.testing.assert_allclose(res["Output"], net(x, WorkingPrecision="Real64"), rtol=1e-14)
    np.testing.assert_allclose(res[NPG("Input")], net(x, NPG("Input"), WorkingPrecision="Real64"), rtol=1e-14)
    # the Jacobian is linear in the tangent, and J v summed with weights 1 equals <v, grad of the sum>
    np.testing.assert_allclose(res[NPT("Output")].sum(1), (v * res[NPG("Input")]).sum(1), rtol=1e-12)


def test_the_jacobian_column_by_column_matches_rows_by_gradients():
    # Forward mode with one-hot tangents gives the Jacobian's columns; reverse mode with one-hot
    # output gradients its rows: the same matrix, per example.
    net = pg.NetInitialize(pg.NetChain([6, "Tanh", 4, pg.SoftmaxLayer()], input=3), seed=4)
    x = np.random.default_rng(5).standard_normal((2, 3))
    cols = [net({"Input": x, NPT("Input"): np.tile(np.eye(3)[j], (2, 1))}, NPT("Output"), WorkingPrecision="Real64")
            for j in range(3)]
    rows = [net({"Input": x, NPG("Output"): np.tile(np.eye(4)[i], (2, 1))}, NPG("Input"), WorkingPrecision="Real64")
            for i in range(4)]
    np.testing.assert_allclose(np.stack(cols, axis=2), np.stack(rows, axis=1), rtol=1e-12, atol=1e-14)


def test_shared_and_imported_arrays_take_tangents():
    S = pg.NetSharedArray("w")
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(3, weights=S, biases=False), "Tanh",
                                        pg.LinearLayer(3, weights=S, biases=False)], input=3), seed=6)
    rng = np.random.default_rng(7)
    x, V, u = rng.standard_normal((4, 3)), rng.standard_normal((3, 3)), rng.standard_normal((4, 3))
    t = net({"Input": x, NPT(S): V}, NPT("Output"), WorkingPrecision="Real64")
    g = net({"Input": x, NPG("Output"): u}, NPG(S), WorkingPrecision="Real64")
    assert abs(float(np.sum(t * u)) - float(np.sum(V * g))) < 1e-12  # every use of the shared array
