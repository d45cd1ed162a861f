"""Recurrent layers beyond the registry's generic checks (registry_sequence.py): parity with
PyTorch's nn.RNN, nn.LSTM and nn.GRU (weights mapped gate by gate; outputs, input gradients and
every array gradient, float64), a trained-style chain with PartLayer(-1) as the last step, and the
clear errors for inputs that are not sequences."""
import numpy as np
import pytest

import portgrad as pg

NPG = pg.NetPortGradient


def torch_or_skip():
    return pytest.importorskip("torch")


def _float32_exact(torch, module, hn=None):
    """The module with float32 parameters (a net stores its arrays in float32) and its two biases
    folded into b_ih (b_hh = 0: portgrad has one bias per gate); `hn`, the rows of b_hh inside the
    GRU's reset product, are zero first (Wolfram's GRU has no bias there)."""
    with torch.no_grad():
        if hn is not None:
            module.bias_hh_l0[hn] = 0.0
        module.bias_ih_l0 += module.bias_hh_l0
        module.bias_hh_l0.zero_()
        for p in module.parameters():
            p.copy_(p.float().double())
    return module


def _split(w, blocks):
    return np.split(w.detach().numpy().astype(np.float64), blocks, axis=0)


def _run_both(torch, module, net, names_of, B=3, T=6, k=4):
    """Outputs and gradients of sum(out * w) from both, for the same x and w (float64)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((B, T, k))
    w = rng.standard_normal((B, T, module.hidden_size))
    xt = torch.tensor(x, requires_grad=True)
    out, _ = module(xt)
    (out * torch.tensor(w)).sum().backward()
    got = net({"Input": x, NPG("Output"): w}, [NPG("Input")] + [NPG((0, n)) for n in names_of], WorkingPrecision="Real64")
    y = net(x, WorkingPrecision="Real64")
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got[NPG("Input")], xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    return {n: got[NPG((0, n))] for n in names_of}


def test_basic_recurrent_matches_torch_rnn():
    torch = torch_or_skip()
    torch.manual_seed(0)
    m = _float32_exact(torch, torch.nn.RNN(4, 5, nonlinearity="tanh", batch_first=True).double())
    arrays = {"InputWeights": m.weight_ih_l0.detach().numpy(), "StateWeights": m.weight_hh_l0.detach().numpy(),
              "Biases": m.bias_ih_l0.detach().numpy()}
    net = pg.NetReplacePart(pg.NetInitialize(pg.NetChain([pg.BasicRecurrentLayer(5)], input=(6, 4))), 
                            {(0, k): v for k, v in arrays.items()})
    g = _run_both(torch, m, net, list(arrays))
    np.testing.assert_allclose(g["InputWeights"], m.weight_ih_l0.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g["StateWeights"], m.weight_hh_l0.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g["Biases"], m.bias_ih_l0.grad.numpy(), rtol=1e-11, atol=1e-12)


def test_lstm_matches_torch_lstm():
    torch = torch_or_skip()
    torch.manual_seed(1)
    m = _float32_exact(torch, torch.nn.LSTM(4, 5, batch_first=True).double())
    # PyTorch's gate blocks: input, forget, cell (Wolfram's memory gate), output.
    order = {"InputGate": 0, "ForgetGate": 1, "MemoryGate": 2, "OutputGate": 3}
    wi, wh = _split(m.weight_ih_l0, 4), _split(m.weight_hh_l0, 4)
    b = _split(m.bias_ih_l0, 4)
    arrays = {}
    for gate, q in order.items():
        arrays.update({f"{gate}InputWeights": wi[q], f"{gate}StateWeights": wh[q], f"{gate}Biases": b[q]})
    net = pg.NetReplacePart(pg.NetInitialize(pg.NetChain([pg.LongShortTermMemoryLayer(5)], input=(6, 4))),
                            {(0, k): v for k, v in arrays.items()})
    g = _run_both(torch, m, net, list(arrays))
    gi, gh, gb = _split(m.weight_ih_l0.grad, 4), _split(m.weight_hh_l0.grad, 4), _split(m.bias_ih_l0.grad, 4)
    for gate, q in order.items():
        np.testing.assert_allclose(g[f"{gate}InputWeights"], gi[q], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(g[f"{gate}StateWeights"], gh[q], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(g[f"{gate}Biases"], gb[q], rtol=1e-11, atol=1e-12)


def test_gru_matches_torch_gru_without_its_state_bias_inside_the_reset():
    """Wolfram's GRU is PyTorch's with b_hn = 0 (PyTorch adds b_hn inside r * (W_hn h + b_hn)); its
    update gate z is Wolfram's input gate i; b_ir + b_hr and b_iz + b_hz fold into one bias each."""
    torch = torch_or_skip()
    torch.manual_seed(2)
    m = _float32_exact(torch, torch.nn.GRU(4, 5, batch_first=True).double(), hn=slice(10, 15))
    wi, wh = _split(m.weight_ih_l0, 3), _split(m.weight_hh_l0, 3)  # blocks: reset, update, new
    bi = _split(m.bias_ih_l0, 3)
    arrays = {"InputGateInputWeights": wi[1], "InputGateStateWeights": wh[1], "InputGateBiases": bi[1],
              "ResetGateInputWeights": wi[0], "ResetGateStateWeights": wh[0], "ResetGateBiases": bi[0],
              "MemoryGateInputWeights": wi[2], "MemoryGateStateWeights": wh[2], "MemoryGateBiases": bi[2]}
    net = pg.NetReplacePart(pg.NetInitialize(pg.NetChain([pg.GatedRecurrentLayer(5)], input=(6, 4))),
                            {(0, k): v for k, v in arrays.items()})
    g = _run_both(torch, m, net, list(arrays))
    gi, gh, gb = _split(m.weight_ih_l0.grad, 3), _split(m.weight_hh_l0.grad, 3), _split(m.bias_ih_l0.grad, 3)
    for gate, q in {"ResetGate": 0, "InputGate": 1, "MemoryGate": 2}.items():
        np.testing.assert_allclose(g[f"{gate}InputWeights"], gi[q], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(g[f"{gate}StateWeights"], gh[q], rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(g[f"{gate}Biases"], gb[q], rtol=1e-11, atol=1e-12)


def test_a_sequence_classifier_chain_and_its_gradients():
    """LSTM -> the last state (PartLayer(-1)) -> Linear: the input gradient of the last output is
    zero for no step (every step reaches the last state) and matches central differences."""
    net = pg.NetInitialize(pg.NetChain([pg.LongShortTermMemoryLayer(6), pg.PartLayer(-1), pg.LinearLayer(2)],
                                       input=(7, 3)), seed=3)
    x = np.random.default_rng(4).standard_normal((2, 7, 3))
    g = net(x, NPG("Input"), WorkingPrecision="Real64")
    assert g.shape == x.shape and np.all(np.abs(g).sum(axis=2) > 0)
    h = 1e-6
    e = np.zeros_like(x)
    e[1, 0, 2] = h
    fd = (net(x + e, WorkingPrecision="Real64").sum() - net(x - e, WorkingPrecision="Real64").sum()) / (2 * h)
    assert abs(fd - g[1, 0, 2]) < 1e-7 * (1 + abs(fd))
    # float32 against float64
    np.testing.assert_allclose(net(x.astype(np.float32)), net(x, WorkingPrecision="Real64"), rtol=1e-5, atol=1e-6)


def test_errors_name_the_layer_and_the_shape():
    with pytest.raises(ValueError, match=r"\(LongShortTermMemoryLayer\): port \"Input\" takes a sequence of vectors, "
                                         r"shape \(time, k\); given shape \(5,\)"):
        pg.NetInitialize(pg.NetChain([pg.LongShortTermMemoryLayer(3)], input=5))
    with pytest.raises(ValueError, match="dimensions must be positive"):
        pg.NetInitialize(pg.NetChain([pg.GatedRecurrentLayer(3)], input=(0, 4)))
    with pytest.raises(ValueError, match="state size n must be an int >= 1"):
        pg.BasicRecurrentLayer(0)
    with pytest.raises(ValueError, match="unknown activation"):
        pg.NetInitialize(pg.NetChain([pg.BasicRecurrentLayer(3, "Nope")], input=(2, 4)))
    net = pg.NetInitialize(pg.NetChain([pg.BasicRecurrentLayer(3)], input=(2, 4)), seed=0)
    with pytest.raises(ValueError, match=r"Input"):
        net(np.zeros((5, 2, 3)))  # vectors of the wrong width


def test_training_updates_the_stacked_weights_every_step():
    """NetTrain (plain SGD, float64) on an LSTM and a GRU equals a NumPy loop of SGD steps over
    portgrad's own gradients: every step's forward sees the arrays the last step wrote (the stacked,
    packed copies the plan keeps are refreshed after each update)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((24, 5, 3)).astype(np.float32)
    y = rng.standard_normal((24, 1)).astype(np.float32)
    for layer in (pg.LongShortTermMemoryLayer, pg.GatedRecurrentLayer):
        net = pg.NetInitialize(pg.NetChain([layer(4), pg.PartLayer(-1), pg.LinearLayer(1)], input=(5, 3)), seed=2)
        lr, batch, rounds, seed = 0.05, 8, 2, 3
        trained = pg.NetTrain(net, (x, y), Method=("SGD", {"Momentum": 0.0}), LearningRate=lr, BatchSize=batch,
                              MaxTrainingRounds=rounds, RandomSeeding=seed, WorkingPrecision="Real64",
                              TrainingProgressReporting=None)
        loss_net = pg.NetGraph({"net": net, "loss": pg.MeanSquaredLossLayer()},
                               [(pg.NetPort("net", "Output"), pg.NetPort("loss", "Input"))])
        names = list(net.arrays)
        w = {p: np.asarray(pg.NetExtract(net, tuple(int(s) if s.isdigit() else s for s in p.split("/"))), np.float64)
             for p in names}
        for r in range(rounds):
            order = np.random.default_rng([seed, r]).permutation(len(x))
            for b in range(0, len(x), batch):
                idx = np.sort(order[b:b + batch])
                current = loss_net._with_params({f"net/{p}": a for p, a in w.items()})
                grads = current({"Input": x[idx].astype(np.float64), "Target": y[idx].astype(np.float64)},
                                [NPG(f"net/{p}") for p in names], WorkingPrecision="Real64")
                w = {p: w[p] - lr * (np.asarray(g) / len(idx)) for p, g in zip(names, grads.values())}
        for p in names:
            got = pg.NetExtract(trained, tuple(int(s) if s.isdigit() else s for s in p.split("/")))
            np.testing.assert_allclose(got, w[p].astype(np.float32), rtol=2e-6, atol=1e-7, err_msg=f"{layer.__name__} {p}")


STATEFUL = [(pg.BasicRecurrentLayer, ("State",)), (pg.GatedRecurrentLayer, ("State",)),
            (pg.LongShortTermMemoryLayer, ("State", "CellState"))]


def _stateful(layer, n=3, T=4, k=2):
    g = pg.NetGraph({"l": layer(n, initial_state=True, final_state=True)}, [], inputs={"Input": (T, k)})
    return pg.NetInitialize(g, seed=4)


@pytest.mark.parametrize("layer,states", STATEFUL, ids=lambda v: getattr(v, "__name__", ""))
def test_state_ports_gradients_and_tangents_vs_central_differences(layer, states):
    """initial_state / final_state: every output's gradient with respect to every input (the initial
    states included) and every input's tangent against central differences of the forward (float64),
    through a weighted sum of all outputs; a batch equals its examples one by one."""
    net = _stateful(layer)
    rng = np.random.default_rng(7)
    data = {"Input": rng.standard_normal((3, 4, 2)), **{s: rng.standard_normal((3, 3)) for s in states}}
    outs = net(data, WorkingPrecision="Real64")
    W = {o: rng.standard_normal(np.shape(v)) for o, v in outs.items()}

    def f(d):
        r = net(d, WorkingPrecision="Real64")
        return sum(float((np.asarray(r[o]) * W[o]).sum()) for o in W)

    grads = net({**data, **{NPG(o): w for o, w in W.items()}}, [NPG(p) for p in data], WorkingPrecision="Real64")
    tang = {p: rng.standard_normal(v.shape) for p, v in data.items()}
    jvp = net({**data, **{pg.NetPortTangent(p): v for p, v in tang.items()}}, [pg.NetPortTangent(o) for o in W],
              WorkingPrecision="Real64")
    h = 1e-6
    for p, v in data.items():
        fd = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            e = np.zeros_like(v)
            e[idx] = h
            fd[idx] = (f({**data, p: v + e}) - f({**data, p: v - e})) / (2 * h)
        np.testing.assert_allclose(grads[NPG(p)], fd, rtol=1e-6, atol=1e-8, err_msg=f"d/d{p}")
    moved = [net({p: v + s * h * tang[p] for p, v in data.items()}, WorkingPrecision="Real64") for s in (1, -1)]
    for o in W:
        fd = (np.asarray(moved[0][o]) - np.asarray(moved[1][o])) / (2 * h)
        np.testing.assert_allclose(jvp[pg.NetPortTangent(o)], fd, rtol=1e-6, atol=1e-8, err_msg=f"tangent of {o}")
    for b in range(3):
        one = net({p: v[b:b + 1] for p, v in data.items()}, WorkingPrecision="Real64")
        for o in W:
            np.testing.assert_allclose(one[o][0], outs[o][b], rtol=1e-14, atol=1e-15)
    # per-example array gradients (the initial states' terms included) sum to the batch's
    name = "l/" + ("InputGateStateWeights" if layer is not pg.BasicRecurrentLayer else "StateWeights")
    per = net({**data, **{NPG(o): w for o, w in W.items()}}, NPG(name, PerExample=True), WorkingPrecision="Real64")
    total = net({**data, **{NPG(o): w for o, w in W.items()}}, NPG(name), WorkingPrecision="Real64")
    np.testing.assert_allclose(per.sum(0), total, rtol=1e-12, atol=1e-13)


def test_state_ports_match_torch_lstm_h0_c0():
    torch = torch_or_skip()
    torch.manual_seed(3)
    m = _float32_exact(torch, torch.nn.LSTM(2, 3, batch_first=True).double())
    order = {"InputGate": 0, "ForgetGate": 1, "MemoryGate": 2, "OutputGate": 3}
    wi, wh, b = _split(m.weight_ih_l0, 4), _split(m.weight_hh_l0, 4), _split(m.bias_ih_l0, 4)
    arrays = {}
    for gate, q in order.items():
        arrays.update({("l", f"{gate}InputWeights"): wi[q], ("l", f"{gate}StateWeights"): wh[q],
                       ("l", f"{gate}Biases"): b[q]})
    net = pg.NetReplacePart(_stateful(pg.LongShortTermMemoryLayer), arrays)
    rng = np.random.default_rng(8)
    x, h0, c0 = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    y, (hn, cn) = m(torch.tensor(x), (torch.tensor(h0)[None], torch.tensor(c0)[None]))
    got = net({"Input": x, "State": h0, "CellState": c0}, WorkingPrecision="Real64")
    np.testing.assert_allclose(got["Output"], y.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got["State"], hn[0].detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got["CellState"], cn[0].detach().numpy(), rtol=1e-12, atol=1e-13)


def test_state_port_errors():
    with pytest.raises(ValueError, match=r'port "State" takes the initial state, a vector of size 3; given shape \(5,?\)'):
        pg.NetGraph({"l": pg.GatedRecurrentLayer(3, initial_state=True)}, [], inputs={"Input": (4, 2), "State": 5})
    with pytest.raises(TypeError, match="initial_state must be True or False"):
        pg.LongShortTermMemoryLayer(3, initial_state="yes")


def test_sequence_part_layers_errors_and_a_reversed_lstm():
    with pytest.raises(ValueError, match=r"SequenceMostLayer\): needs a sequence of at least 2 elements"):
        pg.NetChain([pg.SequenceMostLayer()], input=(1, 3))
    with pytest.raises(ValueError, match=r"SequenceRestLayer\): needs a sequence of at least 2 elements"):
        pg.NetChain([pg.SequenceRestLayer()], input=1)
    # a backward-running LSTM: reverse, LSTM, reverse (one direction of a bidirectional layer)
    net = pg.NetInitialize(pg.NetChain([pg.SequenceReverseLayer(), pg.LongShortTermMemoryLayer(3),
                                        pg.SequenceReverseLayer()], input=(5, 2)), seed=1)
    fwd = pg.NetReplacePart(pg.NetInitialize(pg.NetChain([pg.LongShortTermMemoryLayer(3)], input=(5, 2)), seed=1),
                            {(0, p.split("/", 1)[1]): pg.NetExtract(net, (1, p.split("/", 1)[1])) for p in net.arrays})
    x = np.random.default_rng(9).standard_normal((2, 5, 2))
    np.testing.assert_allclose(net(x, WorkingPrecision="Real64"),
                               fwd(x[:, ::-1], WorkingPrecision="Real64")[:, ::-1], rtol=1e-14, atol=1e-15)


def test_gru_state_biases_match_torch_gru_with_its_b_hn():
    torch = torch_or_skip()
    torch.manual_seed(5)
    m = torch.nn.GRU(4, 5, batch_first=True).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.float().double())
        b_hn = m.bias_hh_l0[10:15].clone()
        m.bias_ih_l0[:10] += m.bias_hh_l0[:10]
        m.bias_hh_l0[:10] = 0.0
        m.bias_ih_l0.copy_(m.bias_ih_l0.float().double())
    wi, wh, bi = _split(m.weight_ih_l0, 3), _split(m.weight_hh_l0, 3), _split(m.bias_ih_l0, 3)
    arrays = {"InputGateInputWeights": wi[1], "InputGateStateWeights": wh[1], "InputGateBiases": bi[1],
              "ResetGateInputWeights": wi[0], "ResetGateStateWeights": wh[0], "ResetGateBiases": bi[0],
              "MemoryGateInputWeights": wi[2], "MemoryGateStateWeights": wh[2], "MemoryGateBiases": bi[2],
              "MemoryGateStateBiases": b_hn.numpy()}
    net = pg.NetReplacePart(pg.NetInitialize(pg.NetChain([pg.GatedRecurrentLayer(5, state_biases=True)], input=(6, 4))),
                            {(0, k): v for k, v in arrays.items()})
    g = _run_both(torch, m, net, list(arrays))
    np.testing.assert_allclose(g["MemoryGateStateBiases"], m.bias_hh_l0.grad[10:15].numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g["MemoryGateStateWeights"], _split(m.weight_hh_l0.grad, 3)[2], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch_scaled_dot_product_attention(causal):
    """AttentionLayer on (length, heads, d) against F.scaled_dot_product_attention on (heads, length,
    d): outputs and the gradients of all three inputs, float64."""
    torch = torch_or_skip()
    rng = np.random.default_rng(10)
    K, V, Q = (rng.standard_normal((2, 6, 3, 4)) for _ in range(3))
    net = pg.AttentionLayer("Causal" if causal else None, key=(6, 3, 4), value=(6, 3, 4), query=(6, 3, 4))
    W = rng.standard_normal((2, 6, 3, 4))
    got = net({"Key": K, "Value": V, "Query": Q, NPG("Output"): W}, ["Output", NPG("Key"), NPG("Value"), NPG("Query")],
              WorkingPrecision="Real64")
    tk, tv, tq = (torch.tensor(a.transpose(0, 2, 1, 3), requires_grad=True) for a in (K, V, Q))
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    (out * torch.tensor(W.transpose(0, 2, 1, 3))).sum().backward()
    np.testing.assert_allclose(got["Output"], out.detach().numpy().transpose(0, 2, 1, 3), rtol=1e-12, atol=1e-13)
    for port, t in (("Key", tk), ("Value", tv), ("Query", tq)):
        np.testing.assert_allclose(got[NPG(port)], t.grad.numpy().transpose(0, 2, 1, 3), rtol=1e-11, atol=1e-12)


def test_attention_errors():
    with pytest.raises(ValueError, match="one value per key"):
        pg.AttentionLayer(key=(4, 3), value=(5, 3), query=(2, 3))
    with pytest.raises(ValueError, match="compared by their dot product"):
        pg.AttentionLayer(key=(4, 3), value=(4, 3), query=(2, 5))
    with pytest.raises(ValueError, match="causal mask needs as many queries as keys"):
        pg.AttentionLayer("Causal", key=(4, 3), value=(4, 3), query=(2, 3))
    with pytest.raises(ValueError, match="same number of heads"):
        pg.AttentionLayer(key=(4, 2, 3), value=(4, 3, 3), query=(2, 2, 3))
    with pytest.raises(ValueError, match="mask must be None, 'Causal' or 'Port'"):
        pg.AttentionLayer("Upper")
    with pytest.raises(ValueError, match="attention weights is too many per example"):
        pg.AttentionLayer(key=(2 ** 21, 1), value=(2 ** 21, 1), query=(2 ** 20, 1))


def test_a_ragged_batch_is_a_clear_error():
    net = pg.NetInitialize(pg.NetChain([pg.LongShortTermMemoryLayer(3), pg.SequenceLastLayer()], input=(4, 2)), seed=0)
    with pytest.raises(ValueError, match=r"port 'Input': a ragged batch \(examples of shapes \(4, 2\), \(3, 2\)\).*"
                                         r"declare the port.s length \"Varying\""):
        net([np.zeros((4, 2)), np.zeros((3, 2))])
    with pytest.raises(ValueError, match=r'expected an array of shape \(4, 2\) \(one example\) or \(n, 4, 2\)'):
        net(np.zeros((2, 5, 2)))  # every sequence of a batch one length, but not the declared one
