"""NetTrain: train a net in portgrad (Wolfram's NetTrain).

Python arranges the data (batches in a seeded order, checked once before the first step), attaches
the loss, reports progress and writes checkpoints; each step is one call into the C++ Trainer
(graph/trainer.h): forward and backward in Train mode, the optimiser's update of every learned
array (kernels/optim.h) and BatchNorm's moving statistics, on buffers that live between steps. The
net passed in is never changed: the Trainer works on an engine net of its own, and NetTrain returns
a new net.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

from . import _core, _gpu
from ._graph import NetGraph
from ._net import All, Net, NetInitialize, NetPort, _frozen
from .layers import CrossEntropyLossLayer, MeanAbsoluteLossLayer, MeanSquaredLossLayer

__all__ = ["NetTrain", "NetTrainResults"]

PROPERTIES = ("TrainedNet", "TrainingNet", "RoundLossList", "ValidationLossList", "BatchLossList", "FinalRoundLoss",
              "FinalValidationLoss", "RoundCount", "BatchCount", "TotalTrainingTime", "MeanBatchesPerSecond",
              "LossPlot")

# Method: (engine name, default learning rate, {Wolfram option: (engine keyword, default)}).
_METHODS = {
    "SGD": ("SGD", 0.01, {"Momentum": ("momentum", 0.9)}),
    "ADAM": ("ADAM", 0.001, {"Beta1": ("beta1", 0.9), "Beta2": ("beta2", 0.999), "Epsilon": ("eps", 1e-8),
                             "WeightDecay": ("weight_decay", 0.0)}),
    "RMSProp": ("RMSProp", 0.001, {"Beta": ("rho", 0.99), "Epsilon": ("eps", 1e-8)}),
}
_COMMON = {"L2Regularization": ("l2", 0.0), "GradientClipping": ("clip", 0.0)}
_SCHEDULES = {
    "Cosine": lambda b, n: 0.5 * (1.0 + math.cos(math.pi * b / n)),
    "Polynomial": lambda b, n: 1.0 - b / n,
    "Exponential": lambda b, n: 0.01 ** (b / n),
}


class NetTrainResults:
    """What ``NetTrain(net, data, All)`` returns: every property, by name (``results["RoundLossList"]``)
    or as an attribute (``results.RoundLossList``)."""

    def __init__(self, values: dict):
        self._values = values

    def __getitem__(self, name):
        if name not in PROPERTIES:
            raise KeyError(f"unknown NetTrain property {name!r}; the properties are {', '.join(PROPERTIES)}")
        if name == "LossPlot":
            return _loss_plot(self._values)
        return self._values[name]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def properties(self):
        return list(PROPERTIES)

    def __repr__(self):
        v = self._values
        return (f"NetTrainResults(rounds={v['RoundCount']}, batches={v['BatchCount']}, "
                f"final loss={v['FinalRoundLoss']:.6g}, time={v['TotalTrainingTime']:.3g} s)")


def NetTrain(net, data, prop=None, *, LossFunction=None, BatchSize=64, MaxTrainingRounds=10, Method="ADAM",
             LearningRate=None, LearningRateSchedule=None, ValidationSet=None, TrainingProgressReporting="Automatic",
             TrainingStoppingCriterion=None, TrainingProgressCheckpointing=None, RandomSeeding=1234,
             WorkingPrecision="Real32", TargetDevice="CPU", RoundLength=None):
    """Trains ``net`` on ``data`` and returns the trained net (a new value; ``net`` is unchanged).

    ``data``: ``(inputs, targets)`` for a net with one input port, or a dict ``{port: array}`` (a net
    ending in a loss, or the port "Target" of the attached loss); or a source of batches — a function
    ``f({"BatchSize": n, "Round": r})`` or an iterator — each batch in one of those forms, a round
    being ``RoundLength`` examples. ``prop``: None (the trained net),
    ``All`` (a NetTrainResults), or one property name (NetTrainResults lists them). A path to a
    checkpoint written by ``TrainingProgressCheckpointing=("Directory", dir)`` in place of ``net``
    resumes that training (the same options give the same result as a run never interrupted).
    See the README's "Training" section for every option.
    """
    resume = None
    if isinstance(net, (str, os.PathLike)):
        resume = _read_checkpoint(net)
        net = resume["net"]
    if not isinstance(net, Net):
        raise TypeError(f"NetTrain takes a net (or a checkpoint's path), given {type(net).__name__}")
    if prop is not None and prop is not All and prop not in PROPERTIES:
        raise ValueError(f"unknown NetTrain property {prop!r}; use None, All or one of {', '.join(PROPERTIES)}")
    options = _core.evaluation_options(WorkingPrecision, TargetDevice, "Train")
    bits = options.bits
    if options.device == "GPU":
        _gpu.module()  # loads and registers the backend, or says why there is none
    rounds = _positive_int(MaxTrainingRounds, "MaxTrainingRounds")
    batch_size = _positive_int(BatchSize, "BatchSize")
    seed = _seed(RandomSeeding)
    engine_method, lr0, coefficients = _method(Method, LearningRate)
    schedule = _schedule(LearningRateSchedule)
    report = _reporter(TrainingProgressReporting)
    stop, needs_validation = _stopping(TrainingStoppingCriterion)
    if needs_validation and ValidationSet is None:
        raise ValueError("TrainingStoppingCriterion on 'ValidationLoss' needs a ValidationSet")
    checkpoint_dir = _checkpoint_dir(TrainingProgressCheckpointing)
    if net._shape_free():
        raise ValueError("NetTrain needs a net with declared input shapes (input=...), so that the data can be "
                         "checked against them")
    if net._varying:
        raise ValueError(f"NetTrain: input port {net._varying[0]!r} has a \"Varying\" length, and training on "
                         "sequences of varying length is not supported yet; train a copy declared with one length "
                         "(its arrays carry over) or pad the sequences to one length")
    if not all(p in net._params for p in net.arrays):
        net = NetInitialize(net, seed=seed)

    source = _source(data, batch_size, RoundLength)
    if source is not None:  # batches from a function or an iterator; the first one tells the loss
        data = source.first
    training, loss_port, attached, paths = _training_net(net, LossFunction, data)
    if source is None:
        arrays = _arrays_of(training, data, "training data", bits)
        n = len(next(iter(arrays.values())))
    else:
        source.check = lambda d, what: _arrays_of(training, d, what, bits)
        arrays, n = None, source.round_length
    validation = None
    if source is not None and isinstance(ValidationSet, float):
        raise ValueError("ValidationSet as a fraction needs data given as arrays; with a source of batches, give "
                         "the validation data itself")
    if isinstance(ValidationSet, float) and not isinstance(ValidationSet, bool):
        if not 0 < ValidationSet < 1:
            raise ValueError(f"ValidationSet as a fraction must lie in (0, 1), given {ValidationSet}")
        order = np.random.default_rng([seed, 0x5EED]).permutation(n)
        held = max(1, int(round(ValidationSet * n)))
        if held >= n:
            raise ValueError(f"ValidationSet={ValidationSet} leaves no training examples of {n}")
        validation = {k: np.ascontiguousarray(v[order[:held]]) for k, v in arrays.items()}
        arrays = {k: np.ascontiguousarray(v[order[held:]]) for k, v in arrays.items()}
        n -= held
    elif ValidationSet is not None:
        validation = _arrays_of(training, ValidationSet, "validation set", bits)

    cnet = _core.Net(training._json, [])  # the Trainer's own engine net: training changes its arrays
    for index, (path, _shape) in enumerate(cnet.params):
        cnet.set_param(index, training._params[path])
    info = cnet.param_info
    learned = [k for k, p in enumerate(info) if p["learnable"] and p["differentiable"]]
    if not learned:
        raise ValueError("the net has no learned arrays: there is nothing to train")
    loss_index = [name for name, _ in cnet.outputs].index(loss_port)
    trainer = _core.Trainer(cnet, loss_index, learned, engine_method, bits, **coefficients, device=options.device,
                            device_index=options.device_index)
    ports = [name for name, _shape, _bound in cnet.inputs]

    history = {"RoundLossList": [], "ValidationLossList": [], "BatchLossList": []}
    first_round = 0
    # What a resumed run must share with the interrupted one to continue it exactly.
    identity = {"method": engine_method, "coefficients": coefficients, "seed": seed, "batch_size": batch_size,
                "learning_rate": lr0, "bits": bits,
                "schedule": LearningRateSchedule if isinstance(LearningRateSchedule, str) or LearningRateSchedule is None
                else "a function"}
    if resume is not None:
        first_round = _restore(resume, trainer, cnet, learned, info, paths, identity, rounds, history, bits)
    # Batch b of a round is the examples [starts[b], starts[b + 1]) of its order. A single example left
    # over joins the batch before it: a batch of one has no batch statistics (BatchNormalizationLayer).
    starts = list(range(0, n, batch_size)) + [n]
    if len(starts) > 2 and starts[-1] - starts[-2] == 1:
        del starts[-2]
    batches_per_round = len(starts) - 1 if source is None else (n + batch_size - 1) // batch_size
    total = rounds * batches_per_round
    start = time.perf_counter()
    trained_batches = 0
    report.begin(rounds, batches_per_round, first_round)
    try:
        for r in range(first_round, rounds):
            order = np.random.default_rng([seed, r]).permutation(n) if source is None else None
            losses, sizes = [], []
            for b in range(batches_per_round):
                if source is None:
                    idx = np.sort(order[starts[b]:starts[b + 1]])
                    batch = [np.ascontiguousarray(arrays[p][idx]) for p in ports]
                else:
                    given = source.batch(r, b)
                    batch = [given[p] for p in ports]
                sizes.append(len(batch[0]))
                step = r * batches_per_round + b
                lr = lr0 * schedule(step, total)
                loss = trainer.step(batch, lr, _step_seed(seed, step))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"the loss became {loss} in round {r + 1}, batch {b + 1}: training diverged; "
                                             "lower the LearningRate, or use GradientClipping (Method=(name, "
                                             "{'GradientClipping': 1.0}))")
                losses.append(loss)
                trained_batches += 1
                report.batch(loss)
            history["BatchLossList"].extend(losses)
            # (math.fsum, not np.dot: a BLAS call wakes OpenBLAS's threads, which then spin on the cores
            # the next steps need)
            history["RoundLossList"].append(math.fsum(loss * size for loss, size in zip(losses, sizes)) / sum(sizes))
            if validation is not None:
                history["ValidationLossList"].append(_mean_loss(trainer, cnet, validation, ports, batch_size))
            report.round(r + 1, history)
            stopped = stop(history)
            if checkpoint_dir is not None:
                trainer.download()
                _write_checkpoint(checkpoint_dir, r + 1, net, cnet, trainer, learned, info, paths, identity, rounds,
                                  stopped, history, bits)
            if stopped:
                break
    finally:
        report.end()  # (a progress bar is closed when training stops with an error too)
    elapsed = time.perf_counter() - start

    trainer.download()
    trained = _trained(net, cnet, paths, bits)
    values = dict(history)
    values["TrainedNet"] = trained
    values["TrainingNet"] = training._with_params(_engine_params(cnet, training, bits)) if attached else trained
    values["FinalRoundLoss"] = history["RoundLossList"][-1] if history["RoundLossList"] else None
    values["FinalValidationLoss"] = history["ValidationLossList"][-1] if history["ValidationLossList"] else None
    values["RoundCount"] = len(history["RoundLossList"])
    values["BatchCount"] = len(history["BatchLossList"])
    values["TotalTrainingTime"] = elapsed
    values["MeanBatchesPerSecond"] = trained_batches / elapsed if elapsed > 0 else float("inf")
    results = NetTrainResults(values)
    if prop is None:
        return trained
    if prop is All:
        return results
    return results[prop]


# ----------------------------------------------------------------------------------- the loss
def _ends_in_softmax(spec) -> bool:
    if spec.get("type") == "SoftmaxLayer":
        return not spec.get("log", False)
    if spec.get("type") == "NetChain" and spec.get("layers"):
        return _ends_in_softmax(spec["layers"][-1]["net"])
    return False


def _training_net(net, loss_function, data):
    """(the net to train, its loss output, whether a loss was attached, {net path: training path})."""
    outs = net.output_ports
    # Engine paths ("0/Weights", a shared array's name), as net._params keys them.
    names = [info["path"] for info in net._structure_net().param_info]
    same = {p: p for p in names}
    if isinstance(loss_function, str):
        if loss_function not in outs:
            raise ValueError(f"LossFunction={loss_function!r}: the net has no output port of that name; its outputs "
                             f"are {', '.join(repr(o) for o in outs)}")
        return net, loss_function, False, same
    if loss_function is None and "Loss" in outs:
        return net, "Loss", False, same
    if len(outs) != 1:
        raise ValueError(f"the net has {len(outs)} outputs ({', '.join(repr(o) for o in outs)}) and none is named "
                         "'Loss': name the one to train with LossFunction='port', or attach a loss to one yourself")
    if loss_function is None:
        if _ends_in_softmax(net._spec):
            integer = isinstance(data, tuple) and len(data) == 2 and np.asarray(data[1]).dtype.kind in "iub"
            loss_function = CrossEntropyLossLayer("Index" if integer else "Probabilities")
        else:
            loss_function = MeanSquaredLossLayer()
    if not isinstance(loss_function, (CrossEntropyLossLayer, MeanSquaredLossLayer, MeanAbsoluteLossLayer)):
        raise TypeError(f"LossFunction must be a loss layer (CrossEntropyLossLayer, MeanSquaredLossLayer, ...) or "
                        f"an output port's name, given {loss_function!r}")
    if "Target" in net.input_ports:
        raise ValueError("the net has an input port named 'Target', which the attached loss's target would take; "
                         "rename it, or attach the loss yourself and train the net's 'Loss' output")
    out = next(iter(outs))
    training = NetGraph({"net": net, "loss": loss_function}, [(NetPort("net", out), NetPort("loss", "Input"))])
    graph_paths = {info["path"] for info in training._structure_net().param_info}
    paths = {p: (f"net/{p}" if f"net/{p}" in graph_paths else p) for p in names}
    return training, "Loss", True, paths


# ----------------------------------------------------------------------------------- the data
def _arrays_of(training, data, what, bits):
    """{port: array} for every input port of the training net, checked: one example count, the ports'
    shapes, finite reals, class indices in range, at least one example."""
    ports = training._core_net().inputs  # (name, shape, index bound)
    names = [p for p, _s, _b in ports]
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"{what}: a tuple is (inputs, targets); given {len(data)} items")
        inputs = [p for p in names if p != "Target"]
        if "Target" not in names or len(inputs) != 1:
            raise ValueError(f"{what}: (inputs, targets) is for a net with one input port and the loss's 'Target'; "
                             f"this one takes {', '.join(repr(p) for p in names)}: pass a dict {{port: array}}")
        data = {inputs[0]: data[0], "Target": data[1]}
    if not isinstance(data, dict):
        raise TypeError(f"{what}: expected (inputs, targets) or a dict {{port: array}}, given {type(data).__name__}")
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"{what}: the net has no input port {unknown[0]!r}; its ports are "
                         f"{', '.join(repr(p) for p in names)}")
    missing = [p for p in names if p not in data]
    if missing:
        raise ValueError(f"{what}: no data for port {missing[0]!r}")
    out, count = {}, None
    for name, shape, bound in ports:
        a = np.asarray(data[name])
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{what}: port {name!r} needs numbers, given dtype {a.dtype}")
        shape = tuple(shape)
        if a.shape[1:] != shape or a.ndim != len(shape) + 1:
            raise ValueError(f"{what}: port {name!r} takes examples of shape {shape}: expected an array of shape "
                             f"(examples, {', '.join(map(str, shape))}{',' if len(shape) == 1 else ''}), given "
                             f"{a.shape}")
        if count is None:
            count, first = len(a), name
        elif len(a) != count:
            raise ValueError(f"{what}: port {name!r} has {len(a)} examples but port {first!r} has {count}")
        if bound:
            if a.dtype.kind == "f":
                bad = np.flatnonzero((a != np.round(a)).reshape(len(a), -1).any(axis=1)) if a.size else []
                if len(bad):
                    raise ValueError(f"{what}: port {name!r} takes class indices (integers); example {bad[0]} is "
                                     f"{a[bad[0]]}")
            bad = np.flatnonzero(((a < 0) | (a >= bound)).reshape(len(a), -1).any(axis=1)) if a.size else []
            if len(bad):
                v = a[bad[0]]
                raise ValueError(f"{what}: port {name!r}: class index {v} of example {bad[0]} is outside 0..{bound - 1}")
            out[name] = np.ascontiguousarray(a, dtype=np.int64)
        else:
            bad = np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1)) if a.size else []
            if len(bad):
                flat = a[bad[0]].ravel()
                v = flat[~np.isfinite(flat)][0]
                raise ValueError(f"{what}: port {name!r}: example {bad[0]} holds {v}; every value must be finite")
            out[name] = np.ascontiguousarray(a, dtype=np.float64 if bits == 64 else np.float32)
    if not count:
        raise ValueError(f"{what}: there are no examples")
    return out


class _Source:
    """Batches from a function f({"BatchSize": n, "Round": r}) or an iterator, each checked as
    training data is (`check`, set once the training net is known), RoundLength examples a round."""

    def __init__(self, data, batch_size, round_length):
        self.function = data if callable(data) else None
        self.iterator = None if callable(data) else iter(data)
        self.batch_size = batch_size
        self.round_length = round_length
        self.first = self._next(0)
        self.check = None

    def _next(self, r):
        if self.function is not None:
            return self.function({"BatchSize": self.batch_size, "Round": r + 1})
        try:
            return next(self.iterator)
        except StopIteration:
            raise ValueError(f"the iterator of training batches ran out in round {r + 1}; give RoundLength x "
                             "MaxTrainingRounds examples' worth of batches, or a function") from None

    def batch(self, r, b):
        given = self.first if (r, b) == (0, 0) and self.first is not None else self._next(r)
        if (r, b) == (0, 0):
            self.first = None
        return self.check(given, f"batch {b + 1} of round {r + 1}")


def _source(data, batch_size, round_length):
    if isinstance(data, (tuple, dict)) or hasattr(data, "shape"):
        if round_length is not None:
            raise ValueError("RoundLength is for data given as a function or an iterator of batches; a round over "
                             "arrays is the whole set")
        return None
    if not (callable(data) or hasattr(data, "__iter__")) or isinstance(data, (str, bytes, list)):
        return None  # (reported by the data checks)
    if round_length is None:
        raise ValueError("data given as a function or an iterator of batches needs RoundLength (examples a round)")
    return _Source(data, batch_size, _positive_int(round_length, "RoundLength"))


def _mean_loss(trainer, cnet, arrays, ports, batch_size):
    n = len(arrays[ports[0]])
    total = 0.0
    for b in range(0, n, batch_size):
        batch = [np.ascontiguousarray(arrays[p][b:b + batch_size]) for p in ports]
        total += trainer.loss(batch) * len(batch[0])
    return total / n


# ----------------------------------------------------------------------------------- options
def _positive_int(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive integer, given {v!r}")
    return int(v)


def _seed(v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"RandomSeeding must be an int, given {v!r}")
    return int(v) & 0xFFFFFFFF


def _step_seed(seed, step):
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) & 0xFFFFFFFFFFFFFFFF


def _method(method, learning_rate):
    options = {}
    if isinstance(method, tuple) and len(method) == 2 and isinstance(method[1], dict):
        method, options = method
    if method not in _METHODS:
        raise ValueError(f"Method must be 'SGD', 'ADAM' or 'RMSProp' (or (name, {{option: value}})), given {method!r}")
    engine, lr, known = _METHODS[method]
    known = {**known, **_COMMON}
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ValueError(f"Method {method!r} has no option {unknown[0]!r}; its options are {', '.join(known)}")
    coefficients = {}
    for name, (keyword, default) in known.items():
        v = options.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
                or v < 0:
            raise ValueError(f"Method option {name!r} must be a finite number >= 0, given {v!r}")
        coefficients[keyword] = float(v)
    for name in ("Beta1", "Beta2", "Beta", "Momentum"):
        if name in known and not coefficients[known[name][0]] < 1:
            raise ValueError(f"Method option {name!r} must be below 1, given {coefficients[known[name][0]]}")
    if "Epsilon" in known and not coefficients["eps"] > 0:
        raise ValueError("Method option 'Epsilon' must be > 0 (it keeps the update finite where a gradient's "
                         "running square is 0)")
    if learning_rate is not None:
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.integer, np.floating)) \
                or not math.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"LearningRate must be a finite number > 0, given {learning_rate!r}")
        lr = float(learning_rate)
    return engine, lr, coefficients


def _schedule(schedule):
    if schedule is None:
        return lambda b, n: 1.0
    if isinstance(schedule, str):
        if schedule not in _SCHEDULES:
            raise ValueError(f"LearningRateSchedule must be None, {', '.join(repr(s) for s in _SCHEDULES)} or a "
                             f"function f(batch, total_batches) -> factor; given {schedule!r}")
        return _SCHEDULES[schedule]
    if callable(schedule):
        def checked(b, n):
            f = schedule(b, n)
            if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) or not math.isfinite(f) \
                    or f < 0:
                raise ValueError(f"LearningRateSchedule({b}, {n}) gave {f!r}; it must give a finite factor >= 0")
            return float(f)
        return checked
    raise TypeError(f"LearningRateSchedule must be None, a name or a function, given {schedule!r}")


def _stopping(criterion):
    if criterion is None:
        return (lambda history: False), False
    if callable(criterion):
        return (lambda history: bool(criterion({k: list(v) for k, v in history.items()}))), False
    if not isinstance(criterion, dict):
        raise TypeError("TrainingStoppingCriterion must be None, a function of the history, or "
                        "{'Criterion': 'Loss' or 'ValidationLoss', 'Patience': rounds}")
    unknown = [k for k in criterion if k not in ("Criterion", "Patience")]
    if unknown:
        raise ValueError(f"TrainingStoppingCriterion has no key {unknown[0]!r}; its keys are 'Criterion', 'Patience'")
    name = criterion.get("Criterion", "ValidationLoss")
    if name not in ("Loss", "ValidationLoss"):
        raise ValueError(f"TrainingStoppingCriterion: 'Criterion' must be 'Loss' or 'ValidationLoss', given {name!r}")
    patience = _positive_int(criterion.get("Patience", 1), "TrainingStoppingCriterion's 'Patience'")
    key = "RoundLossList" if name == "Loss" else "ValidationLossList"

    def stop(history):
        values = history[key]
        return bool(values) and len(values) - 1 - int(np.argmin(values)) >= patience  # no better for `patience` rounds
    return stop, name == "ValidationLoss"


def _checkpoint_dir(option):
    if option is None:
        return None
    if not (isinstance(option, tuple) and len(option) == 2 and option[0] == "Directory"):
        raise ValueError(f"TrainingProgressCheckpointing must be ('Directory', path), given {option!r}")
    path = os.fspath(option[1])
    os.makedirs(path, exist_ok=True)
    return path


class _Reporter:
    def begin(self, rounds, batches, first):
        pass

    def batch(self, loss):
        pass

    def round(self, r, history):
        pass

    def end(self):
        pass


class _Bar(_Reporter):
    def begin(self, rounds, batches, first):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=rounds * batches, initial=first * batches, unit="batch", desc="NetTrain",
                        file=sys.stderr, dynamic_ncols=True)

    def batch(self, loss):
        self.bar.update(1)

    def round(self, r, history):
        post = {"round": r, "loss": f"{history['RoundLossList'][-1]:.4g}"}
        if history["ValidationLossList"]:
            post["validation"] = f"{history['ValidationLossList'][-1]:.4g}"
        self.bar.set_postfix(post)

    def end(self):
        self.bar.close()


class _Print(_Reporter):
    def round(self, r, history):
        line = f"round {r}: loss {history['RoundLossList'][-1]:.6g}"
        if history["ValidationLossList"]:
            line += f", validation loss {history['ValidationLossList'][-1]:.6g}"
        print(line, flush=True)


class _Callback(_Reporter):
    def __init__(self, f):
        self.f = f

    def round(self, r, history):
        self.f({"Round": r, **{k: list(v) for k, v in history.items()}})


def _reporter(option):
    if option == "Automatic":
        return _Bar() if sys.stderr.isatty() else _Reporter()
    if option == "ProgressBar":
        return _Bar()
    if option == "Print":
        return _Print()
    if option is None:
        return _Reporter()
    if callable(option):
        return _Callback(option)
    raise ValueError(f"TrainingProgressReporting must be 'Automatic', 'ProgressBar', 'Print', None or a function; "
                     f"given {option!r}")


# ----------------------------------------------------------------------------------- results
def _engine_params(cnet, training, bits):
    params = dict(training._params)
    for index, (path, _shape) in enumerate(cnet.params):
        params[path] = _frozen(np.asarray(cnet.get_param(index, bits), dtype=np.float32))
    return params


def _trained(net, cnet, paths, bits):
    index = {path: k for k, (path, _shape) in enumerate(cnet.params)}
    params = dict(net._params)
    for user_path, path in paths.items():
        params[user_path] = _frozen(np.asarray(cnet.get_param(index[path], bits), dtype=np.float32))
    return net._with_params(params)


def _loss_plot(values):
    try:
        import matplotlib
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the LossPlot property needs matplotlib: pip install 'portgrad[plot]'") from None
    del matplotlib
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rounds = np.arange(1, len(values["RoundLossList"]) + 1)
    ax.plot(rounds, values["RoundLossList"], marker="o", label="training loss")
    if values["ValidationLossList"]:
        ax.plot(rounds, values["ValidationLossList"], marker="s", label="validation loss")
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------- checkpoints
_STATE = "portgrad.state/"


def _write_checkpoint(directory, r, net, cnet, trainer, learned, info, paths, identity, rounds, stopped, history,
                      bits):
    """checkpoint-NNNN.pgnet: the net trained so far (pg.load reads it), the optimiser's state and the
    history, written atomically (a temporary file renamed over the name)."""
    from ._io import _arrays
    trained = _trained(net, cnet, paths, bits)
    user = {v: k for k, v in paths.items()}
    arrays = _arrays(trained)
    for k, index in enumerate(learned):
        for s in range(trainer.state_count):
            arrays.append((f"{_STATE}{user[info[index]['path']]}/{s}", trainer.get_state(k, s)))
    # every array's exact values in the working precision (the net's own are rounded to float32)
    for index, (path, _shape) in enumerate(cnet.params):
        arrays.append((f"{_STATE}{user[path]}/value", cnet.get_param(index, bits)))
    training = {"round": r, "steps": trainer.steps, **identity, "rounds": rounds, "stopped": stopped,
                "history": history}
    _core.save_file(os.fsencode(os.path.join(directory, f"checkpoint-{r:04d}.pgnet")), trained._json, arrays,
                    json.dumps(training))


def _read_checkpoint(path):
    from ._io import _rebuild
    spec_json, meta, arrays, state = _core.load_file(os.fsencode(os.fspath(path)))
    if "portgrad.training" not in meta:
        raise ValueError(f"{os.fspath(path)!r} is a saved net, not a NetTrain checkpoint (it holds no training state); "
                         "to train it further, pass the net: NetTrain(pg.load(path), ...)")
    try:
        training = json.loads(meta["portgrad.training"])
        if not isinstance(training, dict):
            raise ValueError("not a JSON object")
        int(training["round"]), int(training["steps"])
        history = training["history"]
        if not all(isinstance(history[k], list) for k in ("RoundLossList", "ValidationLossList", "BatchLossList")):
            raise ValueError("a loss list is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{os.fspath(path)!r}: its training state (metadata 'portgrad.training') is malformed: "
                         f"{e!s}") from None
    return {"net": _rebuild(spec_json, arrays), "training": training, "state": dict(state)}


def _restore(resume, trainer, cnet, learned, info, paths, identity, rounds, history, bits):
    """Sets the trainer, the arrays and the history from a checkpoint; the round to continue from."""
    t = resume["training"]
    for key, value in identity.items():
        if t.get(key) != value:
            raise ValueError(f"the checkpoint was trained with {key}={t.get(key)!r}, this call asks for {value!r}; "
                             "resume with the options of the interrupted run")
    if identity["schedule"] is not None and t.get("rounds") != rounds:
        raise ValueError(f"the learning-rate schedule spans MaxTrainingRounds={t.get('rounds')} in the checkpoint's "
                         f"run; resume it with the same MaxTrainingRounds (given {rounds})")
    user = {v: k for k, v in paths.items()}
    dtype = np.float64 if bits == 64 else np.float32

    def state(name, what):
        a = resume["state"].get(f"{_STATE}{name}/{what}")
        if a is None:
            raise ValueError(f"the checkpoint has no training state {what!r} for array {name!r}")
        return np.ascontiguousarray(a, dtype=dtype)
    for index, (path, _shape) in enumerate(cnet.params):
        cnet.set_param(index, state(user[path], "value"))
    for k, index in enumerate(learned):
        for s in range(trainer.state_count):
            trainer.set_state(k, s, state(user[info[index]["path"]], s))
    trainer.steps = int(t["steps"])
    for key in history:
        history[key].extend(float(v) for v in t["history"][key])
    return rounds if t.get("stopped") else int(t["round"])  # a run its stopping criterion ended stays ended
