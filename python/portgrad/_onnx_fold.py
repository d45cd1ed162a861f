"""Shape arithmetic folded at import: the nodes of an ONNX model that compute only from constants and
from static shapes (Shape, Gather, Slice, Concat, Cast, Unsqueeze, Mul, ... on shape vectors, as
PyTorch's exporters write them) are evaluated once, by onnx's reference evaluator, and become
constants; what remains is the computation on the data.

The batch size is a number here: the first axis of every graph input is set to `batch` (a stand-in
no real dimension equals, for a model with a dynamic batch), so ``Shape(x)`` folds, and the importer
finds where the batch went by that number (see _onnx.py). Tensors stored in the file (float
initializers and Constant nodes) are never folded into new ones: they stay the arrays the user
differentiates by name.
"""
from __future__ import annotations

import numpy as np

# Larger folded results are left to the importer (it refuses them, naming the node): a tensor that
# grows with the stand-in batch size (ConstantOfShape(Shape(x))) must not be materialised.
_MAX_FOLDED_ELEMENTS = 1 << 20
# What is evaluated at import: shape arithmetic and elementwise math, each bounded by its inputs or
# checked for its size first (no loops, no subgraphs, nothing random), so a hostile file cannot make
# the import hang or allocate without bound.
_FOLDABLE = {
    "Abs", "Add", "And", "Cast", "CastLike", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape", "Cos", "Div",
    "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "Greater", "GreaterOrEqual", "Identity", "Less",
    "LessOrEqual", "Log", "Max", "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pow", "Range", "Reciprocal", "ReduceMax",
    "ReduceMin", "ReduceProd", "ReduceSum", "Reshape", "Shape", "Sign", "Sin", "Size", "Slice", "Split", "Sqrt",
    "Squeeze", "Sub", "Tanh", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where", "Xor"}


def fold(onnx, model, batch, opset):
    """(model with its shape arithmetic folded and shapes inferred for the given batch size, the
    set of value names that are file tensors)."""
    model = _with_batch(onnx, model, batch)
    graph = model.graph
    file_tensors = {t.name for t in graph.initializer if t.data_type in _FLOAT_TYPES(onnx)}
    file_tensors |= {n.output[0] for n in graph.node if n.op_type == "Constant" and _constant_is_float(onnx, n)}
    for _ in range(16):  # each round folds what the shapes inferred after the last one allow
        shapes = _shapes(onnx, model)
        constants = {t.name: to_array(onnx, t, "initializer") for t in model.graph.initializer}
        kept, folded = [], {}
        for node in model.graph.node:
            value = _evaluate(onnx, node, constants, shapes, file_tensors, opset)
            if value is None:
                kept.append(node)
                continue
            for name, v in zip([o for o in node.output if o], value):
                constants[name] = folded[name] = v
        if not folded:
            return model, file_tensors
        used = {i for n in kept for i in n.input} | {o.name for o in model.graph.output}
        new = [onnx.numpy_helper.from_array(np.asarray(v), name) for name, v in folded.items() if name in used]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        model.graph.initializer.extend(new)
    return model, file_tensors


def batch_dependent(onnx, model, folded, batch, opset):
    """The names of the folded values that depend on the batch size: folded again with another
    batch size, they differ (y = x / Shape(x)[0] makes one). They may shape the data (a reshape's
    target: that is how the importer finds the batch) but must not be data."""
    try:
        again, _ = fold(onnx, model, batch + 7919, opset)
    except ValueError:  # the model's shapes allow only its own batch size: nothing can be told apart
        return set()
    before = {t.name: t for t in folded.graph.initializer}
    out = set()
    for t in again.graph.initializer:
        if t.name in before and before[t.name].SerializeToString() != t.SerializeToString():
            out.add(t.name)
    return out


def to_array(onnx, tensor, what):
    """A TensorProto's values; a tensor onnx cannot read (an unknown element type, data that does
    not match its shape) is a ValueError naming it."""
    try:
        return onnx.numpy_helper.to_array(tensor)
    except Exception as e:  # onnx raises KeyError, ValueError, TypeError, ... on malformed tensors
        raise ValueError(f"import_onnx: {what} {tensor.name!r} cannot be read ({type(e).__name__}: {e})") from None


def attributes(onnx, node):
    """A node's attributes as Python values; one onnx cannot read is a ValueError naming it."""
    try:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    except Exception as e:
        raise ValueError(f"import_onnx: node {node.name!r} ({node.op_type}) has an attribute that cannot be read "
                         f"({type(e).__name__}: {e})") from None


def _FLOAT_TYPES(onnx):
    T = onnx.TensorProto
    return {T.FLOAT, T.DOUBLE, T.FLOAT16, T.BFLOAT16}


def _constant_is_float(onnx, node):
    for a in node.attribute:
        if a.name == "value":
            return a.t.data_type in _FLOAT_TYPES(onnx)
        if a.name in ("value_float", "value_floats"):
            return True
    return False


def _with_batch(onnx, model, batch):
    """A copy with axis 0 of every graph input set to `batch` and no stale shape annotations."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    initializers = {t.name for t in m.graph.initializer}
    for info in m.graph.input:
        t = info.type.tensor_type
        if info.name not in initializers and t.HasField("shape") and len(t.shape.dim) > 0:
            t.shape.dim[0].Clear()
            t.shape.dim[0].dim_value = batch
    del m.graph.value_info[:]
    for info in m.graph.output:
        t = info.type.tensor_type
        if t.HasField("shape"):
            t.ClearField("shape")
    return m


def _shapes(onnx, model):
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # onnx's InferenceError, or what its C++ inference throws on malformed graphs
        raise ValueError(f"import_onnx: ONNX shape inference fails on the model ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    shapes = {}
    for info in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        t = info.type.tensor_type
        if t.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def _evaluate(onnx, node, constants, shapes, file_tensors, opset):
    """The node's outputs if it can be folded, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in _FOLDABLE or node.op_type == "Constant":
        return None if node.op_type != "Constant" or node.output[0] in file_tensors else \
            _run(onnx, node, {}, opset)
    if node.op_type in ("Shape", "Size"):
        shape = shapes.get(node.input[0])
        if shape is None or any(d is None for d in shape):
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape, dtype=np.int64)), np.int64)]
        attrs = attributes(onnx, node)
        return [np.array(shape, np.int64)[slice(attrs.get("start"), attrs.get("end"))]]
    inputs = [i for i in node.input if i]
    if not inputs or any(i not in constants or i in file_tensors for i in inputs):
        return None  # computed data, or a file tensor (differentiable by its own name)
    return _run(onnx, node, {i: constants[i] for i in inputs}, opset)


def _too_large(node, feeds):
    """Whether an op that makes a tensor from its inputs' values would make a large one."""
    ins = [feeds.get(i) for i in node.input]
    try:
        if node.op_type == "ConstantOfShape":
            n = np.prod(np.asarray(ins[0], np.float64))
        elif node.op_type == "Range":
            start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in ins[:3])
            n = 0 if delta == 0 else np.ceil((limit - start) / delta)
        elif node.op_type == "Expand":
            n = np.prod(np.broadcast_shapes(np.shape(ins[0]), tuple(int(d) for d in np.asarray(ins[1]).reshape(-1))),
                        dtype=np.float64)
        elif node.op_type == "Tile":
            n = np.prod(np.asarray(np.shape(ins[0]), np.float64) * np.asarray(ins[1], np.float64))
        else:
            return False
    except (TypeError, ValueError, IndexError, OverflowError):
        return True
    return not np.isfinite(n) or n > _MAX_FOLDED_ELEMENTS


def _run(onnx, node, feeds, opset):
    """The node's outputs on the given inputs (onnx's reference evaluator), or None if it fails or
    they are too large."""
    from onnx.reference import ReferenceEvaluator

    if node.domain not in ("", "ai.onnx") or node.op_type not in _FOLDABLE or _too_large(node, feeds):
        return None
    h = onnx.helper
    graph = h.make_graph([node], "fold", [h.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None) for i in feeds],
                         [h.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o])
    try:
        out = ReferenceEvaluator(h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])).run(None, feeds)
    except Exception:  # the importer reports the node as it stands
        return None
    if any(np.asarray(v).size > _MAX_FOLDED_ELEMENTS for v in out):
        return None
    return [np.asarray(v) for v in out]
