"""The C++ engine: plans compute only what a request needs, are cached, allocate nothing when
reused, run concurrently, and the spec reader rejects malformed input cleanly."""
import json
import threading

import numpy as np
import pytest

import portgrad as pg
from portgrad import _core
from plan_requests import request


@pytest.fixture(scope="module")
def mlp():
    return pg.NetInitialize(pg.NetChain([4, "Tanh", 3, "Tanh", 1], input=2), seed=0)


def steps(net, outputs=(), input_grads=(), param_grads=(), imposed=(), batch=1):
    c = net._core_net()
    return c.describe_plan(request(c, outputs, input_grads, param_grads, imposed), batch)


def param_index(net, path):
    return [p for p, _ in net._core_net().params].index(path)


def test_output_alone_runs_no_backward(mlp):
    s = steps(mlp, outputs=[0])
    assert not any(line.startswith("backward") for line in s)
    # Each activation is applied in the epilogue of the LinearLayer that feeds it.
    assert [line for line in s if line.startswith("forward")] == [
        "forward 0 (LinearLayer) + Tanh", "forward 2 (LinearLayer) + Tanh", "forward 4 (LinearLayer)"]


def test_activation_fusion_keeps_what_backward_needs(mlp):
    # With a backward pass the pre-activation is still kept; an internal read of it or a second
    # consumer prevents the fusion.
    x = np.random.default_rng(0).standard_normal((3, 2))
    fused = mlp(x, ["Output", pg.NetPortGradient("Input")], WorkingPrecision="Real64")
    pre = mlp(x, pg.NetPort(0, "Output"), WorkingPrecision="Real64")
    W0, b0 = (pg.NetExtract(mlp, (0, k)).astype(np.float64) for k in ("Weights", "Biases"))
    np.testing.assert_allclose(pre, x @ W0.T + b0, rtol=1e-12)
    act = mlp(x, pg.NetPort(1, "Output"), WorkingPrecision="Real64")
    np.testing.assert_allclose(act, np.tanh(pre), rtol=1e-12)
    assert fused["Output"].shape == (3, 1)
    c = mlp._core_net()
    probe = request(c, [0], probes=[("0", "Output")])
    assert "forward 0 (LinearLayer)" in c.describe_plan(probe, 1)


def test_input_gradient_computes_no_weight_gradient(mlp):
    s = steps(mlp, input_grads=[0])
    back = [line for line in s if line.startswith("backward")]
    # Each activation's derivative is folded into the backward of the LinearLayer that feeds it.
    assert back == ["backward 4 (LinearLayer): dInput", "backward 2 (LinearLayer) + Tanh: dInput",
                    "backward 0 (LinearLayer) + Tanh: dInput"]


def test_backward_fusion_needs_forward_fusion(mlp):
    # Reading the pre-activation (a probe) prevents the fusion in both directions, and the
    # gradients are the same either way.
    c = mlp._core_net()
    probe = request(c, [0], [0], probes=[("0", "Output")])
    s = c.describe_plan(probe, 3)
    assert "backward 1 (ElementwiseLayer): dInput" in s and "backward 0 (LinearLayer): dInput" in s, s
    assert "backward 2 (LinearLayer) + Tanh: dInput" in s, s
    x = np.random.default_rng(1).standard_normal((3, 2))
    g_fused = mlp(x, pg.NetPortGradient("Input"), WorkingPrecision="Real64")
    g_probe = mlp(x, [pg.NetPortGradient("Input"), pg.NetPort(0, "Output")], WorkingPrecision="Real64")
    np.testing.assert_allclose(g_fused, g_probe[pg.NetPortGradient("Input")], rtol=1e-12)


def test_parameter_gradient_stops_at_its_layer(mlp):
    s = steps(mlp, param_grads=[param_index(mlp, "2/Weights")])
    back = [line for line in s if line.startswith("backward")]
    assert back == ["backward 4 (LinearLayer): dInput", "backward 2 (LinearLayer) + Tanh: dWeights"]


def test_output_only_request_skips_unneeded_layers():
    # The second output of a loss chain is not asked for: no extra work is scheduled.
    net = pg.NetInitialize(pg.NetChain([3, pg.SoftmaxLayer(), pg.CrossEntropyLossLayer("Index")], input=4), seed=0)
    s = steps(net, outputs=[0])
    assert [line for line in s if line.startswith("forward")] == [
        "forward 0 (LinearLayer)", "forward 1 (SoftmaxLayer)", "forward 2 (CrossEntropyLossLayer)"]


def test_plans_are_cached_and_reuse_allocates_nothing(mlp):
    x = np.random.default_rng(0).random((5, 2)).astype(np.float32)
    g = pg.NetPortGradient("Input")
    mlp(x, g)
    c = mlp._core_net()
    plans = c.plan_count()
    before = _core.allocation_count()
    for _ in range(10):
        mlp(x, g)
    assert _core.allocation_count() == before
    assert c.plan_count() == plans
    mlp(x[:3], g)  # another batch size: one new plan
    assert c.plan_count() == plans + 1
    assert _core.allocation_count() > before


def test_concurrent_evaluation_matches_sequential():
    net = pg.NetInitialize(pg.NetChain([32, "Tanh", 32, "Tanh", 3], input=8), seed=3)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((16, 8)) for _ in range(8)]
    g = pg.NetPortGradient("Input")
    expected = [net(x, ["Output", g, pg.NetPortGradient((0, "Weights"))]) for x in xs]
    results = [None] * len(xs)
    errors = []

    def work(i):
        try:
            for _ in range(20):
                results[i] = net(xs[i], ["Output", g, pg.NetPortGradient((0, "Weights"))])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("text, fragment", [
    ("", "unexpected end"),
    ("{", "expected"),
    ('{"type": "LinearLayer", "size": [3],}', "expected"),
    ('{"type": "LinearLayer", "type": "X"}', "duplicate key"),
    ('{"type": "Linear\\ud800Layer"}', "surrogate"),
    ('{"type": "\x01"}', "control character"),
    ('{"type": "LinearLayer", "size": [1e999]}', "out of range"),
    ("[" * 200 + "]" * 200, "nests deeper than portgrad reads"),
    ('{"type": "LinearLayer"} x', "trailing"),
    ('"just a string"', "object"),
])
def test_malformed_spec_json_is_rejected(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        _core.Net(text, [])


def test_invalid_utf8_in_spec_is_rejected():
    with pytest.raises((ValueError, UnicodeError)):
        _core.Net(b'{"type": "\xff\xfe"}'.decode("latin-1"), [])


@pytest.mark.parametrize("spec, fragment", [
    ({"type": "NoSuchLayer"}, "unknown layer type"),
    ({"type": "LinearLayer"}, "output size"),
    ({"type": "LinearLayer", "size": [-3]}, "positive"),
    ({"type": "LinearLayer", "size": [2.5]}, "integer"),
    ({"type": "LinearLayer", "size": [2 ** 30, 2 ** 30]}, "2\\^40"),
    ({"type": "LinearLayer", "size": [3], "biases": "yes"}, "true or false"),
    ({"type": "ElementwiseLayer", "function": "NoSuch"}, "unknown elementwise"),
    ({"type": "CrossEntropyLossLayer", "target": "Nope"}, "target form"),
    ({"type": "NetChain", "layers": []}, "non-empty"),
    ({"type": "NetChain", "layers": [{"name": "a", "net": {"type": "SoftmaxLayer"}},
                                     {"name": "a", "net": {"type": "SoftmaxLayer"}}]}, "two layers"),
    ({"type": "NetChain", "layers": [{"name": "a/b", "net": {"type": "SoftmaxLayer"}}]}, "no '/'"),
    ({"type": "SoftmaxLayer", "inputs": {"Nope": [3]}}, "does not have"),
])
def test_invalid_specs_are_rejected(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        _core.Net(json.dumps(spec), [("Input", [3])] if "inputs" not in spec else [])


def test_deeply_nested_chain_is_rejected_not_crashing():
    spec = {"type": "SoftmaxLayer"}
    for _ in range(40):
        spec = {"type": "NetChain", "layers": [{"name": "x", "net": spec}]}
    with pytest.raises(ValueError, match="deeper"):
        _core.Net(json.dumps(spec), [("Input", [3])])


def test_conflicting_declared_and_given_shapes():
    with pytest.raises(ValueError, match="conflicts"):
        _core.Net(json.dumps({"type": "SoftmaxLayer", "inputs": {"Input": [3]}}), [("Input", [4])])


def test_plans_are_bounded_and_evicted_ones_come_back(mlp):
    """A service fed every batch size keeps a bounded number of plans (least recently used out),
    and a batch size whose plan was evicted gets a new one with the same results."""
    c = mlp._core_net()
    rng = np.random.default_rng(1)
    first = rng.random((1, 2)).astype(np.float32)
    want = mlp(first, pg.NetPortGradient("Input"))
    for batch in range(2, 120):
        mlp(rng.random((batch, 2)).astype(np.float32), pg.NetPortGradient("Input"))
        assert c.plan_count() <= 32
    assert c.plan_count() == 32
    assert np.array_equal(mlp(first, pg.NetPortGradient("Input")), want)


def test_python_caches_are_bounded():
    """Per-shape compiled nets and resolved requests of a shape-free net stay bounded however many
    data shapes and requests it sees."""
    net = pg.ElementwiseLayer("Tanh")
    for n in range(1, 400):
        x = np.full(n, 0.5)
        assert net(x, [pg.NetPortGradient("Input")])[pg.NetPortGradient("Input")].shape == (n,)
    assert len(net._compiled) <= 16 and len(net._requests) <= 256 and len(net._fast) <= 64


def test_a_request_given_as_a_list_is_resolved_once(mlp, monkeypatch):
    from portgrad import _net
    calls = []
    real = _net._resolve
    monkeypatch.setattr(_net, "_resolve", lambda *a: calls.append(1) or real(*a))
    x = np.ones((3, 2), np.float32)
    spec = ["Output", pg.NetPortGradient("Input")]
    first = mlp(x, spec)
    for _ in range(5):
        again = mlp(x, ["Output", pg.NetPortGradient("Input")])  # an equal list, built anew each call
        assert set(again) == set(first) and all(np.array_equal(again[k], first[k]) for k in first)
    assert len(calls) == 1
    # a tuple with the same entries is a different request (its own cache entry), with the same results
    as_tuple = mlp(x, tuple(spec))
    assert len(calls) == 2 and all(np.array_equal(as_tuple[k], first[k]) for k in first)


def test_the_repeated_call_path_gives_what_the_full_path_gives():
    # A repeated net(x, spec) with one result goes through the net's last request and
    # _core.Net.run_pick: every kind of single result, alternating specs, equal-but-new spec objects,
    # float64 data converted in C++ (its range checked), and a list spec changed between calls.
    net = pg.NetInitialize(pg.NetChain([6, "Tanh", 3], input=4), seed=0)
    x = np.random.default_rng(0).standard_normal((5, 4))
    specs = [None, "Output", pg.NetPortGradient("Input"), pg.NetPortGradient((0, "Weights")),
             pg.NetPortGradient((2, "Biases"), PerExample=True), pg.NetPort(1, "Output")]
    want = {}
    for k, spec in enumerate(specs):
        cold = pg.NetReplacePart(net, {})  # a new net: its first call takes the full path
        want[k] = np.asarray(cold(x.astype(np.float32), spec))
    for _round in range(3):
        for k, spec in enumerate(specs):
            for data in (x, x.astype(np.float32)):
                np.testing.assert_allclose(net(data, spec), want[k], rtol=1e-6, atol=1e-7)
    again = pg.NetPortGradient("Input")  # equal to specs[2], another object
    np.testing.assert_allclose(net(x, again), want[2], rtol=1e-6, atol=1e-7)
    assert net._hot is not None and net._hot[0][0] == again
    spec = ["Output"]
    net(x, spec), net(x, spec)
    spec[0] = pg.NetPortGradient("Input")  # the same list object, now asking for something else
    np.testing.assert_allclose(net(x, spec)[pg.NetPortGradient("Input")], want[2], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r'port "Input": the value 1e\+300 at flat index 3 is outside the float32'):
        net(np.array([0.0, 1.0, 2.0, 1e300]))
    with pytest.raises(ValueError, match="NaN"):
        net(np.array([0.0, np.nan, 2.0, 1.0]))
