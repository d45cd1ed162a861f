"""NetPortGradient(array, PerExample=True): each example's own array gradient, (batch, *array shape),
for every layer configuration with arrays in tests/layer_registry.py — against one call per example,
summing to the batch gradient, with an imposed output gradient too, Real32 against Real64, on shared
arrays (every use of the array in the example), and the clear refusals."""
import zlib

import numpy as np
import pytest

import portgrad as pg
from layer_registry import PARAMS, assert_close

NPG = pg.NetPortGradient
cases = [c for c in PARAMS if c.values[0].params]


def rng_for(case, salt=0):
    return np.random.default_rng(zlib.crc32(f"per-example/{case.id}/{salt}".encode()))


@pytest.mark.parametrize("case", cases)
@pytest.mark.parametrize("imposed", [False, True], ids=["sum", "vjp"])
def test_per_example_gradients_are_each_examples_own(case, imposed):
    net = case.net()
    rng = rng_for(case, imposed)
    inputs = case.sample(rng, 4)
    y = np.asarray(net(inputs, WorkingPrecision="Real64"))
    G = rng.uniform(-1, 1, y.shape) if imposed else np.ones(y.shape)
    data = {**inputs, NPG(case.out): G} if imposed else dict(inputs)
    for name in case.params:
        shape = np.shape(pg.NetExtract(net, name))
        per = net(data, NPG(name, PerExample=True), WorkingPrecision="Real64")
        assert per.shape == (4, *shape) and per.dtype == np.float64
        total = net(data, NPG(name), WorkingPrecision="Real64")
        assert_close(per.sum(0), total, rtol=1e-11, atol=1e-12, what=f"{case.id}: sum of per-example d{name}")
        for b in range(4):
            one = {p: np.asarray(v)[b:b + 1] for p, v in inputs.items()}
            if imposed:
                one[NPG(case.out)] = G[b:b + 1]
            alone = net(one, NPG(name), WorkingPrecision="Real64")
            assert_close(per[b], alone, rtol=1e-12, atol=1e-13, what=f"{case.id}: example {b}'s d{name}")
        per32 = net(data, NPG(name, PerExample=True))
        scale = float(np.max(np.abs(per))) if per.size else 0.0
        assert_close(per32, per, rtol=2e-4, atol=2e-5 * (1 + scale), what=f"{case.id}: Real32 d{name}")


def test_all_per_example_and_mixed_requests():
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(4), "Tanh", pg.LinearLayer(2)], input=3), seed=1)
    x = np.random.default_rng(2).standard_normal((5, 3))
    res = net(x, NPG(pg.All, PerExample=True), WorkingPrecision="Real64")
    assert res[NPG("Input")].shape == (5, 3)  # input gradients are per example anyway
    assert res[NPG((0, "Weights"), PerExample=True)].shape == (5, 4, 3)
    mixed = net(x, [NPG((0, "Weights"), PerExample=True), NPG((0, "Biases")), "Output"], WorkingPrecision="Real64")
    np.testing.assert_allclose(mixed[NPG((0, "Weights"), PerExample=True)], res[NPG((0, "Weights"), PerExample=True)],
                               rtol=1e-14)
    np.testing.assert_allclose(mixed[NPG((0, "Biases"))], res[NPG((0, "Biases"), PerExample=True)].sum(0), rtol=1e-12)
    one = net(x[0], NPG((2, "Weights"), PerExample=True), WorkingPrecision="Real64")
    assert one.shape == (2, 4)  # one example: no batch axis


def test_a_shared_array_sums_its_uses_within_each_example():
    S = pg.NetSharedArray("w")
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(3, weights=S), "Tanh", pg.LinearLayer(3, weights=S)], input=3),
                           seed=3)
    x = np.random.default_rng(4).standard_normal((3, 3))
    per = net(x, NPG(S, PerExample=True), WorkingPrecision="Real64")
    for b in range(3):
        np.testing.assert_allclose(per[b], net(x[b:b + 1], NPG(S), WorkingPrecision="Real64"), rtol=1e-12)


def test_refusals():
    bn = pg.NetInitialize(pg.NetChain([pg.LinearLayer(2), pg.BatchNormalizationLayer()], input=3), seed=0)
    x = np.random.default_rng(5).standard_normal((4, 3))
    with pytest.raises(ValueError, match=r'PerExample=True\): layer 1 \(BatchNormalizationLayer\): in '
                                         r'NetEvaluationMode "Train" the batch statistics couple the examples'):
        bn(x, NPG((1, "Scaling"), PerExample=True), NetEvaluationMode="Train")
    assert bn(x, NPG((1, "Scaling"), PerExample=True)).shape == (4, 2)  # Test mode: fine
    with pytest.raises(ValueError, match="PerExample is for arrays"):
        bn(x, NPG("Input", PerExample=True))
    with pytest.raises(ValueError, match="both summed and per example"):
        bn(x, [NPG((0, "Weights"), PerExample=True), NPG((0, "Weights"))])
    # A Train-mode BatchNormalizationLayer downstream mixes the examples' gradients: refused too.
    with pytest.raises(ValueError, match=r'PerExample=True\): layer 1 \(BatchNormalizationLayer\): in '
                                         r'NetEvaluationMode "Train" the batch statistics couple'):
        bn(x, NPG((0, "Weights"), PerExample=True), NetEvaluationMode="Train")
    with pytest.raises(TypeError, match="PerExample must be True or False"):
        NPG((0, "Weights"), PerExample="yes")


def test_batch_statistics_upstream_of_the_array_are_fine():
    """Past a Train-mode BatchNormalizationLayer each example's output still depends on the later
    weights through that example alone: the per-example gradients exist and sum to the batch's."""
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(3), pg.BatchNormalizationLayer(), "Tanh",
                                        pg.LinearLayer(2)], input=3), seed=6)
    x = np.random.default_rng(7).standard_normal((5, 3))
    opts = dict(NetEvaluationMode="Train", WorkingPrecision="Real64")
    per = net(x, NPG((3, "Weights"), PerExample=True), **opts)
    np.testing.assert_allclose(per.sum(0), net(x, NPG((3, "Weights")), **opts), rtol=1e-12, atol=1e-14)
    h = pg.NetTake(net, 3)(x, **opts)  # what the last layer sees, batch statistics and all
    for b in range(5):  # the gradient of sum(W h_b + c) w.r.t. W is the outer product 1 h_b
        np.testing.assert_allclose(per[b], np.outer(np.ones(2), h[b]), rtol=1e-12)
