"""Structure layers beyond the registry's generic checks: error messages, broadcasting gradients,
tie-breaking, ConstantArrayLayer (a layer without inputs), and PyTorch parity where installed."""
import numpy as np
import pytest

import portgrad as pg
from layer_registry import fd_array_gradient, fd_input_gradient, grad_close


def ones_grad(net, data, port, precision="Real64"):
    return net(data, pg.NetPortGradient(port), WorkingPrecision=precision)


# ----------------------------------------------------------------------------- errors
def test_catenate_mismatch_names_both_ports_and_shapes():
    with pytest.raises(ValueError, match=r'"Input1" \(shape \(2, 3\)\) and "Input2" \(shape \(2, 4\)\).*axis 1'):
        pg.CatenateLayer(0, inputs=[(2, 3), (2, 4)]).output_ports
    with pytest.raises(ValueError, match=r'"Input1".*"Input3".*differ in rank'):
        pg.CatenateLayer(0, inputs=[(2, 3), (1, 3), (3,)]).output_ports
    with pytest.raises(ValueError, match="axis 2 is out of range for an input of rank 2"):
        pg.CatenateLayer(2, inputs=[(2, 3), (2, 3)]).output_ports
    with pytest.raises(ValueError, match="scalar"):
        pg.CatenateLayer(0, inputs=[(), ()]).output_ports
    with pytest.raises(ValueError, match="at least 1"):
        pg.CatenateLayer(0, inputs=0)
    with pytest.raises(TypeError):
        pg.CatenateLayer(0.5)


def test_catenate_shape_mismatch_from_data():
    layer = pg.CatenateLayer(0)
    with pytest.raises(ValueError, match=r'"Input1" \(shape \(2, 3\)\) and "Input2" \(shape \(2, 2\)\)'):
        layer({"Input1": np.zeros((2, 3)), "Input2": np.zeros((2, 2))})
    np.testing.assert_array_equal(layer({"Input1": np.ones((1, 2)), "Input2": np.zeros((2, 2))}),
                                  [[1, 1], [0, 0], [0, 0]])


def test_threading_errors():
    with pytest.raises(ValueError, match=r'"Input1" \(shape \(2, 3\)\) and "Input2" \(shape \(4,\)\) cannot be '
                                         r'broadcast.*size 3 vs 4'):
        pg.ThreadingLayer("Plus", inputs=[(2, 3), (4,)]).output_ports
    with pytest.raises(ValueError, match=r'"Input2" \(shape \(3,\)\) and "Input3" \(shape \(2, 2\)\)'):
        pg.ThreadingLayer("Max", inputs=[(1,), (3,), (2, 2)]).output_ports
    with pytest.raises(ValueError, match="unknown function"):
        pg.ThreadingLayer("Remainder")
    with pytest.raises(ValueError, match="Subtract takes exactly 2 inputs"):
        pg.ThreadingLayer("Subtract", inputs=3)
    with pytest.raises(ValueError, match="Mod takes exactly 2 inputs"):
        pg.ThreadingLayer("Mod", inputs=3)
    with pytest.raises(TypeError):
        pg.ThreadingLayer(np.add)
    with pytest.raises(ValueError, match="same shape"):
        pg.TotalLayer(inputs=[(3,), (1,)]).output_ports


def test_aggregation_errors():
    with pytest.raises(ValueError, match="level 2 is out of range for an input of rank 2"):
        pg.AggregationLayer("Max", 2, input=(2, 3)).output_ports
    with pytest.raises(ValueError, match="given twice"):
        pg.AggregationLayer("Max", [0, -2], input=(2, 3)).output_ports
    with pytest.raises(ValueError, match="select no axis"):
        pg.AggregationLayer("Mean", input=4).output_ports  # the default skips axis 0
    with pytest.raises(ValueError, match="unknown function"):
        pg.AggregationLayer("Median")
    with pytest.raises(TypeError):
        pg.AggregationLayer("Max", [])
    assert pg.AggregationLayer("Max", input=(3, 4, 5)).output_ports == {"Output": (3,)}
    assert pg.AggregationLayer("Total", slice(None), input=(3, 4)).output_ports == {"Output": ()}


def test_transpose_errors():
    with pytest.raises(ValueError, match=r"\(0, 0, 1\) is not a permutation.*axis 0 appears twice"):
        pg.TransposeLayer((0, 0, 1), input=(2, 3, 4)).output_ports
    with pytest.raises(ValueError, match="neither a permutation"):
        pg.TransposeLayer((0, 1, 2, 3), input=(2, 3, 4)).output_ports
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        pg.TransposeLayer((0, 3), input=(2, 3, 4)).output_ports
    with pytest.raises(ValueError, match="out of range"):
        pg.TransposeLayer(input=4).output_ports  # swapping the first two axes of a vector
    with pytest.raises(TypeError):
        pg.TransposeLayer([(0, 1, 2)])
    # A pair on a matrix is a permutation: (0, 1) is the identity; [(0, 1)] swaps.
    assert pg.TransposeLayer((0, 1), input=(2, 3)).output_ports == {"Output": (2, 3)}
    assert pg.TransposeLayer([(0, 1)], input=(2, 3)).output_ports == {"Output": (3, 2)}


def test_part_errors():
    with pytest.raises(IndexError, match="index 4 is out of range for axis 0 of size 4"):
        pg.PartLayer(4, input=4).output_ports
    with pytest.raises(IndexError, match="index -3 is out of range for axis 1 of size 2"):
        pg.PartLayer((0, -3), input=(3, 2)).output_ports
    with pytest.raises(IndexError, match="3 parts given"):
        pg.PartLayer((0, 0, 0), input=(2, 3)).output_ports
    with pytest.raises(ValueError, match="selects nothing"):
        pg.PartLayer(slice(3, 1), input=4).output_ports
    with pytest.raises(ValueError, match="step cannot be zero"):
        pg.PartLayer(slice(None, None, 0))
    with pytest.raises(TypeError, match="tuple"):
        pg.PartLayer([0, 1])
    with pytest.raises(TypeError):
        pg.PartLayer(1.5)


def test_replicate_errors():
    with pytest.raises(ValueError, match="axis 3 is out of range for an input of rank 1"):
        pg.ReplicateLayer(2, 3, input=4).output_ports
    with pytest.raises(ValueError):
        pg.ReplicateLayer(0)
    assert pg.ReplicateLayer(2, -1, input=(3, 4)).output_ports == {"Output": (3, 4, 2)}
    assert pg.ReplicateLayer((2, 5), 1, input=(3, 4)).output_ports == {"Output": (3, 2, 5, 4)}


# ----------------------------------------------------------------------------- gradients
def test_broadcast_gradients_are_summed_over_broadcast_axes():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 3))
    layer = pg.ThreadingLayer("Times", inputs=[(2, 3), (3,)])
    g = layer({"Input1": a, "Input2": b}, [pg.NetPortGradient("Input1"), pg.NetPortGradient("Input2")],
              WorkingPrecision="Real64")
    np.testing.assert_allclose(g[pg.NetPortGradient("Input1")], np.broadcast_to(b[:, None, :], a.shape), rtol=1e-15)
    np.testing.assert_allclose(g[pg.NetPortGradient("Input2")], a.sum(1), rtol=1e-14)
    # A scalar input collects the whole sum.
    layer = pg.ThreadingLayer("Plus", inputs=[(), (2, 3)])
    g = ones_grad(layer, {"Input1": np.ones(4), "Input2": np.ones((4, 2, 3))}, "Input1")
    np.testing.assert_array_equal(g, np.full(4, 6.0))


def test_max_min_ties_go_to_the_first_input():
    x = np.array([1.0, 2.0, 3.0])
    for f in ("Max", "Min"):
        layer = pg.ThreadingLayer(f, inputs=[(3,), (3,), (3,)])
        g = layer({"Input1": x, "Input2": x, "Input3": x}, pg.NetPortGradient(pg.All), WorkingPrecision="Real64")
        np.testing.assert_array_equal(g[pg.NetPortGradient("Input1")], [1, 1, 1])
        np.testing.assert_array_equal(g[pg.NetPortGradient("Input2")], [0, 0, 0])
        np.testing.assert_array_equal(g[pg.NetPortGradient("Input3")], [0, 0, 0])
    # Ties between the later inputs go to the earlier of them.
    layer = pg.ThreadingLayer("Max", inputs=[(2,), (2,), (2,)])
    g = layer({"Input1": [0.0, 5.0], "Input2": [1.0, 1.0], "Input3": [1.0, 1.0]}, pg.NetPortGradient(pg.All))
    np.testing.assert_array_equal(g[pg.NetPortGradient("Input1")], [0, 1])
    np.testing.assert_array_equal(g[pg.NetPortGradient("Input2")], [1, 0])
    np.testing.assert_array_equal(g[pg.NetPortGradient("Input3")], [0, 0])
    # AggregationLayer: the first maximum in row-major order over the reduced axes.
    agg = pg.AggregationLayer("Max", input=(2, 2, 2))
    x = np.array([[[1.0, 3.0], [3.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])
    np.testing.assert_array_equal(ones_grad(agg, x, "Input"), [[[0, 1], [0, 0]], [[1, 0], [0, 0]]])


def test_part_gradient_scatters_into_zeros():
    layer = pg.PartLayer((slice(None, None, -2), 1), input=(3, 2))
    g = ones_grad(layer, np.arange(6.0).reshape(3, 2), "Input")
    np.testing.assert_array_equal(g, [[0, 1], [0, 0], [0, 1]])


def test_power_at_zero_base_gives_pytorch_gradients():
    layer = pg.ThreadingLayer("Power", inputs=[(3,), (3,)])
    data = {"Input1": np.array([0.0, 0.0, -2.0]), "Input2": np.array([2.0, 0.0, 2.0])}
    g = layer(data, pg.NetPortGradient(pg.All), WorkingPrecision="Real64")
    np.testing.assert_array_equal(g[pg.NetPortGradient("Input1")], [0.0, 0.0, -4.0])
    gy = g[pg.NetPortGradient("Input2")]
    assert gy[0] == 0 and gy[1] == 0 and np.isnan(gy[2])


# ----------------------------------------------------------------------------- ConstantArrayLayer
def test_constant_array_alone_gives_one_example():
    arr = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, 4.0]])
    layer = pg.ConstantArrayLayer(arr)
    assert layer.input_ports == {} and layer.output_ports == {"Output": (2, 3)}
    assert layer.arrays == {"Array": (2, 3)}
    for y in (layer(), layer({}), layer(WorkingPrecision="Real64")):
        np.testing.assert_array_equal(y, arr)
    g = layer(None, pg.NetPortGradient("Array"), WorkingPrecision="Real64")
    np.testing.assert_array_equal(g, np.ones((2, 3)))
    G = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(layer({pg.NetPortGradient("Output"): G}, pg.NetPortGradient("Array")), G)
    np.testing.assert_array_equal(pg.NetExtract(layer, "Array"), arr)


def test_constant_array_from_a_shape_is_initialised_to_zeros():
    layer = pg.ConstantArrayLayer(shape=(2, 2))
    assert layer.output_ports == {"Output": (2, 2)}
    with pytest.raises(ValueError, match="not initialised"):
        layer()
    np.testing.assert_array_equal(pg.NetInitialize(layer)(), np.zeros((2, 2)))
    assert pg.ConstantArrayLayer(3).output_ports == {"Output": (3,)}
    scalar = pg.NetInitialize(pg.ConstantArrayLayer(shape=()))
    assert scalar().shape == ()
    with pytest.raises(TypeError):
        pg.ConstantArrayLayer()
    with pytest.raises(ValueError, match="finite"):
        pg.ConstantArrayLayer([1.0, np.nan])


def test_constant_array_in_a_chain_with_a_data_input_is_broadcast_over_the_batch():
    """The chain's only data input is the loss's Target: the batch comes from it."""
    c = np.array([0.5, -1.0, 2.0])
    net = pg.NetChain([pg.ConstantArrayLayer(c), pg.MeanSquaredLossLayer(target=3)])
    assert set(net.input_ports) == {"Target"}
    t = np.random.default_rng(0).normal(size=(5, 3))
    loss = net({"Target": t}, WorkingPrecision="Real64")
    np.testing.assert_allclose(loss, ((c - t) ** 2).mean(1), rtol=1e-14)
    g = net({"Target": t}, pg.NetPortGradient((0, "Array")), WorkingPrecision="Real64")
    np.testing.assert_allclose(g, (2 * (c - t) / 3).sum(0), rtol=1e-13)
    np.testing.assert_allclose(net({"Target": t[0]}, WorkingPrecision="Real64"), loss[0], rtol=1e-14)
    assert "ConstantArrayLayer" in repr(net)


def test_constant_array_gradient_vs_finite_differences():
    base = pg.NetInitialize(pg.NetChain([pg.ConstantArrayLayer(shape=(2, 3)), pg.ElementwiseLayer("Tanh"),
                                         pg.SummationLayer()]), seed=0)
    a0 = np.array([[0.25, -0.5, 1.0], [0.75, -1.25, 0.125]])
    net = pg.NetReplacePart(base, {(0, "Array"): a0})
    g = net(None, pg.NetPortGradient((0, "Array")), WorkingPrecision="Real64")
    fd = fd_array_gradient(lambda a: float(pg.NetReplacePart(net, {(0, "Array"): a})(WorkingPrecision="Real64")), a0)
    grad_close(g, fd)
    np.testing.assert_allclose(g, 1 - np.tanh(a0) ** 2, rtol=1e-14)


def test_replicate_then_aggregate_chain_gradients():
    net = pg.NetChain([pg.ReplicateLayer(3, -1), pg.TransposeLayer((2, 0, 1)), pg.AggregationLayer("Mean", [0, 2]),
                       pg.SoftmaxLayer(log=True)], input=(2, 4))
    x = np.random.default_rng(1).normal(size=(2, 4))
    G = np.random.default_rng(2).normal(size=2)
    g = net({"Input": x, pg.NetPortGradient("Output"): G}, pg.NetPortGradient("Input"), WorkingPrecision="Real64")
    fd = fd_input_gradient(lambda v: float(np.sum(net(v, WorkingPrecision="Real64") * G)), x)
    grad_close(g, fd)


def test_multi_input_repr_and_batch_disagreement():
    layer = pg.ThreadingLayer("Plus", inputs=[(2,), (2,)])
    assert "Input1" in repr(layer)
    with pytest.raises(ValueError, match='ports "Input1" and "Input2" disagree'):
        layer({"Input1": np.zeros((3, 2)), "Input2": np.zeros((4, 2))})


# ----------------------------------------------------------------------------- PyTorch parity
def test_log_softmax_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, (6, 4, 7))
    G = rng.normal(size=x.shape)
    layer = pg.SoftmaxLayer(log=True, input=(4, 7))
    res = layer({"Input": x, pg.NetPortGradient("Output"): G}, ["Output", pg.NetPortGradient("Input")],
                WorkingPrecision="Real64")
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.log_softmax(tx, dim=-1)
    ty.backward(torch.tensor(G))
    np.testing.assert_allclose(res["Output"], ty.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(res[pg.NetPortGradient("Input")], tx.grad.numpy(), rtol=1e-12, atol=1e-14)
    y32 = layer(x.astype(np.float32))
    np.testing.assert_allclose(y32, ty.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("f", ["Times", "Divide", "Power"])
def test_broadcast_threading_matches_torch(f):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    a = rng.uniform(0.5, 2.0, (5, 2, 1, 3))
    b = rng.uniform(0.5, 2.0, (5, 4, 1)) * (1 if f == "Power" else rng.choice([-1, 1], (5, 4, 1)))
    layer = pg.ThreadingLayer(f, inputs=[(2, 1, 3), (4, 1)])
    G = rng.normal(size=(5, 2, 4, 3))
    res = layer({"Input1": a, "Input2": b, pg.NetPortGradient("Output"): G},
                ["Output", pg.NetPortGradient("Input1"), pg.NetPortGradient("Input2")], WorkingPrecision="Real64")
    ta = torch.tensor(a, requires_grad=True)
    tb = torch.tensor(b[:, None], requires_grad=True)  # align per-example axes: (5, 1, 4, 1)
    op = {"Times": torch.mul, "Divide": torch.div, "Power": torch.pow}[f]
    ty = op(ta, tb)
    ty.backward(torch.tensor(G))
    np.testing.assert_allclose(res["Output"], ty.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(res[pg.NetPortGradient("Input1")], ta.grad.numpy(), rtol=1e-13)
    np.testing.assert_allclose(res[pg.NetPortGradient("Input2")], tb.grad.numpy()[:, 0], rtol=1e-13)


# ----------------------------------------------------------------------------- inside NetGraph
def test_constant_array_plus_input_in_a_graph():
    from gradcheck import check_net_gradients
    c = np.array([[0.5], [-1.0]])
    net = pg.NetGraph({"c": pg.ConstantArrayLayer(c), "plus": pg.ThreadingLayer("Plus"), "lin": pg.LinearLayer(2)},
                      [([pg.NetPort("Input"), "c"], "plus"), ("plus", "lin")], input=(2, 3))
    net = pg.NetInitialize(net, seed=0)
    assert net.input_ports == {"Input": (2, 3)} and net.arrays["c/Array"] == (2, 1)
    x = np.random.default_rng(5).normal(size=(4, 2, 3))
    W = pg.NetExtract(net, ("lin", "Weights")).astype(np.float64)
    b = pg.NetExtract(net, ("lin", "Biases")).astype(np.float64)
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), (x + c).reshape(4, 6) @ W.T + b, rtol=1e-12)
    g = net(x, pg.NetPortGradient(("c", "Array")), WorkingPrecision="Real64")
    np.testing.assert_allclose(g, (np.ones((4, 2)) @ W).reshape(4, 2, 3).sum((0, 2))[:, None], rtol=1e-12)
    check_net_gradients(net, {"Input": x})


def test_catenate_and_total_in_a_graph():
    from gradcheck import check_net_gradients
    net = pg.NetGraph({"a": pg.LinearLayer(3), "b": pg.LinearLayer(2), "cat": pg.CatenateLayer(),
                       "t": pg.TotalLayer(), "part": pg.PartLayer(slice(0, 5, 2))},
                      [(pg.NetPort("Input"), "a"), (pg.NetPort("Input"), "b"), (["a", "b"], "cat"),
                       (["cat", "cat"], "t"), ("t", "part")], input=4)
    net = pg.NetInitialize(net, seed=1)
    assert net.output_ports == {"Output": (3,)}
    x = np.random.default_rng(6).normal(size=(3, 4))
    check_net_gradients(net, {"Input": x})


def test_constant_array_not_learnable_is_left_out_of_all_but_differentiable_by_name(tmp_path):
    c = np.array([2.0, -3.0])
    net = pg.NetGraph({"c": pg.ConstantArrayLayer(c, learnable=False), "t": pg.ThreadingLayer("Times")},
                      [("c", pg.NetPort("t", "Input2")), (pg.NetPort("Input"), pg.NetPort("t", "Input1"))],
                      inputs={"Input": 2})
    x = np.array([[1.0, 4.0], [0.5, -1.0]])
    every = net(x, pg.NetPortGradient(pg.All))
    assert list(every) == [pg.NetPortGradient("Input")]
    np.testing.assert_array_equal(net(x, pg.NetPortGradient(("c", "Array"))), x.sum(0))
    net.save(tmp_path / "c.pgnet")
    back = pg.load(tmp_path / "c.pgnet")
    assert list(back(x, pg.NetPortGradient(pg.All))) == [pg.NetPortGradient("Input")]
    with pytest.raises(TypeError, match="learnable must be True or False"):
        pg.ConstantArrayLayer(c, learnable=1)


def test_padding_errors():
    with pytest.raises(ValueError, match=r'axis 0 \(size 3\) is more than "Reflected" padding can take .* at most 2'):
        pg.PaddingLayer([(3, 0)], "Reflected", input=(3, 2))
    with pytest.raises(ValueError, match=r'axis 1 \(size 2\) is more than "Periodic" .* at most 2'):
        pg.PaddingLayer([(0, 0), (1, 3)], "Periodic", input=(3, 2))
    with pytest.raises(ValueError, match=r"finite number or one of Fixed, Reflected, Periodic; given 'Mirror'"):
        pg.PaddingLayer([(1, 1)], "Mirror")
    with pytest.raises(ValueError, match="at most one pair per axis"):
        pg.PaddingLayer([(1, 1), (0, 0)], "Fixed", input=(3,))
    # a size-1 axis repeats its one element; mirroring it is refused (nothing to mirror)
    np.testing.assert_array_equal(pg.PaddingLayer([(2, 1)], "Fixed", input=(1,))(np.array([[5.0]])), [[5.0] * 4])
    with pytest.raises(ValueError, match="at most 0 on each side"):
        pg.PaddingLayer([(1, 0)], "Reflected", input=(1,))
