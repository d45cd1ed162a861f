"""ONNX Runtime (forward cases only): the same weights as an ONNX graph built with onnx.helper
(Gemm with transB=1 per layer, Tanh/Relu between), run by an InferenceSession on the CPU."""
import numpy as np

from ..spec import Impl, NotApplicable

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except Exception as e:  # noqa: BLE001
    ort = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    IMPORT_ERROR = None

KEY = "onnxruntime"
NAME = "ONNX Runtime"
_threads = 1


def version():
    if ort is None:
        return None
    return f"{ort.__version__} (onnx {onnx.__version__})"


def setup(threads: int) -> None:
    global _threads
    _threads = threads


def build_model(spec, weights):
    """The MLP as an ONNX ModelProto: input "X" (N, n_in) float32, output "Y" (N, n_out)."""
    op = {"Tanh": "Tanh", "Ramp": "Relu"}.get(spec.act)
    if op is None:
        raise NotApplicable(f"activation {spec.act}")
    nodes, inits = [], []
    h = "X"
    last = len(weights) - 1
    for i, (W, b) in enumerate(weights):
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        z = "Y" if i == last else f"z{i}"
        nodes.append(helper.make_node("Gemm", [h, f"W{i}", f"b{i}"], [z], transB=1))
        if i < last:
            nodes.append(helper.make_node(op, [z], [f"h{i}"]))
            h = f"h{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", spec.dims[0]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", spec.dims[-1]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime of the last few years
    onnx.checker.check_model(model)
    return model


def mlp(spec, weights, kind):
    if kind != "fwd":
        raise NotApplicable("forward cases only")
    sess = _session(build_model(spec, weights))
    run = sess.run
    if spec.batch is None:
        n_in = spec.dims[0]
        return Impl(lambda x: run(None, {"X": x.reshape(1, n_in)})[0][0])
    return Impl(lambda x: run(None, {"X": x})[0])


def _session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spinning after a run: its pool would compete with the next library timed in this process.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def build_cnn_model(spec, weights):
    """The CNN as an ONNX ModelProto: Conv (pads (k-1)/2) → Relu → MaxPool per stage, Flatten, Gemm
    (transB=1); input "X" (N, c, h, w), output "Y" (N, n_out)."""
    nodes, inits = [], []
    h = "X"
    pad, p = (spec.k - 1) // 2, spec.pool
    for i, (W, b) in enumerate(weights[:-1]):
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Conv", [h, f"W{i}", f"b{i}"], [f"c{i}"], kernel_shape=[spec.k, spec.k],
                                   pads=[pad] * 4, strides=[1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
                  helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[p, p], strides=[p, p])]
        h = f"p{i}"
    W, b = weights[-1]
    inits += [numpy_helper.from_array(W, "Wl"), numpy_helper.from_array(b, "bl")]
    nodes += [helper.make_node("Flatten", [h], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "Wl", "bl"], ["Y"], transB=1)]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", *spec.in_shape])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", spec.n_out])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cnn(spec, weights, kind):
    if kind != "fwd":
        raise NotApplicable("forward cases only")
    sess = _session(build_cnn_model(spec, weights))
    run = sess.run
    return Impl(lambda x: run(None, {"X": x})[0])
