"""Coverage-guided fuzzing of pg.import_onnx (atheris, libFuzzer's engine for Python), as
fuzz_loader.cc fuzzes the file loader: every input must import or raise ValueError/TypeError, and
an imported net must evaluate (forward and every gradient) or raise one of them. Anything else —
another exception type, a crash, a hang, unbounded memory — is a finding.

    pip install atheris onnx && python fuzz/fuzz_onnx_import.py -max_total_time=300 -rss_limit_mb=4096 \\
        -timeout=20 build/fuzz/onnx_corpus tests/data/onnx

The test exports in tests/data/onnx seed the corpus (libFuzzer reads every file of the directories
given; the .npz files there are harmless extra seeds).
"""
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import portgrad as pg


def one_input(data: bytes):
    try:
        net = pg.import_onnx(data)
    except (ValueError, TypeError):
        return
    try:
        inputs = {}
        for name, shape in net.input_ports.items():
            if shape is None or np.prod(shape, dtype=np.float64) > 1e6:
                return
            inputs[name] = np.ones((2,) + tuple(shape), np.float32)
        net(inputs, pg.NetPortGradient(pg.All))
    except (ValueError, TypeError):
        return


def main():
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
