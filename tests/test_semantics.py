"""The semantics of DESIGN.md §1: what is differentiated, how results are keyed and shaped, how
arrays are addressed, initialised and replaced, and that repeated calls reuse their plans."""
import numpy as np
import pytest

import portgrad as pg
from layer_registry import assert_close

NPG = pg.NetPortGradient


def mlp(seed=0, input=3):
    return pg.NetInitialize(pg.NetChain([pg.LinearLayer(5), "Tanh", pg.LinearLayer(2)], input=input), seed=seed)


def weights64(net, *part):
    return np.asarray(pg.NetExtract(net, part if len(part) > 1 else part[0]), dtype=np.float64)


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_gradient_is_of_the_sum_of_outputs(precision):
    net = mlp()
    x = np.random.default_rng(0).standard_normal((6, 3))
    plain = net(x, NPG(pg.All), WorkingPrecision=precision)
    ones = net({"Input": x, NPG("Output"): np.ones((6, 2))}, NPG(pg.All), WorkingPrecision=precision)
    assert plain.keys() == ones.keys()
    for k in plain:
        np.testing.assert_array_equal(plain[k], ones[k])


def test_imposed_gradient_is_a_vector_jacobian_product():
    lin = pg.NetInitialize(pg.LinearLayer(3, input=4), seed=2)
    W = weights64(lin, "Weights")
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    res = lin({"Input": x, NPG("Output"): g}, [NPG("Input"), NPG("Weights"), NPG("Biases")], WorkingPrecision="Real64")
    assert_close(res[NPG("Input")], g @ W, rtol=1e-13, atol=1e-14, what="dx = g W")
    assert_close(res[NPG("Weights")], g.T @ x, rtol=1e-13, atol=1e-14, what="dW = g^T x")
    assert_close(res[NPG("Biases")], g.sum(0), rtol=1e-13, atol=1e-14, what="db = sum g")
    # Scaling the imposed gradient scales every result (linearity of the VJP).
    res3 = lin({"Input": x, NPG("Output"): 3 * g}, [NPG("Input"), NPG("Weights")], WorkingPrecision="Real64")
    assert_close(res3[NPG("Input")], 3 * res[NPG("Input")], rtol=1e-14, atol=1e-14)
    # On a loss: the gradient of w * loss.
    loss = pg.MeanSquaredLossLayer(input=3)
    d = {"Input": x[:, :3], "Target": np.zeros((5, 3))}
    w = np.arange(1.0, 6.0)
    gi = loss({**d, NPG("Loss"): w}, NPG("Input"), WorkingPrecision="Real64")
    assert_close(gi, 2 * x[:, :3] / 3 * w[:, None], rtol=1e-14, atol=1e-15)


def test_list_requests_return_a_dict_keyed_by_the_requests():
    net = mlp()
    x = np.random.default_rng(3).standard_normal((4, 3))
    spec = ["Output", NPG("Input"), NPG((0, "Weights")), NPG((-1, "Biases"))]
    res = net(x, spec)
    assert isinstance(res, dict) and list(res) == spec
    np.testing.assert_array_equal(res["Output"], net(x))
    np.testing.assert_array_equal(res["Output"], net(x, "Output"))
    for k in spec[1:]:
        np.testing.assert_array_equal(res[k], net(x, k))
    assert res[NPG("Input")].shape == (4, 3)
    assert res[NPG((0, "Weights"))].shape == (5, 3)
    assert res[NPG((-1, "Biases"))].shape == (2,)
    # Requests are values: equal specs are equal keys.
    assert NPG([0, "Weights"]) == NPG((0, "Weights")) and hash(NPG([0, "Weights"])) == hash(NPG((0, "Weights")))
    with pytest.raises(AttributeError):
        NPG("Input").target = "x"


def test_all_returns_every_input_and_array_gradient():
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(4), pg.SoftmaxLayer(), pg.CrossEntropyLossLayer("Probabilities")],
                                       input=3), seed=4)
    rng = np.random.default_rng(4)
    data = {"Input": rng.standard_normal((3, 3)), "Target": rng.dirichlet(np.ones(4), 3)}
    res = net(data, NPG(pg.All))
    assert NPG("All") == NPG(pg.All)
    assert set(res) == {NPG("Input"), NPG("Target"), NPG((0, "Weights")), NPG((0, "Biases"))}
    for key, g in res.items():
        np.testing.assert_array_equal(g, net(data, key))   # every key is itself a valid request
    assert res[NPG("Target")].shape == (3, 4) and res[NPG((0, "Weights"))].shape == (4, 3)


def test_nested_and_named_chains():
    inner = pg.NetChain({"a": pg.LinearLayer(4), "act": "Tanh", "b": pg.LinearLayer(3)})
    net = pg.NetInitialize(pg.NetChain({"first": pg.LinearLayer(5), "block": inner, "out": pg.LinearLayer(2)},
                                       input=3), seed=1)
    assert net.arrays == {"first/Weights": (5, 3), "first/Biases": (5,), "block/a/Weights": (4, 5),
                          "block/a/Biases": (4,), "block/b/Weights": (3, 4), "block/b/Biases": (3,),
                          "out/Weights": (2, 3), "out/Biases": (2,)}
    x = np.random.default_rng(5).standard_normal((4, 3))
    ref = net(x, NPG(("block", "b", "Weights")))
    assert ref.shape == (3, 4)
    for spec in [("block", 2, "Weights"), ("block", -1, "Weights"), (1, -1, "Weights"), (-2, 2, "Weights"),
                 (1, "b", "Weights")]:
        np.testing.assert_array_equal(net(x, NPG(spec)), ref, err_msg=str(spec))
    np.testing.assert_array_equal(net(x, NPG(("out", "Biases"))), [4, 4])   # d sum / d b = batch size
    np.testing.assert_array_equal(net(x, NPG((-1, "Biases"))), [4, 4])
    # The nested chain computes what its layers compute, one after another.
    y = x.astype(np.float64)
    for part in ["first", ("block", "a"), ("block", "b"), "out"]:
        parts = part if isinstance(part, tuple) else (part,)
        y = y @ weights64(net, *parts, "Weights").T + weights64(net, *parts, "Biases")
        if parts == ("block", "a"):
            y = np.tanh(y)
    assert_close(net(x, WorkingPrecision="Real64"), y, rtol=1e-12, atol=1e-13, what="nested forward")
    # A layer extracted from the chain keeps its arrays.
    sub = pg.NetExtract(net, ("block", "a"))
    assert_close(sub(np.ones(5), WorkingPrecision="Real64"),
                 weights64(net, "block", "a", "Weights").sum(1) + weights64(net, "block", "a", "Biases"),
                 rtol=1e-13, atol=1e-14)


def test_extract_and_replace_round_trip():
    net = mlp(seed=7)
    rng = np.random.default_rng(7)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    new = pg.NetReplacePart(net, {(0, "Weights"): w, (2, "Biases"): [0.5, -0.25]})
    got = pg.NetExtract(new, (0, "Weights"))
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_array_equal(got, w)
    np.testing.assert_array_equal(pg.NetExtract(new, (2, "Biases")), [0.5, -0.25])
    np.testing.assert_array_equal(pg.NetExtract(new, (2, "Weights")), pg.NetExtract(net, (2, "Weights")))
    # The original is unchanged (nets are values), and results follow the new arrays.
    assert not np.array_equal(pg.NetExtract(net, (0, "Weights")), w)
    x = rng.standard_normal(3)
    assert not np.array_equal(net(x), new(x))
    again = pg.NetReplacePart(net, {(0, "Weights"): pg.NetExtract(net, (0, "Weights"))})
    np.testing.assert_array_equal(again(x), net(x))
    # Extracted arrays are copies: writing them changes nothing.
    e = pg.NetExtract(new, (0, "Weights"))
    e.flags.writeable = True
    e[:] = 0
    np.testing.assert_array_equal(pg.NetExtract(new, (0, "Weights")), w)
    # float64 values are kept to float32 precision.
    w64 = rng.standard_normal((5, 3))
    np.testing.assert_array_equal(pg.NetExtract(pg.NetReplacePart(net, {(0, "Weights"): w64}), (0, "Weights")),
                                  w64.astype(np.float32))


def test_scalar_output_linear_layer_with_biases():
    lin = pg.NetInitialize(pg.LinearLayer((), input=3), seed=0)
    assert pg.NetExtract(lin, "Biases").shape == ()
    y = lin(np.ones(3))
    assert y.shape == ()


def test_extracted_layer_keeps_its_input_shape():
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(2), "Tanh"], input=3), seed=0)
    layer = pg.NetExtract(net, 0)
    assert layer.input_ports == {"Input": (3,)}
    assert layer(np.ones((4, 3))).shape == (4, 2)


@pytest.mark.parametrize("method", ["Kaiming", "Xavier", "Orthogonal"])
def test_initialize_is_deterministic(method):
    make = lambda: pg.NetChain([pg.LinearLayer(64), "Tanh", pg.LinearLayer(32)], input=48)  # noqa: E731
    a = pg.NetInitialize(make(), seed=11, method=method)
    b = pg.NetInitialize(make(), seed=11, method=method)
    c = pg.NetInitialize(make(), seed=12, method=method)
    for path in a.arrays:
        part = tuple(int(p) if p.isdigit() else p for p in path.split("/"))
        wa, wb, wc = (pg.NetExtract(n, part) for n in (a, b, c))
        assert wa.dtype == np.float32
        np.testing.assert_array_equal(wa, wb)
        if path.endswith("Biases"):
            np.testing.assert_array_equal(wa, 0)
            np.testing.assert_array_equal(wc, 0)
        else:
            assert not np.array_equal(wa, wc)
    w = pg.NetExtract(a, (0, "Weights")).astype(np.float64)     # (64, 48)
    if method == "Kaiming":
        assert abs(w.std() / np.sqrt(2 / 48) - 1) < 0.1 and abs(w.mean()) < 0.05
    elif method == "Xavier":
        limit = np.sqrt(6 / (48 + 64))
        assert np.all(np.abs(w) <= limit) and w.max() > 0.9 * limit and w.min() < -0.9 * limit
    else:
        np.testing.assert_allclose(w.T @ w, 2 * np.eye(48), atol=1e-5)   # orthonormal columns, times sqrt 2
        w2 = pg.NetExtract(a, (2, "Weights")).astype(np.float64)          # (32, 64)
        np.testing.assert_allclose(w2 @ w2.T, 2 * np.eye(32), atol=1e-5)


def test_initialize_keeps_existing_arrays_unless_asked():
    net = mlp(seed=1)
    w = pg.NetExtract(net, (0, "Weights"))
    np.testing.assert_array_equal(pg.NetExtract(pg.NetInitialize(net, seed=2), (0, "Weights")), w)
    assert not np.array_equal(pg.NetExtract(pg.NetInitialize(net, seed=2, reinitialize=True), (0, "Weights")), w)


def test_repr_names_layers_and_shapes():
    net = mlp()
    r = repr(net)
    for fragment in ["NetChain", "Input (3,)", "Output (2,)", "LinearLayer", "ElementwiseLayer",
                     "(3,) -> (5,)", "(5,) -> (2,)", "Weights (5, 3)", "Biases (2,)", "32 parameters"]:
        assert fragment in r, (fragment, r)
    assert "uninitialised" in repr(pg.NetChain([pg.LinearLayer(2)], input=3))
    assert "LinearLayer" in repr(pg.NetInitialize(pg.LinearLayer(3, input=2)))
    assert "ElementwiseLayer" in repr(pg.ElementwiseLayer("Tanh"))


def test_chain_ending_in_a_loss_exposes_target():
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(2), pg.MeanSquaredLossLayer()], input=3), seed=0)
    assert net.input_ports == {"Input": (3,), "Target": (2,)}
    assert net.output_ports == {"Loss": ()}
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    y = x @ weights64(net, 0, "Weights").T + weights64(net, 0, "Biases")
    loss = net({"Input": x, "Target": t}, WorkingPrecision="Real64")
    assert_close(loss, ((y - t) ** 2).mean(1), rtol=1e-12, atol=1e-14)
    gt = net({"Input": x, "Target": t}, NPG("Target"), WorkingPrecision="Real64")
    assert_close(gt, -2 * (y - t) / 2, rtol=1e-12, atol=1e-14)
    idx = pg.NetChain([pg.LinearLayer(4), pg.SoftmaxLayer(), pg.CrossEntropyLossLayer("Index")], input=3)
    assert idx.input_ports == {"Input": (3,), "Target": ()}


def test_single_example_and_batch_of_one():
    net = mlp()
    x = np.array([0.2, -0.4, 0.9])
    y1, yb = net(x), net(x[None])
    assert y1.shape == (2,) and yb.shape == (1, 2)
    np.testing.assert_array_equal(y1, yb[0])
    g1, gb = net(x, NPG("Input")), net(x[None], NPG("Input"))
    assert g1.shape == (3,) and gb.shape == (1, 3)
    np.testing.assert_array_equal(g1, gb[0])


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_repeated_calls_allocate_nothing(precision):
    net = mlp(seed=3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 3))
    spec = ["Output", NPG("Input"), NPG((0, "Weights")), NPG((2, "Biases"))]
    imposed = {"Input": x, NPG("Output"): rng.standard_normal((8, 2))}
    calls = [lambda: net(x, spec, WorkingPrecision=precision),
             lambda: net(x, WorkingPrecision=precision),
             lambda: net(imposed, NPG(pg.All), WorkingPrecision=precision),
             lambda: net(x[0], NPG("Input"), WorkingPrecision=precision)]
    for call in calls:
        call()                                   # warm: builds the plan
    before = pg._core.allocation_count()
    first = [call() for call in calls]
    for _ in range(3):
        for call in calls:
            call()
    net(x + 1.0, spec, WorkingPrecision=precision)  # new values, same shapes
    assert pg._core.allocation_count() == before
    # ...and the cached plans still compute the right thing.
    np.testing.assert_array_equal(calls[1](), first[1])
    # A new batch size is a new plan: the counter may grow, and stays put once warm.
    net(rng.standard_normal((9, 3)), spec, WorkingPrecision=precision)
    after = pg._core.allocation_count()
    net(rng.standard_normal((9, 3)), spec, WorkingPrecision=precision)
    assert pg._core.allocation_count() == after


def test_all_keys_request_exactly_the_arrays_they_hold():
    """NetPortGradient(All)'s keys, asked for again, give the same arrays: layers named "1" and "0"
    (in that order) are named, not taken for positions; list entries are positions."""
    nets = [pg.NetChain({"1": pg.LinearLayer(3), "0": pg.LinearLayer(2)}, input=2),
            pg.NetChain([3, "Tanh", pg.NetChain({"a": 4, "7": 2})], input=2)]
    for chain in nets:
        net = pg.NetInitialize(chain, seed=0)
        x = np.random.default_rng(0).normal(size=(4, 2))
        every = net(x, pg.NetPortGradient(pg.All))
        for key, value in every.items():
            assert np.array_equal(net(x, key), value), key
        assert np.array_equal(net(x, list(every)) [list(every)[1]], every[list(every)[1]])


def test_net_replace_part_refuses_what_a_later_call_would():
    """Non-finite values, values past float32's range and a negative variance are refused by
    NetReplacePart itself, naming the array, the value and where."""
    bn = pg.NetInitialize(pg.BatchNormalizationLayer(input=3), seed=0)
    for value, words in (([1, -1, 1], ["MovingVariance", "negative", "index 1"]),
                         ([1, np.nan, 1], ["finite", "nan", "index 1"]),
                         ([1e39, 1, 1], ["float32", "1e+39", "index 0"])):
        with pytest.raises(ValueError) as e:
            pg.NetReplacePart(bn, {"MovingVariance": np.array(value)})
        assert all(w in str(e.value) for w in words), e.value
    ok = pg.NetReplacePart(bn, {"MovingVariance": np.array([0.0, 1.0, 2.0])})  # zero is a variance
    assert np.array_equal(pg.NetExtract(ok, "MovingVariance"), [0, 1, 2])


def test_errors_that_teach(tmp_path):
    """Each mistake's message says what was wrong and how to fix it."""
    NPG = pg.NetPortGradient
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(3), "Tanh", pg.LinearLayer(2)], input=2), seed=0)
    x = np.ones((4, 2))
    with pytest.raises(ValueError, match=r"'Output' is an output port.*NetPortGradient\('Output'\): g"):
        net(x, NPG("Output"))
    with pytest.raises(KeyError, match=r"'Output' is an output port, not an input.*NetPortGradient\('Output'\) as the key"):
        net({"Input": x, "Output": np.ones((4, 2))}, NPG("Input"))
    with pytest.raises(ValueError, match="no gradient is asked for, so it would be ignored"):
        net({"Input": x, NPG("Output"): np.ones((4, 2))})
    with pytest.raises(TypeError, match=r"give a tuple: NetPortGradient\(\(0, 'Weights'\)\)"):
        NPG(0, "Weights")
    with pytest.raises(KeyError, match=r"no array 'Weights' of its own; its layers have 0/Weights, 2/Weights.*\(0, 'Weights'\)"):
        pg.NetExtract(net, "Weights")
    with pytest.raises(KeyError, match=r"no array 'Weights' of its own.*NetPortGradient\(\(0, 'Weights'\)\)"):
        net(x, NPG("Weights"))
    for magic, kind in ((b"PK\x03\x04", "zip archive"), (b"\x89HDF\r\n\x1a\n", "HDF5"), (b"\x93NUMPY", ".npy")):
        path = tmp_path / "model.bin"
        path.write_bytes(magic + b"\0" * 64)
        with pytest.raises(ValueError, match=f"looks like .*{kind}.*not a portgrad file"):
            pg.load(path)
    with pytest.raises(ValueError, match=r"too large \(1e\+17\)"):
        pg.LinearLayer(10**17, input=2)
    with pytest.raises(ValueError, match=r"ConvolutionLayer: port \"Input\" must have rank"):
        pg.ConvolutionLayer(2, 3, input=(5,))  # known at construction: refused then
    from portgrad import _gpu
    assert "no usable NVIDIA GPU and driver" in _gpu._why_no_gpu("CUDA driver version is insufficient for CUDA runtime version")


def test_a_torch_tensor_that_requires_grad_says_detach():
    torch = pytest.importorskip("torch")
    net = pg.NetInitialize(pg.LinearLayer(2, input=2), seed=0)
    with pytest.raises(TypeError, match=r"port 'Input'.*requires grad.*tensor.detach\(\)"):
        net(torch.ones(2, requires_grad=True))
    assert net(torch.ones(2)).shape == (2,)
