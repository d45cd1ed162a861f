"""Saving and loading: round trips of every layer type and nested chains (in this process and in a
fresh one, bit for bit), float32 and float64 arrays, safetensors readers, atomic saves, pickling,
and concurrent evaluation of one loaded net."""
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import layer_registry
import test_graph_models
from child_env import child_env

import portgrad as pg
from portgrad import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# One entry per layer type (and container): a net with declared input shapes and its data.
# Adding a layer to the library means adding a line here.
def _rng(seed=0):
    return np.random.default_rng(seed)


def _probs(shape, rng):
    p = rng.random(shape) + 0.1
    return p / p.sum(axis=-1, keepdims=True)


CASES = {
    "LinearLayer": lambda: (pg.LinearLayer(3, input=4), lambda r: r.standard_normal((5, 4))),
    "LinearLayer-nobias-tensor-out": lambda: (pg.LinearLayer((2, 3), biases=False, input=(2, 2)),
                                              lambda r: r.standard_normal((5, 2, 2))),
    "LinearLayer-scalar-out": lambda: (pg.LinearLayer((), input=3), lambda r: r.standard_normal((5, 3))),
    "ElementwiseLayer": lambda: (pg.NetChain([4, "GELU", 2, "Tanh"], input=3), lambda r: r.standard_normal((5, 3))),
    "SoftmaxLayer": lambda: (pg.NetChain([4, pg.SoftmaxLayer()], input=3), lambda r: r.standard_normal((5, 3))),
    "CrossEntropyLossLayer-Binary": lambda: (
        pg.NetChain([3, "LogisticSigmoid", pg.CrossEntropyLossLayer("Binary")], input=2),
        lambda r: {"Input": r.standard_normal((5, 2)), "Target": r.random((5, 3))}),
    "CrossEntropyLossLayer-Probabilities": lambda: (
        pg.NetChain([3, pg.SoftmaxLayer(), pg.CrossEntropyLossLayer("Probabilities")], input=2),
        lambda r: {"Input": r.standard_normal((5, 2)), "Target": _probs((5, 3), r)}),
    "CrossEntropyLossLayer-Index": lambda: (
        pg.NetChain([3, pg.SoftmaxLayer(), pg.CrossEntropyLossLayer("Index")], input=2),
        lambda r: {"Input": r.standard_normal((5, 2)), "Target": r.integers(0, 3, 5)}),
    "MeanSquaredLossLayer": lambda: (pg.NetChain([3, pg.MeanSquaredLossLayer()], input=2),
                                     lambda r: {"Input": r.standard_normal((5, 2)), "Target": r.random((5, 3))}),
    "MeanAbsoluteLossLayer": lambda: (pg.NetChain([3, pg.MeanAbsoluteLossLayer()], input=2),
                                      lambda r: {"Input": r.standard_normal((5, 2)), "Target": r.random((5, 3))}),
    "FlattenLayer": lambda: (pg.NetChain([pg.FlattenLayer(), 2], input=(2, 3)), lambda r: r.standard_normal((5, 2, 3))),
    "ReshapeLayer": lambda: (pg.NetChain([6, pg.ReshapeLayer((2, -1)), pg.LinearLayer(2)], input=3),
                             lambda r: r.standard_normal((5, 3))),
    "NetGraph-residual": lambda: (test_graph_models.residual_block(), lambda r: r.standard_normal((5, 4))),
    "NetGraph-inception": lambda: (test_graph_models.inception_block(), lambda r: r.standard_normal((5, 5))),
    "NetGraph-two-in-two-out-in-chain": lambda: (
        pg.NetChain({"pre": pg.LinearLayer(3), "g": pg.NetGraph(
            {"a": pg.LinearLayer(2), "b": pg.BatchNormalizationLayer(), "cat": pg.CatenateLayer()},
            [(pg.NetPort("Input"), "a", "b"), (["a", "b"], "cat")])}, input=4),
        lambda r: r.standard_normal((5, 4))),
    "LeNet-CNN": lambda: (
        pg.NetChain([pg.ConvolutionLayer(4, 3), "Ramp", pg.PoolingLayer(2, stride=2),
                     pg.ConvolutionLayer(6, 3, padding="Same", channel_groups=2), "Ramp",
                     pg.PoolingLayer(2, stride=2, function="Mean"), pg.FlattenLayer(), 5, "Tanh", 3],
                    input=(1, 10, 10)),
        lambda r: r.standard_normal((3, 1, 10, 10))),
    "NetChain-nested-named": lambda: (
        pg.NetChain({"enc": pg.NetChain([5, "Tanh", pg.NetChain({"inner": 4, "act": "Swish"})]), "head": 2,
                     "out": pg.NetChain([pg.LinearLayer(1)])}, input=3),
        lambda r: r.standard_normal((5, 3))),
}


def _registry_case(case):
    """Every layer configuration of the test registry round-trips too (the list grows with the library)."""
    return lambda: (case.net(), lambda r: case.sample(r, 4))


CASES.update({f"registry-{case.id}": _registry_case(case) for case in layer_registry.REGISTRY})


def _make(name):
    net, data = CASES[name]()
    return pg.NetInitialize(net, seed=7) if not name.startswith("registry-") else net, data(_rng(1))


def _everything(net, data, precision):
    """Outputs and every gradient (NetPortGradient(All)), as {key: array}."""
    res = {"out": net(data, WorkingPrecision=precision)}
    for k, v in net(data, pg.NetPortGradient(pg.All), WorkingPrecision=precision).items():
        res[repr(k)] = v
    return res


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_is_bit_exact(name, tmp_path):
    net, data = _make(name)
    path = tmp_path / "net.pgnet"
    net.save(path)
    back = pg.load(path)
    assert type(back) is type(net)
    assert back._json == net._json
    assert set(back._params) == set(net._params)
    for p, a in net._params.items():
        assert _same_bits(back._params[p], a), p
    for precision in ("Real32", "Real64"):
        want, got = _everything(net, data, precision), _everything(back, data, precision)
        assert want.keys() == got.keys()
        for k in want:
            if isinstance(want[k], dict):
                for kk in want[k]:
                    assert _same_bits(want[k][kk], got[k][kk]), (precision, k, kk)
            else:
                assert _same_bits(want[k], got[k]), (precision, k)
    # Structure survives: positions and names still resolve.
    if isinstance(net, pg.NetChain):
        assert len(back) == len(net)
        assert repr(back) == repr(net)


FRESH = r"""
import sys, numpy as np, portgrad as pg
net = pg.load(sys.argv[1])
data = dict(np.load(sys.argv[2]))
data = data["x"] if list(data) == ["x"] else data
out = {}
for precision in ("Real32", "Real64"):
    out[precision + ":out"] = net(data, WorkingPrecision=precision)
    for k, v in net(data, pg.NetPortGradient(pg.All), WorkingPrecision=precision).items():
        out[precision + ":" + repr(k)] = v
np.savez(sys.argv[3], **out)
"""


@pytest.mark.parametrize("name", ["NetChain-nested-named", "CrossEntropyLossLayer-Index", "LinearLayer-nobias-tensor-out"])
def test_fresh_process_gives_identical_bits(name, tmp_path):
    net, data = _make(name)
    net.save(tmp_path / "net.pgnet")
    np.savez(tmp_path / "data.npz", **(data if isinstance(data, dict) else {"x": data}))
    env = child_env()
    subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "net.pgnet"), str(tmp_path / "data.npz"),
                    str(tmp_path / "out.npz")], check=True, env=env, timeout=120)
    got = np.load(tmp_path / "out.npz")
    for precision in ("Real32", "Real64"):
        want = _everything(net, data, precision)
        assert _same_bits(got[precision + ":out"], want["out"])
        for k, v in want.items():
            if k != "out":
                assert _same_bits(got[precision + ":" + k], v), (precision, k)


def test_float64_arrays_round_trip_exactly(tmp_path):
    net, data = _make("NetChain-nested-named")
    rng = _rng(3)
    params = {p: rng.standard_normal(a.shape) for p, a in net._params.items()}  # not float32-representable
    net64 = net._with_params(params)
    net64.save(tmp_path / "n.pgnet")
    back = pg.load(tmp_path / "n.pgnet")
    for p, a in params.items():
        assert back._params[p].dtype == np.float64 and _same_bits(back._params[p], a)
    assert _same_bits(back(data, WorkingPrecision="Real64"), net64(data, WorkingPrecision="Real64"))
    assert _same_bits(back(data, pg.NetPortGradient("Input"), WorkingPrecision="Real64"),
                      net64(data, pg.NetPortGradient("Input"), WorkingPrecision="Real64"))


def test_safetensors_reads_the_weights(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    from safetensors import safe_open
    from safetensors.numpy import load_file

    net, _ = _make("NetChain-nested-named")
    path = tmp_path / "n.safetensors"
    net.save(path)
    arrays = load_file(str(path))
    assert set(arrays) == set(net._params)
    for p, a in arrays.items():
        assert _same_bits(a, net._params[p])
    assert _same_bits(arrays["enc/2/inner/Weights"], pg.NetExtract(net, ("enc", 2, "inner", "Weights")))
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    assert meta["portgrad.format_version"] == "1"
    assert meta["portgrad.version"] == pg.__version__
    assert meta["portgrad.spec"] == net._json
    assert safetensors.__version__


def test_layout_header_padding_and_alignment(tmp_path):
    net, _ = _make("NetChain-nested-named")
    params = dict(net._params)
    params["head/Biases"] = params["head/Biases"].astype(np.float64)  # one float64 array goes first
    net = net._with_params(params)
    net.save(tmp_path / "n.pgnet")
    raw = (tmp_path / "n.pgnet").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and raw[8] == ord("{")
    header = json.loads(raw[8:8 + n])
    data_size = len(raw) - 8 - n
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == data_size
    for k, v in header.items():
        if k != "__metadata__":
            size = 8 if v["dtype"] == "F64" else 4
            assert v["data_offsets"][0] % size == 0, k
    assert header["head/Biases"]["data_offsets"][0] == 0


def test_file_written_by_safetensors_with_our_metadata_loads(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    net, data = _make("LinearLayer")
    meta = {"portgrad.format_version": "1", "portgrad.version": "x", "portgrad.spec": net._json}
    save_file({p: np.array(a) for p, a in net._params.items()}, str(tmp_path / "w.safetensors"), metadata=meta)
    back = pg.load(tmp_path / "w.safetensors")
    assert _same_bits(back(data), net(data))


def test_shape_free_layer_round_trips(tmp_path):
    ramp = pg.ElementwiseLayer("Ramp")
    ramp.save(tmp_path / "r.pgnet")
    back = pg.load(tmp_path / "r.pgnet")
    assert isinstance(back, pg.ElementwiseLayer)
    x = np.array([-1.0, 2.0, 0.5])
    assert _same_bits(back(x, pg.NetPortGradient("Input")), ramp(x, pg.NetPortGradient("Input")))


def test_uninitialised_net_cannot_be_saved_but_pickles(tmp_path):
    net = pg.NetChain([3, "Tanh"], input=2)
    with pytest.raises(ValueError, match="not initialised.*NetInitialize"):
        net.save(tmp_path / "u.pgnet")
    assert not (tmp_path / "u.pgnet").exists()
    back = pickle.loads(pickle.dumps(net))
    assert back._json == net._json and back._params == {}
    assert pg.NetInitialize(back, seed=1)._params.keys() == pg.NetInitialize(net, seed=1)._params.keys()


def test_pickle_holds_the_file_bytes(tmp_path):
    net, data = _make("CrossEntropyLossLayer-Index")
    blob = pickle.dumps(net)
    net.save(tmp_path / "n.pgnet")
    assert (tmp_path / "n.pgnet").read_bytes() in blob
    back = pickle.loads(blob)
    assert type(back) is pg.NetChain
    assert _same_bits(back(data), net(data))


def test_save_errors_are_os_errors(tmp_path):
    net, _ = _make("LinearLayer")
    with pytest.raises(FileNotFoundError, match="cannot write portgrad file"):
        net.save(tmp_path / "no" / "such" / "dir" / "n.pgnet")
    with pytest.raises(IsADirectoryError):
        net.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="cannot open portgrad file"):
        pg.load(tmp_path / "missing.pgnet")
    with pytest.raises(IsADirectoryError):
        pg.load(tmp_path)
    with pytest.raises(TypeError, match="save takes a net"):
        pg._io.save("not a net", tmp_path / "x")
    assert os.listdir(tmp_path) == []  # no temporary file is left behind


def test_save_replaces_atomically(tmp_path):
    """A writer killed at random moments never leaves a partial file at the target: it holds the
    old net or the new one, whole."""
    small, data = _make("LinearLayer")
    big = pg.NetInitialize(pg.NetChain([2048, 2048, 3], input=4), seed=0)  # ~17 MB
    target = tmp_path / "n.pgnet"
    small.save(target)
    big.save(tmp_path / "big.pgnet")
    big_bytes = (tmp_path / "big.pgnet").read_bytes()
    small_bytes = target.read_bytes()
    script = ("import sys, portgrad as pg\nnet = pg.load(sys.argv[1])\nprint('ready', flush=True)\n"
              "while True:\n    net.save(sys.argv[2])\n")
    env = child_env()
    rng = np.random.default_rng(0)
    for trial in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "big.pgnet"), str(target)],
                                stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(float(rng.uniform(0.0, 0.15)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert target.read_bytes() in (small_bytes, big_bytes)
    assert pg.load(target)._params.keys() in (small._params.keys(), big._params.keys())
    del data


def test_concurrent_evaluation_of_one_loaded_net(tmp_path):
    """8 threads (the GIL is released during evaluation) on different inputs give what sequential
    evaluation gives."""
    net, _ = _make("NetChain-nested-named")
    net.save(tmp_path / "n.pgnet")
    loaded = pg.load(tmp_path / "n.pgnet")
    rng = _rng(5)
    xs = [rng.standard_normal((7 + k % 3, 3)) for k in range(8)]
    specs = [None, pg.NetPortGradient("Input"), pg.NetPortGradient(("head", "Weights"))]
    want = [[loaded(x, s) for s in specs] for x in xs]
    got = [None] * 8
    barrier = threading.Barrier(8)

    def work(k):
        barrier.wait()
        rounds = []
        for _ in range(50):
            rounds.append([loaded(xs[k], s) for s in specs])
        got[k] = rounds

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(8):
        for r in got[k]:
            for a, b in zip(r, want[k]):
                assert _same_bits(a, b)


def test_core_reports_versions():
    assert _core.FORMAT_VERSION == "1"
    assert _core.LIBRARY_VERSION == pg.__version__
