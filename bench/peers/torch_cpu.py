"""PyTorch eager mode on the CPU: nn.Linear + activation, torch.autograd.grad for gradients."""
import numpy as np

from ..spec import Impl, NotApplicable

try:
    import torch
except Exception as e:  # noqa: BLE001 - any import failure means "not installed" here
    torch = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"
else:
    IMPORT_ERROR = None

KEY = "torch"
NAME = "PyTorch eager CPU"


def version():
    return None if torch is None else torch.__version__


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable once, before any parallel work
        pass


def _model(spec, weights, requires_grad):
    layers = []
    for i, (W, b) in enumerate(weights):
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append({"Tanh": torch.nn.Tanh, "Ramp": torch.nn.ReLU}[spec.act]())
    model = torch.nn.Sequential(*layers).eval()
    for p in model.parameters():
        p.requires_grad_(requires_grad)
    return model


def _np(r):
    if isinstance(r, (tuple, list)):
        return [t.detach().numpy() for t in r]
    return r.detach().numpy()


def mlp(spec, weights, kind):
    if spec.act not in ("Tanh", "Ramp"):
        raise NotApplicable(f"activation {spec.act}")
    want_params = kind in ("pgrad", "fwd_bwd")
    model = _model(spec, weights, requires_grad=want_params)
    params = list(model.parameters())  # W0, b0, W1, b1, ...: portgrad's order and shapes

    if kind == "fwd":
        def fn(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x))
        return Impl(fn, _np)

    if kind == "igrad":
        def fn(x):
            xt = torch.from_numpy(x).requires_grad_(True)
            (dx,) = torch.autograd.grad(model(xt).sum(), xt)
            return dx
        return Impl(fn, _np)

    if kind == "pgrad":
        def fn(x):
            return torch.autograd.grad(model(torch.from_numpy(x)).sum(), params)
        return Impl(fn, _np)

    def fn(x):  # fwd_bwd
        xt = torch.from_numpy(x).requires_grad_(True)
        return torch.autograd.grad(model(xt).sum(), params + [xt])
    return Impl(fn, _np)



def cnn_function(spec, ts):
    """The bench CNN as a function of x, with torch.nn.functional (conv2d, relu, max_pool2d,
    flatten, linear) over its (W, b) tensors `ts` (on any device): shared with bench/gpu.py."""
    F = torch.nn.functional
    pad, p = (spec.k - 1) // 2, spec.pool

    def f(x):
        h = x
        for W, b in ts[:-1]:
            h = F.max_pool2d(F.relu(F.conv2d(h, W, b, padding=pad)), p, p)
        return F.linear(h.flatten(1), *ts[-1])
    return f


def cnn(spec, weights, kind):
    """The CNN on the CPU: forward, or forward + input gradient."""
    if kind not in ("fwd", "igrad"):
        raise NotApplicable(f"CNN kind {kind}")
    f = cnn_function(spec, [(torch.from_numpy(W), torch.from_numpy(b)) for W, b in weights])

    if kind == "fwd":
        def fn(x):
            with torch.inference_mode():
                return f(torch.from_numpy(x))
        return Impl(fn, _np)

    def fn(x):
        xt = torch.from_numpy(x).requires_grad_(True)
        (dx,) = torch.autograd.grad(f(xt).sum(), xt)
        return dx
    return Impl(fn, _np)
