"""Standalone C++ test drivers, built and run from pytest: sources compiled into objects on every
core, linked into one executable per driver, each run once per session; the tests only collect the
results. Used by tests/test_cuda_kernels.py and tests/test_gemm_avx512_emulated.py.

Objects and executables are cached in a folder under build/, keyed by a hash of the compiler, the
flags, each source (and the sources it includes) and every header under the given folders, so a
second run only runs the drivers. A source is a repository-relative path, or (path, extra flags)
for one compiled with flags of its own (ISA flags, -D); .cu files are compiled as C++."""
import concurrent.futures
import hashlib
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
_HEADER_EXT = (".h", ".hpp", ".cuh", ".def", ".inc")


def compiler():
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


def _read(path):
    """A repository-relative path, or an absolute one (a system header)."""
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


def _headers_digest(header_dirs):
    """Every header a source can include (a change to any invalidates every object)."""
    parts = []
    for d in header_dirs:
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, d)):
            dirnames.sort()
            for f in sorted(files):
                if f.endswith(_HEADER_EXT):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
                    parts += [rel, _read(rel)]
    return _digest(*parts)


def _source(s):
    return (s, ()) if isinstance(s, str) else (s[0], tuple(s[1]))


def _compile(cxx, flags, src, obj):
    path, extra = src
    lang = ["-x", "c++"] if path.endswith(".cu") else []
    tmp = f"{obj}.{os.getpid()}.tmp"
    r = subprocess.run([cxx, *flags, *extra, "-c", *lang, os.path.join(ROOT, path), "-o", tmp],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return f"compiling {path} {' '.join(extra)} failed:\n{r.stdout[-4000:]}{r.stderr[-4000:]}"
    os.replace(tmp, obj)  # atomic: a concurrent or interrupted run never sees half an object
    return None


def _link(cxx, objs, exe, link_flags):
    tmp = f"{exe}.{os.getpid()}.tmp"
    r = subprocess.run([cxx, *objs, *link_flags, "-o", tmp], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return f"linking {os.path.basename(exe)} failed:\n{r.stdout[-4000:]}{r.stderr[-4000:]}"
    os.replace(tmp, exe)
    return None


def _run(exe):
    r = subprocess.run([exe], capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout, r.stderr


def selected(request, names):
    """Of `names`, the drivers of the requesting module's selected tests (parametrised by `name`):
    all of them unless -k or node ids narrow it."""
    chosen = {item.callspec.params.get("name") for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")}
    return [n for n in names if n in chosen] or list(names)


def build_and_run(request, cache, drivers, flags, header_dirs, includes=None, cost=None, link_flags=()):
    """name -> (exit code, stdout, stderr) of each selected driver, or its build error (a str).

    drivers: name -> its sources; flags: for every source (the repository's csrc/ is added to the
    include path); header_dirs: the folders whose headers the sources may include; includes:
    source path -> other files it includes (repository-relative or absolute) besides those
    headers; cost: name -> seconds it runs (the longest start first)."""
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    includes, cost = includes or {}, cost or {}
    names = selected(request, list(drivers))
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    base = _digest(cxx, version, *flags, _headers_digest(header_dirs))
    cxx_flags = [*flags, "-I" + CSRC]
    os.makedirs(cache, exist_ok=True)
    srcs = {n: [_source(s) for s in drivers[n]] for n in names}
    objkey = {s: _digest(base, s[0], *s[1], _read(s[0]), *map(_read, includes.get(s[0], [])))
              for n in names for s in srcs[n]}
    obj = {s: os.path.join(cache, f"{os.path.basename(s[0])}-{k}.o") for s, k in objkey.items()}
    exe = {n: os.path.join(cache, f"{n}-{_digest(*(objkey[s] for s in srcs[n]), *link_flags)}") for n in names}
    todo = sorted((s for s in obj if not os.path.exists(obj[s])), key=lambda s: -len(_read(s[0])))  # largest first
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    res = {}
    with concurrent.futures.ThreadPoolExecutor(max(2, cores)) as pool:
        errors = {s: e for s, e in zip(todo, pool.map(lambda s: _compile(cxx, cxx_flags, s, obj[s]), todo)) if e}
        for n in names:
            bad = [errors[s] for s in srcs[n] if s in errors]
            if bad:
                res[n] = "\n".join(bad)
        links = {n: pool.submit(_link, cxx, [obj[s] for s in srcs[n]], exe[n], link_flags)
                 for n in names if n not in res and not os.path.exists(exe[n])}
        for n, fut in links.items():
            if fut.result():
                res[n] = fut.result()
        runs = {n: pool.submit(_run, exe[n]) for n in sorted(names, key=lambda n: -cost.get(n, 0)) if n not in res}
        res.update({n: fut.result() for n, fut in runs.items()})
    # drop what no longer matches the sources (when every driver was built)
    if len(names) == len(drivers):
        keep = {os.path.basename(p) for p in [*obj.values(), *exe.values()]}
        for f in os.listdir(cache):
            if f not in keep and not f.endswith(".tmp"):
                try:
                    os.remove(os.path.join(cache, f))
                except OSError:
                    pass
    return res
