"""The CUDA kernel tables (csrc/kernels/cuda/*.cu) against the reference tables (csrc/kernels/ref),
kernel by kernel, on awkward sizes, aliasing, null outputs and special values: standalone C++
drivers (tests/cuda_kernels/*.cc) that compile the .cu files as C++, where they run in the CPU
emulator of the device (csrc/cuda/emulator.cc). No Python module is involved, so these check the
kernel sources on every machine with a C++ compiler.

Objects and drivers are cached under build/cuda-kernel-tests, keyed by a hash of the compiler, the
flags and every source and header involved, so a second run (CI runs pytest twice) only runs the
drivers. Compiling, linking and running use every core (about a minute cold, 20 s cached, on 2)."""
import concurrent.futures
import hashlib
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
HERE = os.path.join(ROOT, "tests", "cuda_kernels")
CACHE = os.path.join(ROOT, "build", "cuda-kernel-tests")
FLAGS = ["-std=c++17", "-O1", "-I" + CSRC]

pytestmark = pytest.mark.cuda

_STUBS = "tests/cuda_kernels/runtime_stubs.cc"
_EMU = "csrc/cuda/emulator.cc"
# driver: its sources (repository-relative; .cu files are compiled as C++), each also linked with
# the runtime stubs and the emulator.
DRIVERS = {
    "gemm": ["tests/cuda_kernels/gemm.cc", "csrc/kernels/cuda/gemm.cu", "csrc/kernels/ref/gemm_ref.cc",
             "csrc/kernels/ref/unary_ref.cc", "csrc/kernels/unary_names.cc"],
    "gemm_ltplan": ["tests/cuda_kernels/gemm_ltplan.cc", "csrc/kernels/ref/gemm_ref.cc",
                    "csrc/kernels/ref/unary_ref.cc", "csrc/kernels/unary_names.cc"],
    "elementwise": ["tests/cuda_kernels/elementwise.cc"]
    + [f"csrc/kernels/cuda/{f}.cu" for f in ("unary", "softmax", "loss", "vector")]
    + [f"csrc/kernels/ref/{f}_ref.cc" for f in ("unary", "softmax", "loss", "vector")]
    + ["csrc/kernels/unary_names.cc"],
    "spatial": ["tests/cuda_kernels/spatial.cc"]
    + [f"csrc/kernels/cuda/{f}.cu" for f in ("conv", "pool", "norm")]
    + [f"csrc/kernels/ref/{f}_ref.cc" for f in ("conv", "pool", "norm")],
    "shape": ["tests/cuda_kernels/shape.cc", "csrc/kernels/cuda/shape_ops.cu", "csrc/kernels/cuda/embed.cu",
              "csrc/kernels/ref/shape_ops_ref.cc", "csrc/kernels/ref/embed_ref.cc"],
}
# Sources that include another source (besides headers, which every object's key covers).
_INCLUDES = {"tests/cuda_kernels/gemm_ltplan.cc": ["csrc/kernels/cuda/gemm.cu"]}
# Seconds each driver runs (one core, roughly): the longest start first.
_COST = {"spatial": 12, "shape": 9, "elementwise": 8, "gemm": 3, "gemm_ltplan": 0.2}
_HEADER_DIRS = ["csrc", "tests/cuda_kernels"]
_HEADER_EXT = (".h", ".hpp", ".cuh", ".def", ".inc")


def _compiler():
    """The compiler CMake would pick: $CXX, else c++, else g++."""
    for name in (os.environ.get("CXX"), "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


def _headers_digest():
    """Every header a source can include (a change to any invalidates every object)."""
    parts = []
    for d in _HEADER_DIRS:
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, d)):
            dirnames.sort()
            for f in sorted(files):
                if f.endswith(_HEADER_EXT):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
                    parts += [rel, _read(rel)]
    return _digest(*parts)


def _compile(cxx, src, obj):
    lang = ["-x", "c++"] if src.endswith(".cu") else []
    tmp = f"{obj}.{os.getpid()}.tmp"
    r = subprocess.run([cxx, *FLAGS, "-c", *lang, os.path.join(ROOT, src), "-o", tmp], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        return f"compiling {src} failed:\n{r.stdout[-4000:]}{r.stderr[-4000:]}"
    os.replace(tmp, obj)  # atomic: a concurrent or interrupted run never sees half an object
    return None


def _link(cxx, objs, exe):
    tmp = f"{exe}.{os.getpid()}.tmp"
    r = subprocess.run([cxx, *objs, "-o", tmp], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return f"linking {os.path.basename(exe)} failed:\n{r.stdout[-4000:]}{r.stderr[-4000:]}"
    os.replace(tmp, exe)
    return None


def _run(exe):
    r = subprocess.run([exe], capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout, r.stderr


def _selected(request):
    """The drivers of this module's selected tests (all of them unless -k or node ids narrow it)."""
    names = {item.callspec.params.get("name") for item in request.session.items
             if item.module is request.module and hasattr(item, "callspec")}
    return [n for n in DRIVERS if n in names] or list(DRIVERS)


@pytest.fixture(scope="module")
def results(request):
    """name -> (exit code, stdout, stderr) of the driver, or its build error (a str). The drivers are
    built, then run, on every core: the tests only collect their results."""
    if not os.path.isdir(CSRC) or not os.path.isdir(HERE):
        pytest.skip("needs the repository's csrc/ and tests/cuda_kernels/ (run from a checkout)")
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    selected = _selected(request)
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    base = _digest(cxx, version, *FLAGS[:-1], _headers_digest())
    os.makedirs(CACHE, exist_ok=True)
    srcs = {n: [*DRIVERS[n], _STUBS, _EMU] for n in selected}
    objkey = {s: _digest(base, s, _read(s), *map(_read, _INCLUDES.get(s, []))) for n in selected for s in srcs[n]}
    obj = {s: os.path.join(CACHE, f"{os.path.basename(s)}-{k}.o") for s, k in objkey.items()}
    exe = {n: os.path.join(CACHE, f"{n}-{_digest(*(objkey[s] for s in srcs[n]))}") for n in selected}
    todo = sorted((s for s in obj if not os.path.exists(obj[s])), key=lambda s: -len(_read(s)))  # largest first
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    res = {}
    with concurrent.futures.ThreadPoolExecutor(max(2, cores)) as pool:
        errors = {s: e for s, e in zip(todo, pool.map(lambda s: _compile(cxx, s, obj[s]), todo)) if e}
        for n in selected:
            bad = [errors[s] for s in srcs[n] if s in errors]
            if bad:
                res[n] = "\n".join(bad)
        links = {n: pool.submit(_link, cxx, [obj[s] for s in srcs[n]], exe[n])
                 for n in selected if n not in res and not os.path.exists(exe[n])}
        for n, fut in links.items():
            if fut.result():
                res[n] = fut.result()
        # the longest runs first
        runs = {n: pool.submit(_run, exe[n]) for n in sorted(selected, key=lambda n: -_COST.get(n, 0)) if n not in res}
        res.update({n: fut.result() for n, fut in runs.items()})
    # drop what no longer matches the sources (when every driver was built)
    if len(selected) == len(DRIVERS):
        keep = {os.path.basename(p) for p in [*obj.values(), *exe.values()]}
        for f in os.listdir(CACHE):
            if f not in keep and not f.endswith(".tmp"):
                try:
                    os.remove(os.path.join(CACHE, f))
                except OSError:
                    pass
    return res


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_cuda_kernels_match_reference(results, name):
    r = results[name]
    if isinstance(r, str):
        pytest.fail(r)  # the build error
    code, out, err = r
    assert code == 0 and f"PASS {name}:" in out, \
        f"tests/cuda_kernels/{name}.cc failed (exit code {code}):\n{(out + err)[-6000:]}"
