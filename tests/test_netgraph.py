"""NetGraph: edges in every spelling, multi-input/multi-output graphs, nesting, internal ports,
every NetPortGradient checked against finite differences, and malformed graphs rejected."""
import numpy as np
import pytest

import portgrad as pg
from gradcheck import check_net_gradients


def init(net, seed=0):
    return pg.NetInitialize(net, seed=seed)


@pytest.fixture(scope="module")
def branchy():
    # Input -> a -> t -> b (output "b"), t -> c (output "c"): one input, two outputs.
    return init(pg.NetGraph({"a": pg.LinearLayer(4), "t": "Tanh", "b": pg.LinearLayer(3), "c": pg.LinearLayer(2)},
                            [("a", "t", "b"), ("t", "c")], input=3))


def test_branching_graph_ports_and_values(branchy):
    assert branchy.input_ports == {"Input": (3,)}
    assert branchy.output_ports == {"b": (3,), "c": (2,)}
    x = np.random.default_rng(0).standard_normal((5, 3))
    out = branchy(x, WorkingPrecision="Real64")
    W = {k: pg.NetExtract(branchy, (k, "Weights")).astype(np.float64) for k in "abc"}
    B = {k: pg.NetExtract(branchy, (k, "Biases")).astype(np.float64) for k in "abc"}
    h = np.tanh(x @ W["a"].T + B["a"])
    np.testing.assert_allclose(out["b"], h @ W["b"].T + B["b"], rtol=1e-12)
    np.testing.assert_allclose(out["c"], h @ W["c"].T + B["c"], rtol=1e-12)


def test_branching_graph_gradients(branchy):
    x = np.random.default_rng(1).standard_normal((4, 3))
    check_net_gradients(branchy, {"Input": x})


def test_sum_of_outputs_includes_every_branch(branchy):
    x = np.random.default_rng(2).standard_normal((2, 3))
    g = branchy(x, pg.NetPortGradient("Input"), WorkingPrecision="Real64")
    ob = {"Input": x, pg.NetPortGradient("b"): np.ones((2, 3))}
    oc = {"Input": x, pg.NetPortGradient("c"): np.ones((2, 2))}
    gb = branchy(ob, pg.NetPortGradient("Input"), WorkingPrecision="Real64")
    gc = branchy(oc, pg.NetPortGradient("Input"), WorkingPrecision="Real64")
    np.testing.assert_allclose(g, gb + gc, rtol=1e-12)   # imposing on one output: the other contributes zero


def two_in_two_out():
    return init(pg.NetGraph(
        {"p": pg.LinearLayer(2), "q": pg.LinearLayer(2), "loss": pg.MeanSquaredLossLayer()},
        [(pg.NetPort("A"), "p"), (pg.NetPort("B"), "q"), ("p", pg.NetPort("loss", "Input")),
         ("q", pg.NetPort("loss", "Target")), ("p", pg.NetPort("PA"))],
        inputs={"A": 3, "B": 4}), seed=3)


def test_two_input_two_output_graph():
    net = two_in_two_out()
    assert net.input_ports == {"A": (3,), "B": (4,)}
    assert net.output_ports == {"PA": (2,), "Loss": ()}
    rng = np.random.default_rng(3)
    data = {"A": rng.standard_normal((3, 3)), "B": rng.standard_normal((3, 4))}
    out = net(data, WorkingPrecision="Real64")
    pa = data["A"] @ pg.NetExtract(net, ("p", "Weights")).T.astype(np.float64) + pg.NetExtract(net, ("p", "Biases"))
    qb = data["B"] @ pg.NetExtract(net, ("q", "Weights")).T.astype(np.float64) + pg.NetExtract(net, ("q", "Biases"))
    np.testing.assert_allclose(out["PA"], pa, rtol=1e-6)
    np.testing.assert_allclose(out["Loss"], np.mean((pa - qb) ** 2, axis=1), rtol=1e-6)
    check_net_gradients(net, data)


def test_fan_out_of_an_input_accumulates_gradients():
    # One graph input feeds two layers whose outputs meet in a loss: both paths' gradients add up.
    net = init(pg.NetGraph({"p": pg.LinearLayer(3), "q": pg.LinearLayer(3), "loss": pg.MeanSquaredLossLayer()},
                           [(pg.NetPort("Input"), "p"), (pg.NetPort("Input"), "q"),
                            ("p", pg.NetPort("loss", "Input")), ("q", pg.NetPort("loss", "Target"))], input=4))
    x = np.random.default_rng(4).standard_normal((2, 4))
    check_net_gradients(net, {"Input": x})


def test_graph_inside_chain_inside_graph_and_deep_parameter_paths():
    block = pg.NetGraph({"lin": pg.LinearLayer(3), "act": "Tanh"}, [("lin", "act")])
    chain = pg.NetChain({"block": block, "head": pg.LinearLayer(2)})
    net = init(pg.NetGraph({"pre": pg.LinearLayer(3), "body": chain}, [("pre", "body")], input=4))
    x = np.random.default_rng(5).standard_normal((3, 4))
    g = net(x, pg.NetPortGradient(("body", "block", "lin", "Weights")))
    assert g.shape == (3, 3)
    g2 = net(x, pg.NetPortGradient(("body", 0, 0, "Weights")))
    np.testing.assert_array_equal(g, g2)
    check_net_gradients(net, {"Input": x})
    inner = net(x, pg.NetPort(("body", "block", "act"), "Output"))
    lin = net(x, pg.NetPort(("body", "block", "lin"), "Output"))
    np.testing.assert_allclose(inner, np.tanh(lin), rtol=1e-6)


def test_chain_inside_graph_shares_one_input_port():
    # Unconnected inputs of the same name share one graph input.
    net = init(pg.NetGraph({"x": pg.LinearLayer(2), "y": pg.LinearLayer(2)}, [], input=3))
    assert net.input_ports == {"Input": (3,)}
    assert set(net.output_ports) == {"x", "y"}


def test_edge_spellings_agree():
    layers = {"a": pg.LinearLayer(3), "b": "Tanh", "c": pg.LinearLayer(2)}
    pairs = pg.NetGraph(layers, [("a", "b"), ("b", "c")], input=2)
    chained = pg.NetGraph(layers, [("a", "b", "c")], input=2)
    as_dict = pg.NetGraph(layers, {"a": "b", "b": "c"}, input=2)
    by_position = pg.NetGraph(layers, [(0, 1), (1, 2)], input=2)
    ports = pg.NetGraph(layers, [(pg.NetPort("a", "Output"), pg.NetPort("b", "Input")), ("b", "c")], input=2)
    specs = {repr(n._spec) for n in (pairs, chained, as_dict, by_position)}
    assert len(specs) == 1
    net = init(pairs)
    other = pg.NetReplacePart(ports, {k: pg.NetExtract(net, k) for k in
                                      [("a", "Weights"), ("a", "Biases"), ("c", "Weights"), ("c", "Biases")]})
    x = np.ones((2, 2))
    np.testing.assert_array_equal(net(x), other(x))


def test_list_of_sources_feeds_numbered_ports():
    from portgrad._graph import _edge_pairs
    pairs = _edge_pairs([(["a", "b"], "cat")])
    assert pairs == [("a", pg.NetPort("cat", "Input1")), ("b", pg.NetPort("cat", "Input2"))]


@pytest.mark.parametrize("layers, edges, kw, error, fragment", [
    (["Tanh", "Tanh"], [(0, 1), (1, 0)], {"input": 3}, ValueError, "cycle"),
    (["Tanh", "Tanh", "Tanh"], [(0, 1), (1, 0), (1, 2)], {"input": 3}, ValueError, "cycle"),
    (["Tanh", "Tanh", "Tanh"], [(0, 2), (1, 2)], {"input": 3}, ValueError, "already fed by"),
    (["Tanh", pg.LinearLayer(2)], [(0, pg.NetPort(1, "Foo"))], {"input": 3}, ValueError, 'no input port "Foo"'),
    (["Tanh", pg.LinearLayer(2)], [(pg.NetPort(0, "Bar"), 1)], {"input": 3}, ValueError, 'no output port "Bar"'),
    (["Tanh"], [(0, "x")], {"input": 3}, ValueError, "no layer 'x'"),
    (["Tanh"], [(0, 5)], {"input": 3}, IndexError, "out of range"),
    (["Tanh"], [(pg.NetPort("Input"), pg.NetPort("Output"))], {"input": 3}, ValueError, "fed directly by an input"),
    (["Tanh", "Tanh"], [(0, pg.NetPort("O")), (1, pg.NetPort("O"))], {"input": 3}, ValueError, "fed twice"),
    (["Tanh"], [("0",)], {"input": 3}, TypeError, "pair"),
])
def test_malformed_graphs_are_rejected(layers, edges, kw, error, fragment):
    with pytest.raises(error, match=fragment):
        pg.NetGraph(layers, edges, **kw)._core_net()


def test_shape_mismatch_names_the_source():
    # every shape is declared, so the mismatch is found when the graph is made
    with pytest.raises(ValueError, match=r"Target.*\(5,\).*Input <- layer 0 \(LinearLayer\) \(2,\)"):
        pg.NetGraph([pg.LinearLayer(2), pg.MeanSquaredLossLayer()], [(0, pg.NetPort(1, "Input"))],
                    inputs={"Input": 3, "Target": 5})


def test_declared_shape_of_inner_port_is_checked():
    inner = pg.LinearLayer(2, input=5)   # declares 5 but is fed 3 by the graph's first layer
    with pytest.raises(ValueError, match=r"declared with shape \(5,\) but is fed shape \(3,\) by layer a"):
        pg.NetGraph({"a": pg.LinearLayer(3), "b": inner}, [("a", "b")], input=4)


def test_nettake_netdrop_compose_back_to_the_chain():
    c = init(pg.NetChain({"l1": 4, "a": "Tanh", "l2": 2, "b": "Tanh"}, input=3))
    x = np.random.default_rng(6).standard_normal((5, 3))
    for k in range(1, 4):
        head, tail = pg.NetTake(c, k), pg.NetDrop(c, k)
        assert len(head) == k and len(tail) == 4 - k
        np.testing.assert_allclose(tail(head(x)), c(x), rtol=1e-6)
    np.testing.assert_array_equal(pg.NetTake(c, "a")(x), pg.NetTake(c, 2)(x))
    np.testing.assert_array_equal(pg.NetDrop(c, -2)(x), pg.NetTake(c, 2)(x))
    np.testing.assert_array_equal(pg.NetTake(c, (2, 4))(pg.NetTake(c, 2)(x)), c(x))
    with pytest.raises(ValueError, match="no layers left"):
        pg.NetTake(c, 0)
    with pytest.raises(KeyError, match="no layer 'zz'"):
        pg.NetTake(c, "zz")
