"""Inputs that crashed the engine (segfaults, SIGFPE, use after free), each run in a child process so
that a crash is a failed test, not a dead run: every one must now be a clear Python exception or a
correct result."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from child_env import child_env

PRELUDE = "import numpy as np, portgrad as pg\nNPG = pg.NetPortGradient\n"


def run_child(code):
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                       env=child_env(), timeout=120)
    assert r.returncode == 0, f"exit {r.returncode} (negative: killed by a signal)\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def expect_error(code, exc, words):
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    out = run_child(f"try:\n{body}\nexcept {exc} as e:\n    print('RAISED', type(e).__name__, e)\n"
                    "else:\n    print('NO ERROR')\n")
    assert f"RAISED {exc}" in out and all(w in out for w in words), out


HUGE = "np.broadcast_to(np.ones(2), (2**40, 2))"  # a view of 16 TiB that no copy of it can fit


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_an_input_whose_copy_cannot_be_made_is_a_memory_error(precision):
    expect_error(f"""
        net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(2)], input=2), seed=0)
        net({HUGE}, WorkingPrecision="{precision}")""", "MemoryError", ['port "Input"', "GiB"])


def test_huge_float_class_indices_and_targets_are_memory_errors():
    expect_error("""
        emb = pg.NetInitialize(pg.EmbeddingLayer(3, 5, input=()), seed=0)
        emb(np.broadcast_to(np.zeros(1), (2**40,)))""", "MemoryError", ['port "Input"', "GiB"])
    expect_error(f"""
        loss = pg.MeanSquaredLossLayer(input=2)
        loss({{"Input": {HUGE}, "Target": {HUGE}}})""", "MemoryError", ["GiB"])


def test_an_intermediate_too_large_for_int64_is_refused_at_construction():
    expect_error("""
        net = pg.NetChain([pg.ReplicateLayer(2**40), pg.SummationLayer()], input=(2**24,))
        pg.NetInitialize(net, seed=0)""", "ValueError", ["ReplicateLayer", "elements per example"])


def test_zero_length_axes():
    out = run_child("""
        for log in (False, True):
            s = pg.SoftmaxLayer(log=log)
            print("softmax", s(np.ones(0)).shape, s(np.ones((3, 0))).shape, s(np.ones((3, 0)), NPG("Input")).shape)
        """)
    assert out.count("softmax (0,) (3, 0) (3, 0)") == 2, out
    for kind in ("Probabilities", "Index"):
        target = "np.ones((2, 0))" if kind == "Probabilities" else "np.zeros(2)"
        expect_error(f"""
            pg.CrossEntropyLossLayer("{kind}")({{"Input": np.ones((2, 0)), "Target": {target}}})""",
                     "ValueError", ["empty last axis", "at least one class"])
    for shape in ("(0, 3)", "(2, 0)"):
        expect_error(f"pg.NormalizationLayer()(np.ones({shape}))", "ValueError", ["not initialised"])


def test_a_nested_call_from_an_inputs_array_method_keeps_the_outer_call_intact():
    """__array__ (and the GPU protocols) run inside a call; calling portgrad again there on the same
    thread used to overwrite the outer call's per-thread request and buffers."""
    out = run_child("""
        net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(3), "Tanh", pg.LinearLayer(2)], input=2), seed=0)
        x = np.arange(8.0).reshape(4, 2) / 8
        inner = []

        class Nested:
            def __array__(self, dtype=None, copy=None):
                inner.append(net(np.ones((7, 2)), [NPG(pg.All), "Output"]))
                return x

        got = net({"Input": Nested(), NPG("Output"): np.ones((4, 2))}, NPG("Input"))
        want = net({"Input": x, NPG("Output"): np.ones((4, 2))}, NPG("Input"))
        print("same", got.shape == want.shape and np.array_equal(got, want), len(inner))
        """)
    assert "same True 1" in out, out


def test_loading_a_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "net.pgnet"
    import os
    os.mkfifo(fifo)
    expect_error(f"pg.load({str(fifo)!r})", "ValueError", ["not a regular file"])


def test_a_nul_byte_in_a_path_is_refused(tmp_path):
    target = str(tmp_path / "net.pgnet")
    expect_error(f"pg.load({target + chr(0) + 'x'!r})", "ValueError", ["NUL byte"])
    expect_error(f"pg.NetInitialize(pg.LinearLayer(2, input=2), seed=0).save({target + chr(0) + 'x'!r})",
                 "ValueError", ["NUL byte"])


def test_unknown_options_in_a_spec_are_refused():
    expect_error("""
        from portgrad import _io
        _io._from_parts('{"type": "LinearLayer", "size": [2], "biases": true, "bias": false, "inputs": {"Input": [3]}}', {})""",
                 "ValueError", ['unknown option "bias"', "LinearLayer", '"biases"'])
    expect_error("""
        from portgrad import _io
        _io._from_parts('{"type": "NetChain", "layers": [{"name": "0", "net": {"type": "ElementwiseLayer", '
                        '"function": "Tanh", "stride": 2}}], "inputs": {"Input": [3]}}', {})""",
                 "ValueError", ['unknown option "stride"'])


@pytest.mark.parametrize("case", ["unknown-array", "wrong-shape"])
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's shadow memory does not fit under the 4 GiB address-space limit")
def test_a_sparse_file_is_refused_before_its_data_is_read(tmp_path, case):
    # 16 GiB of apparent data (a hole, no disk) under a 4 GiB address-space limit: reading the data
    # before matching the header to the net would fail to allocate instead of naming the mismatch.
    path = tmp_path / "sparse.pgnet"
    big = 1 << 32  # float32 elements
    shape = [big] if case == "unknown-array" else [2, big // 2]
    name = "huge" if case == "unknown-array" else "0/Weights"
    spec = {"type": "NetChain", "layers": [{"name": "0", "net": {"type": "LinearLayer", "size": [2], "biases": False}}],
            "inputs": {"Input": [3]}}
    header = {"__metadata__": {"portgrad.format_version": "1", "portgrad.version": "0.1.0",
                               "portgrad.spec": json.dumps(spec)}}
    begin = 0
    if case == "unknown-array":
        header["0/Weights"] = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
        begin = 24
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + 4 * big]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + header[name]["data_offsets"][1])
    words = ['"huge"', "does not have"] if case == "unknown-array" else ["needs shape (2, 3)", "holds shape (2, 2147483648)"]
    expect_error(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        pg.load({str(path)!r})""", "ValueError", words)
