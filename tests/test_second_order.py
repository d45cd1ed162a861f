"""Second order, forward over reverse: NetPortTangent(NetPortGradient(...)) (Hessian-vector
products, and the tangents of array gradients) for every layer configuration of
tests/layer_registry.py that has second derivatives — against central differences of the gradient
along the tangent (float64), with summed and imposed output gradients; the array-tangent paths
through the symmetry of mixed second derivatives; NetPortHessian; the layers without second
derivatives (BatchNormalizationLayer in Train mode) refuse by name."""
import zlib

import numpy as np
import pytest

import portgrad as pg
from layer_registry import PARAMS, assert_close, grad_close

NPT = pg.NetPortTangent
NPG = pg.NetPortGradient

def rng_for(case, salt):
    return np.random.default_rng(zlib.crc32(f"second/{case.id}/{salt}".encode()))


SECOND = [c for c in PARAMS if c.values[0].no_second_order is None]


@pytest.mark.parametrize("case", [c for c in PARAMS if c.values[0].no_second_order is not None])
def test_layers_without_second_derivatives_refuse_by_name(case):
    net = case.net()
    inputs = case.sample(np.random.default_rng(0), 2)
    data = {**inputs, **{NPT(p): np.ones(np.shape(inputs[p])) for p in case.real_ports}}
    with pytest.raises(ValueError, match=case.no_second_order):
        net(data, [NPT(NPG(p)) for p in case.real_ports])


@pytest.mark.parametrize("case", SECOND)
@pytest.mark.parametrize("imposed", [False, True], ids=["sum", "vjp"])
def test_hessian_vector_products_vs_central_differences_of_the_gradient(case, imposed):
    if not case.real_ports:
        pytest.skip("no real input (indices only)")
    net = case.net()
    rng = rng_for(case, imposed)
    inputs = case.sample(rng, 3)
    y = np.asarray(net(inputs, WorkingPrecision="Real64"))
    G = {NPG(case.out): rng.uniform(-1, 1, y.shape)} if imposed else {}
    vs = {p: rng.uniform(-1, 1, np.shape(inputs[p])) for p in case.real_ports}
    data = {**inputs, **G, **{NPT(p): v for p, v in vs.items()}}
    spec = [NPT(NPG(p)) for p in case.real_ports] + [NPT(NPG(n)) for n in case.params]
    got = net(data, spec, WorkingPrecision="Real64")  # every registry layer has second derivatives
    h = 1e-6

    def grads(s):
        moved = {**inputs, **G, **{p: inputs[p] + s * v for p, v in vs.items()}}
        r = net(moved, [NPG(p) for p in case.real_ports] + [NPG(n) for n in case.params], WorkingPrecision="Real64")
        return r

    plus, minus = grads(h), grads(-h)
    for item in spec:
        g = item.target
        fd = (np.asarray(plus[g]) - np.asarray(minus[g])) / (2 * h)
        grad_close(got[item], fd, rtol=1e-6, what=f"{case.id}: tangent of {g!r}")


@pytest.mark.parametrize("case", [c for c in SECOND if c.values[0].params])
def test_array_tangents_by_the_symmetry_of_second_derivatives(case):
    # M = d^2 f / dW dx: an input tangent u gives the W-gradient's tangent M u, an array tangent V the
    # input gradient's tangent M^T V, so <V, M u> = <u, M^T V> (the first is checked against finite
    # differences above); likewise <U, H V> = <V, H U> for two array tangents.
    net = case.net()
    rng = rng_for(case, "sym")
    inputs = case.sample(rng, 3)
    for name in case.params:
        shape = np.shape(pg.NetExtract(net, name))
        V, U = rng.uniform(-1, 1, shape), rng.uniform(-1, 1, shape)
        HV = net({**inputs, NPT(name): V}, NPT(NPG(name)), WorkingPrecision="Real64")
        HU = net({**inputs, NPT(name): U}, NPT(NPG(name)), WorkingPrecision="Real64")
        assert abs(np.sum(U * HV) - np.sum(V * HU)) <= 1e-10 * (1 + np.abs(U * HV).sum()), f"{case.id}: H_WW symmetric"
        for p in case.real_ports:
            u = rng.uniform(-1, 1, np.shape(inputs[p]))
            Mu = net({**inputs, NPT(p): u}, NPT(NPG(name)), WorkingPrecision="Real64")
            MtV = net({**inputs, NPT(name): V}, NPT(NPG(p)), WorkingPrecision="Real64")
            lhs, rhs = float(np.sum(V * Mu)), float(np.sum(u * MtV))
            assert abs(lhs - rhs) <= 1e-10 * (1 + abs(lhs)), f"{case.id}: <V, M u> = {lhs} vs <u, M^T V> = {rhs}"


def test_hessian_of_a_scalar_field_and_its_laplacian():
    # u(x, y) = the net's output; its Hessian from NetPortHessian against central differences of
    # the gradient, symmetric, and the Laplacian as its trace
    net = pg.NetInitialize(pg.NetChain([16, "Tanh", 16, "Sin", 1], input=2), seed=3)
    x = np.random.default_rng(4).uniform(-1, 1, (5, 2))
    H = net(x, pg.NetPortHessian("Input"), WorkingPrecision="Real64")
    assert H.shape == (5, 2, 2)
    np.testing.assert_allclose(H, H.transpose(0, 2, 1), rtol=1e-12, atol=1e-14)
    h = 1e-5
    g = lambda a: net(a, NPG("Input"), WorkingPrecision="Real64")  # noqa: E731
    fd = np.stack([(g(x + h * np.eye(2)[j]) - g(x - h * np.eye(2)[j])) / (2 * h) for j in range(2)], axis=2)
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-8)
    lap = np.trace(H, axis1=1, axis2=2)
    f = lambda a: net(a, WorkingPrecision="Real64")[:, 0]  # noqa: E731
    e = 1e-4
    fd_lap = sum((f(x + e * np.eye(2)[j]) - 2 * f(x) + f(x - e * np.eye(2)[j])) / e ** 2 for j in range(2))
    np.testing.assert_allclose(lap, fd_lap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net(x[1], pg.NetPortHessian("Input"), WorkingPrecision="Real64"), H[1], rtol=1e-12)


def test_the_refusal_names_the_layer_and_errors():
    bn = pg.NetInitialize(pg.NetChain([pg.LinearLayer(3), pg.BatchNormalizationLayer()], input=3), seed=0)
    with pytest.raises(ValueError, match=r"NetPortTangent: layer 1 "
                                         r"\(BatchNormalizationLayer\): in NetEvaluationMode \"Train\""):
        bn({"Input": np.ones((2, 3)), NPT("Input"): np.ones((2, 3))}, NPT(NPG("Input")), NetEvaluationMode="Train")
    net = pg.NetInitialize(pg.NetChain([4, "Tanh", pg.NormalizationLayer()], input=3), seed=0)
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="is asked for but no tangent is imposed"):
        net({"Input": x}, NPT(NPG("Input")))
    with pytest.raises(TypeError, match=r"is a result \(the Hessian-vector product\), not something to impose"):
        net({"Input": x, NPT(NPG("Input")): x}, NPT("Output"))
    with pytest.raises(ValueError, match="one gradient at a time"):
        NPT(NPG(pg.All))
    with pytest.raises(NotImplementedError, match="Hessians with respect to arrays"):
        pg.NetPortHessian((0, "Weights"))


def test_torch_hessian_vector_product_parity():
    torch = pytest.importorskip("torch")
    net = pg.NetInitialize(pg.NetChain([8, "Tanh", 6, "GELU", 1], input=3), seed=5)
    W = [np.asarray(pg.NetExtract(net, (k, n)), np.float64) for k in (0, 2, 4) for n in ("Weights", "Biases")]
    rng = np.random.default_rng(6)
    x, v = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))

    def f(a):
        h = torch.tanh(a @ torch.from_numpy(W[0]).T + torch.from_numpy(W[1]))
        h = torch.nn.functional.gelu(h @ torch.from_numpy(W[2]).T + torch.from_numpy(W[3]))
        return (h @ torch.from_numpy(W[4]).T + torch.from_numpy(W[5])).sum()

    want = torch.autograd.functional.hvp(f, torch.from_numpy(x), torch.from_numpy(v))[1].numpy()
    got = net({"Input": x, NPT("Input"): v}, NPT(NPG("Input")), WorkingPrecision="Real64")
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


def test_the_pinn_example_runs(tmp_path):
    # examples/pinn.py: the Laplacian from NetPortHessian agrees with finite differences of the net
    # (asserted in the example), and it draws the solution and the residual.
    pytest.importorskip("matplotlib")
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "pinn.png"
    r = subprocess.run([sys.executable, os.path.join(root, "examples", "pinn.py"), str(out), "--steps", "300"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Laplacian vs finite differences of the net" in r.stdout and out.exists()
