"""pg.export_onnx: the model passes onnx.checker, onnxruntime computes the same outputs, and
import_onnx(export_onnx(net)) and export_onnx(import_onnx(file)) give the same outputs and gradients."""
import glob
import os

import numpy as np
import pytest

import portgrad as pg

onnx = pytest.importorskip("onnx")

S = pg.NetSharedArray
NPG = pg.NetPortGradient
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "onnx")


def zoo():
    """Every layer type the exporter writes, at least once."""
    return {
        "mlp": pg.NetChain([8, "Tanh", 6, "GELU", 4, "Swish", 5, "SoftPlus", 4, "ELU", 4, "SELU", 4, "Mish",
                            4, "Erf", 4, "HardTanh", 4, "HardSigmoid", 4, "HardSwish", 4, "SoftSign", 4, "Sin",
                            4, "Square", 3, pg.SoftmaxLayer()], input=5),
        "cnn": pg.NetChain([pg.ConvolutionLayer(4, 3, padding=1), pg.BatchNormalizationLayer(), "ReLU",
                            pg.PoolingLayer(2, 2), pg.ConvolutionLayer(4, 2, padding="Same", channel_groups=2),
                            pg.PoolingLayer(2, 1, function="Mean"), pg.PoolingLayer((1, 2), function="Total"),
                            pg.DeconvolutionLayer(2, 3, stride=2, padding=1, output_padding=1), pg.DropoutLayer(), pg.FlattenLayer(), 5,
                            pg.SoftmaxLayer(log=True)], input=(2, 8, 8)),
        "conv1d": pg.NetChain([pg.ConvolutionLayer(3, 3, stride=2, dilation=2), "Sigmoid", pg.FlattenLayer(),
                               pg.LinearLayer((2, 3))], input=(2, 17)),
        "tied": pg.NetChain([pg.LinearLayer(5, weights=S("w")), "SELU", pg.LinearLayer(5, weights=S("w"), biases=False),
                             pg.LinearLayer((2, 2), transposed=True), pg.LinearLayer(3, transposed=True, biases=False)],
                            input=5),
        "graph": pg.NetGraph({"a": pg.LinearLayer(4), "t": "Tanh", "b": pg.LinearLayer(3), "c": pg.LinearLayer(3),
                              "s": pg.ThreadingLayer("Times"), "d": pg.ThreadingLayer("Subtract"),
                              "tot": pg.TotalLayer(3), "cat": pg.CatenateLayer(0)},
                             [("a", "t", "b"), ("t", "c"), ("b", pg.NetPort("s", "Input1")), ("c", pg.NetPort("s", "Input2")),
                              ("b", pg.NetPort("d", "Input1")), ("c", pg.NetPort("d", "Input2")),
                              ("s", pg.NetPort("tot", "Input1")), ("b", pg.NetPort("tot", "Input2")),
                              ("d", pg.NetPort("tot", "Input3")), ("tot", pg.NetPort("cat", "Input1")),
                              ("c", pg.NetPort("cat", "Input2")), ("c", pg.NetPort("C"))], input=3),
        "shapes": pg.NetChain([pg.ReshapeLayer((2, 3, 2)), pg.TransposeLayer((2, 0, 1)), pg.TransposeLayer(),
                               pg.AggregationLayer("Max", [1]), pg.AggregationLayer("Mean"), pg.SummationLayer()],
                              input=12),
        "masks": pg.NetGraph({"gt": pg.ThreadingLayer("Greater"), "eq": pg.ThreadingLayer("Equal"),
                              "le": pg.ThreadingLayer("LessEqual"), "t": pg.ThreadingLayer("Times", inputs=3)},
                             [(pg.NetPort("A"), pg.NetPort("gt", "Input1")), (pg.NetPort("B"), pg.NetPort("gt", "Input2")),
                              (pg.NetPort("A"), pg.NetPort("eq", "Input1")), (pg.NetPort("A"), pg.NetPort("eq", "Input2")),
                              (pg.NetPort("B"), pg.NetPort("le", "Input1")), (pg.NetPort("A"), pg.NetPort("le", "Input2")),
                              ("gt", pg.NetPort("t", "Input1")), ("eq", pg.NetPort("t", "Input2")),
                              ("le", pg.NetPort("t", "Input3")), ("t", pg.NetPort("Output"))],
                             inputs={"A": 4, "B": 4}),
        "attention": pg.NetGraph(
            {"ln": pg.NormalizationLayer(-1), "t": pg.TransposeLayer(), "qk": pg.DotLayer(), "sm": pg.SoftmaxLayer(),
             "av": pg.DotLayer(), "inorm": pg.NormalizationLayer(), "mv": pg.DotLayer(), "vv": pg.DotLayer(),
             "all": pg.NormalizationLayer("All"), "ln2": pg.NormalizationLayer(-2)},
            [(pg.NetPort("Input"), "ln"), ("ln", "t", pg.NetPort("qk", "Input2")), ("ln", pg.NetPort("qk", "Input1")),
             ("qk", "sm", pg.NetPort("av", "Input1")), ("ln", pg.NetPort("av", "Input2")), ("av", "inorm", "all", "ln2"),
             ("ln2", pg.NetPort("mv", "Input1")), (pg.NetPort("Vec"), pg.NetPort("mv", "Input2")),
             (pg.NetPort("Vec"), pg.NetPort("vv", "Input1")), (pg.NetPort("Vec"), pg.NetPort("vv", "Input2")),
             ("mv", pg.NetPort("Output")), ("vv", pg.NetPort("Norm"))],
            inputs={"Input": (4, 6), "Vec": 6}),
        "parts": pg.NetChain([pg.PartLayer((slice(None, None, -2), 1)), pg.PartLayer(slice(1, None)),
                              pg.PartLayer(-1), pg.PaddingLayer([(1, 2)], 0.5)], input=(5, 3, 4)),
        "sequence-parts": pg.NetChain([pg.SequenceReverseLayer(), pg.SequenceRestLayer(), pg.SequenceMostLayer(),
                                       pg.SequenceLastLayer()], input=(5, 3)),
        "padmodes": pg.NetChain([pg.PaddingLayer([(1, 2), (2, 0)], "Reflected"), "Tanh",
                                 pg.PaddingLayer([(0, 1), (1, 1)], "Fixed")], input=(3, 4)),
        "mod": pg.NetGraph({"m": pg.ThreadingLayer("Mod"), "f": pg.ThreadingLayer("FMod")},
                           [(pg.NetPort("A"), pg.NetPort("m", "Input1")), (pg.NetPort("B"), pg.NetPort("m", "Input2")),
                            (pg.NetPort("A"), pg.NetPort("f", "Input1")), (pg.NetPort("B"), pg.NetPort("f", "Input2")),
                            ("m", pg.NetPort("M")), ("f", pg.NetPort("F"))], inputs={"A": 6, "B": 6}),
        # a class token: a constant array concatenated with the data (one copy per example in ONNX)
        "token": pg.NetGraph({"cls": pg.ConstantArrayLayer(np.linspace(-1, 1, 6).reshape(2, 3)),
                              "cat": pg.CatenateLayer(0), "f": pg.LinearLayer(4)},
                             [("cls", pg.NetPort("cat", "Input1")), (pg.NetPort("Input"), pg.NetPort("cat", "Input2")),
                              ("cat", "f")], inputs={"Input": (3, 3)}),
        "embedding": pg.NetChain([pg.EmbeddingLayer(3, 7), pg.FlattenLayer(), 2], input=4),
        "loss": pg.NetGraph({"f": pg.LinearLayer(3), "mse": pg.MeanSquaredLossLayer(), "mae": pg.MeanAbsoluteLossLayer()},
                            [(pg.NetPort("Input"), "f"), ("f", pg.NetPort("mse", "Input")), ("f", pg.NetPort("mae", "Input")),
                             (pg.NetPort("Target"), pg.NetPort("mse", "Target")),
                             (pg.NetPort("Target"), pg.NetPort("mae", "Target"))],
                            inputs={"Input": 4, "Target": 3}),
    }


def data_for(net, rng, batch=3):
    out = {}
    for name, shape, bound in net._core_net().inputs:
        out[name] = (rng.integers(0, bound, (batch, *shape)) if bound else
                     rng.standard_normal((batch, *shape)).astype(np.float32))
    return out


def as_dict(net, result):
    return result if isinstance(result, dict) and not any(isinstance(k, NPG) for k in result) else \
        {next(iter(net.output_ports)): result}


@pytest.mark.parametrize("opset", [17, 18, 20])
@pytest.mark.parametrize("name", list(zoo()))
def test_onnxruntime_computes_the_same(name, opset):
    ort = pytest.importorskip("onnxruntime")
    net = pg.NetInitialize(zoo()[name], seed=1)
    data = data_for(net, np.random.default_rng(0))
    model = pg.export_onnx(net, opset=opset)
    onnx.checker.check_model(onnx.load_from_string(model))
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, data)))
    want = as_dict(net, net(data))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("name", list(zoo()))
def test_import_of_export_gives_the_same_outputs_and_gradients(name):
    net = pg.NetInitialize(zoo()[name], seed=2)
    back = pg.import_onnx(pg.export_onnx(net, opset=20))  # opset 20: Gelu is one op, no float32 constants
    data = data_for(net, np.random.default_rng(1))
    np.testing.assert_allclose(as_dict(back, back(data, WorkingPrecision="Real64"))[next(iter(net.output_ports))],
                               as_dict(net, net(data, WorkingPrecision="Real64"))[next(iter(net.output_ports))],
                               rtol=1e-6, atol=1e-9)
    g0, g1 = net(data, NPG(pg.All), WorkingPrecision="Real64"), back(data, NPG(pg.All), WorkingPrecision="Real64")
    for info in net._core_net().param_info:
        if not info["learnable"]:
            continue
        key = S(info["path"]) if info["shared"] else tuple(int(x) if x.isdigit() else x for x in info["path"].split("/"))
        # The arrays keep their names (paths become shared array names) and their shapes, except a
        # multi-axis LinearLayer's weights, which ONNX's Gemm takes as a matrix of the same values.
        got = g1[NPG(S(info["path"]))]
        np.testing.assert_allclose(got.reshape(np.shape(g0[NPG(key)])), g0[NPG(key)], rtol=1e-6, atol=1e-9,
                                   err_msg=info["path"])
    for port, _shape, bound in net._core_net().inputs:
        if not bound:
            np.testing.assert_allclose(g1[NPG(port)], g0[NPG(port)], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("file", sorted(os.path.basename(f) for f in glob.glob(os.path.join(DATA, "*-18*.onnx"))))
def test_export_of_import_gives_the_same_outputs_and_gradients(file):
    net = pg.import_onnx(os.path.join(DATA, file))
    again = pg.import_onnx(pg.export_onnx(net, opset=18))
    x = np.load(os.path.join(DATA, file.split("-")[0] + ".npz"))["x"]
    a, b = net(x, NPG(pg.All), WorkingPrecision="Real64"), again(x, NPG(pg.All), WorkingPrecision="Real64")
    # ONNX stores no "learned" mark: a constant the first import computed (a causal mask) is a stored
    # tensor of the exported file, learned when read again.
    assert set(a) <= set(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-15, err_msg=str(k))


def test_path_and_bytes(tmp_path):
    net = pg.NetInitialize(zoo()["tied"], seed=0)
    assert pg.export_onnx(net, tmp_path / "tied.onnx") is None
    model = onnx.load(tmp_path / "tied.onnx")
    assert model.SerializeToString() == pg.export_onnx(net)
    # The shared array is one initializer, named as in portgrad.
    arrays = sorted(i.name for i in model.graph.initializer if ":" not in i.name)  # (":": the exporter's constants)
    assert arrays == ["0/Biases", "3/Biases", "3/Weights", "4/Weights", "w"]
    assert [i.name for i in model.graph.input] == ["Input"] and [o.name for o in model.graph.output] == ["Output"]


def test_what_cannot_be_exported():
    with pytest.raises(ValueError, match=r"these layers have no ONNX equivalent.*\n  1 \(ReplicateLayer\)"):
        pg.export_onnx(pg.NetInitialize(pg.NetChain([3, pg.ReplicateLayer(2)], input=2)))
    with pytest.raises(ValueError, match="not initialised"):
        pg.export_onnx(pg.NetChain([3], input=2))
    with pytest.raises(ValueError, match="no declared input shape"):
        pg.export_onnx(pg.ElementwiseLayer("Tanh"))
    with pytest.raises(ValueError, match="opset must be an int from 17 to 21"):
        pg.export_onnx(pg.NetInitialize(pg.NetChain([3], input=2)), opset=13)
    with pytest.raises(TypeError, match="takes a net"):
        pg.export_onnx("net")
    periodic = pg.NetChain([pg.PaddingLayer([(1, 2)], "Periodic")], input=(3, 2))
    with pytest.raises(ValueError, match=r'"Periodic" padding before opset 19'):
        pg.export_onnx(periodic, opset=18)


def test_periodic_padding_exports_as_wrap_from_opset_19():
    ort = pytest.importorskip("onnxruntime")
    net = pg.NetChain([pg.PaddingLayer([(1, 2), (0, 2)], "Periodic")], input=(3, 2))
    x = np.random.default_rng(2).standard_normal((2, 3, 2)).astype(np.float32)
    session = ort.InferenceSession(pg.export_onnx(net, opset=20), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"Input": x})[0], net(x))
    np.testing.assert_array_equal(net(x), np.pad(x, [(0, 0), (1, 2), (0, 2)], mode="wrap"))
    back = pg.import_onnx(pg.export_onnx(net, opset=20))  # ONNX's wrap imported as "Periodic"
    x64 = x.astype(np.float64)
    w = np.random.default_rng(3).standard_normal((2, 6, 4))  # an output gradient: sum(w * y)
    got = back({"Input": x64, pg.NetPortGradient("Output"): w}, pg.NetPortGradient("Input"), WorkingPrecision="Real64")
    want = np.zeros_like(x64)
    for i in range(6):  # the input row and column each output element shows
        for j in range(4):
            want[:, (i - 1) % 3, j % 2] += w[:, i, j]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
