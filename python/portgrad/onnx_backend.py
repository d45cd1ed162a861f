"""portgrad as an ONNX backend (onnx.backend.base): ``prepare(model)`` imports the model,
``run(inputs)`` evaluates it, so ONNX's own node tests (``onnx.backend.test``) run through portgrad.

    import portgrad.onnx_backend as backend
    outputs = backend.prepare(model).run([x])      # or backend.run_model(model, [x])

Evaluation is in the precision of the model's inputs (float64 inputs: WorkingPrecision "Real64").
The first axis of every input is the batch (as import_onnx reads a model). A model whose nodes take
some of its inputs as arrays (the weights of a Conv given as a graph input, as ONNX's node tests
do) is imported at ``run``, with the values of every input after the first as initializers.
"""
from __future__ import annotations

import numpy as np

from ._onnx import _onnx, import_onnx


class PortgradRep:
    """A prepared model: the imported net, the order of its ONNX inputs and outputs."""

    def __init__(self, model):
        self.model = model
        initializers = {t.name for t in model.graph.initializer}
        self.inputs = [i.name for i in model.graph.input if i.name not in initializers]
        self.outputs = [o.name for o in model.graph.output]
        try:
            self.net = import_onnx(model)
        except ValueError as e:
            if len(self.inputs) < 2:
                raise
            self.net = None  # imported at run, with the inputs after the first as constants

    def _with_constants(self, data):
        onnx = _onnx()
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        keep = [i for i in model.graph.input if i.name == self.inputs[0]]
        for name in self.inputs[1:]:
            value = np.asarray(data[name])
            if value.dtype.kind not in "biuf":
                raise ValueError(f"input {name!r} holds {value.dtype} data, which portgrad cannot take")
            model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        del model.graph.input[:]
        model.graph.input.extend(keep)
        return import_onnx(model)

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            data = dict(inputs)
        else:
            data = dict(zip(self.inputs, inputs if isinstance(inputs, (list, tuple)) else [inputs]))
        net = self.net or self._with_constants(data)
        used = set(net.input_ports)
        data = {k: v for k, v in data.items() if k in used}
        floats = [v for v in data.values() if np.asarray(v).dtype.kind == "f"]
        precision = "Real64" if floats and all(np.asarray(v).dtype == np.float64 for v in floats) else "Real32"
        res = net(data, self.outputs, WorkingPrecision=precision)
        return [res[name] for name in self.outputs]


def prepare(model, device="CPU", **kwargs):
    return PortgradRep(model)


def run_model(model, inputs, device="CPU", **kwargs):
    return prepare(model, device).run(inputs)


def supports_device(device):
    return device in ("CPU", "GPU")


def is_compatible(model, device="CPU", **kwargs):
    _onnx()
    return True
