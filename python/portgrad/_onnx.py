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
from ._onnx_fold import _run, _shapes, attributes, batch_dependent, fold, to_array

_MIN_OPSET, _MAX_OPSET = 11, 28  # 23 to 28 changed none of the ops imported here but for new element types

# ONNX op -> ElementwiseLayer function, for ops without attributes that change the function.
_UNARY = {"Relu": "Ramp", "Sigmoid": "LogisticSigmoid", "Tanh": "Tanh", "Softplus": "SoftPlus", "Softsign": "SoftSign",
          "Mish": "Mish", "HardSwish": "HardSwish", "Erf": "Erf", "Exp": "Exp", "Log": "Log", "Abs": "Abs",
          "Sqrt": "Sqrt", "Sin": "Sin", "Cos": "Cos"}
# ONNX op -> ThreadingLayer function (numpy broadcasting, as ONNX's multidirectional broadcasting).
# Comparisons and logic on computed data: masks of 1 and 0 (And is a product, Or a maximum).
_BINARY = {"Add": "Plus", "Sub": "Subtract", "Mul": "Times", "Div": "Divide", "Pow": "Power", "Max": "Max",
           "Min": "Min", "Greater": "Greater", "GreaterOrEqual": "GreaterEqual", "Less": "Less",
           "LessOrEqual": "LessEqual", "Equal": "Equal", "And": "Times", "Or": "Max"}
_SELU = (1.67326319217681884765625, 1.05070102214813232421875)  # ONNX's default alpha, gamma


class _Unsupported(Exception):
    """A node portgrad cannot import; the message says why (collected, then raised together)."""


class _AfterUnsupported(Exception):
    """A node fed by one that could not be imported: not listed (its cause is)."""


class _BakedBatch(ValueError):
    """import_onnx's error when some node split the batch axis."""


class _BatchSplit(_Unsupported):
    """A reshape that splits the batch axis: with a stand-in batch size, the mark of a model that
    bakes its export's batch size into its shapes."""


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
    batches = set()
    initializers = {t.name for t in model.graph.initializer}
    for info in model.graph.input:
        dims = info.type.tensor_type.shape.dim
        if info.name not in initializers and len(dims) > 0 and dims[0].HasField("dim_value"):
            batches.add(dims[0].dim_value)
    try:
        return _Importer(onnx, model, _STAND_IN_BATCH).net()
    except ValueError:
        if len(batches) != 1:
            raise
    # A model with a fixed batch size may have it in its shapes (a reshape to (3, -1)): read it with
    # that size (each example is then computed as the model computes a batch of that size; a batch
    # of one is exact), and report what fails then.
    try:
        return _Importer(onnx, model, batches.pop()).net()
    except _BakedBatch as e:
        raise ValueError(str(e)) from None


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


_HUGE = 1e30  # what a constant's infinities become
_STAND_IN_BATCH = 1_000_003  # a prime no real dimension is: where it shows up in a shape, there is the batch


def _prod(values):
    p = 1
    for v in values:
        p *= int(v)
    return p


class _Inputs:
    """A stand-in node with the given inputs (for the helpers that read a node's inputs)."""

    def __init__(self, inputs, outputs=(), op_type=""):
        self.input, self.output, self.op_type = list(inputs), list(outputs), op_type


class _View:
    """How a computed ONNX value is held. `src` (a NetGraph edge source) gives each example as an array
    of shape `pshape`. The ONNX tensor is the batch of these examples with the batch axis placed after
    the first `q` axes of an example, and the resulting axes ("factors", in that order) grouped
    into the ONNX tensor's axes: `groups[d]` consecutive factors make ONNX axis d. The plain case
    (q = 0, every group one factor) is the ONNX tensor (batch, *pshape); the others arise where a
    model moves the batch axis (PyTorch's attention works on (sequence, batch * heads, features)).
    """

    __slots__ = ("src", "pshape", "q", "groups")

    def __init__(self, src, pshape, q=0, groups=None):
        self.src, self.pshape, self.q = src, tuple(int(d) for d in pshape), int(q)
        self.groups = tuple(groups) if groups is not None else (1,) * (len(self.pshape) + 1)

    def factors(self):
        """The factors in ONNX order: the example's axes (ints) and "B"."""
        return list(range(self.q)) + ["B"] + list(range(self.q, len(self.pshape)))

    def spans(self):
        """The factors of each ONNX axis."""
        f, out, k = self.factors(), [], 0
        for g in self.groups:
            out.append(f[k:k + g])
            k += g
        return out

    def rank(self):
        return len(self.groups)

    def structure(self):
        return self.q, self.groups

    def full_shape(self, batch):
        return [_prod(batch if f == "B" else self.pshape[f] for f in span) for span in self.spans()]

    def axis(self, d):
        """The example's axis that ONNX axis d is, or None where d holds the batch or several factors."""
        span = self.spans()[d]
        return span[0] if len(span) == 1 and span[0] != "B" else None


class _Importer:
    def __init__(self, onnx, model, batch):
        self.onnx = onnx
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None or not _MIN_OPSET <= self.opset <= _MAX_OPSET:
            raise ValueError(f"import_onnx: the model uses ONNX opset {self.opset}; portgrad imports opsets "
                             f"{_MIN_OPSET} to {_MAX_OPSET} (convert it with onnx.version_converter)")
        self.declared = {}  # input name -> its declared shape (None for symbolic dimensions), before folding
        for info in model.graph.input:
            t = info.type.tensor_type
            if t.HasField("shape"):
                self.declared[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        self.batch = batch
        folded, self.file_tensors = fold(onnx, model, batch, self.opset)
        self.batch_dependent = batch_dependent(onnx, model, folded, batch, self.opset)
        model = folded
        self.graph = model.graph
        self.constants = {t.name: to_array(onnx, t, "initializer") for t in self.graph.initializer}
        self.shapes = _shapes(onnx, model)  # value name -> full ONNX shape (batch included), None where unknown
        self.layers = {}    # layer name -> Net
        self.edges = []     # NetGraph edges
        self.views = {}     # computed ONNX value -> _View
        self.arrays = {}    # shared array name -> values
        self.inputs = {}    # input port -> per-example shape
        self.failed = set()  # values of nodes that could not be imported
        # ConstantOfShape of a shape that holds the batch size (PyTorch's zero initial state of a
        # recurrent node): its fill value, never materialised; a recurrent node reads zeros as "none".
        self.batch_fills = {}
        # A constant computed from another by a reshape or a transpose (dynamo writes Transpose(W)):
        # value name -> (the stored tensor's name, [("reshape", shape) | ("transpose", perm)]), so its
        # layers read the stored tensor and its gradient is the stored tensor's.
        self.derived = {}
        self.weights = set()      # arrays in parameter slots or products' weights: learned
        self.const_layers = []    # (ConstantArrayLayer name, its array)

    # ------------------------------------------------------------------ the graph
    def net(self):
        from ._graph import NetGraph

        for info in self.graph.input:
            if info.name in self.constants:
                continue  # an initializer listed as an input (older exporters)
            self.inputs[info.name] = self._input_shape(info)
            self.views[info.name] = _View(NetPort(info.name), self.inputs[info.name])
        unsupported = []
        needed = self._needed()
        split = False
        for k, node in enumerate(self.graph.node):
            if k not in needed:
                continue  # computes nothing an output depends on (a Dropout mask, a dead branch)
            try:
                self._node(node, k)
            except _Unsupported as e:
                split = split or isinstance(e, _BatchSplit)
                unsupported.append(f"{node.name or f'node {k}'} ({node.op_type}): {e}")
                self.failed.update(node.output)
            except _AfterUnsupported:
                self.failed.update(node.output)
        outputs = []
        for out in self.graph.output:
            if out.name in self.failed:
                continue
            if out.name not in self.views:
                raise ValueError(f"import_onnx: output {out.name!r} is a constant of the model, not computed by a "
                                 "node; portgrad nets compute their outputs from their inputs")
            v = self.views[out.name]
            if isinstance(v.src, NetPort):  # an input passed through: a layer must compute the port
                self.views[out.name] = _View(self._emit(f"{out.name}.identity", _layers().ReshapeLayer(v.pshape),
                                                        {"Input": v.src}), v.pshape, v.q, v.groups)
            try:
                outputs.append((self._plain(out.name, f"{out.name}.output"), NetPort(out.name)))
            except _Unsupported as e:
                unsupported.append(f"output {out.name!r}: {e}")
        if unsupported:
            msg = (f"import_onnx: {len(unsupported)} node{'s' if len(unsupported) > 1 else ''} of this model "
                   f"(opset {self.opset}) cannot be imported:\n  " + "\n  ".join(unsupported))
            if split:
                msg += ("\n(a shape that splits the batch axis is often one the exporter wrote for a fixed batch "
                        "size: export with a dynamic batch axis)")
            raise (_BakedBatch if split else ValueError)(msg)
        self.edges.extend(outputs)
        if not self.layers:
            raise ValueError("import_onnx: the model has no node to import")
        # Learned: the arrays of parameter slots and products, and every other tensor the file stores
        # but scalars (a bias or a positional embedding added; not an attention scale, GELU's
        # constants, or what import computed from constants, such as a causal mask).
        for layer, array in self.const_layers:
            if array not in self.weights and (self.arrays[array].size <= 1 or array not in self.file_tensors):
                c = self.layers[layer]
                self.layers[layer] = c._with_spec(dict(c._spec, learnable=False), {})
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
        shape = self.declared.get(info.name)
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

    def _show_full(self, shape):
        def one(d):
            if self.batch == _STAND_IN_BATCH and d % self.batch == 0:
                return "batch" if d == self.batch else f"{d // self.batch}×batch"
            return str(d)
        return "(" + ", ".join(one(d) for d in shape) + ")"

    def _layer_name(self, node, k, suffix=""):
        base = (node.name or f"{node.op_type}_{k}").replace("/", ".").strip(".") or f"{node.op_type}_{k}"
        return self._unique(base + suffix)

    def _unique(self, name):
        base, n = name, 1
        while name in self.layers:
            n += 1
            name = f"{base}_{n}"
        return name

    def _emit(self, name, layer, sources):
        """Adds a layer fed from edge sources ({port: source}); returns its name (its output's source)."""
        name = self._unique(name)
        self.layers[name] = layer
        for port, src in sources.items():
            self.edges.append((src, NetPort(name, port)))
        return name

    # ------------------------------------------------------------------ values and their views
    def _view(self, node, i):
        """The view of input i, which must be computed (not a constant)."""
        name = node.input[i]
        if name in self.failed:
            raise _AfterUnsupported()
        if name in self.batch_fills:
            raise _Unsupported(f"input {i} ({name!r}) is a constant filled to a shape that holds the batch size; "
                               "portgrad computes each example alone (only a recurrent node's zero initial state is "
                               "taken as one)")
        if name in self.constants:
            c = np.asarray(self.constants[name])
            hint = ""
            if self.batch > 1 and c.ndim >= 2 and c.shape[0] == self.batch:
                hint = (f" (its shape {c.shape} starts with the batch size: if an exporter folded something broadcast "
                        "over the batch into one copy per example, such as a class token's expand, export with a "
                        "dynamic batch axis)")
            raise _Unsupported(f"input {i} ({name!r}) is a constant here; portgrad takes it only as computed data"
                               + hint)
        if name not in self.views:
            raise _Unsupported(f"input {i} ({name!r}) is not computed by an imported node")
        return self.views[name]

    def _plain(self, value, name):
        """The source of `value` as (batch, *shape) examples: its factors regrouped into its ONNX axes."""
        v = self.views[value]
        spans = v.spans()
        if spans[0] != ["B"]:
            where = next(d for d, s in enumerate(spans) if "B" in s)
            raise _Unsupported(f"{value!r} has the batch {'in' if len(spans[where]) > 1 else 'as'} its axis {where} "
                               f"(shape {self._show_full(v.full_shape(self.batch))}); portgrad needs it as the first "
                               "axis here")
        shape = tuple(v.full_shape(self.batch)[1:])
        if shape == v.pshape:
            return v.src
        return self._emit(name + ".reshape", _layers().ReshapeLayer(shape), {"Input": v.src})

    def _plain_view(self, node, i, name):
        """Input i as (batch, *shape) examples: (source, per-example shape)."""
        v = self._view(node, i)
        return self._plain(node.input[i], name), tuple(v.full_shape(self.batch)[1:])

    def _regroup(self, v, target, name):
        """The view of v's tensor reshaped to the ONNX shape `target` (the batch included, as the
        number self.batch): a ReshapeLayer on the examples where their axes change."""
        b = self.batch
        pre, post = v.pshape[:v.q], v.pshape[v.q:]
        s_post = _prod(post)
        s_b = b * s_post
        total = _prod(pre) * s_b
        target = [int(d) for d in target]
        if any(d < 1 for d in target) or any(d < 1 for d in v.pshape):
            raise _Unsupported("empty tensors are not supported")
        if _prod(target) != total:  # (a shape written for the export's batch size, read with another)
            raise _BatchSplit(f"the shape {self._show_full(target)} has {_prod(target)} elements; the input has "
                               f"{total}")
        factors, groups = [], []   # inner to outer: (size or "B"), and the factor count per target axis
        placed = False
        stride = 1
        for j in range(len(target) - 1, -1, -1):
            d = target[j]
            lo, hi = stride, stride * d
            if s_post < lo < s_b or s_post < hi < s_b:
                raise _BatchSplit(f"the shape {self._show_full(target)} splits the batch axis (axis {j} of size {d})")
            cuts = sorted({lo, hi} | {c for c in (s_post, s_b) if lo < c < hi})
            here = []
            for a, c in zip(cuts, cuts[1:]):
                if a == s_post and c == s_b:
                    here.append("B")
                    placed = True
                elif c % a:
                    raise _Unsupported(f"the shape {self._show_full(target)} does not split the input's axes evenly")
                else:
                    here.append(c // a)
            if not placed and b == 1 and d == 1 and lo == s_post:  # a batch of one: an axis of 1 where it stands
                here = ["B"]
                placed = True
            elif not placed and b == 1 and lo <= s_post < hi:  # (or within an axis, at its place)
                here.insert(cuts.index(s_post), "B")
                placed = True
            if not here:
                here = [1]
            factors.extend(here)
            groups.append(len(here))
            stride = hi
        if not placed:
            factors.append("B")
            groups[-1] += 1
        factors.reverse()
        groups.reverse()
        q = factors.index("B")
        pshape = tuple(f for f in factors if f != "B")
        src = v.src
        if pshape != v.pshape:  # the same elements in the same order: only the example's axes change
            src = self._emit(name, _layers().ReshapeLayer(pshape), {"Input": src})
        return _View(src, pshape, q, groups)

    def _transposed(self, v, perm, name):
        if sorted(perm) != list(range(v.rank())):
            raise _Unsupported(f"perm={list(perm)} is not a permutation of the {v.rank()} axes")
        spans = v.spans()
        order = [f for p in perm for f in spans[p]]
        axes = [f for f in order if f != "B"]
        src, pshape = v.src, v.pshape
        if axes != sorted(axes):
            src = self._emit(name, _structure().TransposeLayer(tuple(axes)), {"Input": src})
            pshape = tuple(v.pshape[a] for a in axes)
        return _View(src, pshape, order.index("B"), [len(spans[p]) for p in perm])

    def _aligned_constant(self, node, i, v, name, weight=False):
        """Constant input i broadcast against view v (numpy's rule on the ONNX shapes), as the output of
        a ConstantArrayLayer holding it as stored (a shared array) and reshaped to v's example axes."""
        if node.input[i] in self.failed:
            raise _AfterUnsupported()
        c = self.constants.get(node.input[i])
        if c is None:
            raise _Unsupported(f"input {i} ({node.input[i]!r}) is computed; portgrad takes it only as a constant")
        if node.input[i] in self.batch_dependent:
            raise _Unsupported(f"input {i} ({node.input[i]!r}) is computed from the batch size; portgrad computes "
                               "each example alone, so no value may depend on how many there are")
        if c.dtype.kind not in "fiub":
            raise _Unsupported(f"input {i} ({node.input[i]!r}) is a {c.dtype} constant; arrays must be numbers")
        rank = v.rank()
        if c.ndim > rank:
            raise _Unsupported(f"constant {node.input[i]!r} of shape {c.shape} has more axes than the data it meets")
        padded = (1,) * (rank - c.ndim) + tuple(c.shape)
        full = v.full_shape(self.batch)
        aligned = []
        for d, (span, size) in enumerate(zip(v.spans(), padded)):
            if size == 1:
                aligned.extend(1 for f in span if f != "B")
            elif "B" in span:
                raise _Unsupported(f"constant {node.input[i]!r} of shape {c.shape} varies along the batch axis")
            elif full[d] == 1 and len(span) == 1:  # the data broadcasts along this axis
                aligned.append(size)
            elif size != full[d]:
                raise _Unsupported(f"constant {node.input[i]!r} of shape {c.shape} does not broadcast against "
                                   f"{self._show_full(full)}")
            else:
                aligned.extend(v.pshape[f] for f in span)
        src = self._const_source(node, i, name, weight)
        if tuple(aligned) != tuple(c.shape):
            src = self._emit(f"{name}.const{i + 1}.reshape", _layers().ReshapeLayer(tuple(aligned)), {"Input": src})
        return src, tuple(aligned)

    def _const_source(self, node, i, name, weight=False):
        """Constant input i as the output of a ConstantArrayLayer of the stored tensor (a shared
        array), reshaped and transposed as the model derives it. `weight`: it is a product's weight
        (learned); otherwise it is learned unless it is a scalar (see net())."""
        value = node.input[i]
        base, ops = self.derived.get(value, (value, []))
        a = self._array(_Inputs([base]), 0, weight=weight)
        const = _structure().ConstantArrayLayer(shape=tuple(self.arrays[a.name].shape))
        const = const._with_spec(dict(const._spec, shared={"Array": a.name}), {})
        src = self._emit(f"{name}.const{i + 1}", const, {})
        self.const_layers.append((src, a.name))
        for k, (op, arg) in enumerate(ops):
            layer = _layers().ReshapeLayer(arg) if op == "reshape" else _structure().TransposeLayer(arg)
            src = self._emit(f"{name}.const{i + 1}.{op}", layer, {"Input": src})
        return src

    # ------------------------------------------------------------------ helpers of the converters
    def _attrs(self, node):
        return attributes(self.onnx, node)

    def _array(self, node, i, shape=None, weight=True):
        """The name of input i as a shared array: a float constant (of `shape`, when given). `weight`:
        it fills a layer's parameter slot (weights, biases, scales), so it is learned."""
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            return None
        if name in self.failed:
            raise _AfterUnsupported()
        a = self.constants.get(name)
        if a is None:
            raise _Unsupported(f"input {i} ({name!r}) is computed; portgrad takes it only as a constant array "
                               "(an initializer)")
        if a.dtype.kind != "f" and (weight or a.dtype.kind not in "iub"):
            raise _Unsupported(f"input {i} ({name!r}) is a {a.dtype} constant; arrays must be float")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise _Unsupported(f"input {i} ({name!r}) has shape {tuple(a.shape)}; expected {tuple(shape)}")
        if name in self.batch_dependent:
            raise _Unsupported(f"input {i} ({name!r}) is computed from the batch size; portgrad computes each "
                               "example alone, so no value may depend on how many there are")
        base, ops = self.derived.get(name, (name, []))
        if ops:
            raise _Unsupported(f"input {i} ({name!r}) is a reshaped or transposed constant; portgrad takes it here "
                               "only as stored")
        a = self.constants[base]
        if a.dtype.kind in "iub":  # an integer or boolean operand (an exponent, a mask): its value as a float
            if np.any(np.abs(a.astype(np.float64)) > _HUGE):
                raise _Unsupported(f"input {i} ({name!r}) holds integers too large for an array")
            a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            if np.any(np.isnan(a)):
                raise _Unsupported(f"input {i} ({name!r}) holds NaN; portgrad's arrays are finite")
            # An attention mask's -inf: portgrad's arrays are finite, and -1e30 gives the same softmax
            # (exp underflows to exactly 0) wherever a row keeps one unmasked entry.
            a = np.clip(a, -_HUGE, _HUGE)
        self.arrays[base] = a
        if weight:
            self.weights.add(base)
        return NetSharedArray(base)

    def _out_shape(self, node, o=0):
        """The full ONNX shape of output o (static: the batch is a number here)."""
        shape = self.shapes.get(node.output[o])
        if shape is None or any(d is None for d in shape):
            raise _Unsupported("the shape of its output is unknown (ONNX shape inference could not find it)")
        return shape

    def _int_input(self, node, i):
        name = node.input[i] if len(node.input) > i else ""
        if not name:
            return None
        if name not in self.constants:
            raise _Unsupported(f"input {i} ({name!r}) must be a constant")
        return [int(v) for v in np.asarray(self.constants[name]).reshape(-1)]

    @staticmethod
    def _only(attrs, allowed):
        for k, v in attrs.items():
            if k in allowed:
                ok = allowed[k]
                if callable(ok) and not ok(v):
                    raise _Unsupported(f"attribute {k}={v!r} is not supported")
            else:
                raise _Unsupported(f"attribute {k!r} is not supported")

    @staticmethod
    def _window(attrs, spatial, kernel=None, sizes=None):
        """Conv/pool attributes -> (stride, padding, dilation) options for `spatial` dimensions. With
        the kernel and the input's spatial sizes, SAME_LOWER becomes explicit padding (the extra one
        at the start)."""
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        pads = list(attrs.get("pads", [0] * (2 * spatial)))
        for key, n in (("pads", 2 * spatial), ("strides", spatial), ("dilations", spatial)):
            if key in attrs and len(attrs[key]) != n:
                raise _Unsupported(f"{key} has {len(attrs[key])} entries; {n} expected for {spatial} spatial axes")
        stride = list(attrs.get("strides", [1] * spatial))
        dilation = list(attrs.get("dilations", [1] * spatial))
        if auto in ("SAME_UPPER",):
            padding = "Same"
        elif auto in ("NOTSET", "VALID"):
            padding = [(pads[k], pads[k + spatial]) for k in range(spatial)] if auto == "NOTSET" else 0
        elif auto == "SAME_LOWER" and kernel is not None and sizes is not None:
            padding = []
            for n, k, s, d in zip(sizes, kernel, stride, dilation):
                total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
                padding.append((total - total // 2, total // 2))
        else:
            raise _Unsupported(f"auto_pad={auto} is not supported here")
        return stride, padding, dilation

    @staticmethod
    def _deconv_window(attrs, spatial, kernel, sizes):
        """ConvTranspose attributes -> (stride, crops, dilation, {output_padding}). With output_shape or
        auto_pad SAME_*, the crops come from ONNX's total padding: stride*(in-1) + output_padding +
        dilation*(k-1) + 1 - output size, split with the odd one at the end for SAME_UPPER and at the
        start otherwise; a negative end crop is output padding."""
        op = [int(v) for v in attrs.get("output_padding", [0] * spatial)]
        if len(op) != spatial:
            raise _Unsupported(f"output_padding has {len(op)} entries; {spatial} expected for {spatial} spatial axes")
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        target = None
        if "output_shape" in attrs:
            target = [int(v) for v in attrs["output_shape"]][-spatial:]
            if len(attrs["output_shape"]) not in (spatial, spatial + 2):
                raise _Unsupported(f"output_shape={list(attrs['output_shape'])} has neither {spatial} nor "
                                   f"{spatial + 2} entries")
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            target = None
        else:
            stride, padding, dilation = _Importer._window(attrs, spatial)
            return stride, padding, dilation, ({"output_padding": op} if any(op) else {})
        stride = list(attrs.get("strides", [1] * spatial))
        dilation = list(attrs.get("dilations", [1] * spatial))
        if target is None:
            target = [n * s for n, s in zip(sizes, stride)]
        padding, extra = [], [0] * spatial
        for d in range(spatial):
            total = stride[d] * (sizes[d] - 1) + op[d] + dilation[d] * (kernel[d] - 1) + 1 - target[d]
            lo, hi = (total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2)
            if lo < 0:
                raise _Unsupported(f"an output size of {target[d]} in spatial axis {d} pads the start "
                                   f"of the output (only the end can grow)")
            hi -= op[d]  # the output size is the full size + output_padding - the crops
            if hi < 0:
                extra[d], hi = -hi, 0
            padding.append((lo, hi))
        return stride, padding, dilation, ({"output_padding": extra} if any(extra) else {})

    def _expands_over_the_batch(self, node):
        """Whether this Expand broadcasts a constant along the batch axis (a ViT's class token,
        cls.expand(x.shape[0], -1, -1)): its target shape is a constant that holds the batch size first."""
        if len(node.input) < 2 or node.input[0] not in self.constants or node.input[1] not in self.constants:
            return False
        c, shape = self.constants[node.input[0]], self._int_input(node, 1)
        if c.dtype.kind != "f" or (self.batch == 1 and node.input[1] not in self.batch_dependent):
            return False  # shape arithmetic, or a batch of one that cannot be told from a constant axis
        try:
            target = np.broadcast_shapes(c.shape, tuple(shape))
        except ValueError:
            return False
        padded = (1,) * (len(target) - c.ndim) + tuple(c.shape)
        return len(target) >= 1 and target[0] == self.batch and padded[0] == 1

    def _expand_constant(self, node, name):
        """Expand of a constant over the batch: the stored tensor as a ConstantArrayLayer (the same
        for every example; its gradient summed over the batch), its example axes expanded as data's."""
        c, shape = self.constants[node.input[0]], self._int_input(node, 1)
        target = np.broadcast_shapes(c.shape, tuple(shape))
        example = ((1,) * (len(target) - c.ndim) + tuple(c.shape))[1:]
        base, ops = self.derived.get(node.input[0], (node.input[0], []))
        if all(op == "reshape" for op, _ in ops):  # (an Unsqueeze of the stored tensor: only its size matters)
            src = self._const_source(_Inputs([base]), 0, name)
            have = tuple(self.constants[base].shape)
        else:
            src, have = self._const_source(node, 0, name), tuple(c.shape)
        if tuple(example) != have:
            src = self._emit(f"{name}.example", _layers().ReshapeLayer(tuple(example)), {"Input": src})
        if tuple(example) == tuple(target[1:]):
            self.views[node.output[0]] = _View(src, tuple(example))
            return
        held = f"{node.output[0]}:per_example"
        self.views[held] = _View(src, tuple(example))
        self._masked(_Inputs([held, node.input[1]], node.output, "Expand"), name)

    def _single_axis(self, v, d, what):
        """The example axis of ONNX axis d of view v (one factor, not the batch)."""
        d = d % v.rank()
        a = v.axis(d)
        if a is None:
            raise _Unsupported(f"{what} along axis {d}, which holds the batch" if "B" in v.spans()[d] else
                               f"{what} along axis {d}, which portgrad holds as several axes")
        return a

    # ------------------------------------------------------------------ the ops
    def _node(self, node, k):
        op, attrs = node.op_type, self._attrs(node)
        if node.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"operators of domain {node.domain!r} are not supported")
        name = self._layer_name(node, k)
        out = node.output[0] if node.output else None
        L, T = _layers(), _structure()

        def same_view(src, v, pshape=None):
            self.views[out] = _View(src, v.pshape if pshape is None else pshape, v.q, v.groups)

        if op == "Constant":
            self._constant(node, attrs)
            return
        ins = [i for i in node.input if i]
        if op == "ConstantOfShape" and node.input and node.input[0] in self.batch_dependent and out:
            value = attrs.get("value")
            fill = np.asarray(to_array(self.onnx, value, "value")).reshape(-1) if value is not None else np.zeros(1)
            self.batch_fills[out] = float(fill[0]) if fill.size else 0.0
            self.batch_dependent.add(out)
            return
        if op == "Expand" and self._expands_over_the_batch(node):
            self._expand_constant(node, name)
            return
        if ins and all(i in self.constants for i in ins) and op not in ("Identity", "Dropout", "Flatten", "Reshape",
                                                                        "Squeeze", "Unsqueeze", "Transpose"):
            # Arithmetic on stored constants (TorchScript's attention scale, 1 / sqrt(d)): evaluated here, a
            # constant array of its own name (the stored operands get no gradient through it).
            values = _run(self.onnx, node, {i: self.constants[i] for i in ins}, self.opset)
            if values is None:
                raise _Unsupported("cannot evaluate it on its constant inputs")
            for o, value in zip([o for o in node.output if o], values):
                self.constants[o] = value
                if any(i in self.batch_dependent for i in ins):
                    self.batch_dependent.add(o)
            return
        if op in ("Identity", "Dropout") or (op == "Cast" and node.input[0] not in self.constants):
            if op == "Dropout" and len(node.output) > 1 and node.output[1]:
                raise _Unsupported("the mask output is not supported")
            if op == "Dropout" and len(node.input) > 2 and node.input[2] and (
                    node.input[2] not in self.constants or bool(np.asarray(self.constants[node.input[2]]).reshape(-1)[0])):
                raise _Unsupported("training_mode=True (portgrad imports a model for inference; its DropoutLayer "
                                   "draws its own masks in NetEvaluationMode='Train')")
            if op == "Cast" and attrs.get("to") not in (self.onnx.TensorProto.FLOAT, self.onnx.TensorProto.DOUBLE):
                raise _Unsupported("casts of computed data to types other than float are not supported")
            if node.input[0] in self.constants:  # another name of a constant: the array keeps its own
                self._derive(node, None)
                return
            self.views[out] = self._view(node, 0)  # (Dropout is the identity in inference; portgrad computes
            return                                  # in the working precision the call asks for)
        if op in _UNARY:
            self._only(attrs, {})
            v = self._view(node, 0)
            same_view(self._emit(name, L.ElementwiseLayer(_UNARY[op]), {"Input": v.src}), v)
            return
        if op in ("LeakyRelu", "PRelu", "Neg", "Reciprocal", "Clip") or (
                op == "Elu" and abs(attrs.get("alpha", 1.0) - 1.0) >= 1e-7) or (
                op == "Selu" and (abs(attrs.get("alpha", _SELU[0]) - _SELU[0]) >= 1e-6 or
                                  abs(attrs.get("gamma", _SELU[1]) - _SELU[1]) >= 1e-6)) or (
                op == "HardSigmoid" and (attrs.get("alpha", 0.2), attrs.get("beta", 0.5)) != (0.5, 0.5)):
            self._composed(node, attrs, name)
            return
        if op == "Gelu" and attrs.get("approximate", b"none") in (b"tanh", "tanh"):
            self._composed(node, attrs, name)
            return
        if op in ("Elu", "Selu", "HardSigmoid", "Gelu"):
            v = self._view(node, 0)
            same_view(self._emit(name, L.ElementwiseLayer(self._parametric(node, attrs)), {"Input": v.src}), v)
            return
        if op == "Not":  # 1 - x on a mask of 1 and 0
            v = self._view(node, 0)
            src = self._emit(name, T.ThreadingLayer("Subtract"),
                             {"Input1": self._scalar(1.0, f"{name}.one"), "Input2": v.src})
            self.views[out] = _View(src, v.pshape, v.q, v.groups)
            return
        if op == "Xor":  # on masks of 1 and 0: 1 - Equal(a, b)
            self._binary(_Inputs(node.input, [f"{out}:equal"]), f"{name}.equal", "Equal")
            v = self.views[f"{out}:equal"]
            src = self._emit(name, T.ThreadingLayer("Subtract"),
                             {"Input1": self._scalar(1.0, f"{name}.one"), "Input2": v.src})
            self.views[out] = _View(src, v.pshape, v.q, v.groups)
            return
        if op == "Mod":  # fmod=1: C's fmod (the sign of the dividend); 0: floored, numpy's mod
            self._only(attrs, {"fmod": lambda v: v in (0, 1)})
            self._binary(node, name, "FMod" if attrs.get("fmod", 0) else "Mod")
            return
        if op in _BINARY or op == "Sum":
            if len(node.input) == 1:  # Sum, Max and Min of one input: the identity
                self.views[out] = self._view(node, 0)
                return
            self._binary(node, name, _BINARY.get(op, "Plus"))
            return
        if op == "Gather":
            self._gather(node, attrs, name)
            return
        if op in ("Softmax", "LogSoftmax"):
            self._softmax(node, attrs, name)
            return
        if op in ("Gemm", "MatMul"):
            self._matmul(node, attrs, name)
            return
        if op in ("Conv", "ConvTranspose"):
            self._conv(node, attrs, name)
            return
        if op in ("MaxPool", "AveragePool"):
            self._pool(node, attrs, name)
            return
        if op in ("GlobalAveragePool", "GlobalMaxPool"):
            # Over every spatial axis: (c, spatial...) -> (c,), then ONNX's (c, 1, ...).
            x, shape = self._plain_view(node, 0, name)
            pooled = self._emit(name, T.AggregationLayer("Mean" if op == "GlobalAveragePool" else "Max"), {"Input": x})
            full = self._out_shape(node)
            self.views[out] = _View(self._emit(name + ".reshape", L.ReshapeLayer(tuple(full[1:])), {"Input": pooled}),
                                    full[1:])
            return
        if op == "BatchNormalization":
            self._only(attrs, {"epsilon": None, "momentum": None, "training_mode": lambda v: v == 0})
            if len([o for o in node.output if o]) > 1:
                raise _Unsupported("the training outputs (running mean and variance) are not supported")
            x, shape = self._plain_view(node, 0, name)
            c = shape[0]
            shared = {"Scaling": self._array(node, 1, (c,)), "Biases": self._array(node, 2, (c,)),
                      "MovingMean": self._array(node, 3, (c,)), "MovingVariance": self._array(node, 4, (c,))}
            layer = _norm().BatchNormalizationLayer(epsilon=float(attrs.get("epsilon", 1e-5)), scaling=shared["Scaling"],
                                                    biases=shared["Biases"], moving_mean=shared["MovingMean"],
                                                    moving_variance=shared["MovingVariance"])
            self.views[out] = _View(self._emit(name, layer, {"Input": x}), shape)
            return
        if op in ("LayerNormalization", "InstanceNormalization"):
            self._normalization(node, attrs, name)
            return
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose") and node.input[0] in self.constants:
            perm = attrs.get("perm", range(self.constants[node.input[0]].ndim)[::-1])
            self._derive(node, ("transpose", tuple(int(p) for p in perm)) if op == "Transpose" else "reshape")
            return
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            if op == "Reshape":
                self._only(attrs, {"allowzero": None})
                if node.input[1] not in self.constants:
                    raise _Unsupported("the new shape is computed from data (not foldable at import)")
            elif op == "Flatten":
                self._only(attrs, {"axis": None})
            else:
                self._only(attrs, {"axes": None})
            v = self._view(node, 0)
            self.views[out] = self._regroup(v, self._out_shape(node), name)
            return
        if op == "Transpose":
            v = self._view(node, 0)
            perm = [int(p) for p in attrs.get("perm", range(v.rank())[::-1])]
            self.views[out] = self._transposed(v, perm, name)
            return
        if op == "Concat":
            self._concat(node, attrs, name)
            return
        if op in ("Slice", "Split"):
            self._slice(node, attrs, name)
            return
        if op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"):
            self._reduce(node, attrs, name)
            return
        if op == "Einsum":
            self._einsum(node, attrs, name)
            return
        if op == "Pad":
            self._pad(node, attrs, name)
            return
        if op == "Trilu":  # x times the constant triangle of ones over its last two axes
            self._only(attrs, {"upper": None})
            v = self._view(node, 0)
            full = v.full_shape(self.batch)
            if len(full) < 2 or any("B" in span for span in v.spans()[-2:]):
                raise _Unsupported("a triangle over axes that hold the batch")
            k = (self._int_input(node, 1) or [0])[0] if len(node.input) > 1 and node.input[1] else 0
            ones = np.ones(full[-2:])
            key = out + ":triangle"
            self.constants[key] = (np.triu(ones, k) if attrs.get("upper", 1) else np.tril(ones, k)).astype(np.float32)
            mask, shape = self._aligned_constant(_Inputs([key], [out]), 0, v, name)
            src = self._emit(name, T.ThreadingLayer("Times"), {"Input1": v.src, "Input2": mask})
            self.views[out] = _View(src, np.broadcast_shapes(v.pshape, shape), v.q, v.groups)
            return
        if op in ("Where", "Expand"):
            self._masked(node, name)
            return
        if op in ("LSTM", "GRU", "RNN"):
            self._recurrent(node, attrs, name)
            return
        raise _Unsupported("not supported by portgrad's importer yet")

    # ONNX's gate blocks in W, R and B, in the order of portgrad's gates (Wolfram's): LSTM (i, o, f, c)
    # is (input, output, forget, memory); GRU (z, r, h) is (input, reset, memory).
    _RECURRENT = {"LSTM": (4, ("InputGate", "OutputGate", "ForgetGate", "MemoryGate"), ("Sigmoid", "Tanh", "Tanh")),
                  "GRU": (3, ("InputGate", "ResetGate", "MemoryGate"), ("Sigmoid", "Tanh")),
                  "RNN": (1, ("",), None)}
    _RNN_ACTIVATIONS = {"Tanh": "Tanh", "Relu": "Ramp", "Sigmoid": "LogisticSigmoid"}

    def _recurrent(self, node, attrs, name):
        """LSTM, GRU and RNN: one recurrent layer per direction (a reverse one between two
        SequenceReverseLayers) on each example's (sequence, input); Y, Y_h and Y_c assembled with
        their direction axis. W, R and B become each direction's gate arrays (shared arrays named
        "<node>.<direction>.<array>"; the biases W_b + R_b)."""
        S, L, T = _sequence_layers(), _layers(), _structure()
        op = node.op_type
        G, gates, defaults = self._RECURRENT[op]
        self._only(attrs, {"hidden_size": None, "direction": None, "layout": None, "activations": None,
                           "linear_before_reset": None, "input_forget": lambda v: int(v) == 0})
        if op == "GRU" and int(attrs.get("linear_before_reset", 0)) != 1:
            raise _Unsupported("linear_before_reset=0 (the reset gate applied before the state product) is not "
                               "Wolfram's GRU; portgrad's GatedRecurrentLayer is linear_before_reset=1 (PyTorch's)")
        acts = [a.decode() if isinstance(a, bytes) else str(a) for a in attrs.get("activations", [])]
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
        if dirs is None:
            raise _Unsupported(f"direction={direction!r}")
        if op == "RNN":
            f = (acts or ["Tanh"])[0]
            if f not in self._RNN_ACTIVATIONS or any(a != f for a in acts):
                raise _Unsupported(f"activations={acts} (an RNN takes one of Tanh, Relu, Sigmoid, the same in both "
                                   "directions)")
        elif acts and acts != list(defaults) * len(dirs):
            raise _Unsupported(f"activations={acts} (only the defaults, {list(defaults)} per direction)")
        layout = int(attrs.get("layout", 0))
        v = self._view(node, 0)
        seq_axis, batch_axis = (0, 1) if layout == 0 else (1, 0)
        spans = v.spans()
        if len(spans) != 3 or spans[batch_axis] != ["B"] or any(len(sp) != 1 for sp in spans):
            raise _Unsupported(f"input X has shape {self._show_full(v.full_shape(self.batch))}; with layout={layout} "
                               f"it must be ({'sequence, batch' if layout == 0 else 'batch, sequence'}, input)")
        seq, k = v.pshape
        W = [self.constants.get(node.input[i]) if len(node.input) > i and node.input[i] else None for i in range(8)]
        if W[1] is None or W[2] is None:
            raise _Unsupported("W and R must be constants (initializers)")
        h = int(attrs.get("hidden_size", W[2].shape[-1]))
        nd = len(dirs)
        if W[1].shape != (nd, G * h, k) or W[2].shape != (nd, G * h, h):
            raise _Unsupported(f"W {W[1].shape} and R {W[2].shape} do not fit {nd} direction(s), hidden size {h} and "
                               f"input size {k}")
        bias = np.zeros((nd, 2 * G * h)) if W[3] is None else np.asarray(W[3], np.float64)
        if bias.shape != (nd, 2 * G * h):
            raise _Unsupported(f"B has shape {bias.shape}; expected {(nd, 2 * G * h)}")
        # Rbh (PyTorch's b_hn), inside r * (R_h s + Rbh): the GRU's state_biases, where not zero.
        state_biases = op == "GRU" and bool(np.any(bias[:, 5 * h:6 * h] != 0))
        if len(node.input) > 4 and node.input[4]:
            raise _Unsupported("sequence_lens (sequences of different lengths) is not supported yet: every sequence "
                               "of a batch has the model's length")
        if len(node.input) > 7 and node.input[7] and np.any(np.asarray(W[7]) != 0):
            raise _Unsupported("peepholes (P) are not supported")
        initial = {}
        for i, port in ((5, "State"), (6, "CellState")):
            if len(node.input) <= i or not node.input[i]:
                continue
            if self.batch_fills.get(node.input[i]) == 0.0:
                continue  # zeros for every example (PyTorch's default initial state): the layer's own
            if node.input[i] in self.constants:
                if np.any(np.asarray(self.constants[node.input[i]]) != 0):
                    raise _Unsupported(f"a constant non-zero initial state ({node.input[i]!r}): one for every example "
                                       "is not supported; pass it as data")
                continue
            sv = self._view(node, i)
            sspans = sv.spans()
            want = ["B"] if layout == 0 else ["B"]
            if len(sspans) != 3 or sspans[1 - layout] != want or any(len(sp) != 1 for sp in sspans):
                raise _Unsupported(f"the initial state {node.input[i]!r} must be "
                                   f"({'directions, batch' if layout == 0 else 'batch, directions'}, hidden)")
            initial[port] = sv.src  # examples (directions, hidden)
        # Outputs a later node or the model reads: Y_h comes from the last step of the layer's own output
        # sequence; Y_c (the LSTM's cell state) from its final_state ports, whose "State" then gives Y_h
        # (an unread port of a layer would be an extra output of the imported net).
        read = {i for n in self.graph.node for i in n.input} | {o.name for o in self.graph.output}
        used = [len(node.output) > o and bool(node.output[o]) and node.output[o] in read for o in range(3)]
        want_final = used[2]
        if want_final and not (used[0] and used[1]):
            raise _Unsupported("Y_c is read but Y or Y_h is not: portgrad's layer would have an unread output")
        Y, states = [], {"State": [], "CellState": []}
        for d, backward in enumerate(dirs):
            arrays, shared = {}, {}
            for q, gate in enumerate(gates):
                rows = slice(q * h, (q + 1) * h)
                b = bias[d, rows] + (bias[d, G * h + q * h:G * h + (q + 1) * h] if not (op == "GRU" and q == 2) else 0)
                extra = [("StateBiases", bias[d, 5 * h:6 * h])] if state_biases and q == 2 else []
                for arr, value in [("InputWeights", W[1][d, rows]), ("StateWeights", W[2][d, rows]), ("Biases", b)] + extra:
                    sname = f"{name}.{d}.{gate}{arr}"
                    self.arrays[sname] = np.asarray(value, np.float64)
                    self.weights.add(sname)
                    shared[f"{gate}{arr}"] = NetSharedArray(sname)
            opts = {"initial_state": bool(initial), "final_state": want_final, "shared": shared}
            layer = {"LSTM": lambda: S.LongShortTermMemoryLayer(h, **opts),
                     "GRU": lambda: S.GatedRecurrentLayer(h, state_biases=state_biases, **opts),
                     "RNN": lambda: S.BasicRecurrentLayer(h, self._RNN_ACTIVATIONS[(acts or ["Tanh"])[0]], **opts)}[op]()
            x = v.src
            if backward:
                x = self._emit(f"{name}.{d}.reverse_in", S.SequenceReverseLayer(), {"Input": x})
            sources = {"Input": x}
            for port, src in initial.items():
                sources[port] = self._emit(f"{name}.{d}.{port}", T.PartLayer(d), {"Input": src})
            if op != "LSTM" and "CellState" in sources:
                raise _Unsupported("initial_c is an LSTM's input only")
            r = self._emit(f"{name}.{d}" if nd > 1 else name, layer, sources)
            y = NetPort(r, "Output") if want_final else r
            if used[0]:
                yd = self._emit(f"{name}.{d}.reverse_out", S.SequenceReverseLayer(), {"Input": y}) if backward else y
                Y.append(self._emit(f"{name}.{d}.y", L.ReshapeLayer((seq, 1, h)), {"Input": yd}))
            if used[1]:
                last = NetPort(r, "State") if want_final else self._emit(f"{name}.{d}.last", S.SequenceLastLayer(),
                                                                          {"Input": y})
                states["State"].append(self._emit(f"{name}.{d}.state", L.ReshapeLayer((1, h)), {"Input": last}))
            if used[2]:
                states["CellState"].append(self._emit(f"{name}.{d}.cellstate", L.ReshapeLayer((1, h)),
                                                      {"Input": NetPort(r, "CellState")}))

        def joined(srcs, axis, tag):
            if len(srcs) == 1:
                return srcs[0]
            return self._emit(f"{name}.{tag}", T.CatenateLayer(axis), {f"Input{j + 1}": s for j, s in enumerate(srcs)})

        outs = node.output
        if used[0]:  # Y: (sequence, directions, batch, hidden) or (batch, sequence, directions, hidden)
            self.views[outs[0]] = _View(joined(Y, 1, "Y"), (seq, nd, h), 2 if layout == 0 else 0)
        for o, port in ((1, "State"), (2, "CellState")):
            if used[o]:
                self.views[outs[o]] = _View(joined(states[port], 0, port), (nd, h), 1 if layout == 0 else 0)

    def _derive(self, node, op):
        """The output of Identity, Cast, a reshape or a transpose of a constant: a constant derived
        from the same stored tensor (its values computed by onnx's reference evaluator)."""
        src = node.input[0]
        if any(i in self.failed for i in node.input):
            raise _AfterUnsupported()
        computed = [i for i in node.input if i and i not in self.constants]
        if computed:
            raise _Unsupported(f"input {computed[0]!r} is computed from data; on a constant it must be a constant")
        base, ops = self.derived.get(src, (src, []))
        if op is None:
            value = self.constants[src]
        else:
            value = _run(self.onnx, node, {i: self.constants[i] for i in node.input if i}, self.opset)
            if value is None:
                raise _Unsupported("cannot evaluate it on its constant input")
            value = value[0]
            ops = ops + [op if op != "reshape" else ("reshape", tuple(value.shape))]
        if value.dtype.kind == "f" and self.constants[base].dtype.kind == "f":
            value = value.astype(self.constants[base].dtype)
        self.constants[node.output[0]] = value
        self.derived[node.output[0]] = (base, ops)
        if any(i in self.batch_dependent for i in node.input):
            self.batch_dependent.add(node.output[0])

    def _constant(self, node, attrs):
        if "value" in attrs:
            value = to_array(self.onnx, attrs["value"], "Constant")
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
            self._only(attrs, {"alpha": lambda v: abs(v - 1.0) < 1e-7})
            return "ELU"
        if op == "Selu":
            self._only(attrs, {"alpha": lambda v: abs(v - _SELU[0]) < 1e-6, "gamma": lambda v: abs(v - _SELU[1]) < 1e-6})
            return "SELU"
        if op == "HardSigmoid":  # portgrad's HardSigmoid is clip((x + 1)/2, 0, 1)
            self._only(attrs, {"alpha": lambda v: v == 0.5, "beta": lambda v: v == 0.5})
            if attrs.get("alpha") != 0.5:
                raise _Unsupported("alpha=0.2 (ONNX's default) is not supported; portgrad's HardSigmoid has alpha=0.5")
            return "HardSigmoid"
        self._only(attrs, {"approximate": lambda v: v in (b"none", "none")})  # Gelu
        return "GELU"

    def _scalar(self, value, name):
        """A scalar constant (an attribute's value) as the output of a layer of its own."""
        return self._emit(name, _structure().ConstantArrayLayer(np.asarray(value, np.float32), learnable=False), {})

    def _composed(self, node, attrs, name):
        """Elementwise ops with a parameter, composed of portgrad's layers and scalar constants
        (constant arrays of the net named after the node): exact, with PyTorch's derivatives.
          LeakyRelu, PRelu, Elu(alpha): r + a (g - r), r = Ramp(x), g = x (ELU(x) for Elu);
          Selu(alpha, gamma): gamma (r + alpha (ELU(x) - r))
          Neg: x * -1; Reciprocal: 1 / x; Clip: Min(Max(x, lo), hi) (gradient 1 at the bounds)
          HardSigmoid(alpha, beta): portgrad's HardSigmoid(2 alpha x + 2 beta - 1)
          Gelu(approximate="tanh"): x/2 + x/2 tanh(sqrt(2/pi) (x + 0.044715 x^3))"""
        L, T = _layers(), _structure()
        op = node.op_type
        v = self._view(node, 0)
        k = [0]

        def emit(layer, ins, tag):
            k[0] += 1
            return self._emit(name if tag is None else f"{name}.{tag}", layer, ins)

        def scalar(value, tag):
            k[0] += 1
            return self._scalar(value, f"{name}.{tag}")

        def threading(f, a, b, tag=None):
            return emit(T.ThreadingLayer(f), {"Input1": a, "Input2": b}, tag)

        x = v.src
        if op in ("LeakyRelu", "PRelu", "Elu", "Selu"):
            if op == "PRelu":
                self._only(attrs, {})
                slope, _ = self._aligned_constant(node, 1, v, name, weight=True)
            else:
                self._only(attrs, {"alpha": None, "gamma": None} if op == "Selu" else {"alpha": None})
                default = {"LeakyRelu": 0.01, "Elu": 1.0, "Selu": _SELU[0]}[op]
                slope = scalar(attrs.get("alpha", default), "alpha")
            r = emit(L.ElementwiseLayer("Ramp"), {"Input": x}, "ramp")
            g = emit(L.ElementwiseLayer("ELU"), {"Input": x}, "elu") if op in ("Elu", "Selu") else x
            neg = threading("Subtract", g, r, "negative")
            y = threading("Plus", r, threading("Times", neg, slope, "scaled"), "sum" if op == "Selu" else None)
            if op == "Selu":
                y = threading("Times", y, scalar(attrs.get("gamma", _SELU[1]), "gamma"))
        elif op == "Neg":
            y = threading("Times", x, scalar(-1.0, "minus_one"))
        elif op == "Gelu":  # approximate="tanh": x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2
            self._only(attrs, {"approximate": None})
            cube = threading("Times", emit(L.ElementwiseLayer("Square"), {"Input": x}, "square"), x, "cube")
            inner = threading("Plus", x, threading("Times", cube, scalar(0.044715, "c"), "cubic"), "inner")
            t = emit(L.ElementwiseLayer("Tanh"), {"Input": threading("Times", inner, scalar(np.sqrt(2 / np.pi), "k"),
                                                                     "scaled")}, "tanh")
            half = threading("Times", x, scalar(0.5, "half"), "half_x")
            y = threading("Plus", half, threading("Times", half, t, "product"))
        elif op == "Reciprocal":
            y = threading("Divide", scalar(1.0, "one"), x)
        elif op == "HardSigmoid":
            self._only(attrs, {"alpha": None, "beta": None})
            a, b = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
            z = threading("Plus", threading("Times", x, scalar(2 * a, "scale"), "scaled"), scalar(2 * b - 1, "shift"),
                          "shifted")
            y = emit(L.ElementwiseLayer("HardSigmoid"), {"Input": z}, None)
        else:  # Clip (bounds as inputs from opset 11)
            self._only(attrs, {})
            has = [len(node.input) > i and bool(node.input[i]) for i in (1, 2)]
            y = x
            if has[0]:  # the bounds as stored: shared arrays (scalars, so constants)
                y = threading("Max", y, self._aligned_constant(node, 1, v, name)[0], "lower" if has[1] else None)
            if has[1]:
                y = threading("Min", y, self._aligned_constant(node, 2, v, name)[0])
            if y is x:
                y = emit(L.ReshapeLayer(v.pshape), {"Input": x}, None)  # no bounds: the identity
        self.views[node.output[0]] = _View(y, v.pshape, v.q, v.groups)

    def _int_or_float(self, node, i):
        name = node.input[i] if len(node.input) > i else ""
        if not name or name not in self.constants:
            return None
        return float(np.asarray(self.constants[name]).reshape(-1)[0])

    def _binary(self, node, name, f):
        """Broadcasting arithmetic: the computed operands share one view (or are brought to the plain
        one), constants are aligned to it."""
        dynamic = [i for i, value in enumerate(node.input) if value not in self.constants]
        if not dynamic:
            raise _Unsupported("every operand is a constant (fold it before export)")
        views = [self._view(node, i) for i in dynamic]
        if any(w.structure() != views[0].structure() for w in views):
            ranks = {w.rank() for w in views}
            if len(ranks) > 1:
                raise _Unsupported("computed operands of different ranks (their batch axes would not align)")
            views = [_View(self._plain(node.input[i], f"{name}.operand{i + 1}"),
                           self._view(node, i).full_shape(self.batch)[1:]) for i in dynamic]
        v = views[0]
        ports, shapes = {}, []
        for i in range(len(node.input)):
            if i in dynamic:
                w = views[dynamic.index(i)]
                ports[f"Input{i + 1}"] = w.src
                shapes.append(w.pshape)
            else:
                ports[f"Input{i + 1}"], aligned = self._aligned_constant(node, i, v, name)
                shapes.append(aligned)
        try:
            pshape = np.broadcast_shapes(*shapes)
        except ValueError:
            raise _Unsupported(f"operands of shapes {shapes} (per example) do not broadcast") from None
        src = self._emit(name, _structure().ThreadingLayer(f, inputs=len(ports)), ports)
        self.views[node.output[0]] = _View(src, pshape, v.q, v.groups)

    def _matmul(self, node, attrs, name):
        """Gemm and MatMul. A product of computed rows and a constant matrix is a LinearLayer (on plain
        (batch, K) rows) or a DotLayer on the last axis (rows held otherwise); a product of two
        computed operands is a DotLayer, which multiplies the examples' matrices with their leading
        axes broadcast, as numpy's matmul does with the ONNX tensors when the batch stands among
        the leading axes of both in the same place."""
        L, T = _layers(), _structure()
        gemm = node.op_type == "Gemm"
        if gemm:
            self._only(attrs, {"alpha": None, "beta": None, "transA": None, "transB": None})
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            if alpha != 1.0 or beta != 1.0:  # alpha (A B) + beta C, the product as Gemm computes it without C
                has_c = len(node.input) > 2 and bool(node.input[2])
                key = node.output[0] + "\0product"
                self._matmul(_Inputs(node.input[:2], [key], "Gemm"),
                             {k: v for k, v in attrs.items() if k in ("transA", "transB")}, name)
                v = self.views[key]
                y = v.src
                if alpha != 1.0:
                    y = self._emit(f"{name}.alpha", T.ThreadingLayer("Times"),
                                   {"Input1": y, "Input2": self._scalar(alpha, f"{name}.alpha.value")})
                pshape = v.pshape
                if has_c:
                    c, cshape = self._aligned_constant(node, 2, v, name, weight=True)
                    if beta != 1.0:
                        c = self._emit(f"{name}.beta", T.ThreadingLayer("Times"),
                                       {"Input1": c, "Input2": self._scalar(beta, f"{name}.beta.value")})
                    y = self._emit(f"{name}.bias", T.ThreadingLayer("Plus"), {"Input1": y, "Input2": c})
                    pshape = np.broadcast_shapes(pshape, cshape)
                self.views[node.output[0]] = _View(y, pshape, v.q, v.groups)
                return
        a_const, b_const = (node.input[i] in self.constants for i in (0, 1))
        if a_const and b_const:
            raise _Unsupported("both operands are constants (fold it before export)")
        out = node.output[0]
        if gemm and attrs.get("transA", 0) and not a_const:  # A stored (K, M): its transpose, as a view
            self.views[node.input[0] + "\0transposed"] = self._transposed(self._view(node, 0), [1, 0], name + ".transA")
            node = _Inputs([node.input[0] + "\0transposed"] + list(node.input[1:]), node.output)
        elif gemm and attrs.get("transA", 0):
            raise _Unsupported("transA=1 with a constant A")
        if b_const and self.constants[node.input[1]].ndim == 2:
            v = self._view(node, 0)
            w = self.constants[node.input[1]]
            transposed = not (gemm and attrs.get("transB", 0))
            n = w.shape[1] if transposed else w.shape[0]
            k_axis = self._single_axis(v, -1, "a product")
            bias = gemm and len(node.input) > 2 and node.input[2]
            if (v.structure() == (0, (1, 1)) and not self.derived.get(node.input[1], (0, []))[1]
                    and (not bias or self.constants[node.input[2]].shape == (n,))):
                # plain (batch, K) rows: a LinearLayer with the weights as stored
                biases = self._array(node, 2, (n,)) if bias else None
                layer = L.LinearLayer(n, weights=self._array(node, 1), biases=biases if biases is not None else False,
                                      transposed=transposed)
                self.views[out] = _View(self._emit(name, layer, {"Input": v.src}), (n,))
                return
            if k_axis != len(v.pshape) - 1:
                raise _Unsupported("a product over an axis other than the examples' last")
            w_src = self._const_source(node, 1, name, weight=True)
            if not transposed:
                w_src = self._emit(f"{name}.transpose", T.TransposeLayer((1, 0)), {"Input": w_src})
            src = self._emit(name, T.DotLayer(), {"Input1": v.src, "Input2": w_src})
            view = _View(src, v.pshape[:-1] + (n,), v.q, v.groups)
            if gemm and len(node.input) > 2 and node.input[2]:  # + C, broadcast against the rows
                c_src, _ = self._aligned_constant(node, 2, view, name, weight=True)
                view = _View(self._emit(f"{name}.bias", T.ThreadingLayer("Plus"), {"Input1": src, "Input2": c_src}),
                             view.pshape, view.q, view.groups)
            self.views[out] = view
            return
        if gemm:
            raise _Unsupported("Gemm with a computed or non-matrix B")
        # Two computed operands, or one and a constant of another rank than 2.
        if not a_const and b_const and self.constants[node.input[1]].ndim == 1 and \
                self._view(node, 0).structure() == (0, (1, 1)):  # (batch, K) rows . (K,): a dot per example
            v = self._view(node, 0)
            src = self._emit(name, T.DotLayer(), {"Input1": v.src, "Input2": self._const_source(node, 1, name, True)})
            self.views[node.output[0]] = _View(src, ())
            return
        ports, shapes, lead = {}, [], None
        for i in (0, 1):
            if node.input[i] in self.constants:
                continue
            v = self._view(node, i)
            if v.rank() < 3 or any("B" in span for span in v.spans()[-2:]):
                raise _Unsupported(f"operand {i + 1} of shape {self._show_full(v.full_shape(self.batch))} would mix "
                                   "its batch axis into the product (portgrad multiplies example by example)")
            for d in (-2, -1):
                self._single_axis(v, d, "a product")
            if lead is not None and lead.structure() != v.structure():
                raise _Unsupported("the operands hold their batch axes in different places")
            lead = v
            ports[f"Input{i + 1}"] = v.src
        for i in (0, 1):
            if node.input[i] not in self.constants:
                continue
            c = self.constants[node.input[i]]
            if c.ndim == 1:
                ports[f"Input{i + 1}"] = self._const_source(node, i, name, weight=True)
            else:  # the matrices as stored, the leading axes aligned to the computed operand's
                lead_view = _View(None, lead.pshape[:-2] + tuple(c.shape[-2:]), lead.q, lead.groups)
                ports[f"Input{i + 1}"] = self._aligned_constant(node, i, lead_view, name, True)  # (source, shape)
        shapes = {}
        for i in (0, 1):
            key = f"Input{i + 1}"
            if node.input[i] in self.constants and self.constants[node.input[i]].ndim != 1:
                ports[key], shapes[key] = ports[key]
            elif node.input[i] in self.constants:
                shapes[key] = tuple(self.constants[node.input[i]].shape)
            else:
                shapes[key] = self._view(node, i).pshape
        src = self._emit(name, T.DotLayer(), dict(sorted(ports.items())))
        sa, sb = shapes["Input1"], shapes["Input2"]
        a = sa if len(sa) > 1 else (1,) + sa
        b = sb if len(sb) > 1 else sb + (1,)
        trailing = ((a[-2],) if len(sa) > 1 else ()) + ((b[-1],) if len(sb) > 1 else ())
        pshape = tuple(np.broadcast_shapes(a[:-2], b[:-2])) + trailing
        self.views[node.output[0]] = _View(src, pshape, lead.q, lead.groups[:-2] + (1,) * len(trailing))

    def _pad(self, node, attrs, name):
        """Pad as a PaddingLayer on the example's axes: constant mode pads with the value, edge, reflect
        and wrap are the layer's "Fixed", "Reflected" and "Periodic"."""
        modes = {"constant": None, "edge": "Fixed", "reflect": "Reflected", "wrap": "Periodic"}
        self._only(attrs, {"mode": lambda v: (v.decode() if isinstance(v, bytes) else v) in modes, "pads": None,
                           "value": None})
        mode = attrs.get("mode", "constant")
        method = modes[mode.decode() if isinstance(mode, bytes) else mode]
        v = self._view(node, 0)
        rank = v.rank()
        pads = attrs.get("pads") if self.opset < 11 else self._int_input(node, 1)
        value = attrs.get("value", 0.0) if self.opset < 11 else self._int_or_float(node, 2)
        axes = self._int_input(node, 3) if len(node.input) > 3 and node.input[3] else list(range(rank))
        if pads is None or len(pads) != 2 * len(axes):
            raise _Unsupported(f"pads must be a constant of {2 * len(axes)} entries")
        if any(p < 0 for p in pads):
            raise _Unsupported("negative pads (cropping) are not supported")
        pairs = [[0, 0] for _ in v.pshape]
        for k, d in enumerate(axes):
            before, after = pads[k], pads[k + len(axes)]
            if before or after:
                pairs[self._single_axis(v, d, "padding")] = [before, after]
        last = max((a for a, p in enumerate(pairs) if p != [0, 0]), default=-1)
        if last < 0:
            self.views[node.output[0]] = v
            return
        layer = _structure().PaddingLayer(pairs[:last + 1], method or float(value or 0.0))
        pshape = tuple(s + p[0] + p[1] for s, p in zip(v.pshape, pairs))
        self.views[node.output[0]] = _View(self._emit(name, layer, {"Input": v.src}), pshape, v.q, v.groups)

    def _masked(self, node, name):
        """Where as X m + Y (1 - m), m the condition as 1 and 0 (a constant, or a computed mask such as
        a comparison's: exact, the gradient of X is m), and Expand of computed data, as X + 0
        broadcast to the new shape; the constants computed here are constant arrays named after the
        node's output."""
        T = _structure()
        out = node.output[0]
        if node.op_type == "Expand":
            v = self._view(node, 0)
            shape = self._int_input(node, 1)
            full = v.full_shape(self.batch)
            if shape is None:
                raise _Unsupported("the new shape must be a constant")
            if len(shape) > len(full):
                raise _Unsupported("it adds axes before the batch axis")
            target = [1] * (len(full) - len(shape)) + list(shape)
            zeros = [1 if t in (1, d) else t for t, d in zip(target, full)]
            if all(z == 1 for z in zeros):  # nothing to expand: the identity
                self.views[out] = v
                return
            shape_c = []  # zeros on the example's axes: the new size where an axis of size 1 grows
            for span, z in zip(v.spans(), zeros):
                if z != 1 and (len(span) != 1 or span[0] == "B"):
                    raise _Unsupported("it expands an axis that holds the batch or several axes")
                shape_c.extend(z if z != 1 else 1 for f in span if f != "B")
            c = self._emit(name + ".zeros", T.ConstantArrayLayer(np.zeros(shape_c, np.float32), learnable=False), {})
            src = self._emit(name, T.ThreadingLayer("Plus"), {"Input1": v.src, "Input2": c})
            self.views[out] = _View(src, np.broadcast_shapes(v.pshape, shape_c), v.q, v.groups)
            return
        cond = node.input[0]
        if any(i in self.batch_dependent for i in node.input):
            raise _Unsupported("a condition or value computed from the batch size")
        computed = [i for i in (0, 1, 2) if node.input[i] not in self.constants]
        if not computed:
            raise _Unsupported("every operand is a constant (fold it before export)")
        v = self._view(node, computed[0])
        if any(self._view(node, i).structure() != v.structure() for i in computed):
            raise _Unsupported("computed operands that hold their batch axes in different places")
        if cond in self.constants:
            m = np.asarray(self.constants[cond]).astype(bool)
        else:  # a computed mask of 1 and 0 (a comparison's), and 1 - it
            c = self._view(node, 0)
            inverse = self._emit(f"{name}.not", T.ThreadingLayer("Subtract"),
                                 {"Input1": self._scalar(1.0, f"{name}.one"), "Input2": c.src})
        terms, shapes = [], []
        for i, keep in ((1, True), (2, False)):
            if cond in self.constants:
                key = f"{out}:mask{i}"
                self.constants[key] = (m if keep else ~m).astype(np.float32)
                msrc, mshape = self._aligned_constant(_Inputs([key], [out]), 0, v, f"{name}.mask{i}")
            else:
                msrc, mshape = (c.src if keep else inverse), c.pshape
            if node.input[i] in self.constants:  # a constant (as stored: its gradient by its name) times the mask
                wsrc, wshape = self._aligned_constant(node, i, v, name)
            else:  # X m
                w = self._view(node, i)
                wsrc, wshape = w.src, w.pshape
            src = self._emit(f"{name}.select{i}", T.ThreadingLayer("Times"), {"Input1": wsrc, "Input2": msrc})
            shape = np.broadcast_shapes(wshape, mshape)
            terms.append(src)
            shapes.append(shape)
        src = self._emit(name, T.ThreadingLayer("Plus"), {"Input1": terms[0], "Input2": terms[1]})
        self.views[out] = _View(src, np.broadcast_shapes(*shapes), v.q, v.groups)

    def _einsum(self, node, attrs, name):
        """Einsum of one operand (a transpose and sums) or two (a batched product: the operands
        transposed and reshaped to (batch..., M, K) and (batch..., K, N), a DotLayer, and the result
        reshaped and transposed to the output's letters), on views, so the batch may stand anywhere."""
        eq = attrs["equation"].decode() if isinstance(attrs["equation"], bytes) else attrs["equation"]
        eq = eq.replace(" ", "")
        if "..." in eq or "->" not in eq:
            raise _Unsupported(f"equation {eq!r}: only explicit equations without '...' are supported")
        lhs, out = eq.split("->")
        terms = lhs.split(",")
        if len(terms) != len(node.input) or len(terms) > 2 or any(len(set(t)) != len(t) for t in terms + [out]):
            raise _Unsupported(f"equation {eq!r}: one or two operands, each letter once per term")
        key = node.output[0] + "\0einsum"
        views, shapes = [], []
        for i, t in enumerate(terms):
            if node.input[i] in self.constants:
                c = self.constants[node.input[i]]
                if c.ndim != len(t):
                    raise _Unsupported(f"operand {i + 1} has rank {c.ndim}; the equation gives it {len(t)} letters")
                shapes.append(tuple(c.shape))
                views.append(None)
            else:
                v = self._view(node, i)
                if v.rank() != len(t):
                    raise _Unsupported(f"operand {i + 1} has rank {v.rank()}; the equation gives it {len(t)} letters")
                shapes.append(tuple(v.full_shape(self.batch)))
                views.append(v)
        size = {}
        for t, s in zip(terms, shapes):
            for letter, d in zip(t, s):
                if size.setdefault(letter, d) != d:
                    raise _Unsupported(f"letter {letter!r} stands for sizes {size[letter]} and {d}")

        def arranged(i, order, target, tag):
            """Operand i with its letters in `order`, reshaped to `target`: (value name)."""
            t, value = terms[i], node.input[i]
            perm = [t.index(letter) for letter in order]
            new = f"{key}{i}{tag}"
            if views[i] is None:  # a constant: derived from the stored tensor
                base, ops = self.derived.get(value, (value, []))
                c = np.transpose(self.constants[value], perm).reshape(target)
                self.constants[new], self.derived[new] = c, (base, ops + [("transpose", tuple(perm)),
                                                                        ("reshape", tuple(target))])
                return new
            v = views[i] if perm == sorted(perm) else self._transposed(views[i], perm, f"{name}.operand{i + 1}")
            if list(v.full_shape(self.batch)) != list(target):
                v = self._regroup(v, target, f"{name}.operand{i + 1}.reshape")
            self.views[new] = v
            return new

        if len(terms) == 1:
            t = terms[0]
            summed = [letter for letter in t if letter not in out]
            if any(letter not in t for letter in out):
                raise _Unsupported(f"equation {eq!r}: an output letter no operand has")
            v = views[0]
            if v is None:
                raise _Unsupported("the operand is a constant (fold it before export)")
            if summed:
                axes = [t.index(letter) for letter in summed]
                spans = v.spans()
                if any("B" in spans[a] for a in axes):
                    raise _Unsupported("it sums over the batch axis")
                levels = sorted(f for a in axes for f in spans[a])
                src = self._emit(name + ".sum", _structure().AggregationLayer("Total", levels), {"Input": v.src})
                kept = [a for a in range(len(t)) if a not in axes]
                v = _View(src, tuple(s for a, s in enumerate(v.pshape) if a not in levels),
                          v.q - sum(1 for f in levels if f < v.q), [v.groups[a] for a in kept])
                t = "".join(letter for letter in t if letter not in summed)
            perm = [t.index(letter) for letter in out]
            self.views[node.output[0]] = v if perm == sorted(perm) else self._transposed(v, perm, name)
            return
        a, b = terms
        batch = [x for x in out if x in a and x in b]
        contracted = [x for x in a if x in b and x not in out]
        a_free = [x for x in a if x not in b]
        b_free = [x for x in b if x not in a]
        if any(x not in out for x in a_free + b_free) or any(x not in a + b for x in out):
            raise _Unsupported(f"equation {eq!r}: a letter of one operand alone that is summed")
        prod = lambda letters: _prod(size[x] for x in letters)  # noqa: E731
        bsizes = [size[x] for x in batch]
        ka = arranged(0, batch + a_free + contracted, bsizes + [prod(a_free), prod(contracted)], "a")
        kb = arranged(1, batch + contracted + b_free, bsizes + [prod(contracted), prod(b_free)], "b")
        product = key + "product"
        self._matmul(_Inputs([ka, kb], [product], "MatMul"), {}, name)
        v = self.views[product]
        order = batch + a_free + b_free
        target = bsizes + [size[x] for x in a_free + b_free]
        if list(v.full_shape(self.batch)) != target:
            v = self._regroup(v, target, name + ".reshape")
        perm = [order.index(letter) for letter in out]
        self.views[node.output[0]] = v if perm == sorted(perm) else self._transposed(v, perm, name + ".transpose")

    def _softmax(self, node, attrs, name):
        v = self._view(node, 0)
        rank = v.rank()
        axis = attrs.get("axis", -1 if self.opset >= 13 else 1) % rank
        self._only(attrs, {"axis": None})
        layer = _layers().SoftmaxLayer(log=node.op_type == "LogSoftmax")
        if self.opset < 13 and axis != rank - 1:  # before 13: over the axes from `axis` on, flattened
            if any("B" in span for span in v.spans()[axis:]):
                raise _Unsupported(f"axis={axis} takes in the batch axis")
            full = v.full_shape(self.batch)
            flat = self._regroup(v, full[:axis] + [_prod(full[axis:])], name + ".flatten")
            sm = _View(self._emit(name, layer, {"Input": flat.src}), flat.pshape, flat.q, flat.groups)
            self.views[node.output[0]] = self._regroup(sm, full, name + ".reshape")
            return
        a = self._single_axis(v, axis, "a softmax")
        if a != len(v.pshape) - 1:
            raise _Unsupported(f"axis={attrs.get('axis', -1)} on a rank-{rank} input; portgrad's softmax is over "
                               "the last axis")
        self.views[node.output[0]] = _View(self._emit(name, layer, {"Input": v.src}), v.pshape, v.q, v.groups)

    def _normalization(self, node, attrs, name):
        if node.op_type == "InstanceNormalization" and len([o for o in node.output if o]) > 1:
            raise _Unsupported("more than one output")
        if node.op_type == "InstanceNormalization":
            self._only(attrs, {"epsilon": None})
            x, shape = self._plain_view(node, 0, name)
            if len(shape) < 2:
                raise _Unsupported(f"an input of rank {len(shape) + 1}; InstanceNormalization needs (batch, channels, ...)")
            levels, pshape, v = "Default", (shape[0],), _View(x, shape)
        else:
            self._only(attrs, {"axis": None, "epsilon": None, "stash_type": lambda v: v == 1})
            v = self._view(node, 0)
            axis = attrs.get("axis", -1) % v.rank()
            spans = v.spans()[axis:]
            if any("B" in span for span in spans):
                raise _Unsupported(f"axis={attrs.get('axis', -1)} normalises over the batch axis")
            if any(len(span) != 1 for span in spans):
                v = self._regroup(v, v.full_shape(self.batch), name + ".regroup")
                spans = v.spans()[axis:]
            levels = -len(spans)
            pshape = tuple(v.pshape[levels:])
        biases = self._array(node, 2, pshape)
        layer = _norm().NormalizationLayer(levels, epsilon=float(attrs.get("epsilon", 1e-5)),
                                           scaling=self._array(node, 1, pshape), biases=biases, input=v.pshape)
        if biases is None:  # LayerNormalization without B: zero biases of the layer's own
            layer = NetReplacePart(layer, {"Biases": np.zeros(pshape, np.float32)})
        self.views[node.output[0]] = _View(self._emit(name, layer, {"Input": v.src}), v.pshape, v.q, v.groups)
        if len(node.output) > 1 and any(node.output[1:]):
            self._layer_norm_statistics(node, v, -levels, float(attrs.get("epsilon", 1e-5)), name)

    def _layer_norm_statistics(self, node, v, k, eps, name):
        """LayerNormalization's Mean and InvStdDev outputs (the statistics over the last k axes, those
        axes kept with size 1), composed of layers: mean, (x - mean)^2, its mean, (var + eps)^-1/2."""
        L, T = _layers(), _structure()
        n = len(v.pshape)
        levels = list(range(n - k, n))
        kept = v.pshape[:n - k] + (1,) * k
        groups = v.groups  # the normalised axes are single factors: their groups stay, of size 1

        def stat(src, tag):
            agg = self._emit(f"{name}.{tag}", T.AggregationLayer("Mean", levels), {"Input": src})
            return self._emit(f"{name}.{tag}.keep", L.ReshapeLayer(kept), {"Input": agg})

        mean = stat(v.src, "mean")
        d = self._emit(f"{name}.centred", T.ThreadingLayer("Subtract"), {"Input1": v.src, "Input2": mean})
        var = stat(self._emit(f"{name}.square", L.ElementwiseLayer("Square"), {"Input": d}), "variance")
        shifted = self._emit(f"{name}.shifted", T.ThreadingLayer("Plus"),
                             {"Input1": var, "Input2": self._scalar(eps, f"{name}.epsilon")})
        inv = self._emit(f"{name}.invstd", T.ThreadingLayer("Power"),
                         {"Input1": shifted, "Input2": self._scalar(-0.5, f"{name}.minus_half")})
        for o, src in zip(node.output[1:3], (mean, inv)):
            if o:
                self.views[o] = _View(src, kept, v.q, groups)

    def _gather(self, node, attrs, name):
        self._only(attrs, {"axis": None})
        axis = int(attrs.get("axis", 0))
        if node.input[0] in self.constants:  # rows of a constant matrix picked by computed indices: an embedding
            w = self.constants[node.input[0]]
            if w.ndim != 2 or axis != 0:
                raise _Unsupported("only rows of a constant matrix (an embedding) are supported")
            x, shape = self._plain_view(node, 1, name)
            layer = _norm().EmbeddingLayer(w.shape[1], w.shape[0], weights=self._array(node, 0))
            self.views[node.output[0]] = _View(self._emit(name, layer, {"Input": x}), shape + (w.shape[1],))
            return
        v = self._view(node, 0)
        idx = self._int_input(node, 1)
        if idx is None:
            raise _Unsupported("indices computed from data (constant indices are supported)")
        index_shape = np.asarray(self.constants[node.input[1]]).shape
        a = self._single_axis(v, axis, "an index")
        size = v.pshape[a]
        if any(not -size <= i < size for i in idx):
            raise _Unsupported(f"an index out of range for an axis of size {size}")
        d = axis % v.rank()
        T = _structure()
        if not index_shape:  # one index: the axis is dropped
            src = self._emit(name, T.PartLayer(tuple(["All"] * a + [idx[0] % size])), {"Input": v.src})
            groups = list(v.groups[:d]) + list(v.groups[d + 1:])
            self.views[node.output[0]] = _View(src, v.pshape[:a] + v.pshape[a + 1:], v.q - (1 if a < v.q else 0),
                                               groups)
            return
        if not idx or len(idx) > 256:
            raise _Unsupported(f"{len(idx)} indices (1 to 256 are supported)")
        # An array of indices: the parts, one slice of one each, joined along the axis, which then
        # takes the indices' shape.
        parts = {f"Input{k + 1}": self._emit(f"{name}.part{k + 1}", T.PartLayer(tuple(["All"] * a + [slice(i % size,
                                                                                                          i % size + 1)])),
                                            {"Input": v.src}) for k, i in enumerate(idx)}
        src = parts["Input1"] if len(parts) == 1 else self._emit(name, T.CatenateLayer(a, inputs=len(parts)), parts)
        pshape = v.pshape[:a] + tuple(index_shape) + v.pshape[a + 1:]
        if len(index_shape) != 1:
            src = self._emit(f"{name}.reshape", _layers().ReshapeLayer(pshape), {"Input": src})
        groups = list(v.groups[:d]) + [1] * len(index_shape) + list(v.groups[d + 1:])
        q = v.q + (len(index_shape) - 1 if a < v.q else 0)
        self.views[node.output[0]] = _View(src, pshape, q, groups)

    def _slice(self, node, attrs, name):
        """Slice and Split: PartLayer spans on single example axes."""
        v = self._view(node, 0)
        rank = v.rank()
        full = v.full_shape(self.batch)
        if node.op_type == "Slice":
            if self.opset < 10:
                raise _Unsupported("Slice before opset 10")
            starts, ends = self._int_input(node, 1), self._int_input(node, 2)
            axes = self._int_input(node, 3) or list(range(len(starts)))
            steps = self._int_input(node, 4) or [1] * len(starts)
            cuts = [(node.output[0], {a % rank: (s, e, st) for a, s, e, st in zip(axes, starts, ends, steps)})]
        else:
            self._only(attrs, {"axis": None, "split": None, "num_outputs": None})
            axis = int(attrs.get("axis", 0)) % rank
            split = attrs.get("split") if self.opset < 13 else self._int_input(node, 1)
            n_out = len(node.output)
            if split is None:
                size = full[axis]
                chunk = -(-size // n_out)
                split = [min(chunk, size - k * chunk) for k in range(n_out)]
            starts = np.cumsum([0] + list(split))
            cuts = [(o, {axis: (int(starts[k]), int(starts[k + 1]), 1)}) for k, o in enumerate(node.output) if o]
        for k, (out, spec) in enumerate(cuts):
            parts = ["All"] * len(v.pshape)
            pshape = list(v.pshape)
            for d, (s, e, st) in spec.items():
                if st == 0:
                    raise _Unsupported("a step of 0")
                s, e = max(min(s, 2 ** 62), -2 ** 62), max(min(e, 2 ** 62), -2 ** 62)
                r = range(full[d])[slice(s, e, st)]
                if len(r) == full[d] and st == 1:
                    continue  # the whole axis
                a = self._single_axis(v, d, "a slice")
                if len(r) == 0:
                    raise _Unsupported("an empty slice")
                parts[a] = slice(r.start, r.stop if r.stop >= 0 else None, r.step)
                pshape[a] = len(r)
            src = v.src
            if any(p != "All" for p in parts):
                src = self._emit(name if k == 0 else f"{name}.{k}", _structure().PartLayer(tuple(parts)), {"Input": v.src})
            self.views[out] = _View(src, pshape, v.q, v.groups)

    def _concat(self, node, attrs, name):
        views = [self._view(node, i) for i in range(len(node.input))]
        v = views[0]
        axis = int(attrs["axis"]) % v.rank()
        if any(w.structure() != v.structure() for w in views):
            raise _Unsupported("inputs that hold their batch axes in different places")
        a = self._single_axis(v, axis, "a concatenation")
        ins = {f"Input{i + 1}": w.src for i, w in enumerate(views)}
        src = self._emit(name, _structure().CatenateLayer(a, inputs=len(ins)), ins)
        pshape = list(v.pshape)
        pshape[a] = sum(w.pshape[a] for w in views)
        self.views[node.output[0]] = _View(src, pshape, v.q, v.groups)

    def _conv(self, node, attrs, name):
        C = _conv_layers()
        w = self.constants.get(node.input[1])
        if w is None:
            raise _Unsupported("the weights must be a constant (an initializer)")
        x, shape = self._plain_view(node, 0, name)
        spatial = w.ndim - 2
        if not 1 <= spatial <= 3:
            raise _Unsupported(f"{spatial} spatial dimensions (1 to 3 are supported)")
        allowed = {"kernel_shape": lambda v: list(v) == list(w.shape[2:]), "strides": None, "pads": None,
                   "dilations": None, "group": None, "auto_pad": None}
        transposed = node.op_type == "ConvTranspose"
        if transposed:
            allowed.update(output_padding=None, output_shape=None)
        self._only(attrs, allowed)
        g = int(attrs.get("group", 1))
        n = w.shape[0] if node.op_type == "Conv" else w.shape[1] * g
        biases = self._array(node, 2, (n,)) if len(node.input) > 2 and node.input[2] else False
        if transposed:
            stride, padding, dilation, extra = self._deconv_window(attrs, spatial, list(w.shape[2:]), shape[1:])
            layer = C.DeconvolutionLayer(n, tuple(w.shape[2:]), stride=stride, padding=padding, dilation=dilation,
                                         channel_groups=g, biases=biases, weights=self._array(node, 1), **extra)
        else:
            stride, padding, dilation = self._window(attrs, spatial, list(w.shape[2:]), shape[1:])
            layer = C.ConvolutionLayer(n, tuple(w.shape[2:]), stride=stride, padding=padding, dilation=dilation,
                                       channel_groups=g, biases=biases, weights=self._array(node, 1))
        self.views[node.output[0]] = _View(self._emit(name, layer, {"Input": x}), self._out_shape(node)[1:])

    def _pool(self, node, attrs, name):
        if len([o for o in node.output if o]) > 1:
            raise _Unsupported("the Indices output is not supported")
        x, shape = self._plain_view(node, 0, name)
        kernel = list(attrs.get("kernel_shape", []))
        allowed = {"kernel_shape": None, "strides": None, "pads": None, "auto_pad": None,
                   "ceil_mode": None, "dilations": lambda v: all(d == 1 for d in v),
                   "storage_order": lambda v: v == 0, "count_include_pad": None}
        self._only(attrs, allowed)
        if len(shape) != len(kernel) + 1:
            raise _Unsupported(f"a kernel of {len(kernel)} axes on an input of shape {shape} per example")
        exclude_pad = node.op_type == "AveragePool" and not attrs.get("count_include_pad", 0)
        stride, padding, _ = self._window(attrs, len(kernel), kernel, shape[1:] if exclude_pad or
                                          attrs.get("auto_pad", b"NOTSET") in (b"SAME_LOWER", "SAME_LOWER") else None)
        if padding == "Same" and exclude_pad:  # explicit, to count the positions inside the input
            padding = []
            for n, k, s in zip(shape[1:], kernel, stride):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                padding.append((total // 2, total - total // 2))
        if attrs.get("ceil_mode", 0):
            # The windows that ceil mode adds at the end start inside the input or its left padding:
            # as much more padding at the end (never the maximum; not counted by a mean that excludes it).
            if node.op_type != "MaxPool" and not exclude_pad or padding == "Same":
                raise _Unsupported("ceil_mode=1 (for MaxPool, and AveragePool with count_include_pad=0)")
            padding = [tuple(p) for p in (padding or [(0, 0)] * len(kernel))]
            for d, (n, k, s) in enumerate(zip(shape[1:], kernel, stride)):
                lo, hi = padding[d]
                out = -(-(n + lo + hi - k) // s) + 1
                if (out - 1) * s >= n + lo:
                    out -= 1
                padding[d] = (lo, max(hi, (out - 1) * s + k - n - lo))
        out_shape = self._out_shape(node)[1:]
        if exclude_pad and any(p != (0, 0) for p in (padding or [])):
            # The mean over the positions inside the input: the windows' totals divided by how many
            # positions of each window lie inside (a constant of the output's spatial shape).
            counts = np.ones((), np.float64)
            for (lo, _), n, k, s, o in zip(padding, shape[1:], kernel, stride, out_shape[1:]):
                start = np.arange(o) * s - lo
                inside = np.minimum(start + k, n) - np.maximum(start, 0)
                counts = np.multiply.outer(counts, inside.astype(np.float64))
            if np.any(counts <= 0):
                raise _Unsupported("a window with no position inside the input")
            total = self._emit(name + ".total", _conv_layers().PoolingLayer(tuple(kernel), stride=stride,
                                                                            padding=padding, function="Total"),
                               {"Input": x})
            c = self._emit(name + ".counts", _structure().ConstantArrayLayer(counts[None], learnable=False), {})
            src = self._emit(name, _structure().ThreadingLayer("Divide"), {"Input1": total, "Input2": c})
            self.views[node.output[0]] = _View(src, out_shape)
            return
        layer = _conv_layers().PoolingLayer(tuple(kernel), stride=stride, padding=padding,
                                            function="Max" if node.op_type == "MaxPool" else "Mean")
        self.views[node.output[0]] = _View(self._emit(name, layer, {"Input": x}), out_shape)

    def _reduce(self, node, attrs, name):
        v = self._view(node, 0)
        rank = v.rank()
        self._only(attrs, {"axes": None, "keepdims": None, "noop_with_empty_axes": None})
        # axes: an attribute, or from opset 18 (13 for ReduceSum) an input
        as_input = self.opset >= (13 if node.op_type == "ReduceSum" else 18)
        axes = self._int_input(node, 1) if as_input else attrs.get("axes")
        if not axes and attrs.get("noop_with_empty_axes", 0):  # no axes: the identity
            self.views[node.output[0]] = v
            return
        axes = sorted({a % rank for a in (axes if axes else range(rank))})
        spans = v.spans()
        if any("B" in spans[d] for d in axes):
            raise _Unsupported("it reduces over the batch axis")
        f = {"ReduceMean": "Mean", "ReduceSum": "Total", "ReduceMax": "Max", "ReduceMin": "Min"}[node.op_type]
        levels = sorted(a for d in axes for a in spans[d])
        src = self._emit(name, _structure().AggregationLayer(f, levels), {"Input": v.src})
        kept = [d for d in range(rank) if d not in axes]
        pshape = tuple(s for a, s in enumerate(v.pshape) if a not in levels)
        reduced = _View(src, pshape, v.q - sum(1 for a in levels if a < v.q), [v.groups[d] for d in kept])
        if attrs.get("keepdims", 1):
            reduced = self._regroup(reduced, self._out_shape(node), name + ".reshape")
        self.views[node.output[0]] = reduced


def _layers():
    from . import layers
    return layers


def _sequence_layers():
    from . import layers_sequence
    return layers_sequence


def _structure():
    from . import layers_structure
    return layers_structure


def _norm():
    from . import layers_norm
    return layers_norm


def _conv_layers():
    from . import layers_conv
    return layers_conv
