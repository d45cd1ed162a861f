"""AttentionLayer(mask="Port"): a "Mask" input (m, n) per example says which keys each query sees.
Forward against NumPy float64 (a query that sees nothing gives 0), gradients and tangents of Key,
Value and Query against central differences, a zero gradient for the mask, key padding of
Varying-length sequences, float32, the GPU (emulated) path, PyTorch's SDPA with a boolean mask,
and the clear error for a mask of the wrong shape."""
import numpy as np
import pytest

import portgrad as pg
from portgrad import _gpu

NPG, NPT = pg.NetPortGradient, pg.NetPortTangent
R64 = dict(WorkingPrecision="Real64")


def reference(K, V, Q, M, scale=None):
    heads = K.ndim == 4
    Kh, Vh, Qh = [x if heads else x[:, :, None] for x in (K, V, Q)]
    s = scale or 1 / np.sqrt(K.shape[-1])
    S = s * np.einsum("bmhd,bnhd->bhmn", Qh, Kh)
    keep = (M != 0)[:, None]
    S = np.where(keep, S, -np.inf)
    mx = S.max(-1, keepdims=True)
    E = np.where(keep, np.exp(S - np.where(np.isfinite(mx), mx, 0)), 0)
    tot = E.sum(-1, keepdims=True)
    W = np.where(tot > 0, E / np.where(tot > 0, tot, 1), 0)
    O = np.einsum("bhmn,bnhd->bmhd", W, Vh)
    return O if heads else O[:, :, 0]


def case(heads=False, n=5, m=4, seed=0, batch=3):
    rng = np.random.default_rng(seed)
    hd = (2,) if heads else ()
    ks, vs, qs = (n, *hd, 3), (n, *hd, 2), (m, *hd, 3)
    net = pg.AttentionLayer(mask="Port", key=ks, value=vs, query=qs)
    data = {"Key": rng.standard_normal((batch, *ks)), "Value": rng.standard_normal((batch, *vs)),
            "Query": rng.standard_normal((batch, *qs)), "Mask": (rng.random((batch, m, n)) < 0.6).astype(float)}
    data["Mask"][0, 1] = 0  # a query that sees no key
    data["Mask"][1, 0] = 1
    return net, data


@pytest.mark.parametrize("heads", [False, True])
def test_forward_against_numpy(heads):
    net, data = case(heads)
    assert net.input_ports["Mask"] == (4, 5)
    want = reference(*(data[p] for p in ("Key", "Value", "Query", "Mask")))
    np.testing.assert_allclose(net(data, **R64), want, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(net({k: v.astype(np.float32) for k, v in data.items()}), want, rtol=2e-5, atol=2e-6)
    assert np.all(net(data, **R64)[0, 1] == 0)
    full = dict(data, Mask=np.ones_like(data["Mask"]))  # an all-ones mask is no mask
    plain = pg.AttentionLayer(key=net.input_ports["Key"], value=net.input_ports["Value"], query=net.input_ports["Query"])
    np.testing.assert_array_equal(net(full, **R64), plain({k: full[k] for k in ("Key", "Value", "Query")}, **R64))


def central(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("heads", [False, True])
def test_gradients_and_tangents_against_central_differences(heads):
    net, data = case(heads, batch=2, seed=1)
    rng = np.random.default_rng(2)
    w = rng.standard_normal(net(data, **R64).shape)
    got = net({**data, NPG("Output"): w}, [NPG(p) for p in ("Key", "Value", "Query", "Mask")], **R64)
    for p in ("Key", "Value", "Query"):
        num = central(lambda v, p=p: np.sum(net({**data, p: v}, **R64) * w), data[p])
        np.testing.assert_allclose(got[NPG(p)], num, rtol=1e-6, atol=1e-8, err_msg=p)
    assert np.all(got[NPG("Mask")] == 0)
    tangents = {NPT(p): rng.standard_normal(data[p].shape) for p in ("Key", "Value", "Query")}
    jv = net({**data, **tangents}, NPT("Output"), **R64)
    h = 1e-6
    plus = {p: data[p] + h * tangents[NPT(p)] for p in ("Key", "Value", "Query")}
    minus = {p: data[p] - h * tangents[NPT(p)] for p in ("Key", "Value", "Query")}
    fd = (net({**data, **plus}, **R64) - net({**data, **minus}, **R64)) / (2 * h)
    np.testing.assert_allclose(jv, fd, rtol=1e-6, atol=1e-8)


def test_key_padding_of_varying_sequences():
    """A padded batch with a mask gives what each unpadded sequence gives alone."""
    net = pg.NetGraph({"att": pg.AttentionLayer(mask="Port")}, [],
                      inputs={"Key": (6, 3), "Value": (6, 2), "Query": ("Varying", 3), "Mask": ("Varying", 6)})
    plain = pg.NetGraph({"att": pg.AttentionLayer()}, [],
                        inputs={"Key": ("Varying", 3), "Value": ("Varying", 2), "Query": ("Varying", 3)})
    rng = np.random.default_rng(3)
    for n in (1, 4, 6):
        k, v, q = rng.standard_normal((n, 3)), rng.standard_normal((n, 2)), rng.standard_normal((2, 3))
        pad = lambda a: np.concatenate([a, rng.standard_normal((6 - n, a.shape[1]))])  # noqa: E731
        mask = np.zeros((2, 6))
        mask[:, :n] = 1
        got = net({"Key": pad(k), "Value": pad(v), "Query": q, "Mask": mask}, **R64)
        np.testing.assert_allclose(got, plain({"Key": k, "Value": v, "Query": q}, **R64), rtol=1e-14, atol=1e-15)


def test_matches_torch_sdpa_with_a_boolean_mask():
    torch = pytest.importorskip("torch")
    net, data = case(heads=True, seed=4)
    data["Mask"][0, 1] = 1  # (PyTorch gives NaN for a query that sees nothing)
    t = {p: torch.tensor(data[p]).transpose(1, 2) for p in ("Key", "Value", "Query")}  # (b, heads, len, d)
    mask = torch.tensor(data["Mask"] != 0)[:, None]
    want = torch.nn.functional.scaled_dot_product_attention(t["Query"], t["Key"], t["Value"], attn_mask=mask)
    np.testing.assert_allclose(net(data, **R64), want.transpose(1, 2).numpy(), rtol=1e-12, atol=1e-13)


def test_gpu_path():
    if not _gpu.available():
        pytest.skip("no GPU backend (no CUDA device and the emulator is off)")
    net, data = case(heads=True, seed=5)
    w = np.random.default_rng(6).standard_normal(net(data, **R64).shape)
    spec = ["Output", NPG("Key"), NPG("Query"), NPG("Mask")]
    for precision, tol in (("Real64", 1e-11), ("Real32", 2e-5)):
        cpu = net({**data, NPG("Output"): w}, spec, WorkingPrecision=precision)
        gpu = net({**data, NPG("Output"): w}, spec, WorkingPrecision=precision, TargetDevice="GPU")
        for k in spec:
            np.testing.assert_allclose(gpu[k], cpu[k], rtol=tol, atol=tol, err_msg=str(k))


def test_clear_errors():
    with pytest.raises(ValueError, match=r'"Mask" says which of the 5 keys each of the 4 queries sees: shape \(4, 5\); '
                                         r'given shape \(5, 4\)'):
        pg.NetGraph({"att": pg.AttentionLayer(mask="Port")}, [],
                    inputs={"Key": (5, 3), "Value": (5, 2), "Query": (4, 3), "Mask": (5, 4)})
    with pytest.raises(ValueError, match=r'port "Mask": expected an array of shape \(4, 5\)'):
        pg.AttentionLayer(mask="Port", key=(5, 3), value=(5, 2), query=(4, 3))({"Key": np.zeros((5, 3)),
                                                                                  "Value": np.zeros((5, 2)),
                                                                                  "Query": np.zeros((4, 3)),
                                                                                  "Mask": np.zeros((5, 4))})
    with pytest.raises(ValueError, match="mask must be None, 'Causal' or 'Port'"):
        pg.AttentionLayer(mask="Padding")


def test_second_order_with_a_mask():
    """H v (forward over reverse) through a masked AttentionLayer followed by Tanh (so the attention's
    output gradient has a tangent), against central differences of the gradient."""
    _, data = case(heads=True, seed=7, batch=2)
    net = pg.NetGraph({"att": pg.AttentionLayer(mask="Port"), "act": "Tanh"}, [("att", "act")],
                      inputs={p: v.shape[1:] for p, v in data.items()})
    rng = np.random.default_rng(8)
    ts = {NPT(p): rng.standard_normal(data[p].shape) for p in ("Key", "Value", "Query")}
    hv = net({**data, **ts}, [NPT(NPG(p)) for p in ("Key", "Value", "Query")], **R64)
    grads = lambda d: net(d, [NPG(p) for p in ("Key", "Value", "Query")], **R64)  # noqa: E731
    h = 1e-5
    plus = grads({**data, **{p: data[p] + h * ts[NPT(p)] for p in ("Key", "Value", "Query")}})
    minus = grads({**data, **{p: data[p] - h * ts[NPT(p)] for p in ("Key", "Value", "Query")}})
    for p in ("Key", "Value", "Query"):
        np.testing.assert_allclose(hv[NPT(NPG(p))], (plus[NPG(p)] - minus[NPG(p)]) / (2 * h), rtol=1e-6, atol=1e-8,
                                   err_msg=p)
