"""Smoke test of the benchmark suite: one tiny case through the real entry point (`python -m bench`),
portgrad and NumPy only, few repetitions; and the GPU suite (`python -m bench.gpu --smoke`) on the CUDA
emulator. Checks that they run, print a portgrad row and write their JSON; never checks a timing."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from child_env import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_tiny_case(tmp_path):
    out = tmp_path / "bench.json"
    env = child_env(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--cases", "^tiny-igrad$", "--peers", "numpy", "--quick",
         "--threads", "1", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| **portgrad** |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] == 1
    assert data["machine"]["portgrad_isa"]
    (case,) = data["cases"]
    assert case["name"] == "tiny-igrad"
    rows = {r["impl"]: r for r in case["rows"]}
    assert rows["portgrad"]["status"] == "ok" and rows["portgrad"]["median_s"] > 0
    assert rows["numpy"]["status"] == "ok", rows["numpy"]   # same weights, same gradient


def test_bench_onnx_models_quick(tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "onnx.md"
    proc = subprocess.run([sys.executable, "-m", "bench.onnx_models", "--quick", "--threads", "1", "--batch", "4",
                           "--markdown", str(out)], cwd=REPO, env=child_env(REPO), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = out.read_text()
    for model in ("lenet", "resblock", "conv1d", "encoder", "transformer"):
        assert f"| {model}: " in table


def test_bench_train_quick(tmp_path):
    """`python -m bench.train --quick`: every case trains through NetTrain (and the peers that are
    installed) and the table has a portgrad number for each."""
    out = tmp_path / "train.md"
    proc = subprocess.run([sys.executable, "-m", "bench.train", "--quick", "--threads", "1", "--markdown", str(out)],
                          cwd=REPO, env=child_env(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| MLP") or line.startswith("| CNN")]
    assert len(rows) == 3
    assert all(float(r.split("|")[2].replace(",", "")) > 0 for r in rows)


def test_bench_sequence_quick(tmp_path):
    """`python -m bench.sequence --quick`: the LSTM and GRU cases run (checked against PyTorch where
    it is installed) and the table has a portgrad number for each."""
    out = tmp_path / "sequence.md"
    proc = subprocess.run([sys.executable, "-m", "bench.sequence", "--quick", "--threads", "1", "--markdown", str(out)],
                          cwd=REPO, env=child_env(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| LSTM", "| GRU", "| self-attention"))]
    assert len(rows) == 6
    assert all(float(r.split("|")[2]) > 0 for r in rows)


def test_bench_dask_scale_quick(tmp_path):
    """`python -m bench.dask_scale --quick`: one process and a 2-worker LocalCluster give the same
    saliencies (the script asserts it) and the table has both rows."""
    pytest.importorskip("distributed")
    out = tmp_path / "dask.md"
    proc = subprocess.run([sys.executable, "-m", "bench.dask_scale", "--quick", "--markdown", str(out)],
                          cwd=REPO, env=child_env(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| one process", "| LocalCluster"))]
    assert len(rows) == 2 and all(float(r.split("|")[2]) > 0 for r in rows)


@pytest.mark.cuda
def test_bench_gpu_smoke_on_the_emulator_without_torch(tmp_path):
    """`python -m bench.gpu --smoke` on the CUDA emulator with torch unimportable: it runs every
    case for portgrad, says the PyTorch peer is skipped, exits 0 and writes its JSON."""
    try:
        importlib.import_module("portgrad._gpu_emulator")
    except ImportError as e:  # not built, or built against kernels that are not all there yet
        pytest.skip(f"portgrad._gpu_emulator is not importable ({e})")
    out = tmp_path / "gpu.json"
    env = child_env(REPO)
    env["PORTGRAD_GPU_EMULATOR"] = "1"
    code = ("import runpy, sys; sys.modules['torch'] = None; "   # None in sys.modules: `import torch` fails
            f"sys.argv = ['bench.gpu', '--smoke', '--json', {str(out)!r}]; "
            "runpy.run_module('bench.gpu', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PyTorch peer skipped: torch is not installed" in proc.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["emulated"] and data["machine"]["portgrad_backend"]
    for case in data["cases"]:
        rows = {r["impl"]: r for r in case["rows"]}
        assert rows["portgrad"]["status"] == "ok", (case["name"], rows["portgrad"])
        assert rows["portgrad"]["check"]["status"] == "ok", (case["name"], rows["portgrad"]["check"])
        assert rows["torch"]["status"] == "skipped"
