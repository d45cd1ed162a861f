"""ONNX import of LSTM, GRU and RNN nodes: models built with onnx.helper (forward, reverse and
bidirectional; layout 0 and 1; with and without biases and initial states; Y, Y_h, Y_c) against
ONNX's own reference evaluator in float64, and onnxruntime in float32 where it has the case; input
gradients against central differences; a GRU's Rbh (PyTorch's b_hn) as state_biases; PyTorch's own
exports (zero initial states made from the batch size); and the clear refusals (sequence_lens,
GRU's linear_before_reset=0, clip, input_forget, other activations)."""
import numpy as np
import pytest

import portgrad as pg

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

G = {"LSTM": 4, "GRU": 3, "RNN": 1}


def model(op, seq=5, batch=None, k=3, h=4, direction="forward", layout=0, bias=True, initial=False, outputs=3,
          dtype=TensorProto.DOUBLE, seed=0, rbh=False, **attrs):
    rng = np.random.default_rng(seed)
    q = lambda a: np.round(a * 1024) / 1024  # noqa: E731  (float32-exact, and so are the bias sums)
    nd = 2 if direction == "bidirectional" else 1
    npd = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    W = numpy_helper.from_array(q(0.5 * rng.standard_normal((nd, G[op] * h, k))).astype(npd), "W")
    R = numpy_helper.from_array(q(0.5 * rng.standard_normal((nd, G[op] * h, h))).astype(npd), "R")
    b = q(0.3 * rng.standard_normal((nd, 2 * G[op] * h)))
    if op == "GRU" and not rbh:
        b[:, 5 * h:] = 0.0  # Rbh: Wolfram's GRU has none (then the layer needs no state_biases)
    inits = [W, R] + ([numpy_helper.from_array(b.astype(npd), "B")] if bias else [])
    # Graph inputs and outputs are batch-first (portgrad's ports); with layout 0 the node's are
    # sequence-first (direction-first for states), through Transposes as PyTorch's exports write them.
    nodes, node_in = [], ["X" if layout == 1 else "Xt", "W", "R", "B" if bias else "", ""]
    inputs = [helper.make_tensor_value_info("X", dtype, ["N", seq, k])]
    if layout == 0:
        nodes.append(helper.make_node("Transpose", ["X"], ["Xt"], perm=[1, 0, 2]))
    if initial:
        for port in ("H0", "C0") if op == "LSTM" else ("H0",):
            inputs.append(helper.make_tensor_value_info(port, dtype, ["N", nd, h]))
            if layout == 0:
                nodes.append(helper.make_node("Transpose", [port], [port + "t"], perm=[1, 0, 2]))
            node_in.append(port + ("t" if layout == 0 else ""))
    names = ["Y", "Y_h", "Y_c"][:outputs if op == "LSTM" else min(outputs, 2)]
    raw = [n + ("_raw" if layout == 0 else "") for n in names]
    nodes.append(helper.make_node(op, node_in, raw, hidden_size=h, direction=direction, layout=layout,
                                  **{**({"linear_before_reset": 1} if op == "GRU" else {}), **attrs}))
    if layout == 0:
        for n, r in zip(names, raw):
            nodes.append(helper.make_node("Transpose", [r], [n], perm=[2, 0, 1, 3] if n == "Y" else [1, 0, 2]))
    outs = [helper.make_tensor_value_info(n, dtype, ["N", seq, nd, h] if n == "Y" else ["N", nd, h]) for n in names]
    g = helper.make_graph(nodes, "rnn", inputs, outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def data(m, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    out = {}
    for i in m.graph.input:
        dims = [d.dim_value if d.dim_value else batch for d in i.type.tensor_type.shape.dim]
        out[i.name] = rng.standard_normal(dims)
    return out


CASES = [(op, d, layout, bias, initial) for op in ("LSTM", "GRU", "RNN") for d in ("forward", "reverse", "bidirectional")
         for layout in (0, 1) for bias, initial in ((True, False), (False, True))]


@pytest.mark.parametrize("op,direction,layout,bias,initial", CASES)
def test_import_matches_the_reference_evaluator(op, direction, layout, bias, initial):
    m = model(op, direction=direction, layout=layout, bias=bias, initial=initial)
    net = pg.import_onnx(m.SerializeToString())
    d = data(m)
    want = ReferenceEvaluator(m).run(None, d)
    got = net(d, WorkingPrecision="Real64")
    got = got if isinstance(got, dict) else {"Y": got}
    for name, w in zip([o.name for o in m.graph.output], want):
        np.testing.assert_allclose(got[name], w, rtol=1e-12, atol=1e-13, err_msg=f"{op} {direction} {name}")


def test_input_gradients_vs_central_differences_and_onnxruntime():
    m = model("LSTM", direction="bidirectional", initial=True)
    net = pg.import_onnx(m.SerializeToString())
    d = data(m, batch=2)
    out = net(d, WorkingPrecision="Real64")
    w = {k: np.random.default_rng(3).standard_normal(np.shape(v)) for k, v in out.items()}
    grads = net({**d, **{pg.NetPortGradient(k): v for k, v in w.items()}}, [pg.NetPortGradient(p) for p in d],
                WorkingPrecision="Real64")

    def f(dd):
        r = net(dd, WorkingPrecision="Real64")
        return sum(float((np.asarray(r[k]) * w[k]).sum()) for k in w)

    eps = 1e-6
    for p, v in d.items():
        for idx in [(0,) * v.ndim, tuple(s - 1 for s in v.shape)]:
            e = np.zeros_like(v)
            e[idx] = eps
            fd = (f({**d, p: v + e}) - f({**d, p: v - e})) / (2 * eps)
            assert abs(grads[pg.NetPortGradient(p)][idx] - fd) < 1e-7 * (1 + abs(fd)), (p, idx)
    ort = pytest.importorskip("onnxruntime")
    m32 = model("LSTM", direction="bidirectional", initial=True, dtype=TensorProto.FLOAT)
    d32 = {k: v.astype(np.float32) for k, v in d.items()}
    sess = ort.InferenceSession(m32.SerializeToString(), providers=["CPUExecutionProvider"])
    got = pg.import_onnx(m32.SerializeToString())(d32)
    for name, want in zip([o.name for o in m32.graph.output], sess.run(None, d32)):
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5)


def test_the_gate_arrays_are_named_and_differentiable():
    m = model("GRU", outputs=1)
    net = pg.import_onnx(m.SerializeToString())
    names = [a for a in net.arrays if "ResetGateStateWeights" in str(a)]
    assert len(names) == 1
    g = net(data(m), pg.NetPortGradient(names[0]))
    assert g.shape == (4, 4) and np.any(g != 0)


@pytest.mark.parametrize("op,attrs,match", [
    ("GRU", {"linear_before_reset": 0}, "linear_before_reset=0"),
    ("RNN", {"activations": ["Relu", "Tanh"]}, "activations"),
    ("LSTM", {"clip": 3.0}, "clip"),
    ("LSTM", {"input_forget": 1}, "input_forget"),
])
def test_refusals_are_clear(op, attrs, match):
    m = model(op, **attrs)
    with pytest.raises(ValueError, match=match):
        pg.import_onnx(m.SerializeToString())


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_a_gru_with_rbh_imports_with_state_biases(direction):
    m = model("GRU", direction=direction, rbh=True, initial=True)
    net = pg.import_onnx(m.SerializeToString())
    assert any("MemoryGateStateBiases" in str(a) for a in net.arrays)
    d = data(m)
    got = net(d, WorkingPrecision="Real64")
    for name, w in zip([o.name for o in m.graph.output], ReferenceEvaluator(m).run(None, d)):
        np.testing.assert_allclose(got[name], w, rtol=1e-12, atol=1e-13)
    plain = pg.import_onnx(model("GRU", direction=direction, initial=True).SerializeToString())
    assert not any("StateBiases" in str(a) for a in plain.arrays)  # Wolfram's GRU where Rbh is zero


def test_sequence_lens_is_refused():
    m = model("LSTM")
    m.graph.initializer.append(numpy_helper.from_array(np.full(3, 5, np.int32), "L"))
    m.graph.node[1].input[4] = "L"
    with pytest.raises(ValueError, match="sequence_lens"):
        pg.import_onnx(m.SerializeToString())


def test_a_zero_initial_state_made_from_the_batch_size_is_none():
    """PyTorch's TorchScript export of nn.LSTM makes h0 and c0 as ConstantOfShape((1, batch, h)) from
    Shape(x): zeros whose shape holds the batch size, taken as the layer's own zero initial state."""
    m = model("LSTM", layout=1, outputs=1)
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "zero"),
                          numpy_helper.from_array(np.array([1], np.int64), "one"),
                          numpy_helper.from_array(np.array([4], np.int64), "hidden")])
    shape_nodes = [helper.make_node("Shape", ["X"], ["xs"]), helper.make_node("Gather", ["xs", "zero"], ["n"], axis=0),
                   helper.make_node("Concat", ["n", "one", "hidden"], ["hs"], axis=0),
                   helper.make_node("ConstantOfShape", ["hs"], ["H0"],
                                    value=numpy_helper.from_array(np.zeros(1, np.float64)))]
    lstm = g.node[0]
    lstm.input[4:] = ["", "H0", "H0"]
    nodes = shape_nodes + [lstm]
    del g.node[:]
    g.node.extend(nodes)
    net = pg.import_onnx(m.SerializeToString())
    d = data(model("LSTM", layout=1, outputs=1))
    want = ReferenceEvaluator(m).run(None, d)[0]
    np.testing.assert_allclose(net(d, WorkingPrecision="Real64"), want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_pytorch_exports_import(kind):
    """A live TorchScript export of a bidirectional nn.LSTM / nn.GRU (its b_hn: state_biases) / nn.RNN with
    batch_first and a Linear on the last step (where PyTorch is installed)."""
    torch = pytest.importorskip("torch")
    import io
    import warnings

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.r = getattr(torch.nn, kind)(3, 5, batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(10, 2)

        def forward(self, x):
            return self.fc(self.r(x)[0][:, -1])

    torch.manual_seed(0)
    m = M().eval()
    x = torch.randn(4, 7, 3)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), f, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    net = pg.import_onnx(f.getvalue())
    np.testing.assert_allclose(net(x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    x.requires_grad_(True)
    m(x).sum().backward()
    np.testing.assert_allclose(net(x.detach().numpy(), pg.NetPortGradient("x")), x.grad.numpy(), rtol=1e-4, atol=1e-5)
