"""The CUDA build switch (CMake PORTGRAD_CUDA): OFF builds no CUDA module, ON without a CUDA compiler
is a configuration error that says so (AUTO with a compiler is what every pip install does here)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configure(tmp_path, *defines, env=None):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if not os.path.exists(os.path.join(ROOT, "CMakeLists.txt")):
        pytest.skip("no source tree next to the tests")
    return subprocess.run(["cmake", "-S", ROOT, "-B", str(tmp_path / "b"), "-DPORTGRAD_PYTHON=OFF", *defines],
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})), timeout=300)


def test_on_without_a_cuda_compiler_is_an_error(tmp_path):
    r = configure(tmp_path, "-DPORTGRAD_CUDA=ON", env={"CUDACXX": str(tmp_path / "no-nvcc")})
    assert r.returncode != 0
    assert "PORTGRAD_CUDA=ON but no CUDA compiler was found" in r.stdout + r.stderr


def test_off_skips_cuda(tmp_path):
    r = configure(tmp_path, "-DPORTGRAD_CUDA=OFF")
    assert r.returncode == 0, r.stderr
    assert "portgrad: CUDA backend: OFF (PORTGRAD_CUDA=OFF" in r.stdout
