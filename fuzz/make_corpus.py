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


def main(out):
    os.makedirs(out, exist_ok=True)
    for k, net in enumerate(valid_nets()):
        with open(os.path.join(out, f"valid-{k}"), "wb") as f:
            f.write(pg._io.to_bytes(net))
    from test_file_format import malformed_files  # noqa: E402
    for name, data, _fragment in malformed_files():
        if len(data) < 1 << 20:
            with open(os.path.join(out, f"bad-{name}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
