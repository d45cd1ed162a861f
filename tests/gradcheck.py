"""Whole-net gradient checks: every NetPortGradient of a net against central finite differences.

`check_net_gradients(net, data)` compares, in float64, the gradient of the sum of all outputs (or of
a random imposed output gradient) with respect to every real input port and every learnable array
against finite differences — the check every composite net (graphs, CNNs, residual blocks) gets.
"""
from __future__ import annotations

import numpy as np

import portgrad as pg
from layer_registry import fd_array_gradient, fd_input_gradient, grad_close, quantize


def quantized(net, seed=0):
    """The same net with every array rounded to a multiple of 2**-10, so the float32-exact steps of
    fd_array_gradient apply."""
    return pg.NetReplacePart(net, {_key(info): quantize(net._params[info["path"]])
                                   for info in net._core_net().param_info
                                   if info["learnable"] and info["path"] in net._params})


def _key(info):
    """How NetReplacePart and NetPortGradient name the array of a param_info entry."""
    if info["shared"]:
        return pg.NetSharedArray(info["path"])
    return tuple(int(x) if x.isdigit() else x for x in info["path"].split("/"))


def scalar_of(net, data, imposed, **eval_options):
    """f(net, data) = sum over outputs of sum(output * imposed[output]) in Real64."""
    res = net(data, WorkingPrecision="Real64", **eval_options)
    if not isinstance(res, dict):
        res = {next(iter(imposed)): res}
    return float(sum(np.sum(np.asarray(res[k], dtype=np.float64) * g) for k, g in imposed.items()))


def check_net_gradients(net, data, seed=0, arrays=True, rtol=1e-6, max_array_elements=None, **eval_options):
    """Checks every gradient of `net` at `data` (a dict of inputs) against finite differences."""
    rng = np.random.default_rng(seed)
    net = quantized(net, seed)
    outs = net(data, WorkingPrecision="Real64", **eval_options)
    out_names = list(outs) if isinstance(outs, dict) else [next(iter(net.output_ports))]
    if not isinstance(outs, dict):
        outs = {out_names[0]: outs}
    imposed = {k: rng.uniform(-1, 1, np.shape(v)) for k, v in outs.items()}
    request = {**data, **{pg.NetPortGradient(k): g for k, g in imposed.items()}}
    real_inputs = [name for name, _shape, bound in net._core_net().inputs if bound == 0]
    got = net(request, pg.NetPortGradient(pg.All), WorkingPrecision="Real64", **eval_options)

    for port in real_inputs:
        def f(v, port=port):
            return scalar_of(net, {**data, port: v}, imposed, **eval_options)
        grad_close(got[pg.NetPortGradient(port)], fd_input_gradient(f, data[port]), rtol=rtol,
                   what=f"d/d{port}")
    if not arrays:
        return got
    checked = 0
    for info in net._core_net().param_info:
        if not info["learnable"]:
            continue
        key = _key(info)
        if max_array_elements is not None and checked + int(np.prod(info["shape"])) > max_array_elements:
            continue
        checked += int(np.prod(info["shape"]))

        def f(a, key=key):
            return scalar_of(pg.NetReplacePart(net, {key: a}), data, imposed, **eval_options)
        grad_close(got[pg.NetPortGradient(key)], fd_array_gradient(f, pg.NetExtract(net, key)), rtol=rtol,
                   what=f"d/d{info['path']}")
    return got
