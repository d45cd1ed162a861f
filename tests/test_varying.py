"""Sequences of "Varying" length: a port declared ("Varying", k) takes one sequence (n, k), a batch
of equal-length sequences (b, n, k), or a list of sequences of different lengths. A list is
evaluated exactly as each sequence alone (no padding in the arithmetic): per-example results come
back as a list in the caller's order, batch-summed array gradients as one array."""
import pickle

import numpy as np
import pytest

import portgrad as pg

NPG, NPT = pg.NetPortGradient, pg.NetPortTangent
R64 = dict(WorkingPrecision="Real64")
LENGTHS = (5, 1, 13, 5, 2, 1)


def sequences(k=3, lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, k)) for n in lengths]


def classifier():
    return pg.NetInitialize(pg.NetChain([pg.LongShortTermMemoryLayer(4), pg.SequenceLastLayer(), pg.LinearLayer(2)],
                                        input=("Varying", 3)), seed=1)


def tagger():  # keeps the sequence axis
    return pg.NetInitialize(pg.NetChain([pg.GatedRecurrentLayer(4), pg.SequenceReverseLayer(), "Tanh"],
                                        input=("Varying", 3)), seed=2)


def test_ports_say_varying():
    assert classifier().input_ports == {"Input": ("Varying", 3)}
    assert classifier().output_ports == {"Output": (2,)}
    assert tagger().output_ports == {"Output": ("Varying", 4)}
    assert pg.NetChain([pg.BasicRecurrentLayer(2, input=("Varying", 3))]).input_ports == {"Input": ("Varying", 3)}


@pytest.mark.parametrize("make", [classifier, tagger])
def test_list_batch_is_each_sequence_alone(make):
    net, xs = make(), sequences()
    out = net(xs, **R64)
    assert isinstance(out, list) and len(out) == len(xs)
    for x, y in zip(xs, out):
        np.testing.assert_array_equal(y, net(x, **R64))
        np.testing.assert_array_equal(y, net(x[None], **R64)[0])
    assert out[2].shape[0] == (13 if make is tagger else 2)


def test_every_gradient_form_matches_one_by_one():
    net, xs = tagger(), sequences()
    rng = np.random.default_rng(3)
    gy = [rng.standard_normal((len(x), 4)) for x in xs]
    w = (0, "ResetGateStateWeights")
    spec = [NPG("Input"), NPG(w), "Output"]
    got = net({"Input": xs, NPG("Output"): gy}, spec, **R64)
    got[NPG(w, PerExample=True)] = net({"Input": xs, NPG("Output"): gy}, NPG(w, PerExample=True), **R64)
    total = 0
    for i, (x, g) in enumerate(zip(xs, gy)):
        one = net({"Input": x[None], NPG("Output"): g[None]}, spec, **R64)
        np.testing.assert_allclose(got[NPG("Input")][i], one[NPG("Input")][0], rtol=0, atol=1e-14)
        np.testing.assert_allclose(got[NPG(w, PerExample=True)][i], one[NPG(w)], rtol=0, atol=1e-14)
        np.testing.assert_array_equal(got["Output"][i], one["Output"][0])
        total = total + one[NPG(w)]
    assert isinstance(got[NPG(w)], np.ndarray)
    np.testing.assert_allclose(got[NPG(w)], total, rtol=1e-13, atol=1e-13)


def test_all_gradients_and_forward_mode():
    net, xs = classifier(), sequences()
    rng = np.random.default_rng(4)
    vs = [rng.standard_normal(x.shape) for x in xs]
    got = net({"Input": xs, NPT("Input"): vs}, [NPG(pg.All), NPT("Output")], **R64)
    allg = got[NPG(pg.All)]
    for i, (x, v) in enumerate(zip(xs, vs)):
        one = net({"Input": x[None], NPT("Input"): v[None]}, [NPG(pg.All), NPT("Output")], **R64)
        np.testing.assert_allclose(got[NPT("Output")][i], one[NPT("Output")][0], rtol=0, atol=1e-14)
        np.testing.assert_allclose(allg[NPG("Input")][i], one[NPG(pg.All)][NPG("Input")][0], rtol=0, atol=1e-14)
    summed = [k for k in allg if k != NPG("Input")]
    assert summed and all(isinstance(allg[k], np.ndarray) for k in summed)
    for k in summed:
        want = sum(net(x[None], k, **R64) for x in xs)
        np.testing.assert_allclose(allg[k], want, rtol=1e-12, atol=1e-13)


def test_input_gradient_against_central_differences():
    net, xs = classifier(), sequences(lengths=(3, 1))
    g = net(xs, NPG("Input"), **R64)
    for x, gx in zip(xs, g):
        num = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            e = np.zeros_like(x)
            e[idx] = 1e-6
            num[idx] = (net(x + e, **R64).sum() - net(x - e, **R64).sum()) / 2e-6
        np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)


def test_jacobian_per_sequence():
    net, xs = classifier(), sequences(lengths=(4, 2))
    jac = net(xs, pg.NetPortJacobian("Input"), **R64)
    assert [j.shape for j in jac] == [(2, 4, 3), (2, 2, 3)]
    for x, j in zip(xs, jac):
        np.testing.assert_allclose(j, net(x, pg.NetPortJacobian("Input"), **R64), rtol=0, atol=1e-14)


def test_attention_with_keys_and_queries_of_their_own_lengths():
    net = pg.NetInitialize(pg.NetGraph({"att": pg.AttentionLayer()}, [],
                                       inputs={"Key": ("Varying", 4), "Value": ("Varying", 2),
                                               "Query": ("Varying", 4)}))
    rng = np.random.default_rng(5)
    nk, nq = (3, 1, 6), (2, 5, 1)
    data = {"Key": [rng.standard_normal((n, 4)) for n in nk], "Value": [rng.standard_normal((n, 2)) for n in nk],
            "Query": [rng.standard_normal((m, 4)) for m in nq]}
    out = net(data, ["Output", NPG("Key")], **R64)
    for i in range(3):
        one = net({k: v[i] for k, v in data.items()}, ["Output", NPG("Key")], **R64)
        np.testing.assert_array_equal(out["Output"][i], one["Output"])
        np.testing.assert_array_equal(out[NPG("Key")][i], one[NPG("Key")])
        k, v, q = (data[p][i] for p in ("Key", "Value", "Query"))
        s = q @ k.T / 2.0
        a = np.exp(s - s.max(1, keepdims=True))
        np.testing.assert_allclose(out["Output"][i], (a / a.sum(1, keepdims=True)) @ v, rtol=1e-12)


def test_float32_and_equal_length_batches():
    net, xs = tagger(), sequences(lengths=(6, 6, 6))
    np.testing.assert_allclose(np.stack(net(xs)), net(np.stack(xs), **R64), rtol=1e-5, atol=1e-5)
    assert net(np.stack(xs)).shape == (3, 6, 4)  # an array in, an array out


def test_save_load_and_pickle_keep_varying(tmp_path):
    net, xs = classifier(), sequences()
    net.save(tmp_path / "n.pgnet")
    for again in (pg.load(tmp_path / "n.pgnet"), pickle.loads(pickle.dumps(net))):
        assert again.input_ports == {"Input": ("Varying", 3)}
        for a, b in zip(again(xs), net(xs)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("data, match", [
    ([np.zeros((0, 3))], "sequence 0 has shape \\(0, 3\\)"),
    ([np.zeros((2, 3)), np.zeros((2, 4))], "sequence 1 has shape \\(2, 4\\); each sequence is \\(n, 3\\)"),
    (np.zeros((2, 4)), "expected a sequence of shape \\(n, 3\\)"),
    (np.zeros((2, 2, 2, 3)), "expected a sequence of shape \\(n, 3\\)"),
    ([], "empty list"),
    ([np.float64(1.0)], "sequence 0 has shape \\(\\)"),
])
def test_bad_sequences_are_clear_errors(data, match):
    with pytest.raises(ValueError, match=match):
        classifier()(data)


def test_train_mode_batch_statistics_over_several_lengths_is_refused():
    net = pg.NetInitialize(pg.NetChain([pg.BasicRecurrentLayer(3), pg.NetMapOperator(pg.BatchNormalizationLayer())],
                                       input=("Varying", 2)))
    xs = sequences(k=2, lengths=(3, 3, 5))
    with pytest.raises(ValueError, match="batch statistics .* 2 different lengths"):
        net(xs, NetEvaluationMode="Train")
    same = net(xs[:2], NetEvaluationMode="Train")  # one length: one batch, its own statistics
    np.testing.assert_allclose(np.stack(same), net(np.stack(xs[:2]), NetEvaluationMode="Train"), rtol=1e-6, atol=1e-6)


def test_structure_errors():
    with pytest.raises(ValueError, match="follows the sequence length.*NetMapOperator"):
        pg.NetChain([pg.LinearLayer(4)], input=("Varying", 3))
    with pytest.raises(ValueError, match="Varying"):
        pg.NetChain([pg.BasicRecurrentLayer(4)], input=("Ragged", 3))
    with pytest.raises(ValueError, match="ragged batch.*Varying"):
        pg.NetInitialize(pg.NetChain([pg.BasicRecurrentLayer(4)], input=(2, 3)))([np.zeros((2, 3)), np.zeros((3, 3))])
    net = classifier()
    with pytest.raises(ValueError, match="batch of 2"):
        net({"Input": sequences(lengths=(2, 3)), NPG("Output"): np.zeros((3, 2))}, NPG("Input"))
    with pytest.raises(ValueError, match="NetTrain.*Varying"):
        pg.NetTrain(net, {"Input": sequences(), "Target": np.zeros((6, 2))}, MaxTrainingRounds=1)
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="export_onnx.*Varying"):
        pg.export_onnx(net, "/nonexistent/x.onnx")


@pytest.mark.parametrize("spec, match", [
    ('{"type":"LinearLayer","size":[2],"inputs":{"Input":[3,"Varying"]}}', "must be an integer"),
    ('{"type":"LinearLayer","size":[2],"inputs":{"Input":["Ragged",3]}}', 'first, \\"Varying\\"'),
    ('{"type":"NetMapOperator"}', "NetMapOperator: has no net"),
    ('{"type":"NetMapOperator","net":{"type":"NetMapOperator","net":{"type":"ElementwiseLayer","function":"Tanh"}},'
     '"inputs":{"Input":[3]}}', "needs more than 2 axes"),
])
def test_hostile_specs_are_clear_errors(spec, match):
    from portgrad import _core
    with pytest.raises(ValueError, match=match):
        _core.declared_inputs(spec)
        _core.Net(spec, [])
