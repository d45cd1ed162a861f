"""Smoke test of the benchmark suite: one tiny case through the real entry point (`python -m bench`),
portgrad and NumPy only, few repetitions. Checks that it runs, prints a portgrad row and writes
its JSON; never checks a timing."""
import json
import os
import subprocess
import sys

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
