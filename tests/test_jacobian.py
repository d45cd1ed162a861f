"""NetPortJacobian: per-example Jacobians of an output with respect to an input port, forward mode
(columns from tangents) and reverse mode (rows from gradients) agreeing with each other, with central
differences (float64), with the examples one at a time, and with torch.func where it is installed."""
import numpy as np
import pytest

import portgrad as pg

NPG = pg.NetPortGradient

NPJ = pg.NetPortJacobian


def central_jacobian(f, x, h=1e-6):
    """d f(x) / dx per example by central differences: (batch, *out, *in)."""
    cols = []
    for k in range(x[0].size):
        e = np.zeros(x[0].size)
        e[k] = h
        e = e.reshape(x.shape[1:])
        cols.append((f(x + e) - f(x - e)) / (2 * h))
    J = np.stack(cols, axis=-1)  # (batch, *out, n_in)
    return J.reshape(J.shape[:-1] + x.shape[1:])


def mlp():
    return pg.NetInitialize(pg.NetChain([7, "Tanh", 5, "Swish", 4, pg.SoftmaxLayer()], input=3), seed=1)


def cnn():
    return pg.NetInitialize(pg.NetChain([pg.ConvolutionLayer(2, 3, padding=1), "Tanh", pg.PoolingLayer(2, 2, function="Mean"),
                                         pg.FlattenLayer(), 3], input=(1, 4, 4)), seed=2)


@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("method", ["Forward", "Reverse", None])
def test_jacobian_vs_central_differences(make, method):
    net = make()
    in_shape = net.input_ports["Input"]
    x = np.random.default_rng(3).standard_normal((4, *in_shape))
    J = net(x, NPJ("Input", Method=method), WorkingPrecision="Real64")
    out_shape = net.output_ports["Output"]
    assert J.shape == (4, *out_shape, *in_shape) and J.dtype == np.float64
    fd = central_jacobian(lambda a: net(a, WorkingPrecision="Real64"), x)
    np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-8)
    # one example: no batch axis, the same numbers
    np.testing.assert_allclose(net(x[2], NPJ("Input", Method=method), WorkingPrecision="Real64"), J[2], rtol=1e-13,
                               atol=1e-15)
    J32 = net(x, NPJ("Input", Method=method))
    assert J32.dtype == np.float32
    np.testing.assert_allclose(J32, J, rtol=1e-4, atol=1e-5)


def test_several_outputs_and_inputs_of_a_graph():
    g = pg.NetInitialize(pg.NetGraph({"a": pg.LinearLayer(4), "t": "Tanh", "m": pg.ThreadingLayer("Times"),
                                      "b": pg.LinearLayer(2)},
                                     [(pg.NetPort("X"), "a", "t", pg.NetPort("m", "Input1")),
                                      (pg.NetPort("Y"), pg.NetPort("m", "Input2")), ("m", "b", pg.NetPort("P")),
                                      ("t", pg.NetPort("Q"))], inputs={"X": 3, "Y": 4}), seed=5)
    rng = np.random.default_rng(6)
    data = {"X": rng.standard_normal((2, 3)), "Y": rng.standard_normal((2, 4))}
    both = g(data, NPJ("X"), WorkingPrecision="Real64")
    assert set(both) == {"P", "Q"} and both["P"].shape == (2, 2, 3) and both["Q"].shape == (2, 4, 3)
    for out in ("P", "Q"):
        fd = central_jacobian(lambda a, out=out: g({"X": a, "Y": data["Y"]}, out, WorkingPrecision="Real64"), data["X"])
        np.testing.assert_allclose(both[out], fd, rtol=1e-6, atol=1e-8)
        for method in ("Forward", "Reverse"):
            np.testing.assert_allclose(g(data, NPJ("X", out, Method=method), WorkingPrecision="Real64"), both[out],
                                       rtol=1e-12, atol=1e-14)
    res = g(data, ["P", NPJ("Y", "P"), pg.NetPortGradient("X")], WorkingPrecision="Real64")
    fd = central_jacobian(lambda a: g({"X": data["X"], "Y": a}, "P", WorkingPrecision="Real64"), data["Y"])
    np.testing.assert_allclose(res[NPJ("Y", "P")], fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res["P"], g(data, "P", WorkingPrecision="Real64"), rtol=1e-14)


def test_errors():
    net = mlp()
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="NetEvaluationMode 'Test'"):
        net(x, NPJ("Input"), NetEvaluationMode="Train")
    with pytest.raises(ValueError, match="an array's Jacobian is built in reverse mode"):
        net(x, NPJ((0, "Weights"), Method="Forward"))
    with pytest.raises(ValueError, match="not All"):
        NPJ(pg.All)
    with pytest.raises(KeyError, match="no input port 'X'"):
        net(x, NPJ("X"))
    with pytest.raises(KeyError, match="no output port 'Z'"):
        net(x, NPJ("Input", "Z"))
    with pytest.raises(ValueError, match="Method must be"):
        NPJ("Input", Method="Both")
    with pytest.raises(ValueError, match=r"expected shape \(3,\) \(one example\)"):
        net(np.ones((2, 4)), NPJ("Input"))
    big = pg.NetInitialize(pg.NetChain([pg.FlattenLayer(), 2], input=(3, 200, 200)), seed=0)
    with pytest.raises(ValueError, match="directions each need about .* evaluate fewer examples at a time"):
        big(np.zeros((2, 3, 200, 200), np.float32), pg.NetPortHessian("Input"))
    with pytest.raises(ValueError, match="DeviceResults=True is not available"):
        net(x, NPJ("Input"), DeviceResults=True)
    with pytest.raises(ValueError, match="no declared input shape, so a batch cannot be told from one example"):
        pg.NetChain([pg.ElementwiseLayer("Tanh")])(x, NPJ("Input"))


def test_a_tuple_request_holds_jacobians_like_a_list():
    net = mlp()
    x = np.random.default_rng(1).standard_normal((2, 3))
    as_tuple = net(x, (NPJ("Input"), "Output"), WorkingPrecision="Real64")
    as_list = net(x, [NPJ("Input"), "Output"], WorkingPrecision="Real64")
    assert set(as_tuple) == {NPJ("Input"), "Output"}
    for k in as_list:
        np.testing.assert_array_equal(as_tuple[k], as_list[k])


def test_torch_func_parity():
    torch = pytest.importorskip("torch")
    net = mlp()
    x = np.random.default_rng(7).standard_normal((5, 3))
    W = [np.asarray(pg.NetExtract(net, (k, n)), np.float64) for k in (0, 2, 4) for n in ("Weights", "Biases")]

    def f(v):
        h = torch.tanh(v @ torch.from_numpy(W[0]).T + torch.from_numpy(W[1]))
        h = h @ torch.from_numpy(W[2]).T + torch.from_numpy(W[3])
        h = h * torch.sigmoid(h)
        return torch.softmax(h @ torch.from_numpy(W[4]).T + torch.from_numpy(W[5]), -1)

    want = torch.func.vmap(torch.func.jacrev(f))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net(x, NPJ("Input"), WorkingPrecision="Real64"), want, rtol=1e-12, atol=1e-14)


def test_jacobians_with_respect_to_arrays():
    net = mlp()
    x = np.random.default_rng(8).standard_normal((3, 3))
    J = net(x, NPJ((2, "Weights")), WorkingPrecision="Real64")
    assert J.shape == (3, 4, 5, 7)  # (batch, output, array)
    # row i of example b: the gradient of output i of example b alone
    for b in range(3):
        for i in range(4):
            g = net({"Input": x[b:b + 1], NPG("Output"): np.eye(4)[i][None]}, NPG((2, "Weights")),
                    WorkingPrecision="Real64")
            np.testing.assert_allclose(J[b, i], g, rtol=1e-12, atol=1e-14)
    # and its columns against forward mode with array tangents (shared by the batch: examples one at a time)
    V = np.random.default_rng(9).standard_normal((5, 7))
    for b in range(3):
        t = net({"Input": x[b], pg.NetPortTangent((2, "Weights")): V}, pg.NetPortTangent("Output"),
                WorkingPrecision="Real64")
        np.testing.assert_allclose(np.tensordot(J[b], V, axes=2), t, rtol=1e-12, atol=1e-14)
    assert net(x[0], NPJ((2, "Weights"))).shape == (4, 5, 7)


def test_repeated_jacobians_take_the_fast_path_and_agree():
    """The second call of the same forward-mode Jacobian runs from the cached request: the same
    numbers as the first, for a batch, one example and both precisions, and a new shape still works."""
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(6), "Tanh", pg.LinearLayer(9)], input=3), seed=2)
    rng = np.random.default_rng(3)
    jac = pg.NetPortJacobian("Input")
    for x in (rng.standard_normal((5, 3)), rng.standard_normal(3), rng.standard_normal((2, 3))):
        for precision in ("Real32", "Real64"):
            first = net(x, jac, WorkingPrecision=precision)
            assert any(k[0] == "jacobian" for k in net._fast._entries)
            second = net(x + 0.0, jac, WorkingPrecision=precision)
            np.testing.assert_array_equal(first, second)
            want = net(x, pg.NetPortJacobian("Input", Method="Reverse"), WorkingPrecision=precision)
            np.testing.assert_allclose(second, want, rtol=1e-5 if precision == "Real32" else 1e-12, atol=1e-6)
    assert net(rng.standard_normal((2, 3)), jac).shape == (2, 9, 3)
