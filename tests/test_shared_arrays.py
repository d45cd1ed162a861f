"""NetSharedArray: one array used by several layers (weight tying) — its gradient is the sum over
every use (against finite differences and against an untied copy), and it is one array for
NetExtract, NetReplacePart, NetPortGradient(All), files, chains, graphs and the GPU."""
import pickle

import numpy as np
import pytest

import portgrad as pg
from portgrad import _gpu
from gradcheck import check_net_gradients
from plan_requests import request

S = pg.NetSharedArray
NPG = pg.NetPortGradient


def tied_mlp():
    return pg.NetInitialize(pg.NetChain([pg.LinearLayer(3, weights=S("w")), "Tanh", pg.LinearLayer(3, weights=S("w")),
                                         "Tanh", 2], input=3), seed=0)


def untied_copy(net):
    """The same values without sharing: layers 0 and 2 each with their own copy of w."""
    free = pg.NetInitialize(pg.NetChain([3, "Tanh", 3, "Tanh", 2], input=3), seed=1)
    w = pg.NetExtract(net, S("w"))
    parts = {(0, "Weights"): w, (2, "Weights"): w}
    for k in (0, 2, 4):
        parts[(k, "Biases")] = pg.NetExtract(net, (k, "Biases"))
    parts[(4, "Weights")] = pg.NetExtract(net, (4, "Weights"))
    return pg.NetReplacePart(free, parts)


X = np.random.default_rng(0).standard_normal((5, 3))


def test_one_array_for_every_use():
    net = tied_mlp()
    assert net.arrays[S("w")] == (3, 3)
    assert "0/Weights" not in net.arrays and "2/Weights" not in net.arrays
    assert sum(int(np.prod(s)) for s in net.arrays.values()) == 9 + 3 + 3 + 6 + 2
    np.testing.assert_allclose(net(X, WorkingPrecision="Real64"), untied_copy(net)(X, WorkingPrecision="Real64"),
                               rtol=1e-13)


def test_the_gradient_is_the_sum_over_every_use():
    net = tied_mlp()
    got = net(X, NPG(S("w")), WorkingPrecision="Real64")
    untied = untied_copy(net)(X, [NPG((0, "Weights")), NPG((2, "Weights"))], WorkingPrecision="Real64")
    np.testing.assert_allclose(got, untied[NPG((0, "Weights"))] + untied[NPG((2, "Weights"))], rtol=1e-12, atol=1e-14)
    assert np.abs(untied[NPG((0, "Weights"))]).max() > 1e-3  # both uses contribute
    assert np.abs(untied[NPG((2, "Weights"))]).max() > 1e-3


def test_every_gradient_against_finite_differences():
    check_net_gradients(tied_mlp(), {"Input": X})


def test_the_plan_adds_the_second_use():
    c = tied_mlp()._core_net()
    paths = [p for p, _ in c.params]
    acc = c.plan_passes(request(c, param_grads=[paths.index("w")]), 4)["plan_accumulation"]
    assert [(node, how) for node, array, how in acc if array == "w"] == [("2", "writes"), ("0", "adds")]


def test_all_lists_it_once():
    got = tied_mlp()(X, NPG(pg.All))
    assert NPG(S("w")) in got
    assert NPG((0, "Weights")) not in got and NPG((2, "Weights")) not in got
    np.testing.assert_array_equal(got[NPG(S("w"))], tied_mlp()(X, NPG(S("w"))))


def test_extract_and_replace_by_name():
    net = tied_mlp()
    w = np.arange(9.0).reshape(3, 3) / 16
    new = pg.NetReplacePart(net, {S("w"): w})
    np.testing.assert_array_equal(pg.NetExtract(new, S("w")), w.astype(np.float32))
    assert not np.array_equal(pg.NetExtract(net, S("w")), w)  # a new net; the old one is unchanged
    with pytest.raises(KeyError, match=r"no NetSharedArray\('v'\); its shared arrays are NetSharedArray\('w'\)"):
        pg.NetExtract(net, S("v"))
    with pytest.raises(ValueError, match=r"expected shape \(3, 3\)"):
        pg.NetReplacePart(net, {S("w"): np.ones((3, 4))})


def test_files_and_pickles_keep_the_sharing(tmp_path):
    net = tied_mlp()
    net.save(tmp_path / "tied.pgnet")
    for back in (pg.load(tmp_path / "tied.pgnet"), pickle.loads(pickle.dumps(net))):
        assert back.arrays == net.arrays
        np.testing.assert_array_equal(back(X), net(X))
        np.testing.assert_array_equal(back(X, NPG(S("w"))), net(X, NPG(S("w"))))


def test_nested_chains_graphs_take_and_extract_keep_one_copy():
    inner = pg.NetChain([pg.LinearLayer(4, weights=S("w")), "Tanh"])
    net = pg.NetInitialize(pg.NetChain({"block": inner, "head": pg.LinearLayer(4, weights=S("w")), "out": 1},
                                       input=4), seed=2)
    assert S("w") in net.arrays and len([k for k in net.arrays if "Weights" in str(k)]) == 1  # out/Weights only
    check_net_gradients(net, {"Input": X[:, :3] @ np.ones((3, 4)) / 3})
    # A layer taken out of the net brings the shared array it uses.
    head = pg.NetExtract(net, "head")
    np.testing.assert_array_equal(pg.NetExtract(head, S("w")), pg.NetExtract(net, S("w")))
    # NetTake keeps it for the layers that stay.
    first = pg.NetTake(net, 2)
    np.testing.assert_array_equal(pg.NetExtract(first, S("w")), pg.NetExtract(net, S("w")))
    graph = pg.NetInitialize(pg.NetGraph({"a": pg.LinearLayer(4, weights=S("w")), "b": pg.LinearLayer(4, weights=S("w")),
                                          "t": pg.TotalLayer()},
                                         [(pg.NetPort("Input"), "a"), ("a", "b"), ("b", pg.NetPort("t", "Input1")),
                                          ("a", pg.NetPort("t", "Input2"))], input=4), seed=3)
    assert [k for k in graph.arrays if isinstance(k, S)] == [S("w")]
    check_net_gradients(graph, {"Input": X[:, :3] @ np.ones((3, 4)) / 3})


def test_tied_embedding_and_output_layer():
    # The language-model tie: the embedding's (classes, size) matrix is also the output layer's weights.
    net = pg.NetInitialize(pg.NetChain([pg.EmbeddingLayer(4, 10, weights=S("emb")), pg.FlattenLayer(), 4, "Tanh",
                                        pg.LinearLayer(10, weights=S("emb"), biases=False)], input=1), seed=4)
    assert net.arrays[S("emb")] == (10, 4)
    tokens = np.array([[3], [7], [0]])
    check_net_gradients(net, {"Input": tokens})


def test_shared_convolution_kernels():
    net = pg.NetInitialize(pg.NetChain([pg.ConvolutionLayer(2, 3, padding=1, weights=S("k"), biases=S("b")), "Tanh",
                                        pg.ConvolutionLayer(2, 3, padding=1, weights=S("k"), biases=S("b")),
                                        pg.FlattenLayer(), 1], input=(2, 5, 5)), seed=5)
    assert net.arrays[S("k")] == (2, 2, 3, 3) and net.arrays[S("b")] == (2,)
    x = np.random.default_rng(6).standard_normal((2, 2, 5, 5))
    check_net_gradients(net, {"Input": x}, max_array_elements=60)


def test_uses_must_agree():
    with pytest.raises(ValueError, match=r'NetSharedArray\("w"\).*shape \(4, 3\).*layer 0 \(LinearLayer\).*shape \(3, 3\)'):
        pg.NetChain([pg.LinearLayer(3, weights=S("w")), pg.LinearLayer(4, weights=S("w"))], input=3)
    a = pg.NetInitialize(pg.LinearLayer(3, weights=S("w"), input=3), seed=1)
    b = pg.NetInitialize(pg.LinearLayer(3, weights=S("w"), input=3), seed=2)
    with pytest.raises(ValueError, match=r"NetSharedArray\('w'\) has different values in two of its layers"):
        pg.NetChain([a, b])
    same = pg.NetChain([a, pg.NetReplacePart(b, {S("w"): pg.NetExtract(a, S("w"))})])
    assert S("w") in same.arrays


def test_bad_shared_arrays_are_refused():
    with pytest.raises(TypeError, match="non-empty name"):
        S("")
    with pytest.raises(TypeError, match=r"weights= takes a NetSharedArray"):
        pg.LinearLayer(3, weights=np.ones((3, 3)))
    with pytest.raises(ValueError, match="has the name of a layer's array path"):
        pg.LinearLayer(3, weights=S("Biases"), input=2)
    with pytest.raises(ValueError, match=r'NetSharedArray\("w"\) is given for array "Scaling", which it does not have '
                                         r'\(its arrays: "Weights", "Biases"\)'):
        pg.Net({"type": "LinearLayer", "size": [3], "biases": True, "shared": {"Scaling": "w"}, "inputs": {"Input": [2]}})
    with pytest.raises(ValueError, match="must be a non-empty string"):
        pg.Net({"type": "LinearLayer", "size": [3], "biases": True, "shared": {"Weights": 3}, "inputs": {"Input": [2]}})
    with pytest.raises(TypeError, match="NetSharedArray"):
        NPG(S)


@pytest.mark.cuda
def test_on_the_gpu():
    if not _gpu.available():
        pytest.skip("no GPU backend")
    net = tied_mlp()
    for precision, rtol in (("Real64", 1e-12), ("Real32", 1e-5)):
        cpu = net(X, NPG(pg.All), WorkingPrecision=precision)
        gpu = net(X, NPG(pg.All), WorkingPrecision=precision, TargetDevice="GPU")
        for k in cpu:
            np.testing.assert_allclose(gpu[k], cpu[k], rtol=rtol, atol=rtol)


def test_normalization_layers_share_their_scaling_and_biases():
    # Two normalisations with one Scaling and one Biases: the gradient is summed over both uses.
    S = pg.NetSharedArray
    net = pg.NetChain([pg.NormalizationLayer(-1, scaling=S("g"), biases=S("b")), "Tanh",
                       pg.NormalizationLayer(-1, scaling=S("g"), biases=S("b"))], input=(3, 4))
    untied = pg.NetChain([pg.NormalizationLayer(-1), "Tanh", pg.NormalizationLayer(-1)], input=(3, 4))
    rng = np.random.default_rng(0)
    g, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    net = pg.NetReplacePart(net, {S("g"): g, S("b"): b})
    untied = pg.NetReplacePart(untied, {(0, "Scaling"): g, (2, "Scaling"): g, (0, "Biases"): b, (2, "Biases"): b})
    x = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), untied(x, WorkingPrecision="Real64"), rtol=1e-12)
    G = net(x, pg.NetPortGradient(S("g")), WorkingPrecision="Real64")
    U = untied(x, [pg.NetPortGradient((0, "Scaling")), pg.NetPortGradient((2, "Scaling"))], WorkingPrecision="Real64")
    np.testing.assert_allclose(G, sum(U.values()), rtol=1e-10)
    bn = pg.BatchNormalizationLayer(scaling=S("s"), moving_mean=S("m"))
    assert bn._spec["shared"] == {"Scaling": "s", "MovingMean": "m"}
    with pytest.raises(TypeError, match="scaling= takes a NetSharedArray"):
        pg.NormalizationLayer(scaling=np.ones(3))


@pytest.mark.parametrize("attach", [False, True])
def test_net_train_trains_a_shared_array_as_one(attach):
    # NetTrain once failed on shared arrays (it looked them up by NetSharedArray where the engine
    # names them by their name). One SGD step: the shared array moves by -lr times the gradient
    # summed over both uses, the same step its untied copy's two arrays take summed.
    net = tied_mlp()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    train = net if attach else pg.NetGraph({"net": net, "loss": pg.MeanSquaredLossLayer()},
                                           [(pg.NetPort("net", "Output"), pg.NetPort("loss", "Input"))])
    data = (x, y) if attach else {"Input": x, "Target": y}
    trained = pg.NetTrain(train, data, BatchSize=16, MaxTrainingRounds=1, Method="SGD", LearningRate=0.1,
                          TrainingProgressReporting=None, WorkingPrecision="Real64")
    scored = pg.NetGraph({"net": net, "loss": pg.MeanSquaredLossLayer()},
                         [(pg.NetPort("net", "Output"), pg.NetPort("loss", "Input"))])
    g = scored({"Input": x, "Target": y, NPG("Loss"): np.full(16, 1 / 16)}, NPG(S("w")), WorkingPrecision="Real64")
    want = np.asarray(pg.NetExtract(net, S("w")), dtype=np.float64) - 0.1 * g
    np.testing.assert_allclose(pg.NetExtract(trained, S("w")), want, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(g)) > 1e-3
