"""NetTrain: the optimisers against a NumPy transcription driven by portgrad's own gradients, a digits
classifier (scikit-learn's bundled 8x8 digits) with an MLP and with a small CNN, a regression,
determinism, the net passed in left unchanged, checkpoints (resume equals an uninterrupted run; a
killed run leaves loadable checkpoints), BatchNorm's moving statistics, progress reporting,
stopping, schedules, and every bad-data case as a clear error before the first step."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import portgrad as pg
from child_env import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def regression_data(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return x, (np.sin(3 * x[:, :1]) * x[:, 1:]).astype(np.float32)


def mlp(seed=0):
    return pg.NetInitialize(pg.NetChain([32, "Tanh", 32, "Tanh", 1], input=2), seed=seed)


def arrays_of(net):
    return {p: np.asarray(pg.NetExtract(net, tuple(int(s) if s.isdigit() else s for s in p.split("/"))))
            for p in net.arrays}


# ------------------------------------------------------------------------------- optimisers
@pytest.mark.parametrize("method", ["SGD", "ADAM", "RMSProp"])
def test_steps_are_the_documented_updates_of_the_mean_gradient(method):
    """Each step updates every array by the method's formula (kernels/optim.h) from the gradient of
    the batch's mean loss, the batches in the documented order: a NumPy loop over portgrad's own
    gradients (NetPortGradient on the net with the loss attached) reproduces NetTrain in float64."""
    x, y = regression_data(40)
    net = mlp(3)
    opts = {"SGD": {"Momentum": 0.8, "L2Regularization": 1e-3},
            "ADAM": {"Beta1": 0.8, "WeightDecay": 1e-2, "GradientClipping": 0.05},
            "RMSProp": {"Beta": 0.9}}[method]
    lr, batch, rounds, seed = 0.01, 16, 2, 7
    trained = pg.NetTrain(net, (x, y), Method=(method, opts), LearningRate=lr, BatchSize=batch,
                          MaxTrainingRounds=rounds, RandomSeeding=seed, WorkingPrecision="Real64",
                          TrainingProgressReporting=None)

    loss_net = pg.NetGraph({"net": net, "loss": pg.MeanSquaredLossLayer()},
                           [(pg.NetPort("net", "Output"), pg.NetPort("loss", "Input"))])
    w = {p: np.asarray(a, np.float64) for p, a in arrays_of(net).items()}
    state = {p: [np.zeros_like(a), np.zeros_like(a)] for p, a in w.items()}
    t = 0
    for r in range(rounds):
        order = np.random.default_rng([seed, r]).permutation(len(x))
        for b in range(0, len(x), batch):
            idx = np.sort(order[b:b + batch])
            current = loss_net._with_params({f"net/{p}": a for p, a in w.items()})
            grads = current({"Input": x[idx].astype(np.float64), "Target": y[idx].astype(np.float64)},
                            [pg.NetPortGradient(f"net/{p}") for p in w], WorkingPrecision="Real64")
            t += 1
            for (p, a), g in zip(list(w.items()), grads.values()):
                g = np.asarray(g) * (1.0 / len(idx))
                if "GradientClipping" in opts:
                    g = np.clip(g, -opts["GradientClipping"], opts["GradientClipping"])
                g = g + opts.get("L2Regularization", 0.0) * a
                s = state[p]
                if method == "SGD":
                    s[0] = opts["Momentum"] * s[0] + g
                    w[p] = a - lr * s[0]
                elif method == "RMSProp":
                    s[0] = opts["Beta"] * s[0] + ((1 - opts["Beta"]) * g) * g
                    w[p] = a + (-lr) * (g / (np.sqrt(s[0]) + 1e-8))
                else:
                    b1, b2 = opts["Beta1"], 0.999
                    a = a * (1 - lr * opts["WeightDecay"])
                    s[0] = b1 * s[0] + (1 - b1) * g
                    s[1] = b2 * s[1] + ((1 - b2) * g) * g
                    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
                    w[p] = a + (-lr / c1) * (s[0] / (np.sqrt(s[1]) / np.sqrt(c2) + 1e-8))
    got = arrays_of(trained)
    for p in w:  # (the trained net stores float32)
        np.testing.assert_allclose(got[p], w[p].astype(np.float32), rtol=2e-6, atol=1e-7, err_msg=f"{method} {p}")
        assert not np.allclose(got[p], arrays_of(net)[p]), f"{method}: {p} did not move"


# ------------------------------------------------------------------------------- learning
def digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def test_digits_with_an_mlp_and_a_cnn():
    pytest.importorskip("sklearn")
    xtr, ytr, xte, yte = digits()
    mlp_net = pg.NetChain([128, "Ramp", 64, "Ramp", 10, pg.SoftmaxLayer()], input=64)
    res = pg.NetTrain(mlp_net, (xtr, ytr), pg.All, MaxTrainingRounds=30, BatchSize=32, ValidationSet=(xte, yte),
                      TrainingProgressReporting=None)
    accuracy = np.mean(np.argmax(res.TrainedNet(xte), axis=1) == yte)
    assert accuracy >= 0.97, f"MLP held-out accuracy {accuracy}"
    assert res.FinalValidationLoss < res.ValidationLossList[0]
    cnn = pg.NetChain([pg.ReshapeLayer((1, 8, 8)), pg.ConvolutionLayer(16, 3, padding=1), "Ramp", pg.PoolingLayer(2, 2),
                       pg.ConvolutionLayer(32, 3, padding=1), "Ramp", pg.FlattenLayer(), 64, "Ramp", 10,
                       pg.SoftmaxLayer()], input=64)
    trained = pg.NetTrain(cnn, (xtr, ytr), MaxTrainingRounds=15, BatchSize=32, TrainingProgressReporting=None)
    accuracy = np.mean(np.argmax(trained(xte), axis=1) == yte)
    assert accuracy >= 0.97, f"CNN held-out accuracy {accuracy}"


def test_a_regression_and_the_net_passed_in_is_unchanged():
    x, y = regression_data(1000)
    net = mlp(1)
    before = {p: a.copy() for p, a in arrays_of(net).items()}
    res = pg.NetTrain(net, (x, y), pg.All, MaxTrainingRounds=40, BatchSize=32, LearningRate=0.003,
                      TrainingProgressReporting=None)
    mse = float(np.mean((res.TrainedNet(x) - y) ** 2))
    assert mse < 0.1 * float(np.var(y)), f"mse {mse} vs variance {np.var(y)}"
    assert res.RoundLossList[-1] < 0.2 * res.RoundLossList[0]
    for p, a in arrays_of(net).items():
        np.testing.assert_array_equal(a, before[p])  # nets are values
    assert res.RoundCount == 40 and res.BatchCount == 40 * 32 and len(res.BatchLossList) == 40 * 32
    assert res.MeanBatchesPerSecond > 0 and res.TotalTrainingTime > 0
    assert "Loss" in res.TrainingNet.output_ports and set(res.TrainedNet.output_ports) == {"Output"}


def test_an_uninitialised_net_is_initialised_from_the_seed_and_real64_trains():
    x, y = regression_data(200)
    net = pg.NetChain([16, "Tanh", 1], input=2)
    a = pg.NetTrain(net, (x, y), MaxTrainingRounds=3, TrainingProgressReporting=None, WorkingPrecision="Real64")
    b = pg.NetTrain(net, (x, y), MaxTrainingRounds=3, TrainingProgressReporting=None, WorkingPrecision="Real64")
    assert all(np.array_equal(arrays_of(a)[p], arrays_of(b)[p]) for p in a.arrays)


def test_same_seed_same_bits_other_seed_other_net():
    x, y = regression_data(300)
    net = pg.NetInitialize(pg.NetChain([pg.BatchNormalizationLayer(), 16, "Tanh", pg.DropoutLayer(0.2), 1],
                                       input=2), seed=2)
    runs = [pg.NetTrain(net, (x, y), MaxTrainingRounds=3, BatchSize=20, RandomSeeding=s, TrainingProgressReporting=None)
            for s in (5, 5, 6)]
    a, b, c = (arrays_of(r) for r in runs)
    assert all(a[p].tobytes() == b[p].tobytes() for p in a)
    assert any(a[p].tobytes() != c[p].tobytes() for p in a)


def test_a_single_leftover_example_joins_the_last_batch():
    """65 examples in batches of 32: 32 and 33 (a batch of one would have no batch statistics)."""
    x, y = regression_data(65)
    net = pg.NetInitialize(pg.NetChain([pg.BatchNormalizationLayer(), 8, "Tanh", 1], input=2), seed=0)
    res = pg.NetTrain(net, (x, y), pg.All, BatchSize=32, MaxTrainingRounds=2, TrainingProgressReporting=None)
    assert res.BatchCount == 4


def test_batchnorm_moving_statistics_move_in_training_only():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((512, 3)) * [1, 5, 0.2] + [3, -2, 1]).astype(np.float32)
    y = x.sum(1, keepdims=True)
    net = pg.NetInitialize(pg.NetChain([pg.BatchNormalizationLayer(), 8, "Tanh", 1], input=3), seed=1)
    trained = pg.NetTrain(net, (x, y), MaxTrainingRounds=10, TrainingProgressReporting=None)
    np.testing.assert_allclose(pg.NetExtract(trained, (0, "MovingMean")), x.mean(0), rtol=0.05, atol=0.05)
    np.testing.assert_allclose(pg.NetExtract(trained, (0, "MovingVariance")), x.var(0), rtol=0.1)
    np.testing.assert_array_equal(pg.NetExtract(net, (0, "MovingMean")), 0)  # the net passed in: untouched


# ------------------------------------------------------------------------------- options
def test_progress_reporting_stopping_and_schedules(capsys):
    x, y = regression_data(64)
    net = mlp(0)
    pg.NetTrain(net, (x, y), MaxTrainingRounds=2, TrainingProgressReporting="Print")
    out = capsys.readouterr().out
    assert "round 1: loss" in out and "round 2: loss" in out
    seen = []
    pg.NetTrain(net, (x, y), MaxTrainingRounds=3, TrainingProgressReporting=seen.append)
    assert [s["Round"] for s in seen] == [1, 2, 3] and len(seen[-1]["RoundLossList"]) == 3
    pytest.importorskip("tqdm")
    pg.NetTrain(net, (x, y), MaxTrainingRounds=2, TrainingProgressReporting="ProgressBar")
    assert "NetTrain" in capsys.readouterr().err
    # stopping: a function of the history, and no improvement for Patience rounds
    res = pg.NetTrain(net, (x, y), pg.All, MaxTrainingRounds=10, TrainingProgressReporting=None,
                      TrainingStoppingCriterion=lambda h: len(h["RoundLossList"]) == 2)
    assert res.RoundCount == 2
    res = pg.NetTrain(net, (x, y), pg.All, MaxTrainingRounds=10, TrainingProgressReporting=None, Method="SGD",
                      LearningRateSchedule=lambda b, n: 0.0, TrainingStoppingCriterion={"Criterion": "Loss", "Patience": 2})
    assert res.RoundCount == 3  # the loss never improves on round 1's
    assert all(np.array_equal(arrays_of(res.TrainedNet)[p], arrays_of(net)[p]) for p in net.arrays)  # lr 0
    calls = []
    pg.NetTrain(net, (x, y), MaxTrainingRounds=2, BatchSize=32, TrainingProgressReporting=None,
                LearningRateSchedule=lambda b, n: calls.append((b, n)) or 1.0)
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4)]
    for name in ("Cosine", "Polynomial", "Exponential"):
        assert pg.NetTrain(net, (x, y), "FinalRoundLoss", MaxTrainingRounds=2, LearningRateSchedule=name,
                           TrainingProgressReporting=None) > 0


def test_loss_plot_and_properties():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    x, y = regression_data(64)
    res = pg.NetTrain(mlp(0), (x, y), pg.All, MaxTrainingRounds=3, ValidationSet=0.25, TrainingProgressReporting=None)
    fig = res["LossPlot"]
    assert len(fig.axes[0].lines) == 2  # training and validation
    assert set(res.properties()) >= {"TrainedNet", "RoundLossList", "LossPlot", "MeanBatchesPerSecond"}
    assert pg.NetTrain(mlp(0), (x, y), "RoundCount", MaxTrainingRounds=2, TrainingProgressReporting=None) == 2


def test_batches_from_a_function_or_an_iterator():
    x, y = regression_data(1000)
    rng = np.random.default_rng(0)
    asked = []

    def batches(spec):
        asked.append(dict(spec))
        idx = rng.integers(0, len(x), spec["BatchSize"])
        return x[idx], y[idx]

    res = pg.NetTrain(mlp(1), batches, pg.All, RoundLength=320, BatchSize=32, MaxTrainingRounds=15, LearningRate=3e-3,
                      ValidationSet=(x[:200], y[:200]), TrainingProgressReporting=None)
    assert asked[0] == {"BatchSize": 32, "Round": 1} and asked[-1]["Round"] == 15 and len(asked) == 150
    assert res.BatchCount == 150 and res.FinalValidationLoss < 0.3 * res.ValidationLossList[0]
    gen = ({"Input": x[k:k + 50], "Target": y[k:k + 50]} for k in range(0, 1000, 50))
    assert pg.NetTrain(mlp(1), gen, "BatchCount", RoundLength=100, BatchSize=50, MaxTrainingRounds=10,
                       TrainingProgressReporting=None) == 20
    with pytest.raises(ValueError, match="ran out in round 3"):
        pg.NetTrain(mlp(1), iter([(x[:50], y[:50])] * 4), RoundLength=100, BatchSize=50, MaxTrainingRounds=3,
                    TrainingProgressReporting=None)
    with pytest.raises(ValueError, match="needs RoundLength"):
        pg.NetTrain(mlp(1), batches, TrainingProgressReporting=None)
    with pytest.raises(ValueError, match="RoundLength is for"):
        pg.NetTrain(mlp(1), (x, y), RoundLength=10, TrainingProgressReporting=None)
    bad = iter([(x[:50], y[:50]), (x[:50, :1], y[:50])])
    with pytest.raises(ValueError, match=r"batch 2 of round 1: port 'Input' takes examples of shape \(2,\)"):
        pg.NetTrain(mlp(1), bad, RoundLength=100, BatchSize=50, TrainingProgressReporting=None)


# ------------------------------------------------------------------------------- checkpoints
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    x, y = regression_data(100)
    net = pg.NetInitialize(pg.NetChain([pg.BatchNormalizationLayer(), 16, "Tanh", pg.DropoutLayer(0.1), 1], input=2),
                           seed=3)
    opts = dict(BatchSize=16, Method=("ADAM", {"WeightDecay": 0.01}), TrainingProgressReporting=None,
                LearningRateSchedule="Cosine", ValidationSet=0.2)
    full = pg.NetTrain(net, (x, y), pg.All, MaxTrainingRounds=5, **opts,
                       TrainingProgressCheckpointing=("Directory", tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert files == [f"checkpoint-{r:04d}.pgnet" for r in range(1, 6)]
    third = pg.load(tmp_path / "checkpoint-0003.pgnet")  # a checkpoint is a net file
    assert set(third.arrays) == set(net.arrays)
    resumed = pg.NetTrain(str(tmp_path / "checkpoint-0003.pgnet"), (x, y), pg.All, MaxTrainingRounds=5, **opts)
    a, b = arrays_of(full.TrainedNet), arrays_of(resumed.TrainedNet)
    assert all(a[p].tobytes() == b[p].tobytes() for p in a)
    assert resumed.RoundLossList == full.RoundLossList and resumed.ValidationLossList == full.ValidationLossList
    with pytest.raises(ValueError, match="learning_rate"):
        pg.NetTrain(str(tmp_path / "checkpoint-0003.pgnet"), (x, y), MaxTrainingRounds=5, **opts, LearningRate=0.1)
    with pytest.raises(ValueError, match="bits"):  # another precision would not continue the same run
        pg.NetTrain(str(tmp_path / "checkpoint-0003.pgnet"), (x, y), MaxTrainingRounds=5, **opts,
                    WorkingPrecision="Real64")
    with pytest.raises(ValueError, match="schedule spans MaxTrainingRounds=5"):
        pg.NetTrain(str(tmp_path / "checkpoint-0003.pgnet"), (x, y), MaxTrainingRounds=8, **opts)
    net.save(tmp_path / "plain.pgnet")
    with pytest.raises(ValueError, match="not a NetTrain checkpoint"):
        pg.NetTrain(str(tmp_path / "plain.pgnet"), (x, y))


def test_a_run_its_stopping_criterion_ended_stays_ended_when_resumed(tmp_path):
    x, y = regression_data(64)
    opts = dict(TrainingProgressReporting=None, Method="SGD", LearningRateSchedule=lambda b, n: 0.0,
                TrainingStoppingCriterion={"Criterion": "Loss", "Patience": 1})
    res = pg.NetTrain(mlp(0), (x, y), pg.All, MaxTrainingRounds=10, **opts,
                      TrainingProgressCheckpointing=("Directory", tmp_path))
    assert res.RoundCount == 2
    again = pg.NetTrain(str(tmp_path / "checkpoint-0002.pgnet"), (x, y), pg.All, MaxTrainingRounds=10, **opts)
    assert again.RoundCount == 2 and again.RoundLossList == res.RoundLossList


KILLED = """
import sys, numpy as np, portgrad as pg
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (4000, 8)).astype(np.float32)
y = x.sum(1, keepdims=True)
net = pg.NetInitialize(pg.NetChain([256, "Tanh", 256, "Tanh", 1], input=8), seed=0)
pg.NetTrain(net, (x, y), MaxTrainingRounds=100000, BatchSize=4000, TrainingProgressReporting=None,
            TrainingProgressCheckpointing=("Directory", sys.argv[1]))
"""


@pytest.mark.slow
def test_a_killed_run_leaves_checkpoints_that_load(tmp_path):
    """SIGKILL at moments spread over the rounds (each round writes a checkpoint): every checkpoint
    file present is whole (written to a temporary name, then renamed) and resumes."""
    x = np.random.default_rng(0).uniform(-1, 1, (4000, 8)).astype(np.float32)
    for k, delay in enumerate((0.7, 1.1, 1.6)):
        d = tmp_path / f"run{k}"
        proc = subprocess.Popen([sys.executable, "-c", KILLED, str(d)], env=child_env())
        deadline = time.time() + 60
        while time.time() < deadline and not (d.exists() and any(f.endswith(".pgnet") for f in os.listdir(d))):
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        files = sorted(f for f in os.listdir(d) if f.endswith(".pgnet"))
        assert files, "no checkpoint was written"
        for f in files:
            net = pg.load(d / f)
            assert net(x[:2]).shape == (2, 1)
        pg.NetTrain(str(d / files[-1]), (x, x.sum(1, keepdims=True)), MaxTrainingRounds=int(files[-1][11:15]) + 1,
                    BatchSize=4000, TrainingProgressReporting=None)


def test_hostile_checkpoints_and_trainer_calls_are_clear_errors(tmp_path):
    from portgrad import _core
    x, y = regression_data(40)
    net = mlp(0)
    pg.NetTrain(net, (x, y), MaxTrainingRounds=1, TrainingProgressReporting=None,
                TrainingProgressCheckpointing=("Directory", tmp_path))
    spec, meta, arrays, state = _core.load_file(str(tmp_path / "checkpoint-0001.pgnet").encode())
    for bad_meta, match in [("{", "malformed"), ("[]", "malformed"), ('{"round": 1}', "malformed")]:
        _core.save_file(str(tmp_path / "bad.pgnet").encode(), spec, arrays + state, bad_meta)
        with pytest.raises(ValueError, match=match):
            pg.NetTrain(str(tmp_path / "bad.pgnet"), (x, y), TrainingProgressReporting=None)
    _core.save_file(str(tmp_path / "partial.pgnet").encode(), spec, arrays + state[1:], meta["portgrad.training"])
    with pytest.raises(ValueError, match="no training state"):
        pg.NetTrain(str(tmp_path / "partial.pgnet"), (x, y), MaxTrainingRounds=2, TrainingProgressReporting=None)
    assert pg.load(tmp_path / "partial.pgnet").arrays == net.arrays  # still a net file
    # the engine's own checks, below NetTrain's
    cnet = _core.Net(net._json, [])
    for k, (path, _s) in enumerate(cnet.params):
        cnet.set_param(k, net._params[path])
    with pytest.raises(ValueError, match="no output 3"):
        _core.Trainer(cnet, 3, [0], "ADAM", 32)
    with pytest.raises(ValueError, match="no array 99"):
        _core.Trainer(cnet, 0, [99], "ADAM", 32)
    with pytest.raises(ValueError, match="unknown training method"):
        _core.Trainer(cnet, 0, [0], "Adagrad", 32)
    t = _core.Trainer(cnet, 0, [0, 1], "ADAM", 32)
    good = [np.zeros((4, 2), np.float32)]
    with pytest.raises(TypeError, match="expected float32"):
        t.step([np.zeros((4, 2))], 0.1, 0)
    with pytest.raises(ValueError, match="expected shape"):
        t.step([np.zeros((4, 3), np.float32)], 0.1, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        t.step([np.zeros((2, 4), np.float32).T], 0.1, 0)
    with pytest.raises(ValueError, match="at least one example"):
        t.step([np.zeros((0, 2), np.float32)], 0.1, 0)
    with pytest.raises(ValueError, match="learning rate"):
        t.step(good, float("nan"), 0)
    with pytest.raises(ValueError, match="contains an infinity"):
        t.step([np.full((4, 2), np.inf, np.float32)], 0.1, 0)
    with pytest.raises(ValueError, match="expected a C-contiguous float32"):
        t.set_state(0, 0, np.zeros(3, np.float32))
    with pytest.raises(IndexError):
        t.get_state(5, 0)
    # a step of a batch size seen before allocates no engine buffer (gradients, state and plan are kept)
    t.step(good, 0.1, 0)
    before = _core.allocation_count()
    for seed in range(5):
        t.step(good, 0.1, seed)
    assert _core.allocation_count() == before


@pytest.mark.cuda
def test_training_on_the_gpu_is_the_cpus_to_rounding(tmp_path):
    """TargetDevice="GPU" (a CUDA device, or the emulator): the same losses and arrays as the CPU to
    float32 rounding, with BatchNorm's moving statistics, a last batch of another size (a second plan,
    which takes the arrays from the first), validation, and a resumed checkpoint giving the bits of the
    uninterrupted GPU run."""
    from portgrad import _gpu
    if not _gpu.available():
        pytest.skip("no GPU backend")
    x, y = regression_data(256)
    net = pg.NetInitialize(pg.NetChain([pg.BatchNormalizationLayer(), 16, "Tanh", 1], input=2), seed=0)
    opts = dict(MaxTrainingRounds=3, BatchSize=60, TrainingProgressReporting=None, ValidationSet=0.1)
    cpu = pg.NetTrain(net, (x, y), pg.All, **opts)
    gpu = pg.NetTrain(net, (x, y), pg.All, **opts, TargetDevice="GPU",
                      TrainingProgressCheckpointing=("Directory", tmp_path))
    np.testing.assert_allclose(gpu.RoundLossList, cpu.RoundLossList, rtol=1e-5)
    np.testing.assert_allclose(gpu.ValidationLossList, cpu.ValidationLossList, rtol=1e-5)
    a, b = arrays_of(cpu.TrainedNet), arrays_of(gpu.TrainedNet)
    for p in a:
        np.testing.assert_allclose(b[p], a[p], rtol=1e-4, atol=1e-6, err_msg=p)
    resumed = pg.NetTrain(str(tmp_path / "checkpoint-0001.pgnet"), (x, y), **opts, TargetDevice="GPU")
    assert all(arrays_of(resumed)[p].tobytes() == b[p].tobytes() for p in b)


# ------------------------------------------------------------------------------- bad data and options
def test_bad_data_is_a_clear_error_before_the_first_step():
    x, y = regression_data(10)
    net = mlp(0)

    def fails(data, match, **kw):
        with pytest.raises((ValueError, TypeError), match=match):
            pg.NetTrain(net, data, TrainingProgressReporting=None, **kw)

    fails((x, y[:9]), "'Target' has 9 examples but port 'Input' has 10")
    bad = x.copy()
    bad[3, 1] = np.nan
    fails((bad, y), "example 3 holds nan")
    bad[3, 1] = np.inf
    fails((bad, y), "example 3 holds inf")
    fails((x[:, :1], y), r"port 'Input' takes examples of shape \(2,\)")
    fails((x[:0], y[:0]), "no examples")
    fails({"Input": x}, "no data for port 'Target'")
    fails({"Input": x, "Target": y, "Other": x}, "no input port 'Other'")
    fails((x, y, y), "a tuple is")
    fails([x, y], "expected \\(inputs, targets\\)")
    fails((x.astype(str), y), "needs numbers")
    fails((x, y), "validation set: port 'Target' has 3", ValidationSet=(x, y[:3]))
    classifier = pg.NetInitialize(pg.NetChain([5, pg.SoftmaxLayer()], input=2), seed=0)
    labels = np.arange(10) % 5
    with pytest.raises(ValueError, match="class index 7 of example 4 is outside 0..4"):
        pg.NetTrain(classifier, (x, np.where(np.arange(10) == 4, 7, labels)), TrainingProgressReporting=None)
    with pytest.raises(ValueError, match="class index -1"):
        pg.NetTrain(classifier, (x, np.where(np.arange(10) == 2, -1, labels)), TrainingProgressReporting=None)


def test_divergence_is_a_clear_error():
    x, y = regression_data(64)
    with pytest.raises(FloatingPointError, match="training diverged"):
        pg.NetTrain(mlp(0), (x, y * 1e30), Method="SGD", LearningRate=1e30, MaxTrainingRounds=50,
                    TrainingProgressReporting=None)


def test_bad_options_are_clear_errors():
    x, y = regression_data(10)
    net = mlp(0)

    def fails(match, data=(x, y), **kw):
        with pytest.raises((ValueError, TypeError), match=match):
            pg.NetTrain(net, data, TrainingProgressReporting=None, **kw)

    fails("Method must be", Method="Adagrad")
    fails("has no option 'Beta3'", Method=("ADAM", {"Beta3": 0.5}))
    fails("'Beta1' must be below 1", Method=("ADAM", {"Beta1": 1.0}))
    fails("'Epsilon' must be > 0", Method=("RMSProp", {"Epsilon": 0}))
    fails("LearningRate must be", LearningRate=-1)
    fails("BatchSize must be", BatchSize=0)
    fails("MaxTrainingRounds must be", MaxTrainingRounds=1.5)
    fails("unknown NetTrain property", prop="Accuracy")
    fails("TargetDevice", TargetDevice="TPU")
    fails("needs a ValidationSet", TrainingStoppingCriterion={"Criterion": "ValidationLoss"})
    fails("LearningRateSchedule must be", LearningRateSchedule="Step")
    fails("TrainingProgressCheckpointing", TrainingProgressCheckpointing="dir")
    fails("LossFunction must be", LossFunction=pg.LinearLayer(3))
    fails("no output port", LossFunction="Out")
    fails("ValidationSet as a fraction", ValidationSet=1.5)
    fails("WorkingPrecision", WorkingPrecision="Real16")
    with pytest.raises(TypeError, match="takes a net"):
        pg.NetTrain(42, (x, y))
