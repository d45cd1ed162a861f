"""Random NetChains (seeded): depth 1-6, mixed smooth activations and LinearLayer widths, an optional
final loss, batches of 1-33. Input and array gradients against finite differences in float64;
Real32 against Real64."""
import numpy as np
import pytest

import portgrad as pg
from layer_registry import (SMOOTH, assert_close, distributions, f32_exact, fd_array_gradient, fd_input_gradient,
                            grad_close, probabilities, quantize, weighted_sum)

NPG = pg.NetPortGradient
ACTIVATIONS = [f for f in SMOOTH if f not in ("SoftSign", "Square")]  # C-infinity and bounded growth
SEEDS = list(range(30))


def random_chain(seed):
    """-> (net with quantized float32-exact arrays, input shape, loss kind or None, batch)."""
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 7))
    in_shape = (int(rng.integers(1, 5)),) if rng.random() < 0.8 else (2, int(rng.integers(1, 3)))
    layers = []
    for _ in range(depth):
        if rng.random() < 0.55 or not layers:
            layers.append(pg.LinearLayer(int(rng.integers(1, 6)), biases=bool(rng.random() < 0.8)))
        else:
            layers.append(pg.ElementwiseLayer(str(rng.choice(ACTIVATIONS))))
    loss = [None, "MeanSquared", "Binary", "Probabilities"][int(rng.integers(0, 4))]
    if loss == "MeanSquared":
        layers.append(pg.MeanSquaredLossLayer())
    elif loss == "Binary":
        layers += [pg.ElementwiseLayer("LogisticSigmoid"), pg.CrossEntropyLossLayer("Binary")]
    elif loss == "Probabilities":
        layers += [pg.SoftmaxLayer(), pg.CrossEntropyLossLayer("Probabilities")]
    net = pg.NetInitialize(pg.NetChain(layers, input=in_shape), seed=seed, method=str(rng.choice(["Kaiming", "Xavier"])))
    new = {}
    for path, shape in net.arrays.items():
        part = tuple(int(p) if p.isdigit() else p for p in path.split("/"))
        a = rng.uniform(-0.5, 0.5, shape) if path.endswith("Biases") else pg.NetExtract(net, part)
        new[part] = quantize(a)
    net = pg.NetReplacePart(net, new)
    batch = [None, 1, int(rng.integers(2, 34))][int(rng.integers(0, 3))]
    return net, in_shape, loss, batch


def sample(net, in_shape, loss, batch, rng):
    lead = () if batch is None else (batch,)
    data = {"Input": f32_exact(rng.standard_normal(lead + in_shape))}
    if loss is not None:
        t_shape = lead + tuple(net.input_ports["Target"])
        data["Target"] = {"MeanSquared": lambda: f32_exact(rng.standard_normal(t_shape)),
                          "Binary": lambda: probabilities(rng, t_shape),
                          "Probabilities": lambda: distributions(rng, t_shape)}[loss]()
    return data


def chain(seed):
    net, in_shape, loss, batch = random_chain(seed)
    rng = np.random.default_rng(seed + 500)
    data = sample(net, in_shape, loss, batch, rng)
    out = next(iter(net.output_ports))
    y = net(data, WorkingPrecision="Real64")
    G = f32_exact(rng.uniform(-1, 1, np.shape(y)))
    return net, data, out, G


@pytest.mark.parametrize("seed", SEEDS)
def test_random_chain_gradients_vs_finite_differences(seed):
    net, data, out, G = chain(seed)
    imposed = {**data, NPG(out): G}
    grads = net(imposed, NPG(pg.All), WorkingPrecision="Real64")
    real_inputs = [p for p in net.input_ports if NPG(p) in grads]
    assert real_inputs == list(net.input_ports)
    assert len(grads) == len(net.input_ports) + len(net.arrays)
    for port in real_inputs:
        g = grads[NPG(port)]
        assert g.shape == np.shape(data[port])

        def f(v, port=port):
            return weighted_sum(net({**data, port: v}, WorkingPrecision="Real64"), G)

        grad_close(g, fd_input_gradient(f, data[port]), what=f"seed {seed}: d/d{port}\n{net!r}")
    for path, shape in net.arrays.items():
        part = tuple(int(p) if p.isdigit() else p for p in path.split("/"))
        g = grads[NPG(part)]
        assert g.shape == shape

        def f(a, part=part):
            return weighted_sum(pg.NetReplacePart(net, {part: a})(data, WorkingPrecision="Real64"), G)

        fd = fd_array_gradient(f, pg.NetExtract(net, part).astype(np.float64))
        grad_close(g, fd, what=f"seed {seed}: d/d{path}\n{net!r}")
    # Without an imposed gradient: the gradient of the sum of the outputs.
    plain = net(data, NPG("Input"), WorkingPrecision="Real64")
    ones = net({**data, NPG(out): np.ones(np.shape(G))}, NPG("Input"), WorkingPrecision="Real64")
    np.testing.assert_array_equal(plain, ones)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_chain_real32_matches_real64(seed):
    net, data, out, G = chain(seed)
    spec = [out, NPG(pg.All)]
    r64 = net({**data, NPG(out): G}, spec, WorkingPrecision="Real64")
    r32 = net({**data, NPG(out): G}, spec, WorkingPrecision="Real32")
    assert r32[out].dtype == np.float32 and r64[out].dtype == np.float64
    scale = float(np.max(np.abs(r64[out])))
    assert_close(r32[out], r64[out], rtol=1e-5, atol=1e-5 * scale + 1e-6, what=f"seed {seed} output")
    assert r32[NPG(pg.All)].keys() == r64[NPG(pg.All)].keys()
    for key, g64 in r64[NPG(pg.All)].items():
        g32 = r32[NPG(pg.All)][key]
        assert g32.dtype == np.float32 and g32.shape == g64.shape
        scale = float(np.max(np.abs(g64)))
        assert_close(g32, g64, rtol=1e-4, atol=1e-4 * scale + 1e-6, what=f"seed {seed} gradient {key}")


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_random_chain_batch_is_sum_of_examples(seed):
    net, data, out, G = chain(seed)
    if np.shape(data["Input"]) == tuple(net.input_ports["Input"]):   # a single example: make a batch of 3
        data = {p: np.stack([v, v * 0.5, -v]) for p, v in data.items()}
        if "Target" in data:
            data["Target"] = np.stack([data["Target"][0]] * 3)
        G = np.stack([G, -G, 2 * G])
    res = net({**data, NPG(out): G}, NPG(pg.All), WorkingPrecision="Real64")
    total = {}
    for b in range(len(G)):
        one = net({**{p: v[b] for p, v in data.items()}, NPG(out): G[b]}, NPG(pg.All), WorkingPrecision="Real64")
        for key, g in one.items():
            if isinstance(key.target, str):
                assert_close(res[key][b], g, rtol=1e-12, atol=1e-14, what=f"seed {seed} {key} example {b}")
            else:
                total[key] = total.get(key, 0) + g
    for key, s in total.items():
        assert_close(res[key], s, rtol=1e-12, atol=1e-13 * (1 + np.max(np.abs(s))), what=f"seed {seed} {key}")
