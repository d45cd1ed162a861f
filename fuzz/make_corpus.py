"""Writes the fuzzing seed corpus: valid files of several nets, plus the hand-made malformed files
of tests/test_file_format.py. Usage: python fuzz/make_corpus.py DIR"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import portgrad as pg  # noqa: E402


def valid_nets():
    yield pg.NetInitialize(pg.LinearLayer(3, input=2), seed=0)
    yield pg.NetInitialize(pg.NetChain([3, "Tanh", pg.NetChain({"a": 2, "b": "Ramp"}), 1], input=2), seed=0)
    yield pg.NetInitialize(pg.NetChain([3, pg.SoftmaxLayer(), pg.CrossEntropyLossLayer("Index")], input=2), seed=0)
    yield pg.NetInitialize(pg.NetChain([pg.FlattenLayer(), 4, pg.ReshapeLayer((2, -1)), pg.MeanSquaredLossLayer()],
                                       input=(2, 2)), seed=0)
    yield pg.ElementwiseLayer("GELU")
    net = pg.NetInitialize(pg.LinearLayer((), input=3), seed=0)
    yield net._with_params({p: np.asarray(a, np.float64) for p, a in net._params.items()})
    # The other layer families and graphs, small enough to stay under the fuzzer's -max_len.
    yield pg.NetInitialize(pg.NetChain([pg.ConvolutionLayer(2, 3, padding="Same", channel_groups=1), "Ramp",
                                        pg.PoolingLayer(2, stride=2), pg.DeconvolutionLayer(1, 2, stride=2),
                                        pg.PoolingLayer(2, function="Mean"), pg.FlattenLayer(), 2],
                                       input=(1, 6, 6)), seed=0)
    yield pg.NetInitialize(pg.NetChain([3, pg.BatchNormalizationLayer(), pg.DropoutLayer(0.2),
                                        pg.NormalizationLayer(), pg.SoftmaxLayer(log=True)], input=2), seed=0)
    yield pg.NetInitialize(pg.NetChain([pg.EmbeddingLayer(3, 5), pg.AggregationLayer("Mean", levels=0)],
                                       input=(4,)), seed=0)
    yield pg.NetInitialize(pg.NetGraph(
        {"a": 3, "b": 3, "cat": pg.CatenateLayer(), "t": pg.ThreadingLayer("Times"), "sum": pg.TotalLayer(),
         "part": pg.PartLayer(slice(0, 3)), "tr": pg.ReshapeLayer((3, 1)), "perm": pg.TransposeLayer(),
         "rep": pg.ReplicateLayer(2), "c": pg.ConstantArrayLayer(shape=(3,)), "s": pg.SummationLayer()},
        [(pg.NetPort("Input"), "a"), (pg.NetPort("Input"), "b"), (["a", "b"], "cat"), ("cat", "part"),
         (["part", "c"], "t"), (["t", "a"], "sum"), ("sum", "tr", "perm", "rep", "s")], input=2), seed=0)


def main(out):
    os.makedirs(out, exist_ok=True)
    for k, net in enumerate(valid_nets()):
        with open(os.path.join(out, f"valid-{k}"), "wb") as f:
            f.write(pg._io.to_bytes(net))
    # A NetTrain checkpoint: "portgrad.state/..." arrays and "portgrad.training" metadata beside the net's.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(8, 2)
        pg.NetTrain(pg.NetInitialize(pg.NetChain([2, "Tanh", 1], input=2), seed=0), (x, x[:, :1]),
                    MaxTrainingRounds=1, BatchSize=4, TrainingProgressReporting=None,
                    TrainingProgressCheckpointing=("Directory", tmp))
        with open(os.path.join(tmp, "checkpoint-0001.pgnet"), "rb") as f, \
                open(os.path.join(out, "valid-checkpoint"), "wb") as g:
            g.write(f.read())
    from test_file_format import malformed_files  # noqa: E402
    for name, data, _fragment in malformed_files():
        if len(data) < 1 << 20:
            with open(os.path.join(out, f"bad-{name}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
