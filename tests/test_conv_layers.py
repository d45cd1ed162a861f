"""ConvolutionLayer, DeconvolutionLayer and PoolingLayer beyond the generic registry checks:
agreement with torch.nn.functional (each configuration, and a LeNet-style CNN end to end), the
option rules (defaults, "Same", fans), and clear errors for bad configurations."""
import numpy as np
import pytest

import portgrad as pg
from conv_numpy import _tuple, conv_geometry

NPG = pg.NetPortGradient


# ----------------------------------------------------------------------------- semantics without torch
def test_shapes_and_defaults():
    assert pg.ConvolutionLayer(4, 3, input=(2, 7)).output_ports["Output"] == (4, 5)
    assert pg.ConvolutionLayer(4, 3, input=(2, 7, 6)).output_ports["Output"] == (4, 5, 4)
    assert pg.ConvolutionLayer(4, 3, input=(2, 5, 6, 7)).output_ports["Output"] == (4, 3, 4, 5)
    assert pg.ConvolutionLayer(4, 3, 2, "Same", input=(2, 7, 6)).output_ports["Output"] == (4, 4, 3)
    assert pg.ConvolutionLayer(1, 3, 2, ((1, 0), (0, 2)), 2, input=(1, 9, 9)).output_ports["Output"] == (1, 3, 4)
    assert pg.DeconvolutionLayer(3, 4, 2, input=(2, 5, 5)).output_ports["Output"] == (3, 12, 12)
    assert pg.DeconvolutionLayer(3, 4, 2, "Same", input=(2, 5, 5)).output_ports["Output"] == (3, 10, 10)
    # Wolfram: PoolingLayer[n] is PoolingLayer[n, 1]
    assert pg.PoolingLayer(2, input=(3, 4, 4)).output_ports["Output"] == (3, 3, 3)
    assert pg.PoolingLayer(2, 2, input=(3, 5, 5)).output_ports["Output"] == (3, 2, 2)
    assert pg.PoolingLayer(3, 2, "Same", input=(3, 5, 6)).output_ports["Output"] == (3, 3, 3)


def test_array_shapes_and_initialisation():
    conv = pg.NetInitialize(pg.ConvolutionLayer(64, (3, 3), channel_groups=2, input=(16, 8, 8)), seed=0)
    w = pg.NetExtract(conv, "Weights")
    assert w.shape == (64, 8, 3, 3) and pg.NetExtract(conv, "Biases").shape == (64,)
    assert abs(w.std() / np.sqrt(2.0 / (8 * 9)) - 1) < 0.05        # Kaiming, fan_in = (c/g) * prod(k)
    deconv = pg.NetInitialize(pg.DeconvolutionLayer(6, 3, channel_groups=3, biases=False, input=(9, 4, 4)), seed=0)
    assert pg.NetExtract(deconv, "Weights").shape == (9, 2, 3, 3)  # (c, n/g, k...)
    assert len(deconv.arrays) == 1


def test_mean_pooling_counts_padding_in_the_divisor():
    y = pg.PoolingLayer(2, 2, 1, "Mean", input=(1, 2))(np.array([[4.0, 8.0]]))
    np.testing.assert_allclose(y, [[2.0, 4.0]])
    y = pg.PoolingLayer(2, 2, 1, "Max", input=(1, 2))(np.array([[-4.0, -8.0]]))
    np.testing.assert_allclose(y, [[-4.0, -8.0]])                 # padding never wins a max


def _raises(exc, match, make):
    """Construction checks types; shapes are checked when the net is first compiled (here: asking
    for its output shape), as for every layer."""
    with pytest.raises(exc, match=match):
        make().output_ports


@pytest.mark.parametrize("make, exc, match", [
    (lambda: pg.ConvolutionLayer(2, 5, input=(1, 3, 3)), ValueError, r"ConvolutionLayer.*kernel.*padded input"),
    (lambda: pg.ConvolutionLayer(2, 3, dilation=3, input=(1, 6)), ValueError, r"ConvolutionLayer.*spans 7"),
    (lambda: pg.PoolingLayer(4, input=(1, 3, 3)), ValueError, r"PoolingLayer.*larger than the padded input"),
    (lambda: pg.ConvolutionLayer(4, 3, channel_groups=2, input=(3, 5, 5)), ValueError,
     r"ConvolutionLayer.*input channels \(3.*divisible by channel_groups \(2\)"),
    (lambda: pg.ConvolutionLayer(3, 3, channel_groups=2, input=(4, 5, 5)), ValueError,
     r"ConvolutionLayer.*output channels \(3\).*divisible"),
    (lambda: pg.DeconvolutionLayer(2, 3, channel_groups=2, input=(3, 5, 5)), ValueError, r"DeconvolutionLayer.*divisible"),
    (lambda: pg.ConvolutionLayer(2, 3, padding="Valid", input=(1, 5, 5)), ValueError, r"padding.*'Same'"),
    (lambda: pg.ConvolutionLayer(2, 3, padding=-1, input=(1, 5, 5)), ValueError, r"padding.*non-negative"),
    (lambda: pg.ConvolutionLayer(2, 3, padding=1.5, input=(1, 5, 5)), TypeError, r"padding"),
    (lambda: pg.ConvolutionLayer(2, (3, 3), padding=(1, 1, 1)), ValueError, r"padding.*2"),
    (lambda: pg.ConvolutionLayer(2, 3, padding=((1, 2, 3), (0, 0)), input=(1, 5, 5)), ValueError, r"padding"),
    (lambda: pg.ConvolutionLayer(2, 3, padding=(1, 1, 1), input=(1, 5, 5)), ValueError,
     r"ConvolutionLayer: padding must be .* 2 integers"),
    (lambda: pg.ConvolutionLayer(2, 3, stride=(1, 2, 1), input=(1, 5, 5)), ValueError, r"ConvolutionLayer: stride"),
    (lambda: pg.ConvolutionLayer(2, 3, stride=0, input=(1, 5, 5)), ValueError, r"stride must be positive"),
    (lambda: pg.ConvolutionLayer(2, (3, 3), input=(5, 5)), ValueError,
     r"ConvolutionLayer: port \"Input\" must have rank 3.*given shape \(5, 5\)"),
    (lambda: pg.ConvolutionLayer(2, 3, input=(2, 3, 3, 3, 3)), ValueError, r"ConvolutionLayer: port \"Input\" must have rank 2, 3 or 4"),
    (lambda: pg.PoolingLayer(2, input=5), ValueError, r"PoolingLayer: port \"Input\" must have rank 2, 3 or 4"),
    (lambda: pg.PoolingLayer(2, function="Min"), ValueError, r"PoolingLayer: function"),
    (lambda: pg.PoolingLayer((2, 2, 2, 2)), ValueError, r"1 to 3 dimensions"),
    (lambda: pg.ConvolutionLayer(0, 3), ValueError, r"output channels must be positive"),
    (lambda: pg.ConvolutionLayer(2, "3"), TypeError, r"kernel size"),
    (lambda: pg.ConvolutionLayer(2, 3, biases="no"), TypeError, r"biases"),
    (lambda: pg.DeconvolutionLayer(2, 2, 3, "Same", input=(1, 4, 4)), ValueError, r"DeconvolutionLayer: padding \"Same\""),
    (lambda: pg.DeconvolutionLayer(2, 3, padding=2, input=(1, 1)), ValueError, r"DeconvolutionLayer: cropping"),
], ids=lambda v: None)
def test_bad_configurations(make, exc, match):
    _raises(exc, match, make)


def test_error_inside_a_chain_names_the_layer():
    with pytest.raises(ValueError, match=r"ConvolutionLayer.*kernel"):
        pg.NetChain([pg.ConvolutionLayer(2, 3), pg.ElementwiseLayer("Ramp"), pg.ConvolutionLayer(2, 5)],
                    input=(1, 6, 6)).output_ports


def test_wrong_input_shape_at_evaluation():
    net = pg.NetInitialize(pg.ConvolutionLayer(2, 3, input=(1, 5, 5)))
    with pytest.raises(ValueError, match="Input"):
        net(np.zeros((1, 5, 4)))


# ----------------------------------------------------------------------------- against PyTorch
torch = pytest.importorskip("torch")
F = torch.nn.functional


def _pad_hi(sp, k, stride, dilation, lo, out):
    return [max(0, (out[d] - 1) * stride[d] + dilation[d] * (k[d] - 1) + 1 - sp[d] - lo[d]) for d in range(len(sp))]


def _torch_pad(t, lo, hi, value=0.0):
    pads = []
    for a, b in zip(reversed(lo), reversed(hi)):
        pads += [a, b]
    return F.pad(t, pads, value=value)


CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}

# (kind, n or function, k, input shape, stride, padding, dilation, groups, biases)
TORCH_CASES = [
    ("conv", 4, 3, (3, 9), 1, 0, 1, 1, True),
    ("conv", 4, 3, (3, 9), 2, "Same", 1, 1, True),
    ("conv", 6, (3, 2), (4, 8, 7), (2, 1), ((1, 0), (2, 1)), (1, 2), 2, True),
    ("conv", 5, 3, (5, 7, 6), 1, 1, 1, 5, False),
    ("conv", 4, 3, (2, 6, 5), 2, "Same", 1, 1, True),
    ("conv", 3, 1, (4, 5, 5), 1, 0, 1, 1, True),
    ("conv", 2, 2, (2, 4, 5, 4), (1, 2, 1), 1, (2, 1, 1), 1, True),
    ("deconv", 3, 3, (2, 4), 2, 1, 1, 1, True),
    ("deconv", 4, 3, (2, 4, 3), 2, 0, 1, 2, True),
    ("deconv", 2, 4, (3, 3, 4), 2, "Same", 1, 1, True),
    ("deconv", 2, (2, 3), (2, 3, 3), (1, 2), ((0, 1), (1, 0)), (2, 1), 1, False),
    ("deconv", 2, 2, (2, 2, 3, 2), 2, 0, 1, 1, True),
    ("pool", "Max", 2, (3, 8), 2, 0, 1, 1, None),
    ("pool", "Max", 3, (2, 7, 6), 2, 1, 1, 1, None),
    ("pool", "Max", 3, (2, 5, 6), 1, "Same", 1, 1, None),
    ("pool", "Mean", 3, (2, 7, 6), 2, ((1, 0), (1, 1)), 1, 1, None),
    ("pool", "Total", (2, 2, 2), (2, 4, 5, 4), 2, 1, 1, 1, None),
    ("pool", "Mean", 2, (2, 4, 4, 5), 1, 0, 1, 1, None),
]


def _case_id(c):
    return f"{c[0]}-{len(c[3]) - 1}d-{c[1]}-k{c[2]}-s{c[4]}-p{c[5]}-d{c[6]}-g{c[7]}".replace(" ", "")


@pytest.mark.parametrize("case", TORCH_CASES, ids=[_case_id(c) for c in TORCH_CASES])
@pytest.mark.parametrize("precision", ["Real64", "Real32"])
def test_matches_torch_functional(case, precision):
    kind, n, k, in_shape, stride, padding, dilation, groups, biases = case
    nd = len(in_shape) - 1
    ks, st, dil = _tuple(k, nd), _tuple(stride, nd), _tuple(dilation, nd)
    if kind == "conv":
        net = pg.ConvolutionLayer(n, k, stride, padding, dilation, groups, biases, input=in_shape)
    elif kind == "deconv":
        net = pg.DeconvolutionLayer(n, k, stride, padding, dilation, groups, biases, input=in_shape)
    else:
        net = pg.PoolingLayer(k, stride, padding, n, input=in_shape)
    arrays = ("Weights", "Biases") if biases else ("Weights",) if biases is not None else ()
    if arrays:
        net = pg.NetInitialize(net, seed=3)
    rng = np.random.default_rng(4)
    if "Biases" in arrays:
        net = pg.NetReplacePart(net, {"Biases": rng.uniform(-0.5, 0.5, pg.NetExtract(net, "Biases").shape)})
    x = rng.standard_normal((3,) + in_shape).astype(np.float32)
    y = net(x)
    g = rng.standard_normal(y.shape).astype(np.float32)
    res = net({"Input": x, NPG("Output"): g}, ["Output", NPG("Input")] + [NPG(a) for a in arrays],
              WorkingPrecision=precision)

    dt = torch.float64 if precision == "Real64" else torch.float32
    xt = torch.tensor(x, dtype=dt, requires_grad=True)
    P = {a: torch.tensor(np.asarray(pg.NetExtract(net, a)), dtype=dt, requires_grad=True) for a in arrays}
    lo, out = conv_geometry(in_shape[1:], k, stride, dilation if kind != "pool" else 1, padding, kind == "deconv")
    if kind == "conv":
        hi = _pad_hi(in_shape[1:], ks, st, dil, lo, out)
        yt = CONV[nd](_torch_pad(xt, lo, hi), P["Weights"], P.get("Biases"), stride=st, dilation=dil, groups=groups)
    elif kind == "deconv":
        full = DECONV[nd](xt, P["Weights"], P.get("Biases"), stride=st, dilation=dil, groups=groups)
        yt = full[(slice(None), slice(None)) + tuple(slice(lo[d], lo[d] + out[d]) for d in range(nd))]
    else:
        hi = _pad_hi(in_shape[1:], ks, st, [1] * nd, lo, out)
        if n == "Max":
            yt = MAXPOOL[nd](_torch_pad(xt, lo, hi, -np.inf), ks, st)
        else:
            yt = AVGPOOL[nd](_torch_pad(xt, lo, hi), ks, st)
            if n == "Total":
                yt = yt * float(np.prod(ks))
    (yt * torch.tensor(g, dtype=dt)).sum().backward()

    rtol, atol = (1e-11, 1e-11) if precision == "Real64" else (2e-5, 2e-5)
    np.testing.assert_allclose(res["Output"], yt.detach().numpy(), rtol=rtol, atol=atol, err_msg="output")
    np.testing.assert_allclose(res[NPG("Input")], xt.grad.numpy(), rtol=rtol, atol=atol, err_msg="input gradient")
    for a in arrays:
        np.testing.assert_allclose(res[NPG(a)], P[a].grad.numpy(), rtol=rtol, atol=atol * 10, err_msg=a)


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_lenet_matches_torch(precision):
    net = pg.NetChain([pg.ConvolutionLayer(6, 5), pg.ElementwiseLayer("Ramp"), pg.PoolingLayer(2, 2),
                       pg.ConvolutionLayer(8, 3), pg.ElementwiseLayer("Ramp"), pg.PoolingLayer(2, 2),
                       pg.FlattenLayer(), pg.LinearLayer(16), pg.ElementwiseLayer("Ramp"), pg.LinearLayer(3)],
                      input=(1, 20, 20))
    net = pg.NetInitialize(net, seed=0)
    rng = np.random.default_rng(0)
    learned = (0, 3, 7, 9)
    net = pg.NetReplacePart(net, {(i, "Biases"): rng.uniform(-0.2, 0.2, pg.NetExtract(net, (i, "Biases")).shape)
                                  for i in learned})
    x = rng.standard_normal((4, 1, 20, 20)).astype(np.float32)
    g = rng.standard_normal((4, 3)).astype(np.float32)
    dt = torch.float64 if precision == "Real64" else torch.float32
    P = {(i, a): torch.tensor(np.asarray(pg.NetExtract(net, (i, a))), dtype=dt, requires_grad=True)
         for i in learned for a in ("Weights", "Biases")}
    xt = torch.tensor(x, dtype=dt, requires_grad=True)
    h = F.max_pool2d(F.relu(F.conv2d(xt, P[0, "Weights"], P[0, "Biases"])), 2, 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, P[3, "Weights"], P[3, "Biases"])), 2, 2)
    h = F.relu(F.linear(h.flatten(1), P[7, "Weights"], P[7, "Biases"]))
    yt = F.linear(h, P[9, "Weights"], P[9, "Biases"])
    (yt * torch.tensor(g, dtype=dt)).sum().backward()

    spec = ["Output", NPG("Input")] + [NPG(key) for key in P]
    res = net({"Input": x, NPG("Output"): g}, spec, WorkingPrecision=precision)
    rtol, atol = (1e-10, 1e-10) if precision == "Real64" else (1e-4, 1e-4)
    np.testing.assert_allclose(res["Output"], yt.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(res[NPG("Input")], xt.grad.numpy(), rtol=rtol, atol=atol)
    for key, p in P.items():
        np.testing.assert_allclose(res[NPG(key)], p.grad.numpy(), rtol=rtol, atol=atol, err_msg=str(key))
