"""Hand-made malformed and hostile files: each gives a ValueError naming what is wrong — never a
crash, an out-of-bounds read, a huge allocation or a hang. The same list seeds the fuzzer
(fuzz/make_corpus.py)."""
import json
import struct
import time

import numpy as np
import pytest

import portgrad as pg
from portgrad import _core

GOOD_SPEC = {"type": "NetChain", "layers": [{"name": "0", "net": {"type": "LinearLayer", "size": [2], "biases": True}},
                                            {"name": "1", "net": {"type": "ElementwiseLayer", "function": "Tanh"}}],
             "inputs": {"Input": [3]}}
W = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
B = np.array([0.5, -0.25], dtype=np.float32)


def meta(spec=None, **extra):
    m = {"portgrad.format_version": "1", "portgrad.version": "0.1.0",
         "portgrad.spec": json.dumps(GOOD_SPEC if spec is None else spec)}
    m.update(extra)
    return m


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def good_header(**override):
    h = {"__metadata__": meta(), "0/Weights": entry("F32", [2, 3], 0, 24), "0/Biases": entry("F32", [2], 24, 32)}
    h.update(override)
    return h


GOOD_DATA = W.tobytes() + B.tobytes()


def build(header, data=GOOD_DATA, raw_header=None, length=None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def malformed_files():
    """(name, bytes, message fragment) of every hand-made bad file."""
    good = build(good_header())
    hdr_len = struct.unpack("<Q", good[:8])[0]
    deep = b"[" * 5000 + b"]" * 5000
    nested_spec = {"type": "ElementwiseLayer", "function": "Tanh", "inputs": {"Input": [1]}}
    for _ in range(40):
        nested_spec = {"type": "NetChain", "layers": [{"name": "0", "net": nested_spec}]}
    yield from [
        ("empty", b"", "too short (0 bytes)"),
        ("seven-bytes", b"\x08\0\0\0\0\0\0", "too short (7 bytes)"),
        ("truncated-data", good[:-5], "lie outside the 27 bytes of data"),
        ("truncated-header", good[:20], "runs past the end of the file (20 bytes)"),
        ("header-length-past-end", struct.pack("<Q", 1000) + good[8:], "header length 1000 runs past the end"),
        ("header-length-2^64-1", b"\xff" * 8 + good[8:], "header length 18446744073709551615 runs past the end"),
        ("header-length-zero", struct.pack("<Q", 0) + good[8:], "the header is not a JSON object"),
        ("not-json", build(None, raw_header=b"{not json}"), "the header is not valid JSON at byte 1"),
        ("header-is-array", build(None, raw_header=b"[1, 2]"), "the header is not a JSON object"),
        ("trailing-garbage-in-header", build(None, raw_header=json.dumps(good_header()).encode() + b" x"),
         "trailing characters"),
        ("non-utf8-header", build(None, raw_header=b'{"\xff\xfe": 1}'), "invalid UTF-8"),
        ("non-utf8-in-spec", build(None, raw_header=json.dumps(good_header()).encode().replace(b"Tanh", b"T\xc3\x28h")),
         "invalid UTF-8"),
        ("deep-nesting-header", build(None, raw_header=b'{"x": ' + deep + b"}"), "nests deeper than portgrad reads (64 levels"),
        ("deep-nesting-spec", build(good_header(__metadata__=meta(spec=json.loads("[" * 100 + "]" * 100)))),
         "the net spec in the header nests deeper than portgrad reads (64 levels; at byte 65)"),
        ("deep-chain-spec", build({"__metadata__": meta(spec=nested_spec)}, b""), "nests deeper than portgrad reads"),
        ("duplicate-key", build(None, raw_header=json.dumps(good_header()).encode()[:-1] + b', "0/Biases": {}}'),
         'duplicate key "0/Biases"'),
        ("no-metadata", build({"0/Weights": entry("F32", [2, 3], 0, 24), "0/Biases": entry("F32", [2], 24, 32)}),
         'no "__metadata__": this is not a portgrad file'),
        ("metadata-not-strings", build(good_header(__metadata__=dict(meta(), **{"portgrad.spec": GOOD_SPEC}))),
         '"__metadata__" must map strings to strings; "portgrad.spec" is not a string'),
        ("no-format-version", build(good_header(__metadata__={"portgrad.spec": json.dumps(GOOD_SPEC)})),
         'no "portgrad.format_version"'),
        ("future-format-version", build(good_header(__metadata__=meta(**{"portgrad.format_version": "2"}))),
         'format version "2" is not supported'),
        ("no-spec", build(good_header(__metadata__={"portgrad.format_version": "1"})), 'no "portgrad.spec"'),
        ("spec-not-json", build(good_header(__metadata__=dict(meta(), **{"portgrad.spec": "{oops"}))),
         "the net spec in the header is not valid JSON"),
        ("spec-unknown-layer", build({"__metadata__": meta(spec={"type": "WarpLayer", "inputs": {"Input": [3]}})}, b""),
         'unknown layer type "WarpLayer"'),
        ("entry-not-object", build(good_header(**{"0/Biases": [1, 2]})), 'array "0/Biases": expected {"dtype"'),
        ("entry-unknown-field", build(good_header(**{"0/Biases": dict(entry("F32", [2], 24, 32), extra=1)})),
         'array "0/Biases": unknown field "extra"'),
        ("entry-missing-field", build(good_header(**{"0/Biases": {"dtype": "F32", "shape": [2]}})),
         'needs "dtype", "shape" and "data_offsets"'),
        ("dtype-lowercase", build(good_header(**{"0/Biases": entry("f32", [2], 24, 32)})),
         'dtype "f32" is not supported'),
        ("dtype-F16", build(good_header(**{"0/Biases": entry("F16", [4], 24, 32)})), 'dtype "F16" is not supported'),
        ("dtype-I64", build(good_header(**{"0/Biases": entry("I64", [1], 24, 32)})), 'dtype "I64" is not supported'),
        ("dtype-number", build(good_header(**{"0/Biases": entry(32, [2], 24, 32)})), '"dtype" must be a string'),
        ("shape-negative", build(good_header(**{"0/Biases": entry("F32", [-2], 24, 32)})),
         'every size in "shape" must be a non-negative integer'),
        ("shape-fraction", build(good_header(**{"0/Biases": entry("F32", [1.5], 24, 32)})),
         "must be a non-negative integer"),
        ("shape-not-list", build(good_header(**{"0/Biases": entry("F32", 2, 24, 32)})), '"shape" must be a list'),
        ("shape-enormous", build(good_header(**{"0/Biases": entry("F32", [2 ** 53, 2 ** 53], 24, 32)})),
         "needs more bytes than the file holds"),
        ("shape-overflows-int64", build(good_header(**{"0/Biases": entry("F64", [2 ** 31] * 3, 24, 32)})),
         "needs more bytes than the file holds"),
        ("shape-17-dims", build(good_header(**{"0/Biases": entry("F32", [1] * 17, 24, 32)})), "more than 16 dimensions"),
        ("offsets-past-end", build(good_header(**{"0/Biases": entry("F32", [2], 24, 10 ** 15)})),
         "lie outside the 32 bytes of data"),
        ("offsets-reversed", build(good_header(**{"0/Biases": entry("F32", [2], 32, 24)})), "lie outside"),
        ("offsets-three", build(good_header(**{"0/Biases": {"dtype": "F32", "shape": [2], "data_offsets": [24, 28, 32]}})),
         '"data_offsets" must be [begin, end]'),
        ("offsets-negative", build(good_header(**{"0/Biases": entry("F32", [2], -8, 0)})), "non-negative integer"),
        ("offsets-size-mismatch", build(good_header(**{"0/Biases": entry("F32", [2], 20, 32)})),
         "hold 12 bytes, but shape (2,) of F32 needs 8"),
        ("overlapping", build(good_header(**{"0/Biases": entry("F32", [2], 16, 24)})), "overlap"),
        ("gap", build(good_header(**{"0/Biases": entry("F32", [2], 28, 36)}), GOOD_DATA + b"\0" * 4),
         "bytes 24 to 28 of the data belong to no array"),
        ("trailing-bytes", build(good_header(), GOOD_DATA + b"\0" * 8), "the last 8 bytes of the file belong to no array"),
        ("missing-array", build({"__metadata__": meta(), "0/Weights": entry("F32", [2, 3], 0, 24)}, W.tobytes()),
         'array "0/Biases" of shape (2,) is missing from the file'),
        ("unknown-array", build(good_header(**{"9/Weights": entry("F32", [1], 32, 36)}), GOOD_DATA + b"\0" * 4),
         'the file holds array "9/Weights", which the net does not have'),
        ("wrong-shape", build(good_header(**{"0/Weights": entry("F32", [3, 2], 0, 24)})),
         'array "0/Weights": the net needs shape (2, 3), the file holds shape (3, 2)'),
        ("nan-weight", build(good_header(), np.array([np.nan] * 6, np.float32).tobytes() + B.tobytes()),
         "contains a non-finite value at flat index 0"),
        ("spec-asks-huge-arrays", build(good_header(__metadata__=meta(spec={
            "type": "LinearLayer", "size": [2 ** 20], "inputs": {"Input": [2 ** 20]}}))),
         "larger than the arrays the file holds"),
        ("spec-bad-option", build(good_header(__metadata__=meta(spec=dict(GOOD_SPEC, layers=[
            {"name": "0", "net": {"type": "LinearLayer", "size": [-3]}}])))), "is not a positive size"),
        ("shape-free-with-arrays", build(good_header(__metadata__=meta(spec={"type": "ElementwiseLayer",
                                                                             "function": "Tanh"})))
         , "declares no input shape, so it has no arrays"),
        ("many-values", build(None, raw_header=b'{"x": [' + b"0," * (1 << 20) + b"0]}"),
         "more than 1048576 values"),
        ("many-keys", build(None, raw_header=("{" + ",".join(f'"k{i}": 0' for i in range(200000)) + "}").encode()),
         'array "__metadata__"'.replace('array "__metadata__"', "the header has no \"__metadata__\"")),
    ]
    del hdr_len


CASES = list(malformed_files())


@pytest.mark.parametrize("name,data,fragment", CASES, ids=[c[0] for c in CASES])
def test_malformed_file_gives_a_clear_error(name, data, fragment, tmp_path):
    path = tmp_path / f"{name}.pgnet"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e:
        pg.load(path)
    assert time.perf_counter() - t0 < 5, "the loader must not hang"
    msg = str(e.value)
    assert msg.startswith(f'portgrad file "{path}": '), msg
    assert fragment in msg, msg
    # The same bytes from memory (pickles) give the same message.
    with pytest.raises(ValueError) as e2:
        _core.load_bytes(data, "pickled net")
    assert str(e2.value) == msg.replace(f'portgrad file "{path}"', "pickled net")


def test_the_good_file_of_the_corpus_loads(tmp_path):
    path = tmp_path / "good.pgnet"
    path.write_bytes(build(good_header()))
    net = pg.load(path)
    x = np.array([1.0, 2.0, 3.0], np.float32)
    assert np.array_equal(net(x), np.tanh(W.astype(np.float64) @ x + B).astype(np.float32)) or \
        np.allclose(net(x), np.tanh(W @ x + B), rtol=1e-6)
    assert np.array_equal(pg.NetExtract(net, (0, "Weights")), W)


def test_header_over_the_size_limit(tmp_path):
    n = (16 << 20) + 8
    path = tmp_path / "big-header.pgnet"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n))
        f.truncate(8 + n)
    with pytest.raises(ValueError, match="header length 16777224 is over the limit of 16777216 bytes"):
        pg.load(path)


def test_every_single_byte_truncation_fails_cleanly():
    good = build(good_header())
    for k in range(len(good)):
        with pytest.raises(ValueError):
            _core.load_bytes(good[:k])


def test_every_single_byte_flip_loads_or_fails_cleanly():
    good = build(good_header())
    for k in range(len(good)):
        for flip in (0x01, 0x80, 0xff):
            data = bytearray(good)
            data[k] ^= flip
            try:
                _core.load_bytes(bytes(data))
            except ValueError:
                pass


def test_a_net_without_input_ports_saves_loads_and_pickles(tmp_path):
    import pickle
    for net in (pg.ConstantArrayLayer(np.arange(3.0)),
                pg.NetInitialize(pg.NetChain([pg.ConstantArrayLayer(shape=(2,)), pg.LinearLayer(3)]), seed=1)):
        net.save(tmp_path / "c.pgnet")
        for back in (pg.load(tmp_path / "c.pgnet"), pickle.loads(pickle.dumps(net))):
            assert np.array_equal(back(), net())


def test_saving_over_a_file_keeps_its_mode_and_writes_through_a_link(tmp_path):
    import os
    import stat
    net = pg.NetInitialize(pg.LinearLayer(2, input=3), seed=0)
    real = tmp_path / "real.pgnet"
    net.save(real)
    os.chmod(real, 0o600)
    link = tmp_path / "link.pgnet"
    os.symlink("real.pgnet", link)  # relative, as links usually are
    other = pg.NetInitialize(pg.LinearLayer(2, input=3), seed=5)
    other.save(link)
    assert os.path.islink(link) and os.readlink(link) == "real.pgnet"
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600
    assert np.array_equal(pg.NetExtract(pg.load(real), "Weights"), pg.NetExtract(other, "Weights"))


def test_a_save_removes_what_killed_saves_left_behind(tmp_path):
    import os
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free
    stale = tmp_path / f".net.pgnet.tmp-{dead.pid}-0-0"
    stale.write_bytes(b"partial")
    mine = tmp_path / f".net.pgnet.tmp-{os.getpid()}-9-9"  # a live process's (this one's) is kept
    mine.write_bytes(b"in progress")
    pg.NetInitialize(pg.LinearLayer(2, input=3), seed=0).save(tmp_path / "net.pgnet")
    assert not stale.exists() and mine.exists()


def test_a_path_that_is_not_utf8_saves_loads_and_names_itself(tmp_path):
    import os
    path = os.path.join(os.fsencode(tmp_path), b"\xff\xfe.pgnet")
    net = pg.NetInitialize(pg.LinearLayer(2, input=3), seed=0)
    net.save(path)
    assert np.array_equal(pg.NetExtract(pg.load(path), "Weights"), pg.NetExtract(net, "Weights"))
    missing = os.path.join(os.fsencode(tmp_path), b"\xff\xfd.pgnet")
    with pytest.raises(FileNotFoundError) as e:
        pg.load(missing)
    assert "\\xff\\xfd" in str(e.value) and e.value.filename == os.fsdecode(missing)
    assert "Weights" not in str(e.value)  # the message names the file, never the arrays
