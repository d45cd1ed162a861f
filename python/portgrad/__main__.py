"""Command line: ``python -m portgrad demo`` (the main job), ``python -m portgrad info``,
``python -m portgrad isas [--others]`` (the instruction sets this CPU runs, best first, one per line:
the values PORTGRAD_ISA takes here; ``--others`` leaves out the active one. The README's test command
runs the suite once as is, then under each of the others), and ``python -m portgrad cmake-dir`` (the
folder of the installed C++ package's portgradConfig.cmake: ``cmake -Dportgrad_DIR=...``)."""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _finite_difference(f, x, h=1e-6):
    """Central differences of the scalar function f at x (float64)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


def demo() -> int:
    import portgrad as pg

    np.set_printoptions(precision=5, suppress=True)
    print(f"portgrad {pg.__version__} — kernels: {pg.active_isa()}\n")
    net = pg.NetInitialize(pg.NetChain({"lin1": pg.LinearLayer(16), "act": pg.ElementwiseLayer("Tanh"),
                                        "lin2": pg.LinearLayer(3), "soft": pg.SoftmaxLayer()}, input=4), seed=0)
    print(net, "\n")
    x = np.random.default_rng(1).uniform(-1, 1, (5, 4))

    y = net(x)
    print("outputs for a batch of 5 (each row sums to 1):\n", y, "\n")

    class_score = np.zeros((5, 3))
    class_score[:, 0] = 1.0
    gx = net({"Input": x, pg.NetPortGradient("Output"): class_score}, pg.NetPortGradient("Input"))
    print("d(probability of class 0)/d(input), per example:\n", gx, "\n")

    res = net({"Input": x, pg.NetPortGradient("Output"): class_score},
              [pg.NetPortGradient(("lin2", "Weights")), pg.NetPortGradient((0, "Biases"))])
    print("d(sum of class-0 probabilities)/d(lin2 Weights), summed over the batch:\n",
          res[pg.NetPortGradient(("lin2", "Weights"))], "\n")
    gb = res[pg.NetPortGradient((0, "Biases"))]
    print("d(sum of class-0 probabilities)/d(lin1 Biases):\n", gb, "\n")

    # Check against central finite differences, in float64.
    def score(inp):
        return float(net(inp, WorkingPrecision="Real64")[:, 0].sum())

    gx64 = net({"Input": x, pg.NetPortGradient("Output"): class_score}, pg.NetPortGradient("Input"),
               WorkingPrecision="Real64")
    fd = _finite_difference(score, x)
    err_x = np.max(np.abs(gx64 - fd))

    b0 = pg.NetExtract(net, (0, "Biases")).astype(np.float64)
    def score_b(b):
        return float(pg.NetReplacePart(net, {(0, "Biases"): b})(x, WorkingPrecision="Real64")[:, 0].sum())
    h = 2.0 ** -12  # float32-exact steps, since arrays are stored in float32
    fd_b = np.array([(score_b(b0 + h * e) - score_b(b0 - h * e)) / (2 * h) for e in np.eye(b0.size)])
    gb64 = net({"Input": x, pg.NetPortGradient("Output"): class_score}, pg.NetPortGradient((0, "Biases")),
               WorkingPrecision="Real64")
    err_b = np.max(np.abs(gb64 - fd_b))
    print(f"max |input gradient - finite differences| (Real64): {err_x:.2e}")
    print(f"max |bias gradient  - finite differences| (Real64): {err_b:.2e}")
    ok = err_x < 1e-7 and err_b < 1e-6 and np.allclose(gx, gx64, atol=1e-5)
    print("gradients agree with finite differences:", "yes" if ok else "NO")

    # The same request on the GPU, where there is one.
    from portgrad import _gpu
    try:
        _gpu.module()
    except (ValueError, ImportError) as e:
        print(f"\nGPU: not used here ({e})")
    else:
        gx_gpu = net({"Input": x, pg.NetPortGradient("Output"): class_score}, pg.NetPortGradient("Input"),
                     TargetDevice="GPU", WorkingPrecision="Real64")
        err_gpu = np.max(np.abs(gx_gpu - gx64))
        gpu_ok = err_gpu < 1e-12
        print(f"\nGPU ({_gpu.module().name}: {_gpu.module().device_name(0)}): max |input gradient - CPU| "
              f"(Real64): {err_gpu:.2e} —", "agrees" if gpu_ok else "DISAGREES")
        ok = ok and gpu_ok
    return 0 if ok else 1


def info() -> int:
    import portgrad as pg
    from portgrad import _core

    print(f"portgrad {pg.__version__}")
    print(f"kernels: {pg.active_isa()} (avx2 supported: {_core.isa_supported('avx2')}, "
          f"avx512 supported: {_core.isa_supported('avx512')})")
    from portgrad import _gpu
    try:
        mod = _gpu.module()
        count = mod.device_count()[0]
        print(f"GPU: {mod.name} backend, {count} device(s):", ", ".join(mod.device_name(i) for i in range(count)))
    except (ValueError, ImportError) as e:
        print(f"GPU: none ({e})")
    return 0


def cmake_dir() -> int:
    import os

    import portgrad as pg

    where = os.path.join(os.path.dirname(os.path.abspath(pg.__file__)), "lib", "cmake", "portgrad")
    if not os.path.isfile(os.path.join(where, "portgradConfig.cmake")):
        print(f"python -m portgrad cmake-dir: this portgrad ({os.path.dirname(pg.__file__)}) has no C++ package; "
              "it comes with `pip install` of portgrad (a developer build in place has none)", file=sys.stderr)
        return 1
    print(where)
    return 0


def isas(others: bool = False) -> int:
    from portgrad import _core

    for isa in ("avx512", "avx2", "scalar"):
        if _core.isa_supported(isa) and not (others and isa == _core.active_isa()):
            print(isa)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m portgrad", description=__doc__)
    parser.add_argument("command", choices=["demo", "info", "isas", "cmake-dir"], nargs="?", default="demo")
    parser.add_argument("--others", action="store_true", help="isas: leave out the active instruction set")
    args = parser.parse_args(argv)
    if args.others and args.command != "isas":
        parser.error("--others goes with isas")
    from portgrad import _core
    try:
        _core.active_isa()  # a bad PORTGRAD_ISA: its message, not a traceback
    except ValueError as e:
        parser.error(str(e))
    if args.command == "isas":
        return isas(args.others)
    return {"demo": demo, "info": info, "cmake-dir": cmake_dir}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
