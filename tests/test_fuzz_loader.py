"""A short, seeded fuzzing run of the file loader (seconds): atheris mutates valid files and the
hand-made malformed corpus, and every input must load or raise ValueError. The long run (libFuzzer
on the C++ loader under ASan/UBSan, 10 minutes or more) is documented in the README."""
import os
import subprocess
import sys

import pytest

from child_env import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HARNESS = r"""
import sys
import atheris
with atheris.instrument_imports():
    import portgrad as pg
from portgrad import _core

def one(data):
    try:
        spec_json, meta, arrays, state = _core.load_bytes(data, "fuzz")
    except ValueError:
        return
    net = pg._io._rebuild(spec_json, arrays)   # what pg.load does with a file that loads
    repr(net)

atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""


def test_short_seeded_fuzz_run(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    env = child_env()
    subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", "make_corpus.py"), str(corpus)], check=True, env=env,
                   timeout=120)
    assert len(os.listdir(corpus)) > 50
    r = subprocess.run([sys.executable, "-c", HARNESS, "-seed=1", "-runs=10000", "-max_len=4096",
                        "-timeout=5", "-rss_limit_mb=1024", str(corpus)],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done 10000 runs" in r.stderr, r.stderr[-2000:]


def test_short_seeded_fuzz_run_of_the_onnx_importer(tmp_path):
    # fuzz/fuzz_onnx_import.py on the test exports: every input imports (and evaluates) or raises
    # ValueError/TypeError. The long run is documented in the README.
    pytest.importorskip("atheris")
    pytest.importorskip("onnx")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "fuzz", "fuzz_onnx_import.py"), "-seed=1", "-runs=3000",
                        "-timeout=20", "-rss_limit_mb=2048", str(corpus), os.path.join(ROOT, "tests", "data", "onnx")],
                       env=child_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done 3000 runs" in r.stderr, r.stderr[-2000:]
