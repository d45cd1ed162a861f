"""NetMapOperator(net): net applied to every element of a sequence. Checked against NumPy float64
(the mapped layer applied element by element), central differences for every gradient and for the
forward mode, float32 against float64, nesting, files, and the clear errors."""
import pickle

import numpy as np
import pytest

import portgrad as pg
from gradcheck import check_net_gradients

NPG, NPT = pg.NetPortGradient, pg.NetPortTangent
R64 = dict(WorkingPrecision="Real64")


def mapped_mlp(seq=("Varying", 3)):
    inner = pg.NetChain([pg.LinearLayer(6), "Tanh", pg.LinearLayer(2)])
    return pg.NetInitialize(pg.NetChain([pg.NetMapOperator(inner)], input=seq), seed=3)


def numpy_mlp(net, x):
    w1, b1 = (pg.NetExtract(net, (0, 0, k)) for k in ("Weights", "Biases"))
    w2, b2 = (pg.NetExtract(net, (0, 2, k)) for k in ("Weights", "Biases"))
    return np.tanh(x @ np.asarray(w1, np.float64).T + b1) @ np.asarray(w2, np.float64).T + b2


def test_forward_against_numpy_per_element():
    net = mapped_mlp()
    assert net.arrays == {"0/0/Weights": (6, 3), "0/0/Biases": (6,), "0/2/Weights": (2, 6), "0/2/Biases": (2,)}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 7, 3))
    np.testing.assert_allclose(net(x, **R64), numpy_mlp(net, x), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(net(x.astype(np.float32)), numpy_mlp(net, x), rtol=2e-5, atol=2e-5)
    xs = [rng.standard_normal((n, 3)) for n in (1, 5, 2)]  # a Varying batch
    for a, y in zip(xs, net(xs, **R64)):
        np.testing.assert_allclose(y, numpy_mlp(net, a), rtol=1e-13, atol=1e-14)
    assert net.output_ports == {"Output": ("Varying", 2)}


def test_gradients_against_central_differences():
    net = mapped_mlp(seq=(4, 3))
    x = np.random.default_rng(1).standard_normal((2, 4, 3))
    got = check_net_gradients(net, {"Input": x})  # the input and every array
    assert got[NPG((0, 0, "Weights"))].shape == (6, 3)


def test_forward_mode_and_hvp_against_differences():
    net = mapped_mlp(seq=(5, 3))
    rng = np.random.default_rng(2)
    x, v = rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 5, 3))
    jv = net({"Input": x, NPT("Input"): v}, NPT("Output"), **R64)
    h = 1e-6
    np.testing.assert_allclose(jv, (net(x + h * v, **R64) - net(x - h * v, **R64)) / (2 * h), rtol=1e-7, atol=1e-8)
    hv = net({"Input": x, NPT("Input"): v}, NPT(NPG("Input")), **R64)
    g = lambda a: net(a, NPG("Input"), **R64)  # noqa: E731
    np.testing.assert_allclose(hv, (g(x + h * v) - g(x - h * v)) / (2 * h), rtol=1e-6, atol=1e-7)
    jac = net(x, pg.NetPortJacobian("Input"), **R64)
    assert jac.shape == (3, 5, 2, 5, 3)
    # an element's output depends on that element only
    assert np.all(jac[:, 0, :, 1:] == 0) and np.any(jac[:, 0, :, 0] != 0)


def test_after_a_recurrent_layer_and_nested():
    lstm = pg.NetInitialize(pg.NetChain([pg.LongShortTermMemoryLayer(4), pg.NetMapOperator(pg.LinearLayer(2))],
                                        input=("Varying", 3)), seed=4)
    x = np.random.default_rng(3).standard_normal((6, 3))
    h = lstm(x, pg.NetPort("0", "Output"), **R64)
    w, b = (np.asarray(pg.NetExtract(lstm, (1, k)), np.float64) for k in ("Weights", "Biases"))
    np.testing.assert_allclose(lstm(x, **R64), h @ w.T + b, rtol=1e-12, atol=1e-13)
    nested = pg.NetInitialize(pg.NetChain([pg.NetMapOperator(pg.NetMapOperator(pg.LinearLayer(2)))], input=(4, 5, 3)))
    y = np.random.default_rng(4).standard_normal((2, 4, 5, 3))
    w, b = (np.asarray(pg.NetExtract(nested, (0, k)), np.float64) for k in ("Weights", "Biases"))
    np.testing.assert_allclose(nested(y, **R64), y @ w.T + b, rtol=1e-13, atol=1e-14)
    assert nested.output_ports == {"Output": (4, 5, 2)}


def test_training_sums_over_elements():
    net = mapped_mlp(seq=(4, 3))
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal((8, 4, 3)), rng.standard_normal((8, 4, 2))
    trained = pg.NetTrain(net, {"Input": x, "Target": t}, MaxTrainingRounds=3, Method="SGD", BatchSize=8,
                          LearningRate=0.1, TrainingProgressReporting=None)
    before = np.mean((net(x, **R64) - t) ** 2)
    assert np.mean((trained(x, **R64) - t) ** 2) < before


def test_files_keep_it(tmp_path):
    net = mapped_mlp()
    x = np.random.default_rng(6).standard_normal((5, 3))
    net.save(tmp_path / "m.pgnet")
    for again in (pg.load(tmp_path / "m.pgnet"), pickle.loads(pickle.dumps(net))):
        assert type(again.layers[0] if hasattr(again, "layers") else again._layers[0][1]) is pg.NetMapOperator
        np.testing.assert_array_equal(again(x), net(x))


def test_clear_errors():
    net = mapped_mlp(seq=(4, 3))
    with pytest.raises(ValueError, match="per-example gradients of array .*NetMapOperator"):
        net(np.zeros((2, 4, 3)), NPG((0, 0, "Weights"), PerExample=True))
    with pytest.raises(ValueError, match="needs more than 1 axes"):
        pg.NetChain([pg.NetMapOperator(pg.LinearLayer(2))], input=3)
    with pytest.raises(ValueError, match="declared with shape \\(3,\\).*fed shape \\(2,\\).*one element"):
        pg.NetChain([pg.NetMapOperator(pg.LinearLayer(2, input=3))], input=(4, 2))
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="export_onnx: NetMapOperator"):
        pg.export_onnx(net, "/nonexistent/x.onnx")
