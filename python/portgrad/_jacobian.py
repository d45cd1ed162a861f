"""NetPortJacobian and NetPortHessian: per-example Jacobians of an output with respect to an input
port, from one evaluation of the engine's forward mode (one forward pass, a tangent per input
element beside it: the engine's tangent directions) or reverse mode (an output gradient per output
element), and Hessians from its second order (a Hessian-vector product per input element). Python
only arranges the data: the one-hot directions, for reverse mode and Hessians each example repeated
once per direction, and the result's axes put in order."""
from __future__ import annotations

import math

import numpy as np

from ._net import NetPortGradient, NetPortHessian, NetPortJacobian, NetPortTangent


def evaluate_with_jacobians(net, data, spec, options):
    """net(data, spec) where spec is a NetPortJacobian or a list holding some: the other items in one
    evaluation, each Jacobian in its own."""
    if options.get("DeviceResults"):
        raise ValueError("NetPortJacobian and NetPortHessian are assembled as NumPy arrays on the host: "
                         "DeviceResults=True is not available with them; leave it out (the evaluation still "
                         "runs on the TargetDevice)")
    if net._shape_free():
        raise ValueError(f"{net._type_name()} has no declared input shape, so a batch cannot be told from one "
                         "example and NetPortJacobian/NetPortHessian cannot batch their directions; declare "
                         "one with input=... (e.g. NetChain([...], input=3))")
    options = {**options, "DeviceResults": False}
    if isinstance(spec, (NetPortJacobian, NetPortHessian)):
        return _jacobian(net, data, spec, options)
    special = (NetPortJacobian, NetPortHessian)
    others = [s for s in spec if not isinstance(s, special)]
    result = net(data, others, **options) if others else {}
    return {s: (result[s] if not isinstance(s, special) else _jacobian(net, data, s, options)) for s in spec}


def _jacobian(net, data, jac, options):
    # The common call — one array, a Jacobian of the input in forward mode, seen before with this
    # shape — goes straight to the engine with the plan, request and one-hot tangents it had.
    fast = None
    if type(data) is np.ndarray and options.get("RandomSeeding") is None:
        fast = ("jacobian", jac, options["WorkingPrecision"], options["TargetDevice"], data.shape, data.dtype.str)
        try:
            cnet, prepared, assemble, tangent, finish, single = net._fast[fast]
        except (KeyError, TypeError):
            pass
        else:
            x = data[None] if single else data
            return finish(assemble(*cnet.run(prepared, [x], [], 0, False, [tangent], len(tangent))))
    entry = []
    result = _jacobian_general(net, data, jac, options, entry)
    if fast is not None and entry:
        net._fast[fast] = entry[0]
    return result


def _jacobian_general(net, data, jac, options, fast_entry):
    """The Jacobian by the general path; appends to fast_entry what a repeat of this request can run
    directly (see _jacobian), when it can."""
    if options["NetEvaluationMode"] != "Test":
        raise ValueError(f"{jac!r}: Jacobians and Hessians are taken in NetEvaluationMode 'Test' (in 'Train' mode "
                         "dropout masks and batch statistics would differ between the repeated examples)")
    ins = net.input_ports
    outs = net.output_ports
    on_array = not (isinstance(jac.target, str) and jac.target in ins)
    if on_array and isinstance(jac, NetPortHessian):
        raise KeyError(f"{jac!r}: the net has no input port {jac.target!r}; its input ports are "
                       f"{', '.join(repr(n) for n in ins)}")
    if jac.output is not None and jac.output not in outs:
        raise KeyError(f"{jac!r}: the net has no output port {jac.output!r}; its output ports are "
                       f"{', '.join(repr(n) for n in outs)}")
    if isinstance(data, dict):
        if any(not isinstance(k, str) for k in data):
            raise ValueError(f"{jac!r}: it takes the data alone (no imposed gradients or tangents)")
        arrays = {k: np.asarray(v) for k, v in data.items()}
    else:
        if len(ins) != 1:
            raise ValueError(f"the net has {len(ins)} input ports; pass a dict {{port: array}}")
        arrays = {next(iter(ins)): np.asarray(data)}
    if net._varying:  # the shapes at this data's sequence lengths
        declared = [n for n, _ in net._declared_inputs()]
        missing = [n for n in declared if n not in arrays]
        if missing:
            raise ValueError(f"no data for input port {missing[0]!r}")
        cnet = net._core_net(net._varying_shapes([arrays[n] for n in declared]))
        ins, outs = {n: s for n, s, _ in cnet.inputs}, dict(cnet.outputs)
    port = next(iter(ins)) if on_array else jac.target  # the port that tells one example from a batch
    if port not in arrays:
        raise ValueError(f"no data for input port {port!r}")
    in_shape = tuple(ins[port])
    x = arrays[port]
    single = x.shape == in_shape
    if not single and x.shape[1:] != in_shape:
        raise ValueError(f"port {port!r}: expected shape {in_shape} (one example) or (batch, *{in_shape}), "
                         f"given shape {x.shape}")
    batched = {k: (v[None] if single else v) for k, v in arrays.items()}
    B = len(batched[port])
    names = [jac.output] if jac.output is not None else list(outs)
    n_in = math.prod(in_shape)
    evaluate = {k: v for k, v in options.items() if k != "NetEvaluationMode"}

    # The evaluation holds every example once per direction, and the result batch * n_out * n_in
    # numbers: refuse what would not fit rather than let the allocation fail (or the machine swap).
    n_dirs = max([n_in] + [math.prod(outs[o]) for o in names])
    per_example = sum(math.prod(v.shape[1:]) for v in batched.values())
    need = B * n_dirs * (per_example + n_dirs) + sum(B * n_in * math.prod(outs[o]) for o in names)
    if need > _MAX_ELEMENTS:
        raise ValueError(f"{jac!r}: {B} examples with {n_dirs} directions each need about {need:.3g} numbers "
                         f"(at most {_MAX_ELEMENTS:.3g}); evaluate fewer examples at a time, or ask for the products "
                         "you need (NetPortTangent: J v, an imposed NetPortGradient: v^T J)")

    def repeated(n):
        return {k: np.repeat(v, n, axis=0) for k, v in batched.items()}

    def one_hot(n, shape):  # (B * n, *shape): example b's n directions, in order
        return np.tile(np.eye(n).reshape((n, *shape)), (B,) + (1,) * len(shape))

    if isinstance(jac, NetPortHessian):  # H e_j per direction j: column j of each example's Hessian
        data = {**repeated(n_in), NetPortTangent(jac.target): one_hot(n_in, in_shape)}
        if jac.output is not None:  # the gradient of that output's sum alone
            data[NetPortGradient(jac.output)] = np.ones((B * n_in, *outs[jac.output]))
        cols = np.asarray(net(data, NetPortTangent(NetPortGradient(jac.target)), **evaluate)).reshape(B, n_in, n_in)
        H = np.ascontiguousarray(cols.transpose(0, 2, 1)).reshape((B, *in_shape, *in_shape))
        return H[0] if single else H
    if on_array:  # rows from each example's own array gradient, one per output element
        if jac.method == "Forward":
            raise ValueError(f"{jac!r}: an array's Jacobian is built in reverse mode (per-example gradients); "
                             "Method='Forward' is for input ports")
        a_shape = None
        results = {}
        for o in names:
            n_out = math.prod(outs[o])
            rows = np.asarray(net({**repeated(n_out), NetPortGradient(o): one_hot(n_out, tuple(outs[o]))},
                                  NetPortGradient(jac.target, PerExample=True), **evaluate))
            a_shape = rows.shape[1:]
            results[o] = rows.reshape((B, *outs[o], *a_shape))
        if single:
            results = {o: r[0] for o, r in results.items()}
        return results[names[0]] if len(names) == 1 else results
    results = {}
    forward = [o for o in names if _method(jac, n_in, outs[o]) == "Forward"]
    if forward:  # direction j of every example is e_j: tangents (n_in, B, *in), one forward pass
        eye = np.eye(n_in, dtype=np.float32).reshape((n_in, 1, *in_shape))  # (0 and 1: exact in either precision)
        tangent = np.ascontiguousarray(np.broadcast_to(eye, (n_in, B, *in_shape)))
        spec = [NetPortTangent(o) for o in forward]
        t = net._call({**batched, NetPortTangent(jac.target): tangent}, spec, evaluate["WorkingPrecision"],
                      evaluate["TargetDevice"], "Test", evaluate["RandomSeeding"], False, directions=n_in)
        layout = [(o, math.prod(outs[o]), tuple(outs[o])) for o in forward]

        def finish_forward(t):
            out = {}
            for o, n_out, o_shape in layout:
                cols = np.asarray(t[NetPortTangent(o)]).reshape(n_in, B, n_out)
                out[o] = np.ascontiguousarray(cols.transpose(1, 2, 0)).reshape((B, *o_shape, *in_shape))
            return out

        results.update(finish_forward(t))
        if len(forward) == len(names) and list(batched) == [port] and not net._varying and not net._free:
            # the fast path's entry (see _jacobian): this request, resolved once more, run directly
            from ._net import _core, _resolve
            cnet = net._core_net()
            request, assemble = _resolve(net, cnet, spec, (), (jac.target,))
            prepared = cnet.request(_core.evaluation_options(evaluate["WorkingPrecision"], evaluate["TargetDevice"],
                                                             "Test"), request)

            def finish(t):
                r = finish_forward(t)
                r = {o: v[0] for o, v in r.items()} if single else r
                return r[names[0]] if len(names) == 1 else r

            fast_entry.append((cnet, prepared, assemble, tangent, finish, single))
    for o in names:
        if o in results:
            continue
        n_out = math.prod(outs[o])
        rows = net({**repeated(n_out), NetPortGradient(o): one_hot(n_out, tuple(outs[o]))},
                   NetPortGradient(jac.target), **evaluate)
        results[o] = np.asarray(rows).reshape((B, *outs[o], *in_shape))
    if single:
        results = {o: r[0] for o, r in results.items()}
    return results[names[0]] if len(names) == 1 else results


_MAX_ELEMENTS = 1 << 31  # 8 GB of float32: the most a Jacobian or Hessian request may hold at once


def _method(jac, n_in, out_shape):
    if jac.method is not None:
        return jac.method
    return "Forward" if n_in < math.prod(out_shape) else "Reverse"
