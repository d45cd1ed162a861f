"""The transformer encoder block of examples/transformer.py (a NetGraph of NetMapOperator'd
LinearLayers, a multi-head AttentionLayer, residuals and NormalizationLayer(-1)): against a NumPy
float64 forward, central differences, a Varying batch against one by one, and parity with
torch.nn.TransformerEncoderLayer and torch.nn.MultiheadAttention (outputs, input gradients and
array gradients, float64) where PyTorch is installed."""
import importlib.util
import os

import numpy as np
import pytest

import portgrad as pg
from gradcheck import check_net_gradients

NPG = pg.NetPortGradient
R64 = dict(WorkingPrecision="Real64")
_spec = importlib.util.spec_from_file_location(
    "transformer_example", os.path.join(os.path.dirname(__file__), "..", "examples", "transformer.py"))
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def arr(net, *path):
    return np.asarray(pg.NetExtract(net, path), np.float64)


def numpy_block(net, x, heads, causal=False, eps=1e-5):
    n, d = x.shape
    q, k, v = (np.einsum("hjd,nd->nhj", arr(net, "attention", p, "Weights"), x) + arr(net, "attention", p, "Biases")
               for p in ("query", "key", "value"))
    s = np.einsum("nhj,mhj->hnm", q, k) / np.sqrt(d // heads)
    if causal:
        s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    att = np.einsum("hnm,mhj->nhj", a, v).reshape(n, d)
    y = x + att @ arr(net, "attention", "merge", "Weights").T + arr(net, "attention", "merge", "Biases")

    def norm(z, p):
        mu, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
        return (z - mu) / np.sqrt(var + eps) * arr(net, p, "Scaling") + arr(net, p, "Biases")

    y = norm(y, "norm1")
    h = np.maximum(y @ arr(net, "feedforward", 0, "Weights").T + arr(net, "feedforward", 0, "Biases"), 0)
    return norm(y + h @ arr(net, "feedforward", 2, "Weights").T + arr(net, "feedforward", 2, "Biases"), "norm2")


@pytest.mark.parametrize("causal", [False, True])
def test_block_against_numpy(causal):
    net = pg.NetInitialize(example.encoder_block(d=8, heads=2, ff=12, causal=causal), seed=1)
    net = pg.NetReplacePart(net, {("norm1", "Biases"): np.linspace(-1, 1, 8), ("norm2", "Scaling"): np.linspace(0.5, 2, 8)})
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 8)) for n in (1, 6, 3)]
    for x, y in zip(xs, net(xs, **R64)):
        np.testing.assert_allclose(y, numpy_block(net, x, 2, causal), rtol=1e-11, atol=1e-12)
    y32 = net([x.astype(np.float32) for x in xs])
    for x, y in zip(xs, y32):
        np.testing.assert_allclose(y, numpy_block(net, x, 2, causal), rtol=1e-4, atol=1e-4)


def test_block_input_gradient_against_central_differences():
    net = pg.NetInitialize(example.encoder_block(d=4, heads=2, ff=6, length=3), seed=2)
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    g = net({"Input": x, NPG("Output"): w}, NPG("Input"), **R64)
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = 1e-6
        num[idx] = np.sum((net(x + e, **R64) - net(x - e, **R64)) * w) / 2e-6
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)
    check_net_gradients(net, {"Input": x[None]})  # every array too


def torch_or_skip():
    return pytest.importorskip("torch")


def float32_exact(torch, module):
    """The module with float32-representable parameters (a net keeps its arrays in float32 too)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.float().double())
    return module


def test_matches_torch_transformer_encoder_layer():
    torch = torch_or_skip()
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True).double().eval()
    with torch.no_grad():  # LayerNorm's affine parameters start at 1 and 0: make them tell
        for p in (layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias):
            p.add_(torch.randn_like(p) * 0.3)
    float32_exact(torch, layer)
    net = example.from_torch(layer, length=7)
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((3, 7, 16)), rng.standard_normal((3, 7, 16))
    xt = torch.tensor(x, requires_grad=True)
    out = layer(xt)
    (out * torch.tensor(w)).sum().backward()
    paths = [("attention", "query", "Weights"), ("attention", "merge", "Weights"), ("norm1", "Scaling"),
             ("feedforward", 0, "Biases")]
    got = net({"Input": x, NPG("Output"): w}, ["Output", NPG("Input")] + [NPG(p) for p in paths], **R64)
    np.testing.assert_allclose(got["Output"], out.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got[NPG("Input")], xt.grad.numpy(), rtol=1e-10, atol=1e-11)
    d = 16
    want = {paths[0]: layer.self_attn.in_proj_weight.grad[:d].reshape(4, 4, d), paths[1]: layer.self_attn.out_proj.weight.grad,
            paths[2]: layer.norm1.weight.grad, paths[3]: layer.linear1.bias.grad}
    for p in paths:
        np.testing.assert_allclose(got[NPG(p)], want[p].numpy(), rtol=1e-10, atol=1e-11, err_msg=str(p))


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_torch_multihead_attention(causal):
    torch = torch_or_skip()
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(12, 3, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_bias.add_(torch.randn_like(mha.in_proj_bias) * 0.3)
    float32_exact(torch, mha)
    net = pg.NetReplacePart(pg.NetInitialize(pg.NetChain([example.self_attention(12, 3, causal)], input=(5, 12))),
                            {(0, *p): v for p, v in example.attention_arrays(mha).items()})
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 5, 12)), rng.standard_normal((2, 5, 12))
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1) if causal else None
    xt = torch.tensor(x, requires_grad=True)
    out, _ = mha(xt, xt, xt, attn_mask=mask, need_weights=False)
    (out * torch.tensor(w)).sum().backward()
    got = net({"Input": x, NPG("Output"): w}, ["Output", NPG("Input"), NPG((0, "key", "Weights")),
                                                NPG((0, "value", "Biases"))], **R64)
    np.testing.assert_allclose(got["Output"], out.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got[NPG("Input")], xt.grad.numpy(), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(got[NPG((0, "key", "Weights"))], mha.in_proj_weight.grad[12:24].reshape(3, 4, 12).numpy(),
                               rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(got[NPG((0, "value", "Biases"))], mha.in_proj_bias.grad[24:].reshape(3, 4).numpy(),
                               rtol=1e-10, atol=1e-11)


def test_example_runs(capsys):
    example.main()
    out = capsys.readouterr().out
    assert "outputs: [(5, 32), (12, 32), (3, 32)]" in out
    assert "saliency" in out


def test_token_and_learned_position_embeddings():
    """Wolfram's PositionalEmbedding pattern: an EmbeddingLayer over the positions 0..n-1 (a second
    index input) added to the tokens' embeddings, then the block — on Varying-length sentences."""
    d, vocab, longest = 8, 11, 16
    net = pg.NetInitialize(pg.NetGraph(
        {"tokens": pg.EmbeddingLayer(d, vocab), "positions": pg.EmbeddingLayer(d, longest),
         "embed": pg.ThreadingLayer("Plus"), "block": example.encoder_block(d, 2, 12)},
        [(pg.NetPort("Tokens"), "tokens"), (pg.NetPort("Positions"), "positions"),
         (["tokens", "positions"], "embed"), ("embed", "block")],
        inputs={"Tokens": ("Varying",), "Positions": ("Varying",)}), seed=5)
    rng = np.random.default_rng(7)
    sentences = [rng.integers(0, vocab, n) for n in (3, 9, 1)]
    data = {"Tokens": sentences, "Positions": [np.arange(len(s)) for s in sentences]}
    out = net(data, NPG(("positions", "Weights")), **R64)
    assert out.shape == (longest, d) and np.all(out[9:] == 0) and np.any(out[:9] != 0)  # rows past the longest: 0
    ys = net(data, **R64)
    tok, pos = arr(net, "tokens", "Weights"), arr(net, "positions", "Weights")
    block = pg.NetReplacePart(example.encoder_block(d, 2, 12, length=len(sentences[1])),
                              {k: net._params[f"block/{'/'.join(map(str, k))}"] for k in
                               [tuple(int(x) if x.isdigit() else x for x in p.split("/")[1:]) for p in net.arrays
                                if p.startswith("block/")]})
    np.testing.assert_allclose(ys[1], block(tok[sentences[1]] + pos[:9], **R64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_block_hessian_vector_products_against_central_differences(causal):
    """Second order through the whole block (attention followed by residuals, normalisations and the
    feed-forward net, so the attention's output gradient has a tangent of its own): H v of the summed
    outputs weighted by w, per example, against central differences of the gradient, and the array
    HVP of the query weights likewise."""
    net = pg.NetInitialize(example.encoder_block(d=4, heads=2, ff=6, length=3, causal=causal), seed=3)
    rng = np.random.default_rng(4)
    x, v, w = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    NPT = pg.NetPortTangent
    hv = net({"Input": x, NPT("Input"): v, NPG("Output"): w}, NPT(NPG("Input")), **R64)
    grad = lambda a: net({"Input": a, NPG("Output"): w}, NPG("Input"), **R64)  # noqa: E731
    h = 1e-5
    np.testing.assert_allclose(hv, (grad(x + h * v) - grad(x - h * v)) / (2 * h), rtol=1e-6, atol=1e-8)
    key = ("attention", "query", "Weights")
    # Arrays are kept in float32 too: weights and direction on a 2^-10 grid, steps of 2^-9 and 2^-10,
    # keep every W +- h V exact; Richardson's extrapolation of the two removes the h^2 error.
    W = np.round(np.asarray(pg.NetExtract(net, key), np.float64) * 1024) / 1024
    V = np.round(rng.standard_normal(W.shape) * 1024) / 1024
    net = pg.NetReplacePart(net, {key: W})
    hw = net({"Input": x, NPT(key): V, NPG("Output"): w}, NPT(NPG(key)), **R64)
    gw = lambda a: pg.NetReplacePart(net, {key: a})({"Input": x, NPG("Output"): w}, NPG(key), **R64)  # noqa: E731
    d = {h: (gw(W + h * V) - gw(W - h * V)) / (2 * h) for h in (2.0 ** -9, 2.0 ** -10)}
    np.testing.assert_allclose(hw, (4 * d[2.0 ** -10] - d[2.0 ** -9]) / 3, rtol=1e-6, atol=1e-8)
