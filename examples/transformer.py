"""A transformer encoder block written as a NetGraph — multi-head self-attention, residuals, layer
normalisation and a position-wise feed-forward net — over sequences of any length, and what
portgrad gives for it: outputs, the input gradient (a saliency per token), an array gradient, and
the same numbers as torch.nn.TransformerEncoderLayer (post-norm, ReLU, no dropout) where PyTorch
is installed.

    python examples/transformer.py

The block (PyTorch's names on the right):

    x ─┬─ self_attention: NetMapOperator(LinearLayer((heads, d/heads))) ×3 ─ AttentionLayer
       │                  ─ NetMapOperator(LinearLayer(d))                                            self_attn
       └──────────────────────────────────────────────────── Plus ─ NormalizationLayer(-1)                    norm1
                                    ┌─ NetMapOperator(Linear(ff), Ramp, Linear(d)) ─┐                         linear1/2
                                    └─────────────────────────────────────────── Plus ─ NormalizationLayer(-1)   norm2
"""
import numpy as np

import portgrad as pg


def self_attention(d=64, heads=4, causal=False):
    """torch.nn.MultiheadAttention(d, heads) on one sequence (query = key = value = the input):
    every position's d features projected to (heads, d / heads) for queries, keys and values,
    attention per head, and the heads merged back to d."""
    if d % heads:
        raise ValueError(f"d = {d} is not a multiple of heads = {heads}")

    def heads_of():  # every position's d features -> (heads, d / heads)
        return pg.NetMapOperator(pg.LinearLayer((heads, d // heads)))

    return pg.NetGraph({
        "query": heads_of(), "key": heads_of(), "value": heads_of(),
        "attention": pg.AttentionLayer(mask="Causal" if causal else None),
        "merge": pg.NetMapOperator(pg.LinearLayer(d)),  # (heads, d / heads) -> d: the output projection
    }, [
        (pg.NetPort("Input"), "query"), (pg.NetPort("Input"), "key"), (pg.NetPort("Input"), "value"),
        ("query", pg.NetPort("attention", "Query")), ("key", pg.NetPort("attention", "Key")),
        ("value", pg.NetPort("attention", "Value")), ("attention", "merge"),
    ])


def encoder_block(d=64, heads=4, ff=128, epsilon=1e-5, causal=False, length="Varying"):
    """torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0, batch_first=True) as a NetGraph on
    sequences (length, d); "Varying" takes any length."""
    return pg.NetGraph({
        "attention": self_attention(d, heads, causal),
        "residual1": pg.ThreadingLayer("Plus"),
        "norm1": pg.NormalizationLayer(-1, epsilon),
        "feedforward": pg.NetMapOperator(pg.NetChain([pg.LinearLayer(ff), "Ramp", pg.LinearLayer(d)])),
        "residual2": pg.ThreadingLayer("Plus"),
        "norm2": pg.NormalizationLayer(-1, epsilon),
    }, [
        ([pg.NetPort("Input"), "attention"], "residual1"), ("residual1", "norm1", "feedforward"),
        (["norm1", "feedforward"], "residual2"), ("residual2", "norm2"),
    ], input=(length, d))


def attention_arrays(attn, prefix=()):
    """{array path: values} of a torch.nn.MultiheadAttention for self_attention's graph."""
    d, heads = attn.embed_dim, attn.num_heads
    a = lambda t: t.detach().double().numpy()  # noqa: E731
    w, b = np.split(a(attn.in_proj_weight), 3), np.split(a(attn.in_proj_bias), 3)
    arrays = {("merge", "Weights"): a(attn.out_proj.weight), ("merge", "Biases"): a(attn.out_proj.bias)}
    for k, name in enumerate(("query", "key", "value")):
        arrays[(name, "Weights")] = w[k].reshape(heads, d // heads, d)
        arrays[(name, "Biases")] = b[k].reshape(heads, d // heads)
    return {(*prefix, *path): v for path, v in arrays.items()}


def from_torch(layer, length="Varying"):
    """The block with the arrays of a torch.nn.TransformerEncoderLayer (batch_first, post-norm, ReLU)."""
    attn = layer.self_attn
    net = encoder_block(attn.embed_dim, attn.num_heads, layer.linear1.out_features, layer.norm1.eps, length=length)
    a = lambda t: t.detach().double().numpy()  # noqa: E731
    return pg.NetReplacePart(net, {
        **attention_arrays(attn, ("attention",)),
        ("norm1", "Scaling"): a(layer.norm1.weight), ("norm1", "Biases"): a(layer.norm1.bias),
        ("feedforward", 0, "Weights"): a(layer.linear1.weight), ("feedforward", 0, "Biases"): a(layer.linear1.bias),
        ("feedforward", 2, "Weights"): a(layer.linear2.weight), ("feedforward", 2, "Biases"): a(layer.linear2.bias),
        ("norm2", "Scaling"): a(layer.norm2.weight), ("norm2", "Biases"): a(layer.norm2.bias),
    })


def main():
    net = pg.NetInitialize(encoder_block(d=32, heads=4, ff=64), seed=0)
    rng = np.random.default_rng(0)
    sentences = [rng.standard_normal((n, 32)) for n in (5, 12, 3)]  # three "sentences" of 32-d embeddings
    out = net(sentences, WorkingPrecision="Real64")
    print("outputs:", [o.shape for o in out])
    # The gradient of a read-out <r, output> (of the summed outputs it would be zero: every position's
    # output is layer-normalised, so its features sum to a constant).
    readout = [np.tile(rng.standard_normal(32), (len(s), 1)) for s in sentences]
    grads = net({"Input": sentences, pg.NetPortGradient("Output"): readout},
                [pg.NetPortGradient("Input"), pg.NetPortGradient(("attention", "query", "Weights"))],
                WorkingPrecision="Real64")
    saliency = [np.linalg.norm(g, axis=1) for g in grads[pg.NetPortGradient("Input")]]
    print("per-token saliency of sentence 0:", np.round(saliency[0], 3))
    print("gradient of the query projection:", grads[pg.NetPortGradient(("attention", "query", "Weights"))].shape)
    try:
        import torch
    except ImportError:
        print("(PyTorch is not installed: the comparison with nn.TransformerEncoderLayer is skipped)")
        return
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).double().eval()
    ours = from_torch(layer)
    x = sentences[1]
    with torch.no_grad():
        theirs = layer(torch.from_numpy(x[None]))[0].numpy()
    print("max |portgrad - torch.nn.TransformerEncoderLayer|:",
          np.abs(ours(x, WorkingPrecision="Real64") - theirs).max())


if __name__ == "__main__":
    main()
