"""ONNX import: a model trained elsewhere as a portgrad NetGraph.

The graph's inputs and outputs become the net's ports, with their ONNX names; each node becomes a
layer named after it ("/" in ONNX names becomes "."); every float initializer (and Constant) a node
takes as an array becomes a NetSharedArray of the same name, shape and layout, so
``net(x, NetPortGradient(NetSharedArray("fc1.weight")))`` is the gradient with respect to that tensor
as the file stores it. The first axis of every input and output is the batch; the other axes must
be static. What portgrad cannot import is an error that lists every such node at once.

Python only translates the model here: onnx parses and checks it (and infers its shapes), and the
engine builds and checks the net as it does any other.
"""
from __future__ import annotations

import os
import stat

import numpy as np

from ._net import Net, NetPort, NetReplacePart, NetSharedArray

_MIN_OPSET, _MAX_OPSET = 11, 25  # 23 to 25 changed none of the ops imported here but for new element types

# ONNX op -> ElementwiseLayer function, for ops without attributes that change the function.
_UNARY = {"Relu": "Ramp", "Sigmoid": "LogisticSigmoid", "Tanh": "Tanh", "Softplus": "SoftPlus", "Softsign": "SoftSign",
          "Mish": "Mish", "HardSwish": "HardSwish", "Erf": "Erf", "Exp": "Exp", "Log": "Log", "Abs": "Abs",
          "Sqrt": "Sqrt", "Sin": "Sin", "Cos": "Cos"}
# ONNX op -> ThreadingLayer function (numpy broadcasting, as ONNX's multidirectional broadcasting).
_BINARY = {"Add": "Plus", "Sub": "Subtract", "Mul": "Times", "Div": "Divide", "Pow": "Power", "Max": "Max",
           "Min": "Min"}
_SELU = (1.67326319217681884765625, 1.05070102214813232421875)  # ONNX's default alpha, gamma


class _Unsupported(Exception):
    """A node portgrad cannot import; the message says why (collected, then raised together)."""


class _AfterUnsupported(Exception):
    """A node fed by one that could not be imported: not listed (its cause is)."""


def import_onnx(source) -> Net:
    """``import_onnx(source)``: the ONNX model ``source`` — a path, ``bytes``, or an
    ``onnx.ModelProto`` — as a NetGraph with its arrays set. Needs the ``onnx`` package
    (``pip install portgrad[onnx]``)."""
    onnx = _onnx()
    model = _read(onnx, source)
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ValueError(f"import_onnx: the model is not valid ONNX: {str(e).strip().splitlines()[0]}") from None
    return _Importer(onnx, model).net()


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise ImportError("import_onnx needs the onnx package: pip install 'portgrad[onnx]' (or pip install onnx)") from None
    return onnx


def _read(onnx, source):
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, what = bytes(source), "the bytes"
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        what = repr(os.fsdecode(path))
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device could block the read
                raise ValueError(f"import_onnx: {what} is not a regular file")
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise type(e)(e.errno, f"import_onnx: cannot read {what}: {e.strerror}") from None
    else:
        raise TypeError(f"import_onnx takes a path, bytes or an onnx.ModelProto; given {type(source).__name__}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError, or a RuntimeError from its C++ parser
        raise ValueError(f"import_onnx: {what} is not an ONNX model ({type(e).__name__}: {e})") from None
    if not model.HasField("graph"):
        raise ValueError(f"import_onnx: {what} holds no ONNX graph")
    return model


class _Importer:
    def __init__(self, onnx, model):
        self.onnx = onnx
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None or not _MIN_OPSET <= self.opset <= _MAX_OPSET:
            raise ValueError(f"import_onnx: the model uses ONNX opset {self.opset}; portgrad imports opsets "
                             f"{_MIN_OPSET} to {_MAX_OPSET} (convert it with onnx.version_converter)")
        self.constants = {t.name: onnx.numpy_helper.to_array(t) for t in self.graph.initializer}
        self.shapes = {}  # value name -> full shape (batch first), None for symbolic dimensions
        for info in list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output):
            t = info.type.tensor_type
            if t.HasField("shape"):
                self.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        self.layers = {}    # layer name -> Net
        self.edges = []     # NetGraph edges
        self.source = {}    # ONNX value name -> edge source (a NetPort of an input, a layer name or NetPort)
        self.arrays = {}    # shared array name -> values
        self.inputs = {}    # input port -> per-example shape
        self.failed = set()  # values of nodes that could not be imported
        self.const_names = {}  # a constant's value name -> the name of the array it is (through Identity)

    # ------------------------------------------------------------------ the graph
    def net(self):
        from ._graph import NetGraph

        for info in self.graph.input:
            if info.name in self.constants:
                continue  # an initializer listed as an input (older exporters)
            self.inputs[info.name] = self._input_shape(info)
            self.source[info.name] = NetPort(info.name)
        unsupported = []
        needed = self._needed()
        for k, node in enumerate(self.graph.node):
            if k not in needed:
                continue  # computes nothing an output depends on (a Dropout mask, a dead branch)
            try:
                self._node(node, k)
            except _Unsupported as e:
                unsupported.append(f"{node.name or f'node {k}'} ({node.op_type}): {e}")
                self.failed.update(node.output)
            except _AfterUnsupported:
                self.failed.update(node.output)
        if unsupported:
            raise ValueError(f"import_onnx: {len(unsupported)} node{'s' if len(unsupported) > 1 else ''} of this model "
                             f"(opset {self.opset}) cannot be imported:\n  " + "\n  ".join(unsupported))
        for out in self.graph.output:
            src = self.source.get(out.name)
            if src is None or isinstance(src, NetPort) and src.layer is None:
                raise ValueError(f"import_onnx: output {out.name!r} is an input or a constant of the model, not "
                                 "computed by a node; portgrad nets compute their outputs")
            self.edges.append((src, NetPort(out.name)))
        if not self.layers:
            raise ValueError("import_onnx: the model has no node to import")
        net = NetGraph(self.layers, self.edges, inputs=self.inputs)
        return NetReplacePart(net, {NetSharedArray(n): a for n, a in self.arrays.items()}) if self.arrays else net

    def _needed(self):
        """The nodes the graph's outputs depend on."""
        producer = {o: k for k, node in enumerate(self.graph.node) for o in node.output if o}
        needed, stack = set(), [o.name for o in self.graph.output]
        while stack:
            k = producer.get(stack.pop())
            if k is None or k in needed:
                continue
            needed.add(k)
            stack.extend(i for i in self.graph.node[k].input if i)
        return needed

    def _input_shape(self, info):
        t = info.type.tensor_type
        if t.elem_type not in (self.onnx.TensorProto.FLOAT, self.onnx.TensorProto.DOUBLE, self.onnx.TensorProto.INT64):
            raise ValueError(f"import_onnx: input {info.name!r} has element type "
                             f"{self.onnx.TensorProto.DataType.Name(t.elem_type)}; portgrad imports float inputs "
                             "and int64 indices")
        shape = self.shapes.get(info.name)
        if not shape:
            raise ValueError(f"import_onnx: input {info.name!r} has no shape (or is a scalar); portgrad needs a batch "
                             "axis first and static dimensions after it")
        if any(d is None for d in shape[1:]):
            raise ValueError(f"import_onnx: input {info.name!r} has shape {self._show(shape)}; only its first (batch) "
                             "axis may be dynamic")
        return tuple(shape[1:])

    @staticmethod
    def _show(shape):
        return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"

    def _layer_name(self, node, k, suffix=""):
        base = (node.name or f"{node.op_type}_{k}").replace("/", ".").strip(".") or f"{node.op_type}_{k}"
        return self._unique(base + suffix)

    def _unique(self, name):
        base, n = name, 1
        while name in self.layers:
            n += 1
            name = f"{base}_{n}"
        return name

    def _add(self, name, layer, inputs):
        """Adds a layer fed from ONNX values `inputs` ({port: value name}); returns its name."""
        self.layers[name] = layer
        for port, value in inputs.items():
            self.edges.append((self.source[value], NetPort(name, port)))
        return name

    # ------------------------------------------------------------------ helpers of the converters
    def _attrs(self, node):
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _dynamic(self, node, i):
        """The name of input i, which must be computed (not a constant)."""
        name = node.input[i]
        if name in self.failed:
            raise _AfterUnsupported()
        if name in self.constants:
            raise _Unsupported(f"input {i} ({name!r}) is a constant here; portgrad takes it only as computed data")
        if name not in self.source:
            raise _Unsupported(f"input {i} ({name!r}) is not computed by an imported node")
        return name

    def _array(self, node, i, shape=None):
        """The name of input i as a shared array: a float constant (of `shape`, when given)."""
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            return None
        if name in self.failed:
            raise _AfterUnsupported()
        a = self.constants.get(name)
        if a is None:
            raise _Unsupported(f"input {i} ({name!r}) is computed; portgrad takes it only as a constant array "
                               "(an initializer)")
        if a.dtype.kind != "f":
            raise _Unsupported(f"input {i} ({name!r}) is a {a.dtype} constant; arrays must be float")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise _Unsupported(f"input {i} ({name!r}) has shape {tuple(a.shape)}; expected {tuple(shape)}")
        name = self.const_names.get(name, name)
        self.arrays[name] = a
        return NetSharedArray(name)

    def _rank(self, value):
        shape = self.shapes.get(value)
        if shape is None:
            raise _Unsupported(f"the shape of {value!r} is unknown (ONNX shape inference could not find it)")
        return len(shape)

    def _out_shape(self, node):
        """The per-example shape of the node's first output (static; the batch axis first)."""
        shape = self.shapes.get(node.output[0])
        if shape is None or not shape:
            raise _Unsupported("the shape of its output is unknown (ONNX shape inference could not find it)")
        if any(d is None for d in shape[1:]):
            raise _Unsupported(f"its output has shape {self._show(shape)}; only the first (batch) axis may be dynamic")
        return tuple(shape[1:])

    def _int_input(self, node, i):
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            return None
        if name not in self.constants:
            raise _Unsupported(f"input {i} ({name!r}) must be a constant")
        return [int(v) for v in np.asarray(self.constants[name]).reshape(-1)]

    @staticmethod
    def _only(attrs, allowed, node):
        for k, v in attrs.items():
            if k in allowed:
                ok = allowed[k]
                if callable(ok) and not ok(v):
                    raise _Unsupported(f"attribute {k}={v!r} is not supported")
            else:
                raise _Unsupported(f"attribute {k!r} is not supported")

    def _window(self, node, attrs, spatial):
        """Conv/pool attributes -> (stride, padding, dilation) options for `spatial` dimensions."""
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        pads = list(attrs.get("pads", [0] * (2 * spatial)))
        if auto in ("SAME_UPPER",):
            padding = "Same"
        elif auto in ("NOTSET", "VALID"):
            padding = [(pads[k], pads[k + spatial]) for k in range(spatial)] if auto == "NOTSET" else 0
        else:
            raise _Unsupported(f"auto_pad={auto} is not supported (NOTSET, VALID and SAME_UPPER are)")
        stride = list(attrs.get("strides", [1] * spatial))
        dilation = list(attrs.get("dilations", [1] * spatial))
        return stride, padding, dilation

    # ------------------------------------------------------------------ the ops
    def _node(self, node, k):
        from . import layers as L
        from . import layers_conv as C
        from . import layers_norm as N
        from . import layers_structure as T

        op, attrs = node.op_type, self._attrs(node)
        if node.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"operators of domain {node.domain!r} are not supported")
        name = self._layer_name(node, k)
        out = node.output[0] if node.output else None

        def alias(value):
            self.source[out] = self.source[value]

        if op == "Constant":
            self._constant(node, attrs)
            return
        if op == "Identity" or (op == "Dropout" and (len(node.output) == 1 or not node.output[1])):
            if node.input[0] in self.constants:  # another name of a constant: the array keeps its own
                self.constants[out] = self.constants[node.input[0]]
                self.const_names[out] = self.const_names.get(node.input[0], node.input[0])
                return
            alias(self._dynamic(node, 0))  # (Dropout is the identity in inference)
            return
        if op in _UNARY:
            self._only(attrs, {}, node)
            self.source[out] = self._add(name, L.ElementwiseLayer(_UNARY[op]), {"Input": self._dynamic(node, 0)})
            return
        if op in ("Elu", "Selu", "HardSigmoid", "Gelu", "Clip"):
            self.source[out] = self._add(name, L.ElementwiseLayer(self._parametric(node, attrs)),
                                         {"Input": self._dynamic(node, 0)})
            return
        if op in _BINARY or op == "Sum":
            if op == "Sum" and len(node.input) == 1:
                alias(self._dynamic(node, 0))
                return
            self._binary(node, name, _BINARY.get(op, "Plus"))
            return
        if op == "Gather":  # rows of a constant matrix picked by computed indices: an embedding
            self._only(attrs, {"axis": lambda v: v == 0}, node)
            w = self.constants.get(node.input[0])
            if w is None or w.ndim != 2:
                raise _Unsupported("only rows of a constant matrix (an embedding) are supported")
            self.source[out] = self._add(name, N.EmbeddingLayer(w.shape[1], w.shape[0], weights=self._array(node, 0)),
                                         {"Input": self._dynamic(node, 1)})
            return
        if op in ("Softmax", "LogSoftmax"):
            rank = self._rank(node.input[0])
            axis = attrs.get("axis", -1 if self.opset >= 13 else 1)
            if axis % rank != rank - 1:
                raise _Unsupported(f"axis={axis} on a rank-{rank} input; portgrad's softmax is over the last axis")
            layer = L.SoftmaxLayer(log=op == "LogSoftmax")
            self.source[out] = self._add(name, layer, {"Input": self._dynamic(node, 0)})
            return
        if op == "MatMul" and not (node.input[0] not in self.constants and self._rank(node.input[0]) == 2
                                   and node.input[1] in self.constants and self.constants[node.input[1]].ndim == 2):
            self._matmul(node, name, T)
            return
        if op in ("Gemm", "MatMul"):
            # A LinearLayer whose weights are B as stored: (N, K) with transB=1, else (K, N) (transposed=True).
            self._only(attrs, {"alpha": lambda v: v == 1.0, "beta": lambda v: v == 1.0, "transA": lambda v: v == 0,
                               "transB": None}, node)
            x = self._dynamic(node, 0)
            if self._rank(x) != 2:
                raise _Unsupported(f"A of rank {self._rank(x)}: only (batch, K) matrices are supported")
            w = self.constants.get(node.input[1])
            if w is None or w.ndim != 2:
                raise _Unsupported("B must be a constant matrix (an initializer)")
            transposed = not attrs.get("transB", 0)
            n = w.shape[1] if transposed else w.shape[0]
            biases = self._array(node, 2, (n,)) if op == "Gemm" and len(node.input) > 2 and node.input[2] else None
            layer = L.LinearLayer(n, weights=self._array(node, 1), biases=biases if biases is not None else False,
                                  transposed=transposed)
            self.source[out] = self._add(name, layer, {"Input": x})
            return
        if op in ("Conv", "ConvTranspose"):
            self._conv(node, attrs, name, C)
            return
        if op in ("MaxPool", "AveragePool"):
            self._pool(node, attrs, name, C)
            return
        if op in ("GlobalAveragePool", "GlobalMaxPool"):
            # Over every spatial axis: (c, spatial...) -> (c,), then ONNX's (c, 1, ...).
            pooled = self._add(name, T.AggregationLayer("Mean" if op == "GlobalAveragePool" else "Max"),
                               {"Input": self._dynamic(node, 0)})
            self.source[out + "\0pooled"] = pooled
            self.source[out] = self._add(self._layer_name(node, k, ".reshape"), L.ReshapeLayer(self._out_shape(node)),
                                         {"Input": out + "\0pooled"})
            return
        if op == "BatchNormalization":
            self._only(attrs, {"epsilon": None, "momentum": None, "training_mode": lambda v: v == 0}, node)
            if len([o for o in node.output if o]) > 1:
                raise _Unsupported("the training outputs (running mean and variance) are not supported")
            x = self._dynamic(node, 0)
            c = self._out_shape(node)[0]
            shared = {"Scaling": self._array(node, 1, (c,)), "Biases": self._array(node, 2, (c,)),
                      "MovingMean": self._array(node, 3, (c,)), "MovingVariance": self._array(node, 4, (c,))}
            layer = N.BatchNormalizationLayer(epsilon=float(attrs.get("epsilon", 1e-5)))
            layer = layer._with_spec(dict(layer._spec, shared={a: s.name for a, s in shared.items()}), {})
            self.source[out] = self._add(name, layer, {"Input": x})
            return
        if op in ("LayerNormalization", "InstanceNormalization"):
            self._normalization(node, attrs, name, N)
            return
        if op == "Flatten":
            rank = self._rank(node.input[0])
            axis = attrs.get("axis", 1) % max(rank, 1)
            if axis != 1:
                raise _Unsupported(f"axis={attrs.get('axis')}: only flattening everything after the batch axis is supported")
            self.source[out] = self._add(name, L.FlattenLayer(), {"Input": self._dynamic(node, 0)})
            return
        if op in ("Reshape", "Squeeze", "Unsqueeze"):
            self._reshape(node, attrs, name, L)
            return
        if op == "Transpose":
            perm = list(attrs.get("perm", range(self._rank(node.input[0]))[::-1]))
            if not perm or perm[0] != 0:
                raise _Unsupported(f"perm={perm} moves the batch axis")
            per_example = tuple(p - 1 for p in perm[1:])
            if per_example == tuple(sorted(per_example)):
                alias(self._dynamic(node, 0))
                return
            self.source[out] = self._add(name, T.TransposeLayer(per_example), {"Input": self._dynamic(node, 0)})
            return
        if op == "Concat":
            rank = self._rank(node.output[0])
            axis = attrs["axis"] % rank
            if axis == 0:
                raise _Unsupported("concatenation along the batch axis")
            ins = {f"Input{i + 1}": self._dynamic(node, i) for i in range(len(node.input))}
            self.source[out] = self._add(name, T.CatenateLayer(axis - 1, inputs=len(ins)), ins)
            return
        if op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
            self._reduce(node, attrs, name, L, T)
            return
        raise _Unsupported("not supported by portgrad's importer yet")

    def _constant(self, node, attrs):
        if "value" in attrs:
            value = self.onnx.numpy_helper.to_array(attrs["value"])
        elif "value_float" in attrs or "value_floats" in attrs:
            value = np.asarray(attrs.get("value_float", attrs.get("value_floats")), dtype=np.float32)
        elif "value_int" in attrs or "value_ints" in attrs:
            value = np.asarray(attrs.get("value_int", attrs.get("value_ints")), dtype=np.int64)
        else:
            raise _Unsupported(f"a Constant given by {', '.join(attrs) or 'nothing'} is not supported")
        self.constants[node.output[0]] = value

    def _parametric(self, node, attrs):
        op = node.op_type
        if op == "Elu":
            self._only(attrs, {"alpha": lambda v: abs(v - 1.0) < 1e-7}, node)
            return "ELU"
        if op == "Selu":
            self._only(attrs, {"alpha": lambda v: abs(v - _SELU[0]) < 1e-6, "gamma": lambda v: abs(v - _SELU[1]) < 1e-6},
                       node)
            return "SELU"
        if op == "HardSigmoid":  # portgrad's HardSigmoid is clip((x + 1)/2, 0, 1)
            self._only(attrs, {"alpha": lambda v: v == 0.5, "beta": lambda v: v == 0.5}, node)
            if attrs.get("alpha") != 0.5:
                raise _Unsupported("alpha=0.2 (ONNX's default) is not supported; portgrad's HardSigmoid has alpha=0.5")
            return "HardSigmoid"
        if op == "Gelu":
            self._only(attrs, {"approximate": lambda v: v in (b"none", "none")}, node)
            return "GELU"
        lo, hi = (self._int_or_float(node, 1), self._int_or_float(node, 2))  # Clip
        if (lo, hi) != (-1.0, 1.0):
            raise _Unsupported(f"Clip to [{lo}, {hi}]: only [-1, 1] (HardTanh) is supported")
        return "HardTanh"

    def _int_or_float(self, node, i):
        name = node.input[i] if len(node.input) > i else ""
        if not name or name not in self.constants:
            return None
        return float(np.asarray(self.constants[name]).reshape(-1)[0])

    def _binary(self, node, name, f):
        from . import layers_structure as T

        ports = {}
        full = None
        for i, value in enumerate(node.input):
            if value not in self.constants:
                rank = self._rank(self._dynamic(node, i))
                if full is not None and rank != full:
                    raise _Unsupported("computed operands of different ranks (their batch axes would not align)")
                full = rank
        if full is None:
            raise _Unsupported("every operand is a constant (fold it before export)")
        for i, value in enumerate(node.input):
            port = f"Input{i + 1}"
            if value not in self.constants:
                ports[port] = value
                continue
            ports[port] = self._constant_operand(node, i, full, "const")
        self.source[node.output[0]] = self._add(name, T.ThreadingLayer(f, inputs=len(ports)), ports)

    def _constant_operand(self, node, i, full_rank, suffix):
        """Constant input i as the output of a ConstantArrayLayer (its shared array, the same for
        every example), in its ONNX shape less a leading 1 that would stand on the batch axis."""
        from . import layers as L
        from . import layers_structure as T

        a = self._array(node, i)
        c = self.arrays[a.name]
        if c.ndim > full_rank or (c.ndim == full_rank and c.shape[0] != 1):
            raise _Unsupported(f"constant {node.input[i]!r} of shape {c.shape} varies along the batch axis")
        const = T.ConstantArrayLayer(shape=tuple(c.shape))
        const = const._with_spec(dict(const._spec, shared={"Array": a.name}), {})
        key = f"{node.output[0]}\0operand{i}"
        self.source[key] = self._add(self._layer_name(node, 0, f".{suffix}{i + 1}"), const, {})
        if c.ndim == full_rank:
            self.source[key] = self._add(self._layer_name(node, 0, f".{suffix}{i + 1}.reshape"),
                                         L.ReshapeLayer(c.shape[1:]), {"Input": key})
        return key

    def _matmul(self, node, name, T):
        """MatMul as a DotLayer: numpy's matmul of the full tensors equals DotLayer's product of the
        examples when every computed operand has the batch as the first of its leading axes (full
        rank 3 or more, and the output's rank), or is the (batch, K) first operand of a product
        with a constant vector or matrix."""
        full = [None if v in self.constants else self._rank(self._dynamic(node, i)) for i, v in enumerate(node.input)]
        if full == [None, None]:
            raise _Unsupported("both operands are constants (fold it before export)")
        ranks = [r if r is not None else self.constants[v].ndim for r, v in zip(full, node.input)]
        out_rank = max(ranks)
        for i, r in enumerate(full):
            if r is None:
                continue
            if r == 1 or (r == 2 and (i == 1 or full[1] is not None or ranks[1] > 2)) or (r > 2 and r != out_rank):
                raise _Unsupported(f"operand {i + 1} of shape {self._show(self.shapes[node.input[i]])} would mix its "
                                   "batch axis into the product (portgrad multiplies example by example)")
        ports = {}
        for i, v in enumerate(node.input):
            ports[f"Input{i + 1}"] = v if full[i] is not None else self._constant_operand(node, i, out_rank, "const")
        self.source[node.output[0]] = self._add(name, T.DotLayer(), ports)

    def _normalization(self, node, attrs, name, N):
        x = self._dynamic(node, 0)
        rank = self._rank(x)
        if len([o for o in node.output if o]) > 1:
            raise _Unsupported("the Mean and InvStdDev outputs are not supported")
        if node.op_type == "InstanceNormalization":
            self._only(attrs, {"epsilon": None}, node)
            if rank < 3:
                raise _Unsupported(f"an input of rank {rank}; InstanceNormalization needs (batch, channels, ...)")
            levels, pshape = "Default", (self.shapes[x][1],)
        else:
            self._only(attrs, {"axis": None, "epsilon": None, "stash_type": lambda v: v == 1}, node)
            axis = attrs.get("axis", -1) % rank
            if axis == 0:
                raise _Unsupported("axis=0 normalises over the batch axis")
            levels, pshape = axis - rank, tuple(self.shapes[x][axis:])
        layer = N.NormalizationLayer(levels, epsilon=float(attrs.get("epsilon", 1e-5)), input=tuple(self.shapes[x][1:]))
        shared = {"Scaling": self._array(node, 1, pshape)}
        biases = self._array(node, 2, pshape)
        if biases is not None:
            shared["Biases"] = biases
        layer = layer._with_spec(dict(layer._spec, shared={a: s.name for a, s in shared.items()}), {})
        if biases is None:  # LayerNormalization without B: zero biases of the layer's own
            layer = NetReplacePart(layer, {"Biases": np.zeros(pshape, np.float32)})
        self.source[node.output[0]] = self._add(name, layer, {"Input": x})

    def _conv(self, node, attrs, name, C):
        x = self._dynamic(node, 0)
        w = self.constants.get(node.input[1])
        if w is None:
            raise _Unsupported("the weights must be a constant (an initializer)")
        spatial = w.ndim - 2
        if not 1 <= spatial <= 3:
            raise _Unsupported(f"{spatial} spatial dimensions (1 to 3 are supported)")
        allowed = {"kernel_shape": lambda v: list(v) == list(w.shape[2:]), "strides": None, "pads": None,
                   "dilations": None, "group": None, "auto_pad": None}
        if node.op_type == "ConvTranspose":
            allowed["output_padding"] = lambda v: not any(v)
        self._only(attrs, allowed, node)
        stride, padding, dilation = self._window(node, attrs, spatial)
        g = int(attrs.get("group", 1))
        n = w.shape[0] if node.op_type == "Conv" else w.shape[1] * g
        biases = self._array(node, 2, (n,)) if len(node.input) > 2 and node.input[2] else False
        Layer = C.ConvolutionLayer if node.op_type == "Conv" else C.DeconvolutionLayer
        layer = Layer(n, tuple(w.shape[2:]), stride=stride, padding=padding, dilation=dilation, channel_groups=g,
                      biases=biases, weights=self._array(node, 1))
        self.source[node.output[0]] = self._add(name, layer, {"Input": x})

    def _pool(self, node, attrs, name, C):
        if len([o for o in node.output if o]) > 1:
            raise _Unsupported("the Indices output is not supported")
        x = self._dynamic(node, 0)
        kernel = list(attrs.get("kernel_shape", []))
        allowed = {"kernel_shape": None, "strides": None, "pads": None, "auto_pad": None,
                   "ceil_mode": lambda v: v == 0, "dilations": lambda v: all(d == 1 for d in v),
                   "storage_order": lambda v: v == 0, "count_include_pad": None}
        self._only(attrs, allowed, node)
        stride, padding, _ = self._window(node, attrs, len(kernel))
        if node.op_type == "AveragePool" and not attrs.get("count_include_pad", 0) and (
                padding == "Same" or any(p != (0, 0) for p in (padding or []))):
            raise _Unsupported("padding without count_include_pad=1 (portgrad's mean pooling counts padded positions)")
        layer = C.PoolingLayer(tuple(kernel), stride=stride, padding=padding,
                               function="Max" if node.op_type == "MaxPool" else "Mean")
        self.source[node.output[0]] = self._add(name, layer, {"Input": x})

    def _reduce(self, node, attrs, name, L, T):
        x = self._dynamic(node, 0)
        rank = self._rank(x)
        self._only(attrs, {"axes": None, "keepdims": None, "noop_with_empty_axes": lambda v: v == 0}, node)
        # axes: an attribute, or from opset 18 (13 for ReduceSum) an input
        as_input = self.opset >= (13 if node.op_type == "ReduceSum" else 18)
        axes = self._int_input(node, 1) if as_input else attrs.get("axes")
        axes = sorted({a % rank for a in (axes if axes else range(rank))})
        if 0 in axes:
            raise _Unsupported("it reduces over the batch axis")
        f = {"ReduceMean": "Mean", "ReduceSum": "Total", "ReduceMax": "Max", "ReduceMin": "Min"}[node.op_type]
        reduced = self._add(name, T.AggregationLayer(f, [a - 1 for a in axes]), {"Input": x})
        if not attrs.get("keepdims", 1):
            self.source[node.output[0]] = reduced
            return
        key = node.output[0] + "\0reduced"
        self.source[key] = reduced
        self.source[node.output[0]] = self._add(self._unique(name + ".reshape"), L.ReshapeLayer(self._out_shape(node)),
                                                {"Input": key})

    def _reshape(self, node, attrs, name, L):
        x = self._dynamic(node, 0)
        if node.op_type == "Reshape":
            self._only(attrs, {"allowzero": None}, node)
            target = self._int_input(node, 1)
            if target is None:
                raise _Unsupported("the new shape must be a constant")
        else:
            self._only(attrs, {"axes": None}, node)
            axes = attrs.get("axes") if self.opset < 13 else self._int_input(node, 1)
            rank = self._rank(node.output[0] if node.op_type == "Unsqueeze" else x)
            if axes is not None and any(a % rank == 0 for a in axes):
                raise _Unsupported("it squeezes or unsqueezes the batch axis")
        shape = self._out_shape(node)
        in_shape = self.shapes.get(x)
        if in_shape is not None and in_shape[0] is not None and self.shapes[node.output[0]][0] != in_shape[0]:
            raise _Unsupported("it changes the batch axis")
        self.source[node.output[0]] = self._add(name, L.ReshapeLayer(shape), {"Input": x})
