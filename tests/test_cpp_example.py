"""The C++ library as an outside project sees it: built standalone, installed into a prefix,
found with find_package(portgrad); examples/cpp loads a file saved by Python and must print
Python's numbers to the last bit. Also: 8 std::threads on one loaded net, and C++ error messages
equal to Python's."""
import os
import shutil
import subprocess

import numpy as np
import pytest

import portgrad as pg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # compiles the library once (about a minute on 2 cores); later runs reuse it


def _need_tools():
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _cuda_device():
    """A CUDA device and nvcc: the C++ GPU example then links portgrad::cuda, else the emulator's library."""
    try:
        import portgrad._cuda as cuda
    except ImportError:
        return False
    return cuda.device_count()[0] > 0 and shutil.which("nvcc") is not None


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    _need_tools()
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    build = os.path.join(ROOT, "build", "cpp-standalone-cuda" if _cuda_device() else "cpp-standalone")  # incremental
    prefix = tmp_path_factory.mktemp("prefix")
    _run(["cmake", "-S", ROOT, "-B", build, *gen, "-DCMAKE_BUILD_TYPE=Release", "-DPORTGRAD_PYTHON=OFF",
          f"-DPORTGRAD_CUDA={'ON' if _cuda_device() else 'OFF'}", "-DPORTGRAD_GPU_EMULATOR_LIB=ON"])
    _run(["cmake", "--build", build, f"-j{os.cpu_count() or 2}"], timeout=900)
    _run(["cmake", "--install", build, "--prefix", str(prefix)])
    assert os.path.exists(os.path.join(prefix, "include", "portgrad", "portgrad.h"))
    ex = tmp_path_factory.mktemp("example-build")
    _run(["cmake", "-S", os.path.join(ROOT, "examples", "cpp"), "-B", str(ex), *gen, "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_PREFIX_PATH={prefix}"])
    _run(["cmake", "--build", str(ex), f"-j{os.cpu_count() or 2}"], timeout=300)
    return ex


def _parse(stdout):
    res = {}
    for line in stdout.splitlines():
        if " : " not in line and not line.endswith(" :"):
            continue
        head, _, values = line.partition(" :")
        words = head.split()
        dims = []
        while words and words[-1].isdigit():
            dims.insert(0, int(words.pop()))
        res[" ".join(words)] = np.array([float.fromhex(v) for v in values.split()]).reshape(dims)
    return res


def _batch(net, batch):
    (name, shape), = net.input_ports.items()
    n = int(np.prod(shape))
    k = np.arange(batch * n)
    return ((k % 17) / 8.0 - 1.0).reshape((batch, *shape))


def _tangent(net, batch):
    """examples/cpp/main.cc's tangent: v[b][j] = ((b + 2 j) % 7) / 4 - 0.75."""
    (name, shape), = net.input_ports.items()
    b, j = np.meshgrid(np.arange(batch), np.arange(int(np.prod(shape))), indexing="ij")
    return (((b + 2 * j) % 7) / 4.0 - 0.75).reshape((batch, *shape))


def _forms(net, x, v, precision):
    """What the example prints, computed by Python."""
    first = next(iter(net.arrays))
    (port, _), = net.input_ports.items()
    (oport, oshape), = net.output_ports.items()
    g = ((np.arange(len(x) * int(np.prod(oshape))) % 5) - 2).reshape((len(x), *oshape)).astype(x.dtype)
    return {
        "output": net(x, WorkingPrecision=precision),
        "input_gradient": net(x, pg.NetPortGradient(port), WorkingPrecision=precision),
        "vjp": net({port: x, pg.NetPortGradient(oport): g}, pg.NetPortGradient(port), WorkingPrecision=precision),
        f"array_gradient {first}": net(x, pg.NetPortGradient(first), WorkingPrecision=precision),
        f"per_example {first}": net(x, pg.NetPortGradient(first, PerExample=True), WorkingPrecision=precision),
        "jvp": net({port: x, pg.NetPortTangent(port): v}, pg.NetPortTangent(oport), WorkingPrecision=precision),
        "jacobian": net(x, pg.NetPortJacobian(port, Method="Forward"), WorkingPrecision=precision),
    }


NETS = {
    "mlp": lambda: pg.NetChain([16, "Tanh", pg.NetChain({"h": 8, "act": "GELU"}), 3], input=5),
    "tensor": lambda: pg.NetChain([pg.FlattenLayer(), pg.LinearLayer((2, 3)), pg.SoftmaxLayer()], input=(2, 2)),
}


@pytest.mark.parametrize("which", sorted(NETS))
def test_example_matches_python_to_the_last_bit(example, which, tmp_path):
    net = pg.NetInitialize(NETS[which](), seed=3)
    path = tmp_path / "net.pgnet"
    net.save(path)
    out = _run([str(example / "portgrad_example"), str(path), "6"]).stdout
    assert out.splitlines()[0] == f"portgrad {pg.__version__}"
    got = _parse(out)
    for tag, precision, dtype in (("f32", "Real32", np.float32), ("f64", "Real64", np.float64)):
        x = _batch(net, 6).astype(dtype)
        want = _forms(net, x, _tangent(net, 6).astype(dtype), precision)
        assert len(want) == 7
        for key, w in want.items():
            a = got[f"{tag} {key}"]
            assert a.shape == w.shape, key
            assert np.array_equal(a.astype(dtype).view(np.uint8 if dtype == np.float32 else np.uint8),
                                  w.astype(dtype).view(np.uint8)), (tag, key, a, w)


def test_example_on_the_gpu_matches_python(example, tmp_path):
    """portgrad::enable_gpu() and Net::on(Device::GPU) from C++ (the CUDA library on a machine with a
    GPU, the emulator's elsewhere): the CPU's numbers, to the GPU kernels' accuracy."""
    net = pg.NetInitialize(NETS["mlp"](), seed=5)
    path = tmp_path / "net.pgnet"
    net.save(path)
    out = _run([str(example / "portgrad_example_gpu"), str(path), "7"]).stdout
    got = _parse(out)
    for tag, precision, dtype, rtol in (("f32", "Real32", np.float32, 2e-5), ("f64", "Real64", np.float64, 1e-11)):
        x = _batch(net, 7).astype(dtype)
        want = _forms(net, x, _tangent(net, 7).astype(dtype), precision)
        for key, w in want.items():
            a = got[f"{tag} {key}"]
            assert a.shape == w.shape, key
            np.testing.assert_allclose(a, w, rtol=rtol, atol=rtol * np.max(np.abs(w)), err_msg=f"{tag} {key}")


def test_cpp_gpu_device_index_error(example, tmp_path):
    """A GPU the machine does not have is a clear error (exit 1, the message printed), not a crash."""
    net = pg.NetInitialize(NETS["mlp"](), seed=5)
    net.save(tmp_path / "net.pgnet")
    r = subprocess.run([str(example / "portgrad_example_gpu"), str(tmp_path / "net.pgnet"), "2", "99"],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error: Query::device_index 99 is not a GPU of this machine" in r.stdout, r.stdout


def test_eight_cpp_threads_match_sequential(example, tmp_path):
    net = pg.NetInitialize(NETS["mlp"](), seed=4)
    net.save(tmp_path / "net.pgnet")
    out = _run([str(example / "portgrad_threads"), str(tmp_path / "net.pgnet")]).stdout
    assert "mismatches 0" in out
    assert "in place same" in out


def test_cpp_errors_carry_python_messages(example, tmp_path):
    bad = tmp_path / "bad.pgnet"
    bad.write_bytes(b"\x10" + b"\0" * 7 + b"{}")
    r = subprocess.run([str(example / "portgrad_example"), str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    with pytest.raises(ValueError) as e:
        pg.load(bad)
    assert r.stdout.strip() == f"error: {e.value}"
    r = subprocess.run([str(example / "portgrad_example"), str(tmp_path / "missing")], capture_output=True, text=True)
    assert "cannot open portgrad file" in r.stdout and "No such file or directory" in r.stdout


def test_the_pip_installed_package_builds_the_example(tmp_path):
    """After `pip install portgrad` alone, `python -m portgrad cmake-dir` points find_package(portgrad)
    at the C++ library and headers inside the installed package; examples/cpp builds against it and
    prints Python's numbers."""
    import sys
    _need_tools()
    r = subprocess.run([sys.executable, "-m", "portgrad", "cmake-dir"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no installed C++ package here (a developer build in place): {r.stderr.strip()}")
    cmake_dir = r.stdout.strip()
    assert os.path.isfile(os.path.join(cmake_dir, "portgradConfig.cmake"))
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    build = tmp_path / "build"
    _run(["cmake", "-S", os.path.join(ROOT, "examples", "cpp"), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
          f"-Dportgrad_DIR={cmake_dir}"])
    _run(["cmake", "--build", str(build), "--target", "portgrad_example", f"-j{os.cpu_count() or 2}"], timeout=300)
    net = pg.NetInitialize(NETS["mlp"](), seed=7)
    net.save(tmp_path / "net.pgnet")
    got = _parse(_run([str(build / "portgrad_example"), str(tmp_path / "net.pgnet"), "3"]).stdout)
    x = _batch(net, 3).astype(np.float32)
    assert np.array_equal(got["f32 output"].astype(np.float32), net(x))
    assert np.array_equal(got["f32 input_gradient"].astype(np.float32), net(x, pg.NetPortGradient("Input")))
