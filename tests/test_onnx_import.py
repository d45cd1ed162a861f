"""pg.import_onnx on PyTorch's own exports (tests/data/onnx, made by tools/make_onnx_testdata.py with
both exporters at opsets 17, 18 and 20, static and dynamic batch): outputs, input gradients and the
gradient with respect to every initializer against PyTorch's (float64 and float32) and finite
differences; onnxruntime as an oracle where installed; errors for what cannot be imported, and
hostile files in a child process."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

import portgrad as pg
from child_env import child_env

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

S = pg.NetSharedArray
NPG = pg.NetPortGradient
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "onnx")
FILES = sorted(os.path.basename(f) for f in glob.glob(os.path.join(DATA, "*.onnx")))


def central_differences(f, a, h=1e-6):
    """d f(a).sum() / da by central differences, element by element (float64)."""
    fd = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        ap, am = a.copy(), a.copy()
        ap[i] += h
        am[i] -= h
        fd[i] = (f(ap).sum() - f(am).sum()) / (2 * h)
    return fd


def reference(file):
    return np.load(os.path.join(DATA, file.split("-")[0] + ".npz"))


def torch_parameters(net, ref):
    """The net's arrays that are PyTorch parameters as they are (not folded by the exporter)."""
    return [k for k in net.arrays if isinstance(k, S) and f"p/{k.name}" in ref
            and np.array_equal(pg.NetExtract(net, k), ref[f"p/{k.name}"])]


def test_the_exports_are_all_here():
    assert len(FILES) == 54
    assert {f.split("-")[1] for f in FILES} == {"ts", "dynamo"}


@pytest.mark.parametrize("file", FILES)
def test_outputs_and_gradients_match_pytorch(file):
    net = pg.import_onnx(os.path.join(DATA, file))
    ref = reference(file)
    assert list(net.input_ports) == ["input"] and list(net.output_ports) == ["output"]
    params = torch_parameters(net, ref)
    assert len(params) >= 4, "the weights of Gemm and Conv keep their PyTorch names and values"
    real = "dx64" in ref  # (token ids have no gradient)
    spec = ["output"] + [NPG("input")] * real + [NPG(p) for p in params]
    # Real64 runs the float32 file's values in float64, as the float64 copy of the PyTorch model;
    # only float32 constants of the file (GELU's 1/sqrt(2), a folded batch norm) differ from it.
    got = net(ref["x"], spec, WorkingPrecision="Real64")
    np.testing.assert_allclose(got["output"], ref["y64"], rtol=1e-6, atol=1e-7)
    if real:
        np.testing.assert_allclose(got[NPG("input")], ref["dx64"], rtol=1e-6, atol=1e-7)
    for p in params:
        np.testing.assert_allclose(got[NPG(p)], ref[f"d64/{p.name}"], rtol=1e-6, atol=1e-7, err_msg=p.name)
    got32 = net(ref["x"], spec)
    np.testing.assert_allclose(got32["output"], ref["y32"], rtol=1e-4, atol=1e-5)
    if real:
        np.testing.assert_allclose(got32[NPG("input")], ref["dx32"], rtol=1e-3, atol=1e-5)
    for p in params:
        np.testing.assert_allclose(got32[NPG(p)], ref[f"d32/{p.name}"], rtol=1e-3, atol=1e-4, err_msg=p.name)


@pytest.mark.parametrize("file", [f for f in FILES if f.startswith("mlp")])
def test_gradients_of_folded_and_constant_tensors_against_finite_differences(file):
    # Tensors PyTorch has no gradient for (a batch norm folded into fc1, GELU's constants): central
    # differences on the file's own values (steps of 2**-10, stored exactly enough in float32).
    net = pg.import_onnx(os.path.join(DATA, file))
    ref = reference(file)
    x = ref["x"]
    others = [k for k in net.arrays if isinstance(k, S) and k not in torch_parameters(net, ref)
              and pg.NetExtract(net, k).size and pg.NetExtract(net, k).dtype.kind == "f"]
    differentiable = {i["path"] for i in net._core_net().param_info if i["differentiable"]}
    others = [k for k in others if k.name in differentiable]  # (not a batch norm's running statistics)
    if not others:
        pytest.skip("every tensor of this export is a PyTorch parameter")
    got = net(x, [NPG(k) for k in others], WorkingPrecision="Real64")
    h = 2.0 ** -10
    for k in others:
        a = pg.NetExtract(net, k).astype(np.float64)
        for idx in list(np.ndindex(a.shape))[:8]:
            def f(step):
                b = a.copy()
                b[idx] += step
                return float(pg.NetReplacePart(net, {k: b})(x, WorkingPrecision="Real64").sum())
            fd = (f(h) - f(-h)) / (2 * h)
            assert abs(got[NPG(k)][idx] - fd) <= 2e-3 * max(1.0, abs(fd)), (k, idx, got[NPG(k)][idx], fd)


@pytest.mark.parametrize("file", [f for f in FILES if "ts-18" in f or "dynamo-18" in f])
def test_onnxruntime_agrees(file):
    ort = pytest.importorskip("onnxruntime")
    ref = reference(file)
    session = ort.InferenceSession(os.path.join(DATA, file), providers=["CPUExecutionProvider"])
    want = session.run(None, {"input": ref["x"]})[0]
    np.testing.assert_allclose(pg.import_onnx(os.path.join(DATA, file))(ref["x"]), want, rtol=1e-4, atol=1e-5)


def test_any_batch_size_and_one_example():
    net = pg.import_onnx(os.path.join(DATA, "lenet-ts-18.onnx"))  # exported with a batch of 3
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8))
    many = net(x, WorkingPrecision="Real64")
    assert many.shape == (5, 3)
    np.testing.assert_allclose(net(x[2], WorkingPrecision="Real64"), many[2], rtol=1e-12)


def test_sources_and_names():
    path = os.path.join(DATA, "resblock-ts-18.onnx")
    with open(path, "rb") as f:
        data = f.read()
    a, b, c = pg.import_onnx(path), pg.import_onnx(data), pg.import_onnx(onnx.load(path))
    x = reference("resblock").get("x")
    np.testing.assert_array_equal(a(x), b(x))
    np.testing.assert_array_equal(a(x), c(x))
    # Layers are named after the nodes ("/" becomes "."); arrays after the initializers.
    nodes = [n.name.replace("/", ".").strip(".") for n in onnx.load(path).graph.node]
    layer_paths = [p for p, *_ in a._core_net().nodes]
    assert all(any(p == n or p.startswith(n) for p in layer_paths) for n in nodes)
    assert S("conv1.weight") in a.arrays and a.arrays[S("conv1.weight")] == (3, 3, 3, 3)


def test_save_and_load_keep_the_names(tmp_path):
    net = pg.import_onnx(os.path.join(DATA, "conv1d-dynamo-18.onnx"))
    net.save(tmp_path / "conv1d.pgnet")
    back = pg.load(tmp_path / "conv1d.pgnet")
    x = reference("conv1d")["x"]
    assert back.arrays == net.arrays
    np.testing.assert_array_equal(back(x, NPG(S("conv1.weight"))), net(x, NPG(S("conv1.weight"))))


# ------------------------------------------------------------------ what cannot be imported
def model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vinfo(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_every_unsupported_node_is_listed_at_once():
    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    m = model([helper.make_node("Hardmax", ["x"], ["a"], name="hard"),
               helper.make_node("Gemm", ["a", "w"], ["b"], name="fc", transB=1),
               helper.make_node("Round", ["b"], ["c"], name="round"),
               helper.make_node("Relu", ["c"], ["y"], name="relu")],
              [vinfo("x", ["N", 3])], [vinfo("y", ["N", 4])], [w])
    with pytest.raises(ValueError) as e:
        pg.import_onnx(m)
    msg = str(e.value)
    assert "2 nodes of this model (opset 18) cannot be imported" in msg
    assert "hard (Hardmax)" in msg and "round (Round)" in msg
    assert "fc (Gemm)" not in msg and "relu" not in msg  # fed by an unsupported node: not listed


def test_recurrent_nodes_import_and_their_limits_are_named():
    """(tests/test_onnx_recurrent.py tests LSTM/GRU/RNN import in full.)"""
    w = onnx.numpy_helper.from_array(np.ones((1, 12, 2), np.float32), "W")
    r = onnx.numpy_helper.from_array(np.ones((1, 12, 3), np.float32), "R")
    m = model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=3, layout=1)],
              [vinfo("x", ["N", 4, 2])], [vinfo("y", ["N", 4, 1, 3])], [w, r])
    assert pg.import_onnx(m)(np.zeros((2, 4, 2))).shape == (2, 4, 1, 3)
    m = model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=3, layout=1, clip=2.0)],
              [vinfo("x", ["N", 4, 2])], [vinfo("y", ["N", 4, 1, 3])], [w, r])
    with pytest.raises(ValueError, match=r"lstm \(LSTM\): attribute 'clip' is not supported"):
        pg.import_onnx(m)


def test_unsupported_attributes_say_which():
    w = onnx.numpy_helper.from_array(np.ones((3, 2, 1), np.float32), "w")
    m = model([helper.make_node("Conv", ["x", "w"], ["h"], name="conv"),
               helper.make_node("AveragePool", ["h"], ["y"], name="pool", kernel_shape=[2], ceil_mode=1,
                                count_include_pad=1)],
              [vinfo("x", ["N", 2, 6])], [vinfo("y", ["N", 3, 3])], [w])
    with pytest.raises(ValueError, match=r"pool \(AveragePool\): ceil_mode=1 \(for MaxPool, and AveragePool "
                                         r"with count_include_pad=0\)"):
        pg.import_onnx(m)
    m = model([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2], dilations=[2])],
              [vinfo("x", ["N", 2, 6])], [vinfo("y", ["N", 2, 4])])
    with pytest.raises(ValueError, match=r"mp \(MaxPool\): .*dilations=\[2\]"):
        pg.import_onnx(m)
    m = model([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1)], [vinfo("x", ["N", 3, 4])],
              [vinfo("y", ["N", 3, 4])])
    with pytest.raises(ValueError, match=r"sm \(Softmax\): axis=1 on a rank-3 input"):
        pg.import_onnx(m)
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vinfo("x", ["N", "T"])], [vinfo("y", ["N", "T"])])
    with pytest.raises(ValueError, match=r"input 'x' has shape \(\?, \?\); only its first \(batch\) axis may be dynamic"):
        pg.import_onnx(m)
    with pytest.raises(ValueError, match="opset 9"):
        pg.import_onnx(model([helper.make_node("Relu", ["x"], ["y"])], [vinfo("x", ["N", 2])], [vinfo("y", ["N", 2])],
                             opset=9))


def test_a_small_model_made_by_hand():
    # Constant operands broadcast over the batch (a (1, 4) row, a scalar), reductions, a transpose.
    c = onnx.numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4) / 4, "c")
    s = onnx.numpy_helper.from_array(np.array(2.0, np.float32), "s")
    axes = onnx.numpy_helper.from_array(np.array([2], np.int64), "axes")
    m = model([helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Mul", ["s", "a"], ["b"]),
               helper.make_node("Transpose", ["b"], ["t"], perm=[0, 2, 1]),
               helper.make_node("ReduceMean", ["t", "axes"], ["y"], keepdims=0)],
              [vinfo("x", ["N", 3, 4])], [vinfo("y", ["N", 4])], [c, s, axes])
    net = pg.import_onnx(m)
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    want = (2 * (x + np.arange(4) / 4)).transpose(0, 2, 1).mean(axis=2)
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), want, rtol=1e-12)
    g = net(x, NPG(S("c")), WorkingPrecision="Real64")  # d sum(y) / dc: 2 * 3 rows / 3 per column, per example
    np.testing.assert_allclose(g, np.full((1, 4), 2.0 * 2), rtol=1e-12)


def test_bad_sources(tmp_path):
    with pytest.raises(TypeError, match="takes a path, bytes or an onnx.ModelProto"):
        pg.import_onnx(3)
    with pytest.raises(ValueError, match="is not an ONNX model"):
        pg.import_onnx(b"\xff\xfe not protobuf \x00\x01")
    with pytest.raises(ValueError, match="holds no ONNX graph"):
        pg.import_onnx(b"")
    with pytest.raises(FileNotFoundError, match="import_onnx: cannot read"):
        pg.import_onnx(tmp_path / "missing.onnx")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        pg.import_onnx(fifo)
    bad = model([helper.make_node("Relu", ["x"], ["y"])], [vinfo("x", ["N", 2])], [vinfo("nowhere", ["N", 2])])
    with pytest.raises(ValueError, match="not valid ONNX"):
        pg.import_onnx(bad)


_MUTATE = r"""
import random, sys
import numpy as np
import portgrad as pg
data = open(sys.argv[1], "rb").read()
rng = random.Random(int(sys.argv[2]))
for trial in range(int(sys.argv[3])):
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        k = rng.randrange(len(b))
        b[k] = rng.randrange(256)
    if rng.random() < 0.3:
        b = b[:rng.randrange(len(b))]
    try:
        net = pg.import_onnx(bytes(b))
        net(np.ones((1,) + next(iter(net.input_ports.values()))), pg.NetPortGradient(pg.All))
    except (ValueError, TypeError):  # the clear errors; any other exception type fails the test
        pass
print("survived")
"""


@pytest.mark.parametrize("file", ["lenet-ts-18.onnx", "mlp-dynamo-18.onnx", "causal-ts-18-dynamic.onnx"])
def test_mutated_files_raise_clear_errors_in_a_child_process(file):
    # A crash, a hang or an unexpected exception type fails this test rather than the run.
    r = subprocess.run([sys.executable, "-c", _MUTATE, os.path.join(DATA, file), "7", "150"], capture_output=True,
                       text=True, timeout=300, env=child_env())
    assert r.returncode == 0 and "survived" in r.stdout, r.stderr[-2000:]


def test_matmul_and_gemm_with_b_stored_k_by_n():
    # Keras/TF exports and Gemm's default: B of shape (K, N), imported as a LinearLayer with
    # transposed weights (the file's tensor, as stored), forward and backward on packed and unpacked paths.
    rng = np.random.default_rng(3)
    b1 = onnx.numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "b1")
    c1 = onnx.numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "c1")
    b2 = onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "b2")
    m = model([helper.make_node("Gemm", ["x", "b1", "c1"], ["h"], name="fc1"), helper.make_node("Tanh", ["h"], ["t"]),
               helper.make_node("MatMul", ["t", "b2"], ["y"], name="fc2")],
              [vinfo("x", ["N", 5])], [vinfo("y", ["N", 3])], [b1, c1, b2])
    net = pg.import_onnx(m)
    B1, C1, B2 = (onnx.numpy_helper.to_array(t).astype(np.float64) for t in (b1, c1, b2))
    for batch in (3, 20):  # 20: the weights are packed for the GEMM
        x = rng.standard_normal((batch, 5))
        t = np.tanh(x @ B1 + C1)
        np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), t @ B2, rtol=1e-12)
        g = net(x, [NPG("x"), NPG(S("b1")), NPG(S("b2")), NPG(S("c1"))], WorkingPrecision="Real64")
        dt = np.ones((batch, 3)) @ B2.T * (1 - t ** 2)
        np.testing.assert_allclose(g[NPG(S("b2"))], t.T @ np.ones((batch, 3)), rtol=1e-12)
        np.testing.assert_allclose(g[NPG(S("b1"))], x.T @ dt, rtol=1e-12)
        np.testing.assert_allclose(g[NPG(S("c1"))], dt.sum(0), rtol=1e-12)
        np.testing.assert_allclose(g[NPG("x")], dt @ B1.T, rtol=1e-12)
    again = pg.import_onnx(pg.export_onnx(net))  # exported as Gemm with transB=0: the same arrays
    assert again.arrays == net.arrays


def test_the_onnx_saliency_example_runs_and_agrees_with_pytorch(tmp_path):
    # examples/onnx_saliency.py: a PyTorch CNN trained, exported, imported; its saliency maps match
    # PyTorch's autograd (the example prints the difference; it must be at rounding level).
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "s.png"
    r = subprocess.run([sys.executable, os.path.join(root, "examples", "onnx_saliency.py"), str(out)],
                       capture_output=True, text=True, timeout=600, env=child_env())
    assert r.returncode == 0, r.stderr[-2000:]
    diff = float(r.stdout.split("relative: ")[1].split()[0])
    assert diff < 1e-5 and out.stat().st_size > 1000, r.stdout


@pytest.mark.parametrize("file", ["transformer-ts-18.onnx", "mlp-ts-18.onnx"])
def test_scalars_are_constants_and_tensors_in_parameter_slots_are_learned(file):
    # NetPortGradient(All) (and training) see the learned tensors; an attention scale or GELU's
    # constants are constant arrays, still differentiable by name.
    net = pg.import_onnx(os.path.join(DATA, file))
    info = {i["path"]: i for i in net._core_net().param_info}
    ref = reference(file)
    for k in torch_parameters(net, ref):
        assert info[k.name]["learnable"], k.name
    constants = [p for p, i in info.items() if not i["learnable"] and i["differentiable"]]
    assert constants and all(net.arrays[S(p)] in ((), (1,)) for p in constants)
    every = net(ref["x"], NPG(pg.All))
    assert not any(isinstance(k.target, S) and k.target.name in constants for k in every)
    g = net(ref["x"], NPG(S(constants[0])), WorkingPrecision="Real64")
    assert np.all(np.isfinite(g)) and g.shape == net.arrays[S(constants[0])]


def test_parametric_activations_composed_of_layers_match_numpy_and_finite_differences():
    # LeakyRelu, PRelu (a learned slope per channel), Elu and Selu with their own alpha/gamma, Clip
    # (ReLU6), HardSigmoid with ONNX's default alpha 0.2, Neg and Reciprocal.
    slope = onnx.numpy_helper.from_array(np.array([[0.25], [-0.5], [2.0]], np.float32), "slope")
    lo, hi = (onnx.numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 0.75)))
    nodes = [helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.1),
             helper.make_node("PRelu", ["a", "slope"], ["b"]),
             helper.make_node("Elu", ["b"], ["c"], alpha=0.5),
             helper.make_node("Selu", ["c"], ["d"], alpha=1.5, gamma=1.25),
             helper.make_node("HardSigmoid", ["d"], ["e"]),
             helper.make_node("Neg", ["d"], ["f"]),
             helper.make_node("Clip", ["f", "lo", "hi"], ["g"]),
             helper.make_node("Sigmoid", ["d"], ["s"]),
             helper.make_node("Reciprocal", ["s"], ["r"]),
             helper.make_node("Sum", ["e", "g", "r"], ["y"])]
    net = pg.import_onnx(model(nodes, [vinfo("x", ["N", 3, 4])], [vinfo("y", ["N", 3, 4])], [slope, lo, hi]))

    def ref(x):
        a = np.where(x > 0, x, 0.1 * x)
        b = np.where(a > 0, a, np.array([[0.25], [-0.5], [2.0]]) * a)
        c = np.where(b > 0, b, 0.5 * np.expm1(b))
        d = 1.25 * np.where(c > 0, c, 1.5 * np.expm1(c))
        return np.clip(0.2 * d + 0.5, 0, 1) + np.clip(-d, 0.0, 0.75) + 1 + np.exp(-d)

    rng = np.random.default_rng(5)
    x = rng.uniform(-3, 3, (4, 3, 4))
    x[np.abs(x) < 0.05] = 0.3  # away from the kinks, where finite differences straddle them
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), ref(x), rtol=1e-7, atol=1e-7)
    g = net(x, NPG("x"), WorkingPrecision="Real64")
    np.testing.assert_allclose(g, central_differences(ref, x), rtol=1e-5, atol=1e-6)
    info = {i["path"]: i["learnable"] for i in net._core_net().param_info}
    assert info["slope"] and not info["lo"] and not info["hi"]


def test_einsum_contractions_of_attention_match_numpy_and_finite_differences():
    rng = np.random.default_rng(6)
    W = rng.standard_normal((5, 4)).astype(np.float32)
    nodes = [helper.make_node("Einsum", ["x", "W"], ["y"], equation="bqd,ed->bqe"),
             helper.make_node("Einsum", ["y", "y"], ["s"], equation="bqe,bke->bqk"),
             helper.make_node("Einsum", ["s", "x"], ["t"], equation="bqk,bkd->bdq"),
             helper.make_node("Einsum", ["t"], ["u"], equation="bdq->bq")]
    net = pg.import_onnx(model(nodes, [vinfo("x", ["N", 3, 4])], [vinfo("u", ["N", 3])],
                               [onnx.numpy_helper.from_array(W, "W")]))

    def ref(x, w=W.astype(np.float64)):
        y = np.einsum("bqd,ed->bqe", x, w)
        return np.einsum("bdq->bq", np.einsum("bqk,bkd->bdq", np.einsum("bqe,bke->bqk", y, y), x))

    x = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), ref(x), rtol=1e-10)
    g = net(x, [NPG("x"), NPG(S("W"))], WorkingPrecision="Real64")
    for key, a, f in ((NPG("x"), x, lambda a: ref(a)), (NPG(S("W")), W.astype(np.float64), lambda a: ref(x, a))):
        np.testing.assert_allclose(g[key], central_differences(f, a), rtol=1e-6, atol=1e-6)


def test_a_causal_mask_computed_at_import_is_a_constant():
    net = pg.import_onnx(os.path.join(DATA, "causal-ts-18.onnx"))
    info = net._core_net().param_info
    masks = [i for i in info if i["shape"] == (5, 5)]
    assert masks and not any(i["learnable"] for i in masks)
    m = pg.NetExtract(net, S(masks[0]["path"]))
    assert m.min() == -1e30 and m.max() == 0  # -inf stored as -1e30


_HOSTILE_FOLDS = r"""
import numpy as np, onnx, portgrad as pg
from onnx import TensorProto, helper
def model(nodes, inits):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
i64 = lambda n, v: onnx.numpy_helper.from_array(np.array(v, np.int64), n)
f32 = lambda n, v: onnx.numpy_helper.from_array(np.array(v, np.float32), n)
cases = {
    # tensors that grow without bound from a few constants: never materialised at import
    "ConstantOfShape": [helper.make_node("ConstantOfShape", ["s"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
    "Range": [helper.make_node("Range", ["a", "b", "d"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
    "Expand": [helper.make_node("Expand", ["one", "s"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
    "Tile": [helper.make_node("Tile", ["one", "r"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
}
inits = [i64("s", [1 << 30, 1 << 30]), f32("a", 0.0), f32("b", 1e12), f32("d", 1.0), f32("one", [1.0]),
         i64("r", [1 << 40])]
for name, nodes in cases.items():
    try:
        pg.import_onnx(model(nodes, inits))
        raise SystemExit(f"{name}: imported")
    except ValueError as e:
        assert "cannot be imported" in str(e), str(e)
# A Loop with a huge trip count on constants: not evaluated at import (control flow is never folded).
body = helper.make_graph([helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Add", ["v", "v"], ["v_out"])],
                         "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                  helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                  helper.make_tensor_value_info("v", TensorProto.FLOAT, [1])],
                         [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                          helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])])
loop = [helper.make_node("Loop", ["n", "t", "one"], ["c"], body=body), helper.make_node("Add", ["x", "c"], ["y"])]
try:
    pg.import_onnx(model(loop, inits + [i64("n", 1 << 62), onnx.numpy_helper.from_array(np.array(True), "t")]))
    raise SystemExit("Loop: imported")
except ValueError as e:
    assert "Loop" in str(e), str(e)
print("refused")
"""


def test_hostile_constant_computations_are_refused_without_hanging_or_allocating():
    r = subprocess.run([sys.executable, "-c", _HOSTILE_FOLDS], capture_output=True, text=True, timeout=120,
                       env=child_env())
    assert r.returncode == 0 and "refused" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_where_with_a_constant_mask_and_expand_of_data():
    # A masked fill (as attention masks are applied) and an Expand of computed data: NumPy's values,
    # and the gradient of x is the mask (summed over the expanded axis).
    mask = np.tril(np.ones((3, 3), bool))
    nodes = [helper.make_node("Where", ["m", "x", "fill"], ["a"]),
             helper.make_node("Softmax", ["a"], ["b"], axis=-1),
             helper.make_node("Unsqueeze", ["b", "ax"], ["c"]),
             helper.make_node("Expand", ["c", "shape"], ["d"]),
             helper.make_node("Where", ["m2", "d", "d"], ["y"])]
    inits = [onnx.numpy_helper.from_array(mask, "m"), onnx.numpy_helper.from_array(np.array(-np.inf, np.float32), "fill"),
             onnx.numpy_helper.from_array(np.array([1], np.int64), "ax"),
             onnx.numpy_helper.from_array(np.array([1, 2, 3, 3], np.int64), "shape"),
             onnx.numpy_helper.from_array(np.array([True, False, True]), "m2")]
    net = pg.import_onnx(model(nodes, [vinfo("x", ["N", 3, 3])], [vinfo("y", ["N", 2, 3, 3])], inits))
    x = np.random.default_rng(7).standard_normal((2, 3, 3))

    def ref(x):
        a = np.where(mask, x, -np.inf)
        b = np.exp(a - a.max(-1, keepdims=True))
        b /= b.sum(-1, keepdims=True)
        return np.broadcast_to(b[:, None], (len(x), 2, 3, 3))

    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), ref(x), rtol=1e-12, atol=1e-300)
    w = np.arange(1, 19, dtype=np.float64).reshape(2, 3, 3)
    fd = central_differences(lambda x: ref(x) * w, x)
    g = net({"x": x, NPG("y"): np.broadcast_to(w, (2, 2, 3, 3))}, NPG("x"), WorkingPrecision="Real64")
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    assert np.all(g[:, ~mask] == 0)
    # The fill keeps its name (a constant array: its gradient, by name, is 0 where softmax underflows)
    assert net(x, NPG(S("fill")), WorkingPrecision="Real64").shape == ()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("target", ["all", "minus_one", "split"])
def test_fixed_batch_exports_with_the_batch_in_their_reshapes(batch, target):
    # torch's x.view(x.size(0), -1) and friends in a static export: the batch size is written into the
    # shapes; the model is read with its own batch size, and then takes any (batch 1: exactly).
    shape = {"all": [batch, 40], "minus_one": [batch, -1], "split": [batch, 5, 2, 4]}[target]
    out = [batch, 40] if target != "split" else [batch, 5, 2, 4]
    t = onnx.numpy_helper.from_array(np.array(shape, np.int64), "t")
    m = model([helper.make_node("Reshape", ["x", "t"], ["r"]), helper.make_node("Tanh", ["r"], ["y"])],
              [vinfo("x", [batch, 5, 8])], [vinfo("y", out)], [t])
    net = pg.import_onnx(m)
    x = np.random.default_rng(8).standard_normal((batch, 5, 8))
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), np.tanh(x.reshape(out)), rtol=1e-12)
    one = net(x[0], WorkingPrecision="Real64")  # one example alone
    np.testing.assert_allclose(one, np.tanh(x[0]).reshape(out[1:]), rtol=1e-12)


def test_a_value_computed_from_the_batch_size_is_refused():
    # y = x / (batch size): every example would depend on how many there are.
    i0 = onnx.numpy_helper.from_array(np.array(0, np.int64), "i0")
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["n"]),
             helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT), helper.make_node("Div", ["x", "nf"], ["y"])]
    for batch in ("N", 3):
        with pytest.raises(ValueError, match="computed from the batch size"):
            pg.import_onnx(model(nodes, [vinfo("x", [batch, 4])], [vinfo("y", [batch, 4])], [i0]))


def test_max_and_min_of_one_input_are_the_identity():
    for op in ("Max", "Min", "Sum"):
        net = pg.import_onnx(model([helper.make_node(op, ["x"], ["y"])], [vinfo("x", ["N", 3])], [vinfo("y", ["N", 3])]))
        x = np.arange(6.0).reshape(2, 3)
        np.testing.assert_array_equal(net(x, WorkingPrecision="Real64"), x)


def test_matmul_with_a_constant_vector_and_a_constant_that_broadcasts_the_data():
    rng = np.random.default_rng(9)
    v, W = rng.standard_normal(4).astype(np.float32), rng.standard_normal((2, 5, 3)).astype(np.float32)
    m = model([helper.make_node("MatMul", ["x", "v"], ["y"])], [vinfo("x", ["N", 4])], [vinfo("y", ["N"])],
              [onnx.numpy_helper.from_array(v, "v")])
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(pg.import_onnx(m)(x, WorkingPrecision="Real64"), x @ v.astype(np.float64), rtol=1e-12)
    m = model([helper.make_node("MatMul", ["W", "x"], ["y"])], [vinfo("x", ["N", 1, 3, 4])],
              [vinfo("y", ["N", 2, 5, 4])], [onnx.numpy_helper.from_array(W, "W")])
    net = pg.import_onnx(m)
    x = rng.standard_normal((3, 1, 3, 4))
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), W.astype(np.float64) @ x, rtol=1e-12)
    g = net(x, NPG(S("W")), WorkingPrecision="Real64")  # d sum / dW[b, i, k] = sum over examples and j of x[., 0, k, j]
    np.testing.assert_allclose(g, np.broadcast_to(x.sum((0, 1, 3)), (2, 5, 3)), rtol=1e-12)


def test_layer_normalization_mean_and_inverse_standard_deviation_outputs():
    rng = np.random.default_rng(10)
    scale = rng.uniform(0.5, 1.5, (3, 4)).astype(np.float32)
    m = model([helper.make_node("LayerNormalization", ["x", "g"], ["y", "mu", "r"], axis=-2, epsilon=0.01)],
              [vinfo("x", ["N", 2, 3, 4])], [vinfo("y", ["N", 2, 3, 4]), vinfo("mu", ["N", 2, 1, 1]),
                                             vinfo("r", ["N", 2, 1, 1])], [onnx.numpy_helper.from_array(scale, "g")])
    net = pg.import_onnx(m)
    x = rng.standard_normal((3, 2, 3, 4))

    def ref(x):
        mu = x.mean((2, 3), keepdims=True)
        r = 1 / np.sqrt(((x - mu) ** 2).mean((2, 3), keepdims=True) + float(np.float32(0.01)))  # (as stored)
        return (x - mu) * r * scale, mu, r

    got = net(x, ["y", "mu", "r"], WorkingPrecision="Real64")
    for name, want in zip(("y", "mu", "r"), ref(x)):
        np.testing.assert_allclose(got[name], want, rtol=1e-10, err_msg=name)
    g = net(x, NPG("x"), WorkingPrecision="Real64")  # the gradient of the sum of every output
    fd = central_differences(lambda a: sum(o.sum() for o in ref(a)) * np.ones(1), x)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_tanh_gelu_and_an_integer_exponent():
    e = onnx.numpy_helper.from_array(np.array([2, 3, 1], np.int64), "e")
    m = model([helper.make_node("Gelu", ["x"], ["g"], approximate="tanh"), helper.make_node("Pow", ["g", "e"], ["y"])],
              [vinfo("x", ["N", 3])], [vinfo("y", ["N", 3])], [e], opset=20)
    net = pg.import_onnx(m)

    def ref(x):
        g = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
        return g ** np.array([2.0, 3.0, 1.0])

    x = np.random.default_rng(11).standard_normal((4, 3))
    # (rtol 1e-6: the composition's constants, sqrt(2/pi) and 0.044715, are arrays, stored in float32)
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), ref(x), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(net(x, NPG("x"), WorkingPrecision="Real64"), central_differences(ref, x),
                               rtol=1e-6, atol=1e-8)


def test_gather_with_index_arrays_on_data_and_maxpool_ceil_mode():
    idx = onnx.numpy_helper.from_array(np.array([[2, 0], [2, -1]], np.int64), "idx")  # repeated: gradients add
    m = model([helper.make_node("Gather", ["x", "idx"], ["g"], axis=2),
               helper.make_node("Reshape", ["g", "s"], ["h"]),
               helper.make_node("MaxPool", ["h"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
              [vinfo("x", ["N", 2, 4, 3])], [vinfo("y", ["N", 2, 2, 2])],
              [idx, onnx.numpy_helper.from_array(np.array([0, 2, 4, 3], np.int64), "s")])
    net = pg.import_onnx(m)

    def ref(x):
        h = x[:, :, [2, 0, 2, 3], :]  # (N, 2, 4, 3): the gathered rows, (2, 2) flattened
        out = np.zeros((len(x), 2, 2, 2))
        for i in range(2):
            for j in range(2):  # ceil mode: the last window in each direction is cut by the edge
                out[:, :, i, j] = h[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max((2, 3))
        return out

    x = np.random.default_rng(12).permutation(5 * 24).reshape(5, 2, 4, 3) / 7.0  # distinct: no ties
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), ref(x), rtol=1e-12)
    np.testing.assert_allclose(net(x, NPG("x"), WorkingPrecision="Real64"), central_differences(ref, x, 1e-7),
                               rtol=1e-6, atol=1e-6)


def test_comparisons_logic_and_where_on_computed_masks():
    c = onnx.numpy_helper.from_array(np.array([0.5, -0.5, 0.0, 1.0], np.float32), "c")
    nodes = [helper.make_node("Greater", ["x", "c"], ["gt"]), helper.make_node("LessOrEqual", ["x", "c"], ["le"]),
             helper.make_node("Not", ["le"], ["nle"]), helper.make_node("Equal", ["gt", "nle"], ["same"]),
             helper.make_node("Less", ["x", "c"], ["lt"]), helper.make_node("And", ["same", "gt"], ["a1"]),
             helper.make_node("And", ["lt", "gt"], ["a2"]), helper.make_node("Or", ["a1", "a2"], ["mask"]),  # = gt
             helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Where", ["mask", "sq", "x"], ["y"])]
    net = pg.import_onnx(model(nodes, [vinfo("x", ["N", 4])], [vinfo("y", ["N", 4])], [c]))

    def ref(x):
        return np.where(x > np.array([0.5, -0.5, 0.0, 1.0]), x * x, x)

    x = np.random.default_rng(13).uniform(-2, 2, (6, 4))
    x[np.abs(x - [0.5, -0.5, 0.0, 1.0]) < 0.01] += 0.1  # away from the step
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), ref(x), rtol=1e-12)
    np.testing.assert_allclose(net(x, NPG("x"), WorkingPrecision="Real64"), central_differences(ref, x),
                               rtol=1e-6, atol=1e-8)


def test_pooling_that_excludes_padding_same_lower_and_trilu_agree_with_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    w = onnx.numpy_helper.from_array(np.random.default_rng(14).standard_normal((2, 2, 3, 2)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_LOWER", strides=[2, 1]),
             helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                              count_include_pad=0, ceil_mode=1),
             helper.make_node("Trilu", ["a"], ["y"], upper=0)]
    m = model(nodes, [vinfo("x", ["N", 2, 7, 6])], [vinfo("y", ["N", 2, 3, 4])], [w])
    net = pg.import_onnx(m)
    x = np.random.default_rng(15).standard_normal((3, 2, 7, 6)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(net(x), want, rtol=1e-5, atol=1e-6)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x64 = x.astype(np.float64)
    fd = central_differences(lambda a: session.run(None, {"x": a.astype(np.float32)})[0].astype(np.float64), x64, 1e-2)
    np.testing.assert_allclose(net(x64, NPG("x"), WorkingPrecision="Real64"), fd, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("attrs", [dict(strides=[2, 2], pads=[1, 0, 1, 0], output_padding=[1, 1]),
                                   dict(strides=[2, 3], output_shape=[10, 13]),
                                   dict(strides=[2, 2], output_shape=[8, 7], output_padding=[1, 0]),
                                   dict(strides=[2, 2], auto_pad="SAME_UPPER"),
                                   dict(strides=[3, 2], auto_pad="SAME_LOWER", dilations=[1, 2])],
                         ids=["output_padding", "output_shape-grows", "output_shape-crops", "same_upper", "same_lower"])
def test_conv_transpose_output_sizes_agree_with_onnxruntime(attrs):
    # A decoder's transposed convolutions: the output size set by output_padding, output_shape or auto_pad.
    ort = pytest.importorskip("onnxruntime")
    w = onnx.numpy_helper.from_array(np.random.default_rng(16).standard_normal((2, 3, 3, 2)).astype(np.float32), "w")
    b = onnx.numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "b")
    m = model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], [vinfo("x", ["N", 2, 4, 5])],
              [vinfo("y", ["N", "c", "h", "w"])], [w, b])
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(17).standard_normal((2, 2, 4, 5)).astype(np.float32)
    want = session.run(None, {"x": x})[0]
    net = pg.import_onnx(m)
    got = net(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    x64 = x.astype(np.float64)[:1]
    fd = central_differences(lambda a: session.run(None, {"x": a.astype(np.float32)})[0].astype(np.float64), x64, 1e-2)
    np.testing.assert_allclose(net(x64, NPG("x"), WorkingPrecision="Real64"), fd, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_of_computed_data(fmod):
    # fmod=1: C's fmod (the sign of x); fmod=0: floored, numpy's mod (the sign of the divisor)
    c = onnx.numpy_helper.from_array(np.array([1.5, -1.5, 0.75, -2.0], np.float32), "c")
    m = model([helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Sub", ["sq", "x"], ["p"]),
               helper.make_node("Mod", ["p", "c"], ["y"], fmod=fmod)], [vinfo("x", ["N", 4])], [vinfo("y", ["N", 4])],
              [c])
    net = pg.import_onnx(m)
    cv = np.array([1.5, -1.5, 0.75, -2.0])
    ref = lambda x: (np.fmod if fmod else np.mod)(x * x - x, cv)
    x = np.random.default_rng(18).uniform(-3, 3, (5, 4))
    q = (x * x - x) / cv
    x[np.abs(q - np.round(q)) < 1e-3] += 0.01  # away from the jumps
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"), ref(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(net(x, NPG("x"), WorkingPrecision="Real64"), central_differences(ref, x),
                               rtol=1e-6, atol=1e-6)
    if fmod:  # onnxruntime takes float Mod only with fmod=1
        ort = pytest.importorskip("onnxruntime")
        x32 = x.astype(np.float32)
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x32})[0]
        np.testing.assert_allclose(net(x32), want, rtol=1e-5, atol=1e-5)


def test_a_constant_with_the_exported_batch_size_names_the_cause():
    # What PyTorch's dynamo exporter writes for cls.expand(3, -1, -1) with a static batch of 3
    cls = onnx.numpy_helper.from_array(np.ones((3, 1, 4), np.float32), "expand")
    m = model([helper.make_node("Concat", ["expand", "x"], ["y"], axis=1)], [vinfo("x", [3, 2, 4])],
              [vinfo("y", [3, 3, 4])], [cls])
    with pytest.raises(ValueError, match=r"'expand'\) is a constant here.*starts with the batch size: if an exporter "
                                         r"folded .* export with a dynamic batch axis"):
        pg.import_onnx(m)
