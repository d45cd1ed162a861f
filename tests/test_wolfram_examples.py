"""The three NetPortGradient examples of Wolfram's documentation, in portgrad's spelling."""
import numpy as np
import pytest

import portgrad as pg
from layer_registry import fd_input_gradient

NPG = pg.NetPortGradient


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_ramp_input_gradient_is_a_step(precision):
    ramp = pg.ElementwiseLayer("Ramp")
    x = np.array([-3.0, -1.0, -1e-30, 0.0, 1e-30, 0.5, 2.0, 100.0])
    g = ramp(x, NPG("Input"), WorkingPrecision=precision)
    assert g.shape == x.shape
    np.testing.assert_array_equal(g, [0, 0, 0, 0, 1, 1, 1, 1])  # Ramp'(0) = 0
    assert ramp(0.7, NPG("Input")) == 1 and ramp(-0.7, NPG("Input")) == 0
    assert ramp(0.0, NPG("Input")) == 0


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_linear_input_gradient_is_column_sums_of_weights(seed):
    lin = pg.NetInitialize(pg.LinearLayer(3, input=2), seed=seed)
    w = pg.NetExtract(lin, "Weights")
    assert w.shape == (3, 2)
    x = np.array([0.3, -1.2])
    g32 = lin(x, NPG("Input"))
    g64 = lin(x, NPG("Input"), WorkingPrecision="Real64")
    assert g32.shape == g64.shape == (2,)
    np.testing.assert_allclose(g64, w.astype(np.float64).sum(0), rtol=1e-15, atol=0)
    np.testing.assert_allclose(g32, w.sum(0), rtol=1e-6, atol=1e-7)
    fd = fd_input_gradient(lambda v: float(np.sum(lin(v, WorkingPrecision="Real64"))), x)
    np.testing.assert_allclose(g64, fd, rtol=1e-7, atol=1e-9)
    # Batched: the same gradient for every example (the layer is linear).
    gb = lin(np.random.default_rng(seed).standard_normal((5, 2)), NPG("Input"), WorkingPrecision="Real64")
    np.testing.assert_allclose(gb, np.tile(w.astype(np.float64).sum(0), (5, 1)), rtol=1e-15)


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_binary_cross_entropy_input_gradient_sign(precision):
    loss = pg.CrossEntropyLossLayer("Binary")
    assert loss({"Input": 0.3, "Target": 0.7}, NPG("Input"), WorkingPrecision=precision) < 0
    assert loss({"Input": 0.7, "Target": 0.3}, NPG("Input"), WorkingPrecision=precision) > 0
    assert loss({"Input": 0.4, "Target": 0.4}, NPG("Input"), WorkingPrecision=precision) == 0
    # The exact value: d/dp -(t log p + (1-t) log(1-p)) = (p - t) / (p (1 - p)).
    p = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    t = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
    g = loss({"Input": p, "Target": t}, NPG("Input"), WorkingPrecision=precision)
    expect = (p - t) / (p * (1 - p)) / p.size   # the loss is the mean over the elements
    np.testing.assert_allclose(g, expect, rtol=1e-6 if precision == "Real32" else 1e-13)
    np.testing.assert_array_equal(np.sign(g), np.sign(p - t))


def test_binary_cross_entropy_clamps_at_eps():
    """p = 0 or 1 gives a finite loss and a finite gradient of the right sign (eps = machine eps^2)."""
    loss = pg.CrossEntropyLossLayer("Binary")
    for precision, eps in (("Real32", float(np.finfo(np.float32).eps) ** 2),
                           ("Real64", float(np.finfo(np.float64).eps) ** 2)):
        y = loss({"Input": np.array([0.0, 1.0]), "Target": np.array([1.0, 0.0])}, WorkingPrecision=precision)
        np.testing.assert_allclose(y, -np.log(eps), rtol=1e-6)
        g = loss({"Input": np.array([0.0, 1.0]), "Target": np.array([1.0, 0.0])}, NPG("Input"),
                 WorkingPrecision=precision)
        assert np.all(np.isfinite(g)) and g[0] < 0 < g[1]
