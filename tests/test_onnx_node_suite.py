"""ONNX's own node tests (onnx.backend.test) of the ops PyTorch's exporters write, through
portgrad.onnx_backend: each either passes (every output within the test's rtol/atol) or is refused
at import with a clear ValueError — never a wrong answer or another kind of error. The pass counts
per op, beside onnxruntime's, are in the README (tools/onnx_node_suite.py writes them)."""
import os
import sys

import pytest

pytest.importorskip("onnx")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import onnx_node_suite as suite  # noqa: E402

CASES = suite.cases()


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[c.name for _, c in CASES])
def test_passes_or_is_refused_clearly(case):
    outcome, detail = suite.run_portgrad(case)
    assert outcome in ("pass", "unsupported"), detail


def test_the_suite_runs_the_supported_ops():
    passed = {op for op, case in CASES if suite.run_portgrad(case)[0] == "pass"}
    assert {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "BatchNormalization", "Softmax", "Relu", "Concat",
            "Reshape", "ReduceMean", "Add"} <= passed
