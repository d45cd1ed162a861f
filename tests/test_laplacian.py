"""NetLaplacian: a chain's output, input Jacobian and (weighted) Laplacian as one net of first-order
layers, and the arrays' gradients of its Laplacian (reverse mode over the second-order pass, what a
physics-informed loss trains with).

Checked against a NumPy float64 forward with central differences (independent of the engine's
derivatives), against NetPortHessian / NetPortJacobian of the source net (exact), the arrays'
gradients against central differences of the Laplacian in float64, and against PyTorch's double
backward where it is installed; training through the residual with NetTrain."""
import numpy as np
import pytest

import portgrad as pg
from layer_registry import assert_close, fd_array_gradient, grad_close, quantize

NP_FUNCTIONS = {
    "Tanh": np.tanh,
    "LogisticSigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "SoftPlus": lambda z: np.logaddexp(0, z),
    "Sin": np.sin,
    "Cos": np.cos,
    "Exp": np.exp,
    "Square": np.square,
    "Ramp": lambda z: np.maximum(z, 0),
}


def mlp(f, d=3, widths=(7, 5), out=2, seed=0):
    layers = []
    for w in widths:
        layers += [pg.LinearLayer(w), f]
    layers.append(pg.LinearLayer(out))
    net = pg.NetInitialize(pg.NetChain(layers, input=d), seed=seed)
    # Small weights keep Exp and Square nets in a range where differences are accurate.
    return pg.NetReplacePart(net, {k: quantize(0.6 * np.asarray(pg.NetExtract(net, k))) for k in net.arrays})


def numpy_forward(net, f, x):
    h = np.asarray(x, dtype=np.float64)
    for name, layer in net._layers:
        if layer._spec["type"] == "LinearLayer":
            W = np.asarray(net._params[f"{name}/Weights"], dtype=np.float64)
            h = h @ W.T + np.asarray(net._params[f"{name}/Biases"], dtype=np.float64)
        else:
            h = NP_FUNCTIONS[f](h)
    return h


def numpy_derivatives(net, f, x, c, step=1e-4):
    """(Jacobian (n, out, d), Laplacian (n, out)) of the NumPy forward by central differences."""
    d = x.shape[1]
    u0 = numpy_forward(net, f, x)
    jac, lap = [], 0
    for i in range(d):
        e = np.zeros(d)
        e[i] = step
        up, um = numpy_forward(net, f, x + e), numpy_forward(net, f, x - e)
        jac.append((up - um) / (2 * step))
        lap = lap + c[i] * (up - 2 * u0 + um) / step ** 2
    return np.stack(jac, axis=-1), lap


def points(n=6, d=3, seed=1, f=None):
    x = np.random.default_rng(seed).uniform(-1, 1, (n, d))
    return x


@pytest.mark.parametrize("f", list(NP_FUNCTIONS))
def test_outputs_against_numpy_and_the_engines_second_derivatives(f):
    net = mlp(f)
    c = np.array([1.0, 0.5, -2.0])
    x = points()
    res = pg.NetLaplacian(net, coefficients=c)(x, WorkingPrecision="Real64")
    assert set(res) == {"Output", "Gradient", "Laplacian"}
    assert_close(res["Output"], numpy_forward(net, f, x), rtol=1e-12, atol=1e-12, what=f"{f} Output")
    jac, lap = numpy_derivatives(net, f, x, c)
    assert_close(res["Gradient"], jac, rtol=1e-7, atol=1e-7, what=f"{f} Gradient vs NumPy differences")
    if f != "Ramp":  # a ReLU net's second differences see kinks; its Laplacian is 0 almost everywhere
        assert_close(res["Laplacian"], lap, rtol=1e-4, atol=1e-4, what=f"{f} Laplacian vs NumPy differences")
    # Exactly what the engine's forward over reverse gives (its Hessian is of the outputs' sum).
    H = net(x, pg.NetPortHessian("Input"), WorkingPrecision="Real64")  # (n, d, d)
    assert_close(res["Laplacian"].sum(axis=1), np.einsum("nii,i->n", H, c), rtol=1e-11, atol=1e-12,
                 what=f"{f} vs Hessian")
    J = net(x, pg.NetPortJacobian("Input"), WorkingPrecision="Real64")
    assert_close(res["Gradient"], J, rtol=1e-12, atol=1e-13, what=f"{f} vs Jacobian")


def test_real32_agrees_with_real64_and_a_batch_with_one_by_one():
    net = mlp("Tanh")
    lap = pg.NetLaplacian(net)
    x = points(n=5)
    r64 = lap(x, WorkingPrecision="Real64")
    r32 = lap(x)
    for k in r64:
        assert r32[k].dtype == np.float32
        assert_close(r32[k], r64[k], rtol=1e-4, atol=1e-5, what=k)
    for i in range(len(x)):
        one = lap(x[i], WorkingPrecision="Real64")
        for k in r64:
            assert_close(one[k], r64[k][i], rtol=1e-12, atol=1e-14, what=f"{k} of example {i} alone")


def test_scalar_output_nested_chains_and_tied_arrays():
    w = pg.NetSharedArray("tied")
    inner = pg.NetChain([pg.LinearLayer(4, weights=w), "Sin", pg.LinearLayer(4, weights=w), "Tanh"])
    net = pg.NetInitialize(pg.NetChain({"first": pg.LinearLayer(4), "block": inner, "last": pg.LinearLayer(())},
                                       input=2), seed=3)
    lap = pg.NetLaplacian(net)
    assert lap.output_ports == {"Output": (), "Gradient": (2,), "Laplacian": ()}
    assert pg.NetSharedArray("tied") in lap.arrays and pg.NetSharedArray("block/2/Biases") in lap.arrays
    x = points(n=4, d=2)
    res = lap(x, WorkingPrecision="Real64")
    H = net(x, pg.NetPortHessian("Input"), WorkingPrecision="Real64")
    assert_close(res["Laplacian"], np.trace(H, axis1=1, axis2=2), rtol=1e-11, atol=1e-12)
    assert_close(res["Gradient"], net(x, pg.NetPortGradient("Input"), WorkingPrecision="Real64"), rtol=1e-12,
                 atol=1e-13)
    # The source net back, unchanged; and with the arrays the Laplacian net holds after a change.
    same = lap.net
    for k in net.arrays:
        np.testing.assert_array_equal(pg.NetExtract(same, k), pg.NetExtract(net, k))
    new_tied = np.full((4, 4), 0.25)
    changed = pg.NetReplacePart(lap, {w: new_tied}).net
    np.testing.assert_array_equal(pg.NetExtract(changed, w), new_tied)
    np.testing.assert_array_equal(pg.NetExtract(net, w), pg.NetExtract(lap, w))  # the source is unchanged


def test_an_affine_net_has_a_zero_laplacian():
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(3), pg.LinearLayer(2)], input=4), seed=0)
    res = pg.NetLaplacian(net)(points(d=4), WorkingPrecision="Real64")
    np.testing.assert_array_equal(res["Laplacian"], np.zeros((6, 2)))


def laplacian_loss(lap, x, R):
    """sum(R * Laplacian) in float64: a scalar of the arrays whose gradient is a third derivative of the net."""
    return float(np.sum(lap(x, WorkingPrecision="Real64")["Laplacian"] * R))


@pytest.mark.parametrize("f", ["Tanh", "LogisticSigmoid", "Sin", "SoftPlus"])
def test_array_gradients_of_the_laplacian_against_central_differences(f):
    net = mlp(f, d=2, widths=(4, 3), out=1, seed=2)
    lap = pg.NetLaplacian(net, coefficients=[1.0, 0.75])
    x = points(n=5, d=2, seed=3)
    R = np.random.default_rng(4).standard_normal((5, 1))
    for key in lap.arrays:
        if not isinstance(key, pg.NetSharedArray):
            continue  # the constants (identity, 1, -2, ...), not learnable
        got = lap({"Input": x, pg.NetPortGradient("Laplacian"): R}, pg.NetPortGradient(key),
                  WorkingPrecision="Real64")
        a0 = np.asarray(pg.NetExtract(lap, key), dtype=np.float64)

        def f_of(a, key=key):
            return laplacian_loss(pg.NetReplacePart(lap, {key: a}), x, R)

        grad_close(got, fd_array_gradient(f_of, a0), rtol=1e-6, what=f"{f}: d sum(R Laplacian) / d {key}")
        if key != pg.NetSharedArray("4/Biases"):  # the Laplacian does not depend on the output's bias
            assert np.max(np.abs(got)) > 0


def test_the_constants_are_not_trained():
    lap = pg.NetLaplacian(mlp("Tanh"))
    grads = lap(points(), pg.NetPortGradient(pg.All))
    assert {k.target for k in grads if k.target != "Input"} == {k for k in lap.arrays if isinstance(k, pg.NetSharedArray)}


def test_array_gradients_match_pytorch_double_backward():
    torch = pytest.importorskip("torch")
    net = mlp("Tanh", d=3, widths=(8, 6), out=2, seed=5)
    c = np.array([1.0, 2.0, 0.5])
    lap = pg.NetLaplacian(net, coefficients=c)
    x = points(n=4, d=3, seed=6)
    R = np.random.default_rng(7).standard_normal((4, 2))
    P = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in net._params.items()}

    def u(xt):
        h = torch.tanh(xt @ P["0/Weights"].T + P["0/Biases"])
        h = torch.tanh(h @ P["2/Weights"].T + P["2/Biases"])
        return h @ P["4/Weights"].T + P["4/Biases"]

    xt = torch.tensor(x, requires_grad=True)
    out = u(xt)
    laplacian = torch.zeros_like(out)
    for o in range(2):
        g = torch.autograd.grad(out[:, o].sum(), xt, create_graph=True)[0]
        for i in range(3):
            laplacian[:, o] = laplacian[:, o] + c[i] * torch.autograd.grad(g[:, i].sum(), xt, create_graph=True)[0][:, i]
    (laplacian * torch.from_numpy(R)).sum().backward()
    res = lap({"Input": x, pg.NetPortGradient("Laplacian"): R}, pg.NetPortGradient(pg.All), WorkingPrecision="Real64")
    for name, p in P.items():  # the output's bias has no part in the Laplacian: no torch gradient, portgrad's 0
        want = p.grad.numpy() if p.grad is not None else np.zeros(p.shape)
        assert_close(res[pg.NetPortGradient(pg.NetSharedArray(name))], want, rtol=1e-10, atol=1e-12, what=name)
    assert_close(lap(x, WorkingPrecision="Real64")["Laplacian"], laplacian.detach().numpy(), rtol=1e-11, atol=1e-12)


def test_gpu_path_agrees():
    net = mlp("Tanh")
    lap = pg.NetLaplacian(net)
    x = points()
    cpu = lap(x, WorkingPrecision="Real64")
    gpu = lap(x, WorkingPrecision="Real64", TargetDevice="GPU")
    for k in cpu:
        assert_close(gpu[k], cpu[k], rtol=1e-10, atol=1e-12, what=k)


def test_training_through_the_residual_lowers_it():
    # A few hundred Adam steps of the Poisson residual of examples/pinn.py: the loss falls, the source
    # net comes back with the trained arrays, and NetTrain left the net it was given alone.
    rng = np.random.default_rng(0)
    net = pg.NetInitialize(pg.NetChain([16, "Tanh", 16, "Tanh", 1], input=2), seed=0)
    lap = pg.NetLaplacian(net)
    P = pg.NetPort
    train = pg.NetGraph({"pde": lap, "residual": pg.MeanSquaredLossLayer()},
                        [(P("pde", "Laplacian"), P("residual", "Input")), (P("residual", "Loss"), P("Loss"))])
    xy = rng.uniform(0, 1, (512, 2))
    target = -2 * np.pi ** 2 * np.sin(np.pi * xy[:, :1]) * np.sin(np.pi * xy[:, 1:])
    data = {"Input": xy, "Target": target}
    before = float(np.mean(train(data)["Loss"]))
    res = pg.NetTrain(train, data, pg.All, BatchSize=64, MaxTrainingRounds=20, LearningRate=3e-3,
                      TrainingProgressReporting=None)
    trained = res["TrainedNet"]
    after = float(np.mean(trained(data)["Loss"]))
    assert after < 0.2 * before, (before, after)
    u = pg.NetExtract(trained, "pde").net
    got = pg.NetLaplacian(u)(xy, WorkingPrecision="Real64")["Laplacian"]
    assert float(np.mean((got - target) ** 2)) == pytest.approx(after, rel=1e-3)
    for k in net.arrays:  # the source and the Laplacian net given to NetTrain are unchanged
        np.testing.assert_array_equal(pg.NetExtract(lap.net, k), pg.NetExtract(net, k))


@pytest.mark.parametrize("make, message", [
    (lambda: pg.NetGraph({"a": pg.LinearLayer(2)}, [], input=2), "NetChain"),
    (lambda: pg.NetChain([4, "GELU", 1], input=2), "GELU"),
    (lambda: pg.NetChain([pg.LinearLayer(4), pg.SoftmaxLayer()], input=2), "SoftmaxLayer"),
    (lambda: pg.NetChain([pg.LinearLayer(4)]), "declared as a vector"),
    (lambda: pg.NetChain([pg.FlattenLayer(), pg.LinearLayer(4)], input=(2, 2)), "declared as a vector"),
])
def test_what_it_cannot_take_is_refused_by_name(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        pg.NetLaplacian(make())


@pytest.mark.parametrize("c", [[1.0], [1.0, np.nan], "ab"])
def test_bad_coefficients(c):
    with pytest.raises((ValueError, TypeError), match="coefficients"):
        pg.NetLaplacian(pg.NetChain([3, "Tanh", 1], input=2), coefficients=c)
