"""portgrad's benchmarks against its peers: ``python -m bench`` or ``python bench/run.py``.

Runs every case (bench/cases.py) for portgrad and, where installed, PyTorch eager CPU, JAX jit,
ONNX Runtime (forward cases) and a hand-written NumPy implementation, in one run, with the same
thread count; prints a markdown table per case and writes JSON with the machine to bench/results/.
See bench/README.md.
"""
# The thread-count environment must be set before numpy, torch or jax is imported.
if __name__ == "__main__" and __package__ in (None, ""):
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    from bench import _threads

    _threads.configure_from_argv(_sys.argv[1:])
    __package__ = "bench"  # noqa: A001 - lets the relative imports below work when run as a script

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

from . import _threads  # noqa: E402
from ._machine import cpu_model, git_commit  # noqa: E402
from ._timing import time_calls  # noqa: E402

if "BENCH_THREADS_CONFIGURED" not in os.environ:  # imported some other way: still before numpy
    _threads.configure_from_argv(sys.argv[1:])

import numpy as np  # noqa: E402

from .cases import CASES, GOALS, Case, build_cnn, build_net, input_pool, portgrad_gemm, portgrad_mlp  # noqa: E402
from .spec import CnnSpec, GemmSpec, NotApplicable  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "bench", "results")

# Peer modules, in table order; portgrad is always first.
PEER_MODULES = [("numpy", "numpy_ref"), ("torch", "torch_cpu"), ("jax", "jax_jit"),
                ("onnxruntime", "onnxruntime_fwd")]
ALL_IMPLS = ["portgrad"] + [k for k, _ in PEER_MODULES]

# --------------------------------------------------------------------------- checking
def _as_list(r):
    return [np.asarray(a) for a in r] if isinstance(r, (list, tuple)) else [np.asarray(r)]


def compare(ref, got, dtype):
    """None when `got` matches portgrad's `ref` (same shapes; allclose with float tolerances scaled
    to each array's magnitude), else what differs."""
    ref, got = _as_list(ref), _as_list(got)
    if len(ref) != len(got):
        return f"{len(got)} results, portgrad gives {len(ref)}"
    rtol = 1e-3 if dtype == np.float32 else 1e-9
    for i, (a, b) in enumerate(zip(ref, got)):
        if a.shape != b.shape:
            return f"result {i}: shape {b.shape}, portgrad's is {a.shape}"
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        # The absolute floor is relative to the array's largest value: long float32 sums (K = 4096,
        # batch 1024) cancel to small entries whose error is set by the big ones. A semantic
        # difference (a transpose, a mean for a sum, a missing bias) is far larger.
        # In float32 a ReLU pre-activation within rounding of 0 can switch sides between two correct
        # implementations (both differ from a float64 result by as much), which moves every entry of
        # that example's gradient a little. So float32 results pass when they agree elementwise, or
        # when their relative (Frobenius) error is below 2e-3 and no entry is off by 5% of the
        # scale; a semantic difference (a transpose, a mean for a sum, a missing bias) gives O(1).
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = np.abs(b64 - a64)
        close = bool(np.all(diff <= rtol * np.abs(a64) + rtol * scale + 1e-7))
        if not close and dtype == np.float32 and diff.size:
            norm = float(np.linalg.norm(a64))
            close = norm > 0 and float(np.linalg.norm(b64 - a64)) / norm < 2e-3 and diff.max() <= 0.05 * scale
        if not close:
            rel = float(np.linalg.norm(b64 - a64) / max(np.linalg.norm(a64), 1e-300))
            return (f"result {i}: max abs difference {float(diff.max()):.3g} (portgrad's max |value| {scale:.3g}), "
                    f"relative error {rel:.2g}")
    return None


# --------------------------------------------------------------------------- one case
def load_peers(selected):
    peers = {}
    for key, mod in PEER_MODULES:
        if key not in selected:
            continue
        m = importlib.import_module(f".peers.{mod}", __package__)
        peers[key] = m
    return peers


def peer_missing(module):
    return getattr(module, "IMPORT_ERROR", None)


def run_case(case: Case, peers: dict, selected, args) -> dict:
    rng = np.random.default_rng(12345)
    pool = input_pool(case, rng, max_items=8 if args.quick else 64)
    dtype = np.dtype(case.spec.dtype) if isinstance(case.spec, GemmSpec) else np.dtype(np.float32)
    flops = case.flops()
    rows = []
    impls = ["portgrad"] + [k for k in peers if case.peers is None or k in case.peers]
    ref = None
    ref_median = None

    for key in impls:
        name = "portgrad" if key == "portgrad" else peers[key].NAME
        if isinstance(case.spec, GemmSpec) and key != "portgrad":
            name = getattr(peers[key], "GEMM_NAME", name)
        row = {"impl": key, "name": name}
        rows.append(row)
        if key not in selected:
            continue
        try:
            if key == "portgrad":
                if isinstance(case.spec, GemmSpec):
                    impl = portgrad_gemm(case.spec)
                elif isinstance(case.spec, CnnSpec):
                    net, positions, weights = build_cnn(case.spec)
                    impl = portgrad_mlp(case.spec, case.kind, net, positions)
                else:
                    net, positions, weights = build_net(case.spec)
                    impl = portgrad_mlp(case.spec, case.kind, net, positions)
            else:
                m = peers[key]
                if peer_missing(m):
                    row.update(status="not installed", detail=peer_missing(m))
                    continue
                if isinstance(case.spec, GemmSpec):
                    if not hasattr(m, "gemm"):
                        raise NotApplicable("GEMM compares with NumPy's BLAS only")
                    impl = m.gemm(case.spec)
                elif isinstance(case.spec, CnnSpec):
                    if not hasattr(m, "cnn"):
                        raise NotApplicable("no CNN implementation")
                    impl = m.cnn(case.spec, weights, case.kind)
                else:
                    impl = m.mlp(case.spec, weights, case.kind)
            inputs = [impl.prepare(x) for x in pool] if impl.prepare else pool
            # A copy: implementations may return a buffer that the next call overwrites.
            result = [np.array(a) for a in _as_list(impl.to_numpy(impl.fn(inputs[0])))]
            if key == "portgrad":
                ref = result
            elif ref is not None:
                bad = compare(ref, result, dtype)
                if bad:
                    row.update(status="MISMATCH", detail=bad)
                    continue
            t = time_calls(impl.fn, inputs, args.repeat, args.min_time, args.warmup)
            row.update(status="ok", **t)
            row["gflops"] = flops / t["median_s"] / 1e9
            if key == "portgrad":
                ref_median = t["median_s"]
        except NotApplicable as e:
            row.update(status="n/a", detail=str(e))
        except Exception as e:  # noqa: BLE001 - one failing implementation must not end the run
            row.update(status="error", detail=f"{type(e).__name__}: {e}")
            if args.verbose:
                traceback.print_exc()
        finally:
            impl = inputs = None
            time.sleep(args.cooldown)  # lets the thread pools of what just ran go to sleep
    for row in rows:
        if row.get("status") == "ok" and ref_median:
            row["ratio"] = row["median_s"] / ref_median
    return {"name": case.name, "title": case.title, "kind": case.kind, "flops": flops,
            "threads": case.threads or args.threads, "show_gflops": case.gflops,
            "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(case.spec).items()},
            "rows": [r for r in rows if r.get("status")]}


# --------------------------------------------------------------------------- reporting
def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def case_table(res) -> str:
    gf = res["show_gflops"]
    lines = [f"#### `{res['name']}` — {res['title']}", "",
             "| implementation | median | min | time / portgrad's" + (" | GFLOP/s |" if gf else " |"),
             "|---|---:|---:|---:" + ("|---:|" if gf else "|")]
    for r in res["rows"]:
        name = f"**{r['name']}**" if r["impl"] == "portgrad" else r["name"]
        if r["status"] == "ok":
            ratio = f"{r['ratio']:.2f}×" if "ratio" in r else "—"
            cells = [name, fmt_time(r["median_s"]), fmt_time(r["min_s"]), ratio]
            if gf:
                cells.append(f"{r['gflops']:.1f}")
        else:
            detail = r.get("detail", "")
            status = r["status"] if r["status"] in ("not installed",) else f"{r['status']}: {detail}"
            cells = [name, status, "", ""] + ([""] if gf else [])
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def goals_table(cases) -> str:
    results = {c["name"]: {r["impl"]: r for r in c["rows"]} for c in cases}
    lines = ["| goal | measured | verdict |", "|---|---|---|"]
    for text, check in GOALS:
        measured, ok = check(results)
        verdict = "not measured" if ok is None else ("met" if ok else "**missed**")
        lines.append(f"| {text} | {measured} | {verdict} |")
    return "\n".join(lines)


def machine_header(m) -> str:
    v = m["versions"]
    vs = ", ".join(f"{k} {v[k]}" for k in ("portgrad", "numpy", "torch", "jax", "onnxruntime") if v.get(k))
    return "\n".join([
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['cpus_available']} available), "
        f"{m['platform']}",
        f"- portgrad ISA: {m['portgrad_isa']}; threads: {m['threads']} "
        f"(portgrad: {m['portgrad_threads']}); NumPy BLAS: {m['numpy_blas']}",
        f"- versions: Python {m['python']}, {vs}",
        f"- load average at start: {m['loadavg_start']}"
        + (f"; at end: {m['loadavg_end']}" if m.get("loadavg_end") else ""),
        f"- {m['timestamp']}, host {m['hostname']}, portgrad commit {m['git_commit']}",
    ])


def report(data) -> str:
    parts = ["### Machine", "", machine_header(data["machine"]), ""]
    for c in data["cases"]:
        parts += [case_table(c), ""]
    parts += ["### Goals", "", goals_table(data["cases"]), ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- the machine
def _loadavg():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _numpy_blas():
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older numpy
        return "?"


def machine_info(args, peers) -> dict:
    import portgrad
    from portgrad import _core

    versions = {"portgrad": portgrad.__version__, "numpy": np.__version__}
    for key, m in peers.items():
        if key != "numpy":
            versions[key] = None if peer_missing(m) else m.version()
    return {
        "hostname": socket.gethostname(),
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "portgrad_isa": portgrad.active_isa(),
        "portgrad_threads": _portgrad_threads(args.threads),
        "threads": args.threads,
        "thread_env": {k: os.environ.get(k) for k in _threads._THREAD_VARS + ("XLA_FLAGS",)},
        "numpy_blas": _numpy_blas(),
        "versions": versions,
        "git_commit": git_commit(),
        "loadavg_start": _loadavg(),
        "options": {"repeat": args.repeat, "min_time": args.min_time, "warmup": args.warmup, "cooldown": args.cooldown,
                    "quick": args.quick, "cases": args.cases},
        "has_set_num_threads": hasattr(_core.kernels, "set_num_threads"),
    }


def _portgrad_threads(threads):
    from portgrad import _core

    setter = getattr(_core.kernels, "set_num_threads", None)
    if setter is None:
        return f"no set_num_threads; PORTGRAD_NUM_THREADS={os.environ.get('PORTGRAD_NUM_THREADS')}"
    setter(threads)
    getter = getattr(_core.kernels, "num_threads", None)
    return str(getter()) if getter else str(threads)


# --------------------------------------------------------------------------- children
def run_in_child(cases, threads, args):
    """Runs cases at another thread count in a fresh process, so every library reads that count
    from the environment when it loads. Returns their results."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "child.json")
        names = "|".join(re.escape(c.name) for c in cases)
        cmd = [sys.executable, "-m", "bench", "--child", "--threads", str(threads), "--cases", f"^({names})$",
               "--repeat", str(args.repeat), "--min-time", str(args.min_time), "--warmup", str(args.warmup),
               "--cooldown", str(args.cooldown),
               "--peers", ",".join(args.peers), "--json", out]
        if args.quick:
            cmd.append("--quick")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.pop("BENCH_THREADS_CONFIGURED", None)
        if "xla_cpu_multi_thread_eigen" in env.get("XLA_FLAGS", ""):  # set by this run's --threads 1
            env.pop("XLA_FLAGS")
        proc = subprocess.run(cmd, cwd=REPO, env=env)
        if proc.returncode != 0 or not os.path.exists(out):
            return [{"name": c.name, "title": c.title, "kind": c.kind, "flops": c.flops(), "threads": threads,
                     "show_gflops": c.gflops, "rows": [{"impl": "portgrad", "name": "portgrad", "status": "error",
                                                        "detail": f"child process exited {proc.returncode}"}]}
                    for c in cases]
        with open(out) as f:
            return json.load(f)["cases"]


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, metavar="PATTERN",
                   help="run the cases whose name matches this regular expression (re.search; a plain substring works)")
    p.add_argument("--peers", default=",".join(ALL_IMPLS[1:]),
                   help="comma-separated peers to run beside portgrad (default: %(default)s); 'none' for portgrad only")
    p.add_argument("--repeat", type=int, default=11, metavar="N",
                   help="timed batches per implementation, at least (default %(default)s; calls under 100 µs get ≥ 31)")
    p.add_argument("--min-time", type=float, default=0.5, metavar="SECONDS",
                   help="keep adding batches until this much time is spent per implementation (default %(default)s)")
    p.add_argument("--warmup", type=float, default=0.2, metavar="SECONDS",
                   help="untimed calls before timing, at least 2 (default %(default)s)")
    p.add_argument("--cooldown", type=float, default=0.2, metavar="SECONDS",
                   help="pause after each implementation, so its thread pool sleeps before the next (default %(default)s)")
    p.add_argument("--threads", type=int, default=_threads.DEFAULT_THREADS, metavar="N",
                   help="threads for every implementation (default %(default)s); GEMM cases with their own count "
                        "run in a child process")
    p.add_argument("--quick", action="store_true", help="few repetitions: a smoke test, not a measurement")
    p.add_argument("--json", default=None, metavar="PATH", help="where to write the JSON "
                   "(default bench/results/<timestamp>-<host>.json)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failing implementations")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.quick:
        args.repeat, args.min_time, args.warmup = min(args.repeat, 3), 0.0, min(args.warmup, 0.02)
        args.cooldown = min(args.cooldown, 0.02)
    peers = [] if args.peers.strip() in ("", "none") else [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = [s for s in peers if s not in ALL_IMPLS[1:]]
    if unknown:
        p.error(f"unknown peer {unknown[0]!r}; peers are {', '.join(ALL_IMPLS[1:])}")
    args.peers = peers
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cases = [c for c in CASES if args.cases is None or re.search(args.cases, c.name)]
    if args.list:
        for c in CASES:
            print(f"{c.name:20s} {c.title}")
        return 0
    if not cases:
        print(f"no case matches {args.cases!r}; --list shows them", file=sys.stderr)
        return 2

    selected = {"portgrad", *args.peers}
    peers = load_peers(selected)
    for key, m in peers.items():
        if not peer_missing(m):
            m.setup(args.threads)
    machine = machine_info(args, peers)
    if not args.child:
        print(machine_header(machine) + "\n", flush=True)

    results = []
    for case in cases:
        if case.threads and case.threads != args.threads and not args.child:
            results.append(("child", case))
            continue
        res = run_case(case, peers, selected, args)
        results.append(("done", res))
        if not args.child:
            print(case_table(res) + "\n", flush=True)

    by_threads = {}
    for state, c in results:
        if state == "child":
            by_threads.setdefault(c.threads, []).append(c)
    child_results = {}
    for threads, group in by_threads.items():
        for res in run_in_child(group, threads, args):
            child_results[res["name"]] = res
            print(case_table(res) + "\n", flush=True)
    ordered = [child_results[c.name] if state == "child" else c for state, c in results]

    machine["loadavg_end"] = _loadavg()
    data = {"machine": machine, "cases": ordered}
    if not args.child:
        data["goals"] = goals_table(ordered)
        data["markdown"] = report(data)
        print("### Goals\n\n" + data["goals"] + "\n")
    path = args.json or os.path.join(
        RESULTS_DIR, f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{socket.gethostname()}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    if not args.child:
        print(f"JSON written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
