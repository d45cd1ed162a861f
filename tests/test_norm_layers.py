"""The normalisation family beyond the generic registry checks: batch norm in "Train" mode (batch
statistics, the full batch Jacobian, moving-statistics updates), dropout masks, embedding index
errors, initialisation, bad configurations, and PyTorch parity where torch is installed."""
import numpy as np
import pytest

import portgrad as pg
from layer_registry import fd_array_gradient, fd_input_gradient, grad_close, quantize

NPG = pg.NetPortGradient
TRAIN = dict(NetEvaluationMode="Train", RandomSeeding=7)


def f32(a):
    return np.asarray(a, np.float32).astype(np.float64)


def bn_net(shape=(3, 2, 4), eps=0.001, momentum=0.9, seed=0):
    c = shape[0]
    rng = np.random.default_rng(seed)
    layer = pg.BatchNormalizationLayer(momentum=momentum, epsilon=eps, input=shape)
    return pg.NetInitialize(pg.NetReplacePart(layer, {
        "Scaling": quantize(rng.uniform(0.5, 1.5, c)), "Biases": quantize(rng.uniform(-0.5, 0.5, c)),
        "MovingMean": quantize(rng.uniform(-0.5, 0.5, c)), "MovingVariance": quantize(rng.uniform(0.5, 2.0, c))}))


def bn_train_ref(net, x, eps=0.001):
    """Batch statistics over batch and spatial positions, per channel (float64)."""
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, c) + (1,) * (x.ndim - 2)
    mu = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    g = f32(pg.NetExtract(net, "Scaling")).reshape(bshape)
    b = f32(pg.NetExtract(net, "Biases")).reshape(bshape)
    return g * (x - mu) / np.sqrt(var + eps) + b


# ----------------------------------------------------------------------------- batch norm, Train mode
@pytest.mark.parametrize("shape", [(3, 2, 4), (5,)], ids=["rank3", "vector"])
@pytest.mark.parametrize("precision", ["Real64", "Real32"])
def test_batchnorm_train_forward_matches_numpy(shape, precision):
    net = bn_net(shape)
    x = f32(np.random.default_rng(1).normal(1.0, 2.0, (6,) + shape))
    y = net(x, WorkingPrecision=precision, **TRAIN)
    tol = dict(rtol=1e-12, atol=1e-12) if precision == "Real64" else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, bn_train_ref(net, x), **tol)
    # Test mode uses the moving statistics instead: a different answer
    assert not np.allclose(net(x, WorkingPrecision=precision), y, atol=1e-3)


@pytest.mark.parametrize("shape", [(2, 3), (3,)], ids=["rank2", "vector"])
@pytest.mark.parametrize("imposed", [False, True], ids=["sum", "vjp"])
def test_batchnorm_train_input_gradient_is_the_full_batch_vjp(shape, imposed):
    """dx of example b depends on every example (batch statistics): the whole batch is perturbed."""
    net = bn_net(shape)
    rng = np.random.default_rng(2)
    x = f32(rng.standard_normal((4,) + shape))
    G = f32(rng.uniform(-1, 1, x.shape)) if imposed else np.ones(x.shape)
    data = {"Input": x, NPG("Output"): G} if imposed else x
    g = net(data, NPG("Input"), WorkingPrecision="Real64", **TRAIN)
    fd = fd_input_gradient(lambda v: float(np.sum(net(v, WorkingPrecision="Real64", **TRAIN) * G)), x)
    grad_close(g, fd, rtol=1e-6, what="Train-mode d/dInput")
    if not imposed:  # sum of outputs: the normalised part sums to 0 per channel, so dx = 0
        np.testing.assert_allclose(g, 0, atol=1e-9)
    # and it is not the per-example (Test-mode) gradient
    assert not np.allclose(g, net(data, NPG("Input"), WorkingPrecision="Real64"), atol=1e-6)


@pytest.mark.parametrize("name", ["Scaling", "Biases"])
def test_batchnorm_train_array_gradients(name):
    net = bn_net((2, 3))
    rng = np.random.default_rng(3)
    x = f32(rng.standard_normal((5, 2, 3)))
    G = f32(rng.uniform(-1, 1, x.shape))
    g = net({"Input": x, NPG("Output"): G}, NPG(name), WorkingPrecision="Real64", **TRAIN)
    a0 = f32(pg.NetExtract(net, name))
    fd = fd_array_gradient(lambda a: float(np.sum(pg.NetReplacePart(net, {name: a})(
        x, WorkingPrecision="Real64", **TRAIN) * G)), a0)
    grad_close(g, fd, rtol=1e-6, what=f"Train-mode d/d{name}")


def test_batchnorm_train_in_a_chain_vs_finite_differences():
    """Linear -> BatchNorm (Train) -> Tanh: the batch coupling flows back through the Linear layer."""
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(4), pg.BatchNormalizationLayer(), "Tanh",
                                        pg.LinearLayer(2)], input=3), seed=1)
    x = f32(np.random.default_rng(4).standard_normal((6, 3)))
    g = net(x, NPG("Input"), WorkingPrecision="Real64", **TRAIN)
    fd = fd_input_gradient(lambda v: float(np.sum(net(v, WorkingPrecision="Real64", **TRAIN))), x)
    grad_close(g, fd, rtol=1e-6, what="chain d/dInput")
    gw = net(x, NPG((0, "Weights")), WorkingPrecision="Real64", **TRAIN)
    w0 = f32(pg.NetExtract(net, (0, "Weights")))
    fdw = fd_array_gradient(lambda w: float(np.sum(pg.NetReplacePart(net, {(0, "Weights"): w})(
        x, WorkingPrecision="Real64", **TRAIN))), quantize(w0))
    net_q = pg.NetReplacePart(net, {(0, "Weights"): quantize(w0)})
    grad_close(net_q(x, NPG((0, "Weights")), WorkingPrecision="Real64", **TRAIN), fdw, rtol=1e-6, what="chain dW")
    assert gw.shape == (4, 3)


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_train_mode_leaves_the_net_unchanged(precision):
    """A net is a value: Train calls (outputs and gradients, either precision) use the batch's own
    statistics and leave the moving statistics, and everything else, exactly as they were; copies
    and later Test calls see the same net."""
    import copy
    net = bn_net((3, 2, 2), momentum=0.8)
    twin = copy.deepcopy(net)
    before = {name: np.array(pg.NetExtract(net, name)) for name in ("MovingMean", "MovingVariance", "Scaling", "Biases")}
    x = f32(np.random.default_rng(5).normal(2.0, 3.0, (4, 3, 2, 2)))
    xs = x.transpose(1, 0, 2, 3).reshape(3, -1)
    y = net(x, WorkingPrecision=precision, **TRAIN)
    g, b = f32(before["Scaling"]), f32(before["Biases"])
    ref = g[None, :, None, None] * (x - xs.mean(1)[None, :, None, None]) / np.sqrt(
        xs.var(1)[None, :, None, None] + 0.001) + b[None, :, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)  # batch statistics (biased variance)
    net(x, NPG(pg.All), WorkingPrecision=precision, **TRAIN)
    for name, value in before.items():
        assert np.array_equal(pg.NetExtract(net, name), value), name
        assert np.array_equal(pg.NetExtract(twin, name), value), name
    # Test mode still uses the untouched moving statistics, the same as the deep copy
    assert np.array_equal(net(x, WorkingPrecision=precision), twin(x, WorkingPrecision=precision))


def test_train_calls_concurrent_with_test_calls_see_one_net():
    """Test calls running beside Train calls on other threads always see the same statistics (there
    is nothing half-updated to read)."""
    import threading
    net = bn_net((4,), momentum=0.5)
    rng = np.random.default_rng(9)
    x = f32(rng.normal(size=(64, 4)))
    want = net(x)
    stop, bad = threading.Event(), []

    def train():
        while not stop.is_set():
            net(f32(rng.normal(3.0, 2.0, (32, 4))), **TRAIN)

    threads = [threading.Thread(target=train) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            if not np.array_equal(net(x), want):
                bad.append(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad


def test_batchnorm_running_state_has_no_gradient():
    net = bn_net((2, 3))
    x = np.zeros((2, 2, 3))
    for name in ("MovingMean", "MovingVariance"):
        with pytest.raises(ValueError, match=f"{name}.*not learned"):
            net(x, NPG(name))
        with pytest.raises(ValueError, match="not learned"):
            net(x, NPG(name), **TRAIN)
    grads = net(x, NPG(pg.All))
    assert set(grads) == {NPG("Input"), NPG(("Scaling",)), NPG(("Biases",))}


def test_batchnorm_train_needs_more_than_one_value_per_channel():
    net = bn_net((3,))
    with pytest.raises(ValueError, match=r"BatchNormalizationLayer.*more than one value per channel"):
        net(np.ones(3), **TRAIN)
    with pytest.raises(ValueError, match="more than one value"):
        net(np.ones((1, 3)), **TRAIN)
    net(np.ones((2, 3)), **TRAIN)  # two examples will do
    pg.NetInitialize(pg.BatchNormalizationLayer(input=(3, 2)))(np.ones((3, 2)), **TRAIN)  # or two positions


# ----------------------------------------------------------------------------- initialisation
def test_net_initialize_values():
    bn = pg.NetInitialize(pg.BatchNormalizationLayer(input=(3, 4)), seed=0)
    for name, value in [("Scaling", 1), ("Biases", 0), ("MovingMean", 0), ("MovingVariance", 1)]:
        a = pg.NetExtract(bn, name)
        assert a.shape == (3,) and np.all(a == value), name
    ln = pg.NetInitialize(pg.NormalizationLayer(input=(3, 4)), seed=0)
    assert np.all(pg.NetExtract(ln, "Scaling") == 1) and np.all(pg.NetExtract(ln, "Biases") == 0)
    assert pg.NetExtract(ln, "Scaling").shape == (3,)
    assert pg.NetExtract(pg.NetInitialize(pg.NormalizationLayer("All", input=(3, 4))), "Biases").shape == (3, 4)
    assert pg.NetExtract(pg.NetInitialize(pg.NormalizationLayer(input=5)), "Scaling").shape == (5,)
    e1 = pg.NetExtract(pg.NetInitialize(pg.EmbeddingLayer(4, 10, input=()), seed=3), "Weights")
    e2 = pg.NetExtract(pg.NetInitialize(pg.EmbeddingLayer(4, 10, input=()), seed=3), "Weights")
    assert e1.shape == (10, 4) and np.array_equal(e1, e2) and np.std(e1) > 0.1
    for method in ("Xavier", "Orthogonal"):
        w = pg.NetExtract(pg.NetInitialize(pg.EmbeddingLayer(4, 10, input=()), seed=3, method=method), "Weights")
        assert np.isfinite(w).all() and np.std(w) > 0.1


def test_normalization_levels():
    x = f32(np.random.default_rng(7).normal(3.0, 2.0, (2, 3, 4)))
    default = pg.NetInitialize(pg.NormalizationLayer(input=(3, 4)))(x, WorkingPrecision="Real64")
    every = pg.NetInitialize(pg.NormalizationLayer("All", input=(3, 4)))(x, WorkingPrecision="Real64")
    np.testing.assert_allclose(default.mean(2), 0, atol=1e-12)  # every channel of every example
    np.testing.assert_allclose(every.reshape(2, -1).mean(1), 0, atol=1e-12)  # every example as a whole
    assert not np.allclose(every.mean(2), 0, atol=1e-3)
    np.testing.assert_allclose(default.var(2), 1 / (1 + 0.001 / x.var(2)), rtol=1e-10)


# ----------------------------------------------------------------------------- dropout
def test_dropout_train_mask_scaling_and_determinism():
    p = 0.3
    net = pg.DropoutLayer(p, input=(100, 200))
    x = f32(np.random.default_rng(8).uniform(0.5, 2.0, (100, 200)))
    y = net(x, NetEvaluationMode="Train", RandomSeeding=11)
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.01  # 20000 elements: the standard error is 0.003
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert np.array_equal(net(x, NetEvaluationMode="Train", RandomSeeding=11), y)  # same seed, same mask
    y2 = net(x, NetEvaluationMode="Train", RandomSeeding=12)
    assert not np.array_equal(y2 != 0, kept)
    y3, y4 = (net(x, NetEvaluationMode="Train") for _ in range(2))  # fresh seeds
    assert not np.array_equal(y3 != 0, y4 != 0)
    # Real64 draws the same mask
    assert np.array_equal(net(x, NetEvaluationMode="Train", RandomSeeding=11, WorkingPrecision="Real64") != 0, kept)
    assert np.array_equal(net(x), x.astype(np.float32))  # Test mode: the identity


def test_dropout_gradient_uses_the_forward_mask():
    p = 0.5
    net = pg.DropoutLayer(p, input=(7, 9))
    rng = np.random.default_rng(9)
    x = f32(rng.uniform(0.5, 2.0, (5, 7, 9)))
    G = f32(rng.uniform(-1, 1, x.shape))
    for seed in (1, 2, 3):
        res = net({"Input": x, NPG("Output"): G}, ["Output", NPG("Input")], NetEvaluationMode="Train",
                  RandomSeeding=seed, WorkingPrecision="Real64")
        mask = res["Output"] != 0
        np.testing.assert_allclose(res[NPG("Input")], np.where(mask, G / (1 - p), 0), rtol=1e-15)
        g = net(x, NPG("Input"), NetEvaluationMode="Train", RandomSeeding=seed, WorkingPrecision="Real64")
        np.testing.assert_allclose(g, mask / (1 - p), rtol=1e-15)
    assert np.array_equal(net(x, NPG("Input")), np.ones(x.shape, np.float32))  # Test mode


def test_dropout_layers_in_a_chain_draw_different_masks():
    net = pg.NetChain([pg.DropoutLayer(0.5), pg.DropoutLayer(0.5)], input=1000)
    first = pg.DropoutLayer(0.5, input=1000)
    x = np.ones(1000)
    y = net(x, NetEvaluationMode="Train", RandomSeeding=5)
    assert np.all((y == 0) | (y == 4))
    assert 0.15 < np.mean(y != 0) < 0.35  # two independent masks: 1/4 kept
    assert not np.array_equal(first(x, NetEvaluationMode="Train", RandomSeeding=5) != 0, y != 0)


def test_dropout_p_zero_is_identity_in_train_mode():
    x = np.random.default_rng(10).standard_normal((3, 4))
    assert np.array_equal(pg.DropoutLayer(0.0, input=4)(x, **TRAIN), x.astype(np.float32))


# ----------------------------------------------------------------------------- embedding
def embedding(size=3, n=5, shape=(4,)):
    return pg.NetInitialize(pg.EmbeddingLayer(size, n, input=shape), seed=0)


def test_embedding_index_errors():
    net = embedding()
    with pytest.raises(IndexError, match=r": index 5 is out of range for 5 rows of the embedding"):
        net(np.array([0, 1, 5, 2]))
    with pytest.raises(IndexError, match=r"index 9223372036854775813 is out of range"):  # uint64, not negative
        net(np.array([0, 2**63 + 5, 1, 2], dtype=np.uint64))
    with pytest.raises(IndexError, match="out of range"):
        net(np.array([0, -1, 2, 2]))
    with pytest.raises(IndexError, match="out of range"):
        net(np.array([[0, 1, 2, 3], [0, 1, 2, 7]]))
    with pytest.raises(ValueError, match="integers"):
        net(np.array([0.0, 1.5, 2.0, 3.0]))
    with pytest.raises(ValueError, match="integers"):
        net(np.array([0.0, np.nan, 2.0, 3.0]))
    with pytest.raises(TypeError):
        net(np.array([True, False, True, True]))
    with pytest.raises(ValueError, match=r"expected an array of shape \(4,\)"):
        net(np.array([0, 1, 2]))
    np.testing.assert_array_equal(net(np.array([0.0, 1.0, 4.0, 4.0])), net(np.array([0, 1, 4, 4])))
    np.testing.assert_array_equal(net(np.array([0, 1, 4, 4], np.int32)), net(np.array([0, 1, 4, 4])))


def test_embedding_input_has_no_gradient():
    net = embedding()
    with pytest.raises(ValueError, match="class indices and has no gradient"):
        net(np.array([0, 1, 2, 3]), NPG("Input"))
    grads = net(np.array([0, 1, 2, 3]), NPG(pg.All))
    assert set(grads) == {NPG(("Weights",))}


def test_embedding_weight_gradient_scatter_adds_repeated_indices():
    net = embedding(2, 4, (5,))
    idx = np.array([[1, 3, 1, 1, 0], [3, 3, 2, 0, 1]])
    G = np.random.default_rng(11).uniform(-1, 1, (2, 5, 2))
    g = net({"Input": idx, NPG("Output"): G}, NPG("Weights"), WorkingPrecision="Real64")
    ref = np.zeros((4, 2))
    np.add.at(ref, idx.ravel(), G.reshape(-1, 2))
    np.testing.assert_allclose(g, ref, rtol=1e-15, atol=1e-15)
    y = net(idx)
    np.testing.assert_array_equal(y, pg.NetExtract(net, "Weights")[idx])


def test_embedding_in_a_chain():
    net = pg.NetInitialize(pg.NetChain([pg.EmbeddingLayer(3, 6), pg.FlattenLayer(), pg.LinearLayer(2), "Tanh"],
                                       input=(4,)), seed=2)
    idx = np.array([[0, 5, 5, 2], [1, 1, 3, 4]])
    w0 = quantize(f32(pg.NetExtract(net, (0, "Weights"))))
    net = pg.NetReplacePart(net, {(0, "Weights"): w0})
    g = net(idx, NPG((0, "Weights")), WorkingPrecision="Real64")
    fd = fd_array_gradient(lambda w: float(np.sum(pg.NetReplacePart(net, {(0, "Weights"): w})(
        idx, WorkingPrecision="Real64"))), w0)
    grad_close(g, fd, rtol=1e-6, what="embedding weights through a chain")
    assert np.all(g[[0, 1, 2, 3, 4, 5]].any(axis=1))
    # an index port must be fed by the net's input directly
    with pytest.raises(ValueError, match="class indices"):
        pg.NetChain([pg.LinearLayer(4), pg.EmbeddingLayer(3, 6)], input=2).input_ports


# ----------------------------------------------------------------------------- bad configurations
@pytest.mark.parametrize("make, error, fragment", [
    (lambda: pg.BatchNormalizationLayer(momentum=1.5, input=3), ValueError, "momentum must be between 0 and 1"),
    (lambda: pg.BatchNormalizationLayer(epsilon=0, input=3), ValueError, "epsilon must be positive"),
    (lambda: pg.BatchNormalizationLayer(epsilon=-1e-3, input=3), ValueError, "epsilon must be positive"),
    (lambda: pg.BatchNormalizationLayer(momentum="a", input=3), TypeError, "momentum must be a real number"),
    (lambda: pg.BatchNormalizationLayer(input=()), ValueError, r"BatchNormalizationLayer: port \"Input\""),
    (lambda: pg.NormalizationLayer(input=()), ValueError, r"NormalizationLayer: port \"Input\""),
    (lambda: pg.NormalizationLayer("Rows", input=3), ValueError, "levels"),
    (lambda: pg.NormalizationLayer(epsilon=float("nan"), input=3), ValueError, "epsilon"),
    (lambda: pg.DropoutLayer(1.0, input=3), ValueError, r"dropout probability must be in \[0, 1\)"),
    (lambda: pg.DropoutLayer(-0.1, input=3), ValueError, "dropout probability"),
    (lambda: pg.DropoutLayer(True, input=3), TypeError, "p must be a real number"),
    (lambda: pg.EmbeddingLayer(0, 5), ValueError, "size must be a positive int"),
    (lambda: pg.EmbeddingLayer(3, 2.5), TypeError, "n must be a positive int"),
])
def test_bad_configurations(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make().output_ports


def test_layer_errors_name_the_layer_in_a_chain():
    with pytest.raises(ValueError, match=r"layer bn \(BatchNormalizationLayer\)"):
        pg.NetChain({"lin": pg.LinearLayer(()), "bn": pg.BatchNormalizationLayer()}, input=3).output_ports


# ----------------------------------------------------------------------------- PyTorch parity
torch_params = pytest.mark.parametrize("precision", ["Real32", "Real64"])


def _torch():
    return pytest.importorskip("torch")


def _tol(precision):
    return dict(rtol=1e-10, atol=1e-10) if precision == "Real64" else dict(rtol=2e-5, atol=2e-5)


@torch_params
@pytest.mark.parametrize("mode", ["Test", "Train"])
def test_batchnorm_matches_torch(precision, mode):
    torch = _torch()
    dt = torch.float64 if precision == "Real64" else torch.float32
    net = bn_net((3, 4, 5), eps=1e-5, momentum=0.9)
    rng = np.random.default_rng(12)
    x = f32(rng.normal(0.5, 2.0, (6, 3, 4, 5)))
    G = f32(rng.uniform(-1, 1, x.shape))
    tbn = torch.nn.BatchNorm2d(3, eps=1e-5, momentum=0.1).to(dt)  # torch's momentum weighs the batch
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(pg.NetExtract(net, "Scaling")))
        tbn.bias.copy_(torch.tensor(pg.NetExtract(net, "Biases")))
        tbn.running_mean.copy_(torch.tensor(pg.NetExtract(net, "MovingMean")))
        tbn.running_var.copy_(torch.tensor(pg.NetExtract(net, "MovingVariance")))
    tbn.train(mode == "Train")
    xt = torch.tensor(x, dtype=dt, requires_grad=True)
    yt = tbn(xt)
    yt.backward(torch.tensor(G, dtype=dt))
    opts = dict(WorkingPrecision=precision, NetEvaluationMode=mode, RandomSeeding=1)
    res = net({"Input": x, NPG("Output"): G}, ["Output", NPG("Input"), NPG("Scaling"), NPG("Biases")], **opts)
    tol = _tol(precision)
    np.testing.assert_allclose(res["Output"], yt.detach().numpy(), **tol)
    np.testing.assert_allclose(res[NPG("Input")], xt.grad.numpy(), **tol)
    np.testing.assert_allclose(res[NPG("Scaling")], tbn.weight.grad.numpy(), rtol=tol["rtol"], atol=tol["atol"] * 100)
    np.testing.assert_allclose(res[NPG("Biases")], tbn.bias.grad.numpy(), rtol=tol["rtol"], atol=tol["atol"] * 100)
    # (torch moves its running statistics in place in train mode; a portgrad net never changes)


@torch_params
@pytest.mark.parametrize("levels", ["All", "Default"])
def test_normalization_matches_torch(precision, levels):
    torch = _torch()
    dt = torch.float64 if precision == "Real64" else torch.float32
    shape = (3, 4, 5)
    net = pg.NetInitialize(pg.NormalizationLayer(levels, epsilon=1e-5, input=shape))
    rng = np.random.default_rng(13)
    pshape = shape if levels == "All" else (3,)
    net = pg.NetReplacePart(net, {"Scaling": quantize(rng.uniform(0.5, 1.5, pshape)),
                                  "Biases": quantize(rng.uniform(-0.5, 0.5, pshape))})
    x = f32(rng.normal(1.0, 2.0, (4,) + shape))
    G = f32(rng.uniform(-1, 1, x.shape))
    # "All" is LayerNorm over the example; "Default" (per channel over the rest) is GroupNorm with a group per channel
    tl = torch.nn.LayerNorm(shape, eps=1e-5) if levels == "All" else torch.nn.GroupNorm(3, 3, eps=1e-5)
    tl = tl.to(dt)
    with torch.no_grad():
        tl.weight.copy_(torch.tensor(pg.NetExtract(net, "Scaling")))
        tl.bias.copy_(torch.tensor(pg.NetExtract(net, "Biases")))
    xt = torch.tensor(x, dtype=dt, requires_grad=True)
    yt = tl(xt)
    yt.backward(torch.tensor(G, dtype=dt))
    res = net({"Input": x, NPG("Output"): G}, ["Output", NPG("Input"), NPG("Scaling"), NPG("Biases")],
              WorkingPrecision=precision)
    tol = _tol(precision)
    np.testing.assert_allclose(res["Output"], yt.detach().numpy(), **tol)
    np.testing.assert_allclose(res[NPG("Input")], xt.grad.numpy(), **tol)
    np.testing.assert_allclose(res[NPG("Scaling")], tl.weight.grad.numpy(), rtol=tol["rtol"], atol=tol["atol"] * 10)
    np.testing.assert_allclose(res[NPG("Biases")], tl.bias.grad.numpy(), rtol=tol["rtol"], atol=tol["atol"] * 10)


@torch_params
def test_embedding_matches_torch(precision):
    torch = _torch()
    dt = torch.float64 if precision == "Real64" else torch.float32
    net = pg.NetInitialize(pg.EmbeddingLayer(5, 11, input=(6,)), seed=4)
    rng = np.random.default_rng(14)
    idx = rng.integers(0, 11, (3, 6))
    G = f32(rng.uniform(-1, 1, (3, 6, 5)))
    te = torch.nn.Embedding(11, 5).to(dt)
    with torch.no_grad():
        te.weight.copy_(torch.tensor(pg.NetExtract(net, "Weights")))
    yt = te(torch.tensor(idx))
    yt.backward(torch.tensor(G, dtype=dt))
    res = net({"Input": idx, NPG("Output"): G}, ["Output", NPG("Weights")], WorkingPrecision=precision)
    np.testing.assert_array_equal(res["Output"], yt.detach().numpy())
    np.testing.assert_allclose(res[NPG("Weights")], te.weight.grad.numpy(), **_tol(precision))


# ----------------------------------------------------------------------------- in a NetGraph
def test_batchnorm_and_dropout_in_a_graph_with_fan_out_train_mode():
    """BatchNorm's output feeds two branches (one through dropout): in Train mode the input gradient
    with imposed gradients on both outputs matches finite differences (same seed, same masks)."""
    net = pg.NetInitialize(pg.NetGraph(
        {"bn": pg.BatchNormalizationLayer(), "a": "Tanh", "drop": pg.DropoutLayer(0.4), "lin": pg.LinearLayer(2)},
        [(pg.NetPort("Input"), "bn", "a"), ("bn", "drop", "lin")], input=3), seed=0)
    rng = np.random.default_rng(15)
    x = f32(rng.standard_normal((5, 3)))
    outs = net(x, WorkingPrecision="Real64", **TRAIN)
    G = {k: rng.uniform(-1, 1, np.shape(v)) for k, v in outs.items()}
    g = net({"Input": x, **{NPG(k): v for k, v in G.items()}}, NPG("Input"), WorkingPrecision="Real64", **TRAIN)

    def f(v):
        res = net(v, WorkingPrecision="Real64", **TRAIN)
        return float(sum(np.sum(res[k] * G[k]) for k in G))

    grad_close(g, fd_input_gradient(f, x), rtol=1e-6, what="graph d/dInput (Train)")
