"""An MLP in portgrad and in PyTorch with the same weights: outputs, input gradient and parameter
gradients agree (float64 and float32). Skipped where torch is not installed."""
import numpy as np
import pytest

import portgrad as pg

torch = pytest.importorskip("torch")

NPG = pg.NetPortGradient
ACTS = {"Tanh": torch.tanh, "LogisticSigmoid": torch.sigmoid, "GELU": torch.nn.functional.gelu,
        "Swish": torch.nn.functional.silu, "SoftPlus": torch.nn.functional.softplus, "ELU": torch.nn.functional.elu}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_mlp_matches_torch(act, precision):
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(16), act, pg.LinearLayer(8), act, pg.LinearLayer(3)],
                                       input=5), seed=0)
    rng = np.random.default_rng(0)
    net = pg.NetReplacePart(net, {(i, "Biases"): rng.uniform(-0.5, 0.5, s) for i, s in ((0, 16), (2, 8), (4, 3))})
    x = rng.standard_normal((9, 5)).astype(np.float32)
    g = rng.standard_normal((9, 3)).astype(np.float32)
    dt = torch.float64 if precision == "Real64" else torch.float32
    params = {i: [torch.tensor(pg.NetExtract(net, (i, n)), dtype=dt, requires_grad=True) for n in ("Weights", "Biases")]
              for i in (0, 2, 4)}
    xt = torch.tensor(x, dtype=dt, requires_grad=True)
    h = xt
    for i in (0, 2, 4):
        h = h @ params[i][0].T + params[i][1]
        if i != 4:
            h = ACTS[act](h)
    (h * torch.tensor(g, dtype=dt)).sum().backward()

    spec = ["Output", NPG("Input")] + [NPG((i, n)) for i in (0, 2, 4) for n in ("Weights", "Biases")]
    res = net({"Input": x, NPG("Output"): g}, spec, WorkingPrecision=precision)
    rtol, atol = (1e-11, 1e-12) if precision == "Real64" else (2e-5, 2e-5)
    np.testing.assert_allclose(res["Output"], h.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(res[NPG("Input")], xt.grad.numpy(), rtol=rtol, atol=atol)
    for i in (0, 2, 4):
        for k, n in enumerate(("Weights", "Biases")):
            np.testing.assert_allclose(res[NPG((i, n))], params[i][k].grad.numpy(), rtol=rtol, atol=atol,
                                       err_msg=f"{i}/{n}")
