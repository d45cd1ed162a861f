"""ONNX's own node tests (onnx.backend.test, built in memory) for the ops PyTorch's exporters write,
run through portgrad (portgrad.onnx_backend) and onnxruntime side by side: a table of passes per op.

    python tools/onnx_node_suite.py [--markdown out.md]

A test passes when every output agrees within the test's own rtol/atol. portgrad's outcome is
"pass", "unsupported" (import_onnx refused the model, saying why) or "wrong" (a result that
disagrees, or an error other than a refusal); tests/test_onnx_node_suite.py requires no "wrong".
"""
from __future__ import annotations

import argparse
import collections
import sys
import warnings

import numpy as np

# The ops of MLP, CNN, ResNet, 1-D audio and transformer-encoder exports (issue 12), and recurrent nets' (issue 15).
OPS = ["Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu",
       "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Mish", "PRelu", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg",
       "Sqrt", "Reciprocal", "Sin", "Cos", "Clip", "Max", "Min", "Softmax", "LogSoftmax", "Conv", "ConvTranspose",
       "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "InstanceNormalization",
       "LayerNormalization", "Dropout", "Flatten", "Reshape", "Transpose", "Concat", "Split", "Slice", "Squeeze",
       "Unsqueeze", "Identity", "Constant", "ConstantOfShape", "Expand", "Gather", "Where", "Equal", "Less", "Not",
       "Trilu", "Range", "Mod", "Pad", "Cast", "Shape", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Einsum",
       "Sum", "LSTM", "GRU", "RNN"]


def cases():
    """The single-node tests of the ops above: [(op, case)]."""
    from onnx.backend.test.loader import load_node_model_tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        all_cases = load_node_model_tests()
    out = []
    for case in all_cases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in OPS and case.data_sets:
            case.data_sets[:] = [(_arrays(i), _arrays(o)) for i, o in case.data_sets]
            out.append((nodes[0].op_type, case))
    return out


def _arrays(values):
    """The loader gives some tests' data as TensorProtos: numpy arrays for every backend."""
    import onnx
    import onnx.numpy_helper
    return [onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


def is_float(case):
    """A test of float32/float64 results (its other inputs may be int64 axes or shapes)."""
    _, outputs = case.data_sets[0]
    return all(np.asarray(a).dtype in (np.float32, np.float64) for a in outputs)


def agrees(got, want, case):
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape or not np.allclose(g.astype(np.float64), w.astype(np.float64), rtol=case.rtol,
                                                  atol=case.atol, equal_nan=True):
            return False
    return True


def run_portgrad(case):
    """("pass" | "unsupported" | "wrong", detail)."""
    import portgrad.onnx_backend as backend
    try:
        rep = backend.prepare(case.model)
    except ValueError as e:
        return "unsupported", " ".join(str(e).split())
    for inputs, outputs in case.data_sets:
        try:
            got = rep.run(list(inputs))
        except ValueError as e:  # data the net refuses clearly (a shape it cannot take)
            return "unsupported", " ".join(str(e).split())
        except Exception as e:  # noqa: BLE001 - anything else is a failure of portgrad
            return "wrong", f"{type(e).__name__}: {e}"
        if not agrees(got, outputs, case):
            return "wrong", "the outputs disagree"
    return "pass", ""


def run_onnxruntime(case):
    try:
        import onnxruntime as ort
        session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        for inputs, outputs in case.data_sets:
            got = session.run(None, dict(zip(names, inputs)))
            if not agrees(got, outputs, case):
                return False
        return True
    except Exception:  # noqa: BLE001 - onnxruntime refusing a model is a failure of onnxruntime
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--failures", help="write why each float32/float64 test portgrad does not pass fails")
    args = parser.parse_args(argv)
    rows = collections.OrderedDict((op, collections.Counter()) for op in OPS)
    wrong, why = [], []
    for op, case in cases():
        c = rows[op]
        c["tests"] += 1
        outcome, detail = run_portgrad(case)
        ort_ok = run_onnxruntime(case)
        c["pg"] += outcome == "pass"
        c["ort"] += ort_ok
        if is_float(case):
            c["float"] += 1
            c["pg_float"] += outcome == "pass"
            c["ort_float"] += ort_ok
            if outcome != "pass":
                reason = detail.split("cannot be imported:")[-1].strip()
                why.append(f"| {op} | {case.name} | {'yes' if ort_ok else 'no'} | {reason.replace('|', '/')} |")
        if outcome == "wrong":
            wrong.append(f"{case.name}: {detail}")
    lines = ["| op | tests | portgrad | onnxruntime | float32/64 tests | portgrad | onnxruntime |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    total = collections.Counter()
    for op, c in rows.items():
        if c["tests"]:
            lines.append(f"| {op} | {c['tests']} | {c['pg']} | {c['ort']} | {c['float']} | {c['pg_float']} | "
                         f"{c['ort_float']} |")
            total.update(c)
    lines.append(f"| **all** | {total['tests']} | {total['pg']} | {total['ort']} | {total['float']} | "
                 f"{total['pg_float']} | {total['ort_float']} |")
    table = "\n".join(lines)
    print(table)
    if wrong:
        print("\nportgrad wrong (not refused):\n  " + "\n  ".join(wrong))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.failures:
        with open(args.failures, "w") as f:
            f.write("# ONNX node tests (float32/float64) portgrad does not pass, and why\n\n"
                    "Written by `python tools/onnx_node_suite.py --failures FILE`: every one is refused at import "
                    "or at evaluation with the error below (none computes a wrong answer; the test suite checks "
                    "that). \"onnxruntime\" says whether onnxruntime passes the test.\n\n"
                    "| op | test | onnxruntime | portgrad's error |\n|---|---|---|---|\n" + "\n".join(why) + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
