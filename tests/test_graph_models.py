"""Composite models as users build them — a residual block, an Inception-like block, a
two-branch graph with batch normalisation — each with every NetPortGradient checked against
finite differences and its forward pass against NumPy."""
import numpy as np
import pytest

import portgrad as pg
from gradcheck import check_net_gradients


def residual_block(width=4):
    """x -> Linear -> Tanh -> Linear, plus x (the skip connection), -> Tanh."""
    return pg.NetGraph({"lin1": pg.LinearLayer(width), "act1": "Tanh", "lin2": pg.LinearLayer(width),
                        "add": pg.TotalLayer(), "act2": "Tanh"},
                       [("lin1", "act1", "lin2"), ("lin2", pg.NetPort("add", "Input1")),
                        (pg.NetPort("Input"), pg.NetPort("add", "Input2")),
                        (pg.NetPort("Input"), "lin1"), ("add", "act2")], input=width)


def test_residual_block_forward_and_gradients():
    net = pg.NetInitialize(residual_block(), seed=0)
    x = np.random.default_rng(0).standard_normal((3, 4))
    W = {k: pg.NetExtract(net, (k, "Weights")).astype(np.float64) for k in ("lin1", "lin2")}
    b = {k: pg.NetExtract(net, (k, "Biases")).astype(np.float64) for k in ("lin1", "lin2")}
    ref = np.tanh(np.tanh(x @ W["lin1"].T + b["lin1"]) @ W["lin2"].T + b["lin2"] + x)
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), ref, rtol=1e-12)
    check_net_gradients(net, {"Input": x})


def test_stacked_residual_blocks_in_a_chain_with_deep_paths():
    net = pg.NetInitialize(pg.NetChain({"stem": pg.LinearLayer(4), "block1": residual_block(),
                                        "block2": residual_block(), "head": pg.LinearLayer(2)}, input=3), seed=1)
    x = np.random.default_rng(1).standard_normal((2, 3))
    got = check_net_gradients(net, {"Input": x})
    assert got[pg.NetPortGradient(("block2", "lin1", "Weights"))].shape == (4, 4)
    np.testing.assert_array_equal(net(x, pg.NetPortGradient(("block2", "lin1", "Weights"))),
                                  net(x, pg.NetPortGradient((2, 0, "Weights"))))


def inception_block():
    """Three parallel branches of different widths, catenated, then a linear head."""
    return pg.NetGraph({"b1": pg.LinearLayer(2), "b2a": pg.LinearLayer(3), "b2b": "Ramp",
                        "b3": pg.NetChain([pg.LinearLayer(2), "Tanh", pg.LinearLayer(1)]),
                        "cat": pg.CatenateLayer(inputs=3), "head": pg.LinearLayer(2)},
                       [(pg.NetPort("Input"), "b1"), (pg.NetPort("Input"), "b2a"), (pg.NetPort("Input"), "b3"),
                        ("b2a", "b2b"), (["b1", "b2b", "b3"], "cat"), ("cat", "head")], input=5)


def test_inception_like_block():
    net = pg.NetInitialize(inception_block(), seed=2)
    assert net.output_ports == {"Output": (2,)}
    x = np.random.default_rng(2).standard_normal((4, 5))
    cat = net(x, pg.NetPort("cat", "Output"), WorkingPrecision="Real64")
    assert cat.shape == (4, 6)
    b1 = net(x, pg.NetPort("b1", "Output"), WorkingPrecision="Real64")
    np.testing.assert_array_equal(cat[:, :2], b1)
    check_net_gradients(net, {"Input": x})


@pytest.mark.parametrize("mode", ["Test", "Train"])
def test_two_branch_graph_with_batch_norm(mode):
    net = pg.NetInitialize(pg.NetGraph(
        {"lin": pg.LinearLayer(3), "bn": pg.BatchNormalizationLayer(), "act": "Tanh", "skip": pg.LinearLayer(3),
         "mul": pg.ThreadingLayer("Times")},
        [(pg.NetPort("Input"), "lin"), ("lin", "bn", "act"), (pg.NetPort("Input"), "skip"),
         (["act", "skip"], "mul")], input=4), seed=3)
    x = np.random.default_rng(3).standard_normal((5, 4))
    check_net_gradients(net, {"Input": x}, NetEvaluationMode=mode, RandomSeeding=7)


def lenet(classes=3):
    return pg.NetChain({"conv1": pg.ConvolutionLayer(3, 3), "act1": "Ramp", "pool1": pg.PoolingLayer(2, stride=2),
                        "conv2": pg.ConvolutionLayer(4, 3, padding="Same"), "act2": "Tanh",
                        "pool2": pg.PoolingLayer(2, stride=2, function="Mean"), "flat": pg.FlattenLayer(),
                        "fc1": pg.LinearLayer(5), "act3": "Tanh", "fc2": pg.LinearLayer(classes),
                        "prob": pg.SoftmaxLayer()}, input=(1, 10, 10))


def test_lenet_every_gradient():
    net = pg.NetInitialize(lenet(), seed=4)
    x = np.random.default_rng(4).standard_normal((2, 1, 10, 10))
    got = check_net_gradients(net, {"Input": x}, rtol=2e-6)
    assert got[pg.NetPortGradient("Input")].shape == (2, 1, 10, 10)
    assert got[pg.NetPortGradient(("conv2", "Weights"))].shape == (4, 3, 3, 3)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_thread_count_does_not_change_results(kind):
    # Large enough that GEMMs (MLP) and convolutions over examples (CNN) use several threads.
    if kind == "mlp":
        net = pg.NetInitialize(pg.NetChain([256, "Ramp", 256, "Tanh", 8], input=200), seed=5)
        x = np.random.default_rng(5).standard_normal((300, 200)).astype(np.float32)
    else:
        net = pg.NetInitialize(pg.NetChain([pg.ConvolutionLayer(16, 3, padding="Same"), "Ramp",
                                            pg.PoolingLayer(2, stride=2), pg.FlattenLayer(), 4], input=(3, 16, 16)),
                               seed=5)
        x = np.random.default_rng(5).standard_normal((16, 3, 16, 16)).astype(np.float32)
    spec = ["Output", pg.NetPortGradient("Input"), pg.NetPortGradient((0, "Weights"))]
    before = pg.num_threads()
    try:
        pg.set_num_threads(1)
        one = net(x, spec)
        pg.set_num_threads(2)
        two = net(x, spec)
    finally:
        pg.set_num_threads(before)
    for k in one:
        assert one[k].tobytes() == two[k].tobytes(), k
    with pytest.raises(ValueError):
        pg.set_num_threads(0)
