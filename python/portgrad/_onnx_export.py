"""ONNX export: a portgrad net as an ONNX model that onnx.checker accepts and onnxruntime runs.

Each layer becomes the ONNX nodes that compute it (named after the layer's path); each array an
initializer named by its path ("0/Weights") or, for a shared array, by its NetSharedArray name
(once, however many layers use it); ports keep their names, with a dynamic first axis "batch".
A layer without an ONNX equivalent is an error that names it.
"""
from __future__ import annotations

import os

import numpy as np

from ._net import Net

_UNARY = {"Ramp": "Relu", "ReLU": "Relu", "LogisticSigmoid": "Sigmoid", "Sigmoid": "Sigmoid", "Tanh": "Tanh",
          "SoftPlus": "Softplus", "SoftSign": "Softsign", "Mish": "Mish", "HardSwish": "HardSwish", "Erf": "Erf",
          "Exp": "Exp", "Log": "Log", "Abs": "Abs", "Sqrt": "Sqrt", "Sin": "Sin", "Cos": "Cos", "ELU": "Elu",
          "SELU": "Selu"}
_BINARY = {"Plus": "Add", "Subtract": "Sub", "Times": "Mul", "Divide": "Div", "Power": "Pow", "Max": "Max",
           "Min": "Min"}
_SEQUENCE_PARTS = {"SequenceLastLayer": -1, "SequenceMostLayer": {"stop": -1}, "SequenceRestLayer": {"start": 1},
                   "SequenceReverseLayer": {"step": -1}}
_COMPARE = {"Greater": "Greater", "GreaterEqual": "GreaterOrEqual", "Less": "Less", "LessEqual": "LessOrEqual",
            "Equal": "Equal"}  # (bool in ONNX: cast to float)
_REDUCE = {"Mean": "ReduceMean", "Total": "ReduceSum", "Max": "ReduceMax", "Min": "ReduceMin"}


def export_onnx(net: Net, path=None, opset: int = 18):
    """``export_onnx(net, path=None, opset=18)``: writes the net to ``path`` as an ONNX model, or
    returns its bytes when no path is given. Opsets 17 to 21. Needs the ``onnx`` package."""
    from ._onnx import _onnx
    onnx = _onnx()
    if not isinstance(net, Net):
        raise TypeError(f"export_onnx takes a net, given {type(net).__name__}")
    if not isinstance(opset, int) or isinstance(opset, bool) or not 17 <= opset <= 21:
        raise ValueError(f"export_onnx: opset must be an int from 17 to 21, given {opset!r}")
    model = _Exporter(onnx, net, opset).model()
    data = model.SerializeToString()
    if path is None:
        return data
    with open(os.fspath(path), "wb") as f:
        f.write(data)
    return None


def _specs(spec, prefix=""):
    """{layer path: layer spec} of a net's spec (chains and graphs nest)."""
    if spec.get("type") in ("NetChain", "NetGraph"):
        out = {}
        for entry in spec["layers"]:
            out.update(_specs(entry["net"], f"{prefix}{entry['name']}/"))
        return out
    return {prefix[:-1]: spec}


class _Exporter:
    def __init__(self, onnx, net, opset):
        self.onnx, self.net, self.opset = onnx, net, opset
        self.helper = onnx.helper
        if net._shape_free():
            raise ValueError("export_onnx: the net has no declared input shape; declare one (input=...) first")
        if '"NetMapOperator"' in net._json:
            raise ValueError("export_onnx: NetMapOperator is not exported yet; a LinearLayer mapped over a sequence "
                             "is ONNX's MatMul on the last axis, which the exporter does not write yet")
        if net._varying:
            raise ValueError(f"export_onnx: input port {net._varying[0]!r} has a \"Varying\" length, which the "
                             "exporter does not write yet; export a copy declared with one length")
        missing = [p for p, _ in net._core_net().params if p not in net._params]
        if missing:
            raise ValueError(f"export_onnx: array {missing[0]!r} is not initialised; call NetInitialize(net) first")
        self.cnet = net._core_net()
        self.specs = _specs(net._spec)
        self.nodes, self.initializers, self.done = [], [], set()
        self.shapes = {}

    def model(self):
        h, g = self.helper, self.cnet.graph
        infos = self.cnet.param_info
        names = {}  # value id -> ONNX name
        for name, v in g["inputs"]:
            names[v] = name
        self.first_input = g["inputs"][0][0] if g["inputs"] else None
        for name, v in g["outputs"]:
            names.setdefault(v, name)  # computed straight into the output (no Identity)
        node_shapes = {path: (ins, outs) for path, _type, ins, outs in self.cnet.nodes}
        unsupported = []
        for path, type_, ins, outs, params in g["nodes"]:
            for k, v in enumerate(outs):
                names.setdefault(v, f"{path}:{k}" if path else f"out{k}")
            in_shapes, out_shapes = node_shapes[path]
            transposed = bool(self.specs[path].get("transposed"))
            arrays = [self._array(infos[p], self._onnx_shape(type_, k, infos[p], transposed))
                      for k, p in enumerate(params)]
            try:
                self._layer(path or type_, type_, self.specs[path], [names[v] for v in ins], [names[v] for v in outs],
                            [tuple(s) for s in in_shapes], [tuple(s) for s in out_shapes], arrays)
            except NotImplementedError as e:
                unsupported.append(f"{path or 'the net'} ({type_}): {e}")
        if unsupported:
            raise ValueError("export_onnx: these layers have no ONNX equivalent in portgrad's exporter:\n  "
                             + "\n  ".join(unsupported))
        elem = self.onnx.TensorProto.FLOAT
        inputs = [h.make_tensor_value_info(name, elem if bound == 0 else self.onnx.TensorProto.INT64,
                                           ["batch", *shape]) for name, shape, bound in self.cnet.inputs]
        outputs = []
        for (name, v), (_, shape) in zip(g["outputs"], self.cnet.outputs):
            if names[v] != name:  # a port named otherwise than the value: an Identity names it
                self.nodes.append(h.make_node("Identity", [names[v]], [name], name=f"output {name}"))
            outputs.append(h.make_tensor_value_info(name, elem, ["batch", *shape]))
        graph = h.make_graph(self.nodes, "portgrad", inputs, outputs, self.initializers)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", self.opset)], producer_name="portgrad")
        model.ir_version = min(model.ir_version, 10)  # what current onnxruntime releases read
        self.onnx.checker.check_model(model)
        return model

    # ------------------------------------------------------------------ helpers
    def _array(self, info, shape=None):
        """An array of the net as an initializer (once; in `shape` where ONNX wants another); returns
        its name."""
        path = info["path"]
        if path not in self.done:
            self.done.add(path)
            a = np.asarray(self.net._params[path], dtype=np.float32)
            self.initializers.append(self.onnx.numpy_helper.from_array(a.reshape(shape or a.shape), path))
        return path

    @staticmethod
    def _onnx_shape(type_, slot, info, transposed=False):
        """A LinearLayer's arrays as Gemm takes them: weights (*n, n_in) as the (prod n, n_in) matrix
        ((n_in, *n) transposed: (n_in, prod n)), biases (*n) as a vector — the same values in the
        same order. None where the array's own shape is that."""
        shape = tuple(info["shape"])
        if type_ != "LinearLayer":
            return None
        if slot == 0:
            want = ((shape[0], int(np.prod(shape[1:]))) if transposed else
                    (int(np.prod(shape[:-1])), shape[-1]))
        else:
            want = (int(np.prod(shape)),)
        return want if want != shape else None

    def _batch_size(self):
        """The batch size as a 1-vector, from the first input's shape (computed once)."""
        if "batch size" not in self.done:
            self.done.add("batch size")
            self._node("Shape", [self.first_input], ["batch size"], "batch size", start=0, end=1)
        return "batch size"

    def _const(self, name, values, dtype=np.int64):
        if name not in self.done:
            self.done.add(name)
            self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def _node(self, op, ins, outs, name, **attrs):
        self.nodes.append(self.helper.make_node(op, ins, outs, name=name, **attrs))

    @staticmethod
    def _ints(v, n):
        return [int(v)] * n if isinstance(v, int) else [int(x) for x in v]

    def _window(self, spec, spatial):
        kernel = self._ints(spec["kernel"], spatial)
        attrs = {"kernel_shape": kernel, "strides": self._ints(spec.get("stride", 1), spatial)}
        padding = spec.get("padding", 0)
        if padding == "Same":
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in
                     ([padding] * spatial if isinstance(padding, int) else padding)]
            attrs["pads"] = [b for b, _ in pairs] + [e for _, e in pairs]
        return attrs

    def _reduce(self, op, x, axes, outs, name):
        if not axes:
            self._node("Identity", [x], outs, name)
        elif op == "ReduceSum" or self.opset >= 18:  # axes an input (ReduceSum from 13, the others from 18)
            self._node(op, [x, self._const(f"{name}:axes", axes)], outs, name, keepdims=0)
        else:
            self._node(op, [x], outs, name, axes=axes, keepdims=0)

    # ------------------------------------------------------------------ the layers
    def _layer(self, name, type_, spec, ins, outs, in_shapes, out_shapes, arrays):
        if type_ == "LinearLayer":
            x = ins[0]
            if len(in_shapes[0]) != 1:
                x = f"{name}:flat"
                self._node("Flatten", [ins[0]], [x], f"{name}/flatten", axis=1)
            y = outs[0] if len(out_shapes[0]) == 1 else f"{name}:y2d"
            self._node("Gemm", [x] + arrays, [y], name, transB=0 if spec.get("transposed") else 1)
            if y != outs[0]:
                self._node("Reshape", [y, self._const(f"{name}:shape", [0, *out_shapes[0]] if out_shapes[0] else [-1])],
                           outs, f"{name}/reshape")
        elif type_ == "ElementwiseLayer":
            f = spec["function"]
            if f == "Mish" and self.opset < 18:  # x tanh(softplus(x)): Mish is an op from opset 18
                sp, th = f"{name}:softplus", f"{name}:tanh"
                self._node("Softplus", ins, [sp], f"{name}/softplus")
                self._node("Tanh", [sp], [th], f"{name}/tanh")
                self._node("Mul", [ins[0], th], outs, name)
            elif f in _UNARY:
                self._node(_UNARY[f], ins, outs, name)
            elif f == "GELU" and self.opset >= 20:
                self._node("Gelu", ins, outs, name)
            elif f == "GELU":  # x (1 + erf(x / sqrt 2)) / 2, as the exporters before opset 20 write it
                r2, half, one = (self._const(f"{name}:{k}", v, np.float32) for k, v in
                                 (("sqrt2", np.sqrt(2.0)), ("half", 0.5), ("one", 1.0)))
                t = [f"{name}:{k}" for k in ("div", "erf", "add", "mul")]
                self._node("Div", [ins[0], r2], [t[0]], f"{name}/div")
                self._node("Erf", [t[0]], [t[1]], f"{name}/erf")
                self._node("Add", [t[1], one], [t[2]], f"{name}/add")
                self._node("Mul", [ins[0], t[2]], [t[3]], f"{name}/mul")
                self._node("Mul", [t[3], half], outs, name)
            elif f == "HardTanh":
                lo, hi = (self._const(f"{name}:{k}", v, np.float32) for k, v in (("min", -1.0), ("max", 1.0)))
                self._node("Clip", [ins[0], lo, hi], outs, name)
            elif f == "HardSigmoid":
                self._node("HardSigmoid", ins, outs, name, alpha=0.5, beta=0.5)
            elif f == "Swish":
                s = f"{name}:sigmoid"
                self._node("Sigmoid", ins, [s], f"{name}/sigmoid")
                self._node("Mul", [ins[0], s], outs, name)
            elif f == "Square":
                self._node("Mul", [ins[0], ins[0]], outs, name)
            else:
                raise NotImplementedError(f"the function {f!r}")
        elif type_ == "SoftmaxLayer":
            self._node("LogSoftmax" if spec.get("log") else "Softmax", ins, outs, name, axis=-1)
        elif type_ in ("ConvolutionLayer", "DeconvolutionLayer"):
            spatial = len(in_shapes[0]) - 1
            attrs = self._window(spec, spatial)
            attrs["dilations"] = self._ints(spec.get("dilation", 1), spatial)
            attrs["group"] = int(spec.get("channel_groups", 1))
            if type_ == "DeconvolutionLayer" and attrs.get("auto_pad") == "SAME_UPPER":
                raise NotImplementedError('padding "Same"')
            if spec.get("output_padding"):
                attrs["output_padding"] = self._ints(spec["output_padding"], spatial)
            self._node("Conv" if type_ == "ConvolutionLayer" else "ConvTranspose", ins + arrays, outs, name, **attrs)
        elif type_ == "PoolingLayer":
            attrs = self._window(spec, len(in_shapes[0]) - 1)
            f = spec.get("function", "Max")
            if f == "Max":
                self._node("MaxPool", ins, outs, name, **attrs)
            else:
                y = outs[0] if f == "Mean" else f"{name}:mean"
                self._node("AveragePool", ins, [y], name, count_include_pad=1, **attrs)
                if f == "Total":
                    volume = self._const(f"{name}:volume", float(np.prod(attrs["kernel_shape"])), np.float32)
                    self._node("Mul", [y, volume], outs, f"{name}/total")
        elif type_ == "BatchNormalizationLayer":
            self._node("BatchNormalization", ins + arrays, outs, name, epsilon=float(spec.get("epsilon", 0.001)))
        elif type_ == "NormalizationLayer":
            levels, rank, eps = spec.get("levels", "Default"), len(in_shapes[0]), float(spec.get("epsilon", 0.001))
            if levels == "Default" and rank >= 2:  # per channel over the rest, (c,) arrays
                self._node("InstanceNormalization", ins + arrays, outs, name, epsilon=eps)
            else:  # the last k axes (all of them for "All" or a vector), arrays of their shape
                k = -int(levels) if isinstance(levels, int) else rank
                self._node("LayerNormalization", ins + arrays, outs, name, axis=-k, epsilon=eps)
        elif type_ == "DropoutLayer":
            self._node("Identity", ins, outs, name)
        elif type_ in ("FlattenLayer", "ReshapeLayer"):
            if type_ == "FlattenLayer":
                self._node("Flatten", ins, outs, name, axis=1)
            else:
                self._node("Reshape", [ins[0], self._const(f"{name}:shape", [-1, *out_shapes[0]])], outs, name)
        elif type_ == "ThreadingLayer" and spec["function"] in _COMPARE:
            mask = f"{name}:mask"
            self._node(_COMPARE[spec["function"]], ins, [mask], f"{name}/compare")
            self._node("Cast", [mask], outs, name, to=self.onnx.TensorProto.FLOAT)
        elif type_ == "ThreadingLayer" and spec["function"] == "FMod":
            self._node("Mod", ins, outs, name, fmod=1)
        elif type_ == "ThreadingLayer" and spec["function"] == "Mod":
            # ONNX's Mod of floats is C's fmod: r + b where r is non-zero and its sign differs from b's.
            r, rneg, bneg, differ, nonzero, fix, zero = (f"{name}:{k}" for k in
                                                         ("fmod", "rneg", "bneg", "differ", "nonzero", "fix", "zero"))
            zero_c = self._const(f"{name}:0", 0.0, np.float32)
            self._node("Mod", ins, [r], f"{name}/fmod", fmod=1)
            self._node("Less", [r, zero_c], [rneg], f"{name}/rneg")
            self._node("Less", [ins[1], zero_c], [bneg], f"{name}/bneg")
            self._node("Xor", [rneg, bneg], [differ], f"{name}/differ")
            self._node("Equal", [r, zero_c], [zero], f"{name}/zero")
            self._node("Not", [zero], [nonzero], f"{name}/nonzero")
            self._node("And", [differ, nonzero], [fix], f"{name}/fix")
            shifted = f"{name}:shifted"
            self._node("Add", [r, ins[1]], [shifted], f"{name}/shifted")
            self._node("Where", [fix, shifted, r], outs, name)
        elif type_ == "ThreadingLayer":
            op = _BINARY[spec["function"]]
            acc = ins[0]
            for k, b in enumerate(ins[1:]):
                y = outs[0] if k == len(ins) - 2 else f"{name}:{k}"
                self._node(op, [acc, b], [y], name if y == outs[0] else f"{name}/{k}")
                acc = y
        elif type_ == "DotLayer":
            # ONNX's MatMul broadcasts full shapes, batch axis included: vectors become matrices and
            # the lower-rank operand gets 1s after the batch axis, so the batch axes line up.
            a, b = list(in_shapes[0]), list(in_shapes[1])
            a = [1] + a if len(a) == 1 else a
            b = b + [1] if len(b) == 1 else b
            rank = max(len(a), len(b))
            a, b = [1] * (rank - len(a)) + a, [1] * (rank - len(b)) + b
            operands = []
            for i, (x, shape, full) in enumerate(zip(ins, in_shapes, (a, b))):
                if list(shape) != full:
                    x2 = f"{name}:operand{i + 1}"
                    self._node("Reshape", [x, self._const(f"{name}:shape{i + 1}", [0, *full])], [x2], f"{name}/reshape{i + 1}")
                    x = x2
                operands.append(x)
            same = list(out_shapes[0]) == [max(p, q) for p, q in zip(a[:-2], b[:-2])] + [a[-2], b[-1]]
            y = outs[0] if same else f"{name}:product"
            self._node("MatMul", operands, [y], name)
            if not same:
                self._node("Reshape", [y, self._const(f"{name}:shape", [0, *out_shapes[0]])], outs, f"{name}/reshape")
        elif type_ == "TotalLayer":
            self._node("Sum", ins, outs, name)
        elif type_ == "CatenateLayer":
            self._node("Concat", ins, outs, name, axis=int(spec.get("axis", 0)) % len(in_shapes[0]) + 1)
        elif type_ == "TransposeLayer":
            rank = len(in_shapes[0])
            perm = list(range(rank))
            if "perm" in spec:
                perm = [int(p) % rank for p in spec["perm"]]
            for i, j in spec.get("swaps", []):
                i, j = i % rank, j % rank
                perm[i], perm[j] = perm[j], perm[i]
            self._node("Transpose", ins, outs, name, perm=[0] + [p + 1 for p in perm])
        elif type_ in ("AggregationLayer", "SummationLayer"):
            rank = len(in_shapes[0])
            if type_ == "SummationLayer":
                axes, f = list(range(rank)), "Total"
            else:
                levels, f = spec.get("levels", {"start": 1}), spec["function"]
                if isinstance(levels, dict):
                    axes = list(range(rank))[slice(levels.get("start"), levels.get("stop"), levels.get("step"))]
                else:
                    axes = [int(a) % rank for a in (levels if isinstance(levels, list) else [levels])]
            self._reduce(_REDUCE[f], ins[0], sorted(a + 1 for a in axes), outs, name)
        elif type_ == "MeanSquaredLossLayer" or type_ == "MeanAbsoluteLossLayer":
            d, e = f"{name}:diff", f"{name}:err"
            self._node("Sub", ins, [d], f"{name}/sub")
            if type_ == "MeanSquaredLossLayer":
                self._node("Mul", [d, d], [e], f"{name}/square")
            else:
                self._node("Abs", [d], [e], f"{name}/abs")
            self._reduce("ReduceMean", e, list(range(1, len(in_shapes[0]) + 1)), outs, name)
        elif type_ in _SEQUENCE_PARTS:  # Wolfram's Sequence*Layers: parts of the first axis
            self._layer(name, "PartLayer", {"part": [_SEQUENCE_PARTS[type_]]}, ins, outs, in_shapes, out_shapes, arrays)
        elif type_ == "PartLayer":  # Slice on every part (an index is a slice of one), then Squeeze the indexed axes
            starts, ends, axes, steps, drop = [], [], [], [], []
            for a, part in enumerate(spec["part"]):
                n = in_shapes[0][a]
                if part == "All":
                    continue
                if isinstance(part, int):
                    r = range(part % n, part % n + 1)
                    drop.append(a + 1)
                else:
                    r = range(n)[slice(part.get("start"), part.get("stop"), part.get("step"))]
                starts.append(r.start)
                ends.append(r.stop if r.stop >= 0 else -2 ** 62)  # before index 0, going backwards
                axes.append(a + 1)
                steps.append(r.step)
            y = outs[0] if not drop else f"{name}:sliced"
            self._node("Slice", [ins[0]] + [self._const(f"{name}:{k}", v) for k, v in
                                            (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))],
                       [y], name)
            if drop:
                self._node("Squeeze", [y, self._const(f"{name}:drop", drop)], outs, f"{name}/squeeze")
        elif type_ == "PaddingLayer":
            pads = spec["padding"] + [[0, 0]] * (len(in_shapes[0]) - len(spec["padding"]))
            pads = [0] + [b for b, _ in pads] + [0] + [a for _, a in pads]
            method = spec.get("value", 0.0)
            if isinstance(method, str):
                mode = {"Fixed": "edge", "Reflected": "reflect", "Periodic": "wrap"}[method]
                if mode == "wrap" and self.opset < 19:
                    raise NotImplementedError('"Periodic" padding before opset 19 (ONNX\'s Pad has mode "wrap" from 19)')
                self._node("Pad", [ins[0], self._const(f"{name}:pads", pads)], outs, name, mode=mode)
            else:
                value = self._const(f"{name}:value", float(method), np.float32)
                self._node("Pad", [ins[0], self._const(f"{name}:pads", pads), value], outs, name, mode="constant")
        elif type_ == "ConstantArrayLayer":  # its array once per example (a concatenation does not broadcast)
            if self.first_input is None:  # a net of constants alone: one example
                self._node("Unsqueeze", [arrays[0], self._const(f"{name}:batch", [0])], outs, name)
            else:
                one = f"{name}:one"
                self._node("Unsqueeze", [arrays[0], self._const(f"{name}:batch", [0])], [one], f"{name}/one")
                target = f"{name}:shape"
                self._node("Concat", [self._batch_size(), self._const(f"{name}:example", list(out_shapes[0]))],
                           [target], f"{name}/shape", axis=0)
                self._node("Expand", [one, target], outs, name)
        elif type_ == "EmbeddingLayer":
            self._node("Gather", [arrays[0], ins[0]], outs, name, axis=0)
        else:
            raise NotImplementedError("no ONNX equivalent")
