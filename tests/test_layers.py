"""Every layer configuration of tests/layer_registry.py against its NumPy float64 reference,
its gradients against central finite differences (float64), and Real32 against Real64."""
import zlib

import numpy as np
import pytest

import portgrad as pg
from layer_registry import PARAMS, REGISTRY, assert_close, fd_array_gradient, fd_input_gradient, grad_close, weighted_sum

BATCHES = [None, 1, 7, 33]
BATCH_IDS = ["single", "b1", "b7", "b33"]
DTYPE = {"Real32": np.float32, "Real64": np.float64}

cases = pytest.mark.parametrize("case", PARAMS)
batches = pytest.mark.parametrize("batch", BATCHES, ids=BATCH_IDS)
precisions = pytest.mark.parametrize("precision", ["Real32", "Real64"])


def rng_for(case, batch, salt=0):
    return np.random.default_rng(zlib.crc32(f"{case.id}/{batch}/{salt}".encode()))


def output_gradient(rng, y):
    """A float32-exact imposed output gradient of y's shape."""
    return np.asarray(rng.uniform(-1.0, 1.0, np.shape(y)), dtype=np.float32).astype(np.float64)


@cases
@precisions
@batches
def test_forward_matches_reference(case, precision, batch):
    net = case.net()
    inputs = case.sample(rng_for(case, batch), batch)
    y = net(inputs, WorkingPrecision=precision)
    ref = case.reference(net, inputs)
    assert isinstance(y, np.ndarray) and y.dtype == DTYPE[precision]
    expect_shape = tuple(net.output_ports[case.out])
    if batch is not None:
        expect_shape = (batch,) + expect_shape
    assert y.shape == expect_shape == ref.shape
    if precision == "Real64":
        assert_close(y, ref, rtol=1e-12, atol=1e-14, what=f"{case.id} Real64 forward")
    else:
        assert_close(y, ref, rtol=2e-6, atol=1e-6, what=f"{case.id} Real32 forward")


@cases
@batches
@pytest.mark.parametrize("imposed", [False, True], ids=["sum", "vjp"])
def test_input_gradients_vs_finite_differences(case, batch, imposed):
    net = case.net()
    rng = rng_for(case, batch, 1)
    inputs = case.sample(rng, batch)
    y = net(inputs, WorkingPrecision="Real64")
    G = output_gradient(rng, y) if imposed else np.ones(np.shape(y))
    data = dict(inputs)
    if imposed:
        data[pg.NetPortGradient(case.out)] = G
    for port in case.real_ports:
        g = net(data, pg.NetPortGradient(port), WorkingPrecision="Real64")
        assert g.dtype == np.float64 and g.shape == np.shape(inputs[port])

        def f(v, port=port):
            return weighted_sum(net({**inputs, port: v}, WorkingPrecision="Real64"), G)

        fd = fd_input_gradient(f, inputs[port])
        grad_close(g, fd, what=f"{case.id}: d/d{port}{' (imposed)' if imposed else ''}")


@pytest.mark.parametrize("case", [c.param for c in REGISTRY if c.params])
@batches
@pytest.mark.parametrize("imposed", [False, True], ids=["sum", "vjp"])
def test_array_gradients_vs_finite_differences(case, batch, imposed):
    net = case.net()
    rng = rng_for(case, batch, 2)
    inputs = case.sample(rng, batch)
    y = net(inputs, WorkingPrecision="Real64")
    G = output_gradient(rng, y) if imposed else np.ones(np.shape(y))
    data = dict(inputs)
    if imposed:
        data[pg.NetPortGradient(case.out)] = G
    for name in case.params:
        a0 = np.asarray(pg.NetExtract(net, name), dtype=np.float64)
        g = net(data, pg.NetPortGradient(name), WorkingPrecision="Real64")
        assert g.dtype == np.float64 and g.shape == a0.shape

        def f(a, name=name):
            return weighted_sum(pg.NetReplacePart(net, {name: a})(inputs, WorkingPrecision="Real64"), G)

        fd = fd_array_gradient(f, a0)
        grad_close(g, fd, what=f"{case.id}: d/d{name}{' (imposed)' if imposed else ''}")


def _all(net, case, data, precision):
    spec = [case.out, pg.NetPortGradient(pg.All)]
    res = net(data, spec, WorkingPrecision=precision)
    grads = res[pg.NetPortGradient(pg.All)]
    return res[case.out], {k.target: v for k, v in grads.items()}


@cases
@batches
def test_real32_matches_real64(case, batch):
    net = case.net()
    rng = rng_for(case, batch, 3)
    inputs = case.sample(rng, batch)
    y64 = net(inputs, WorkingPrecision="Real64")
    data = {**inputs, pg.NetPortGradient(case.out): output_gradient(rng, y64)}
    y64, g64 = _all(net, case, data, "Real64")
    y32, g32 = _all(net, case, data, "Real32")
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    assert_close(y32, y64, rtol=2e-6, atol=1e-6, what=f"{case.id} output")
    expected_keys = set(case.real_ports) | {(p,) for p in case.params}
    assert set(g64) == set(g32) == expected_keys
    for key in g64:
        assert g32[key].dtype == np.float32 and g64[key].dtype == np.float64
        scale = float(np.max(np.abs(g64[key]))) if g64[key].size else 0.0
        assert_close(g32[key], g64[key], rtol=1e-5, atol=1e-5 * scale + 1e-7, what=f"{case.id} gradient {key}")


@cases
@precisions
def test_batch_is_examples_side_by_side(case, precision):
    """Input gradients come back per example, array gradients summed over the batch."""
    net = case.net()
    rng = rng_for(case, 5, 4)
    batch = 5
    inputs = case.sample(rng, batch)
    y = net(inputs, WorkingPrecision=precision)
    G = output_gradient(rng, y)
    tol = dict(rtol=1e-12, atol=1e-14) if precision == "Real64" else dict(rtol=1e-5, atol=1e-6)
    yb, gb = _all(net, case, {**inputs, pg.NetPortGradient(case.out): G}, precision)
    sums = {}
    for b in range(batch):
        one = {p: v[b] for p, v in inputs.items()}
        y1, g1 = _all(net, case, {**one, pg.NetPortGradient(case.out): G[b]}, precision)
        assert_close(yb[b], y1, what=f"{case.id} output of example {b}", **tol)
        for key, v in g1.items():
            if isinstance(key, str):  # an input port: per example
                assert v.shape == np.shape(one[key])
                assert_close(gb[key][b], v, what=f"{case.id} d/d{key} of example {b}", **tol)
            else:
                sums[key] = sums.get(key, 0.0) + v.astype(np.float64)
    for key, s in sums.items():
        assert gb[key].shape == s.shape
        scale = float(np.max(np.abs(s)))
        assert_close(gb[key], s, rtol=tol["rtol"], atol=tol["rtol"] * scale + tol["atol"],
                     what=f"{case.id} d/d{key} summed over the batch")


def test_every_engine_layer_type_has_a_front_end_class_and_a_registry_case():
    """csrc/layers/layers.def is the list of layer types: each has its Python class in `portgrad`
    and at least one case above (forward vs NumPy, gradients vs finite differences)."""
    from portgrad import _core
    types = _core.layer_types()
    assert "LinearLayer" in types and len(types) == len(set(types))
    tested = {type(case.make()).__name__ for case in REGISTRY}
    tested.add("ConstantArrayLayer")  # no input port, so no case here: tests/test_structure_layers.py tests it
    for t in types:
        assert getattr(pg, t, None) is not None and getattr(pg, t)._type == t, f"no front-end class for {t}"
        assert t in tested, f"{t} has no LayerCase in tests/layer_registry.py (or a registry_*.py)"
