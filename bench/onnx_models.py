"""Imported ONNX models: portgrad against ONNX Runtime on the same file (forward) and against the
PyTorch model the file was exported from (forward + gradient), side by side in one run.

    python -m bench.onnx_models [--threads 2] [--batch 32] [--quick] [--markdown out.md]

The files are the test exports of tests/data/onnx (TorchScript exporter, opset 18, dynamic batch),
made by tools/make_onnx_testdata.py; the PyTorch models are rebuilt from that script's classes with
the parameters stored beside the files. The gradient is the input gradient of the summed outputs;
the transformer reads token ids, which have none, so its row times the gradient of every parameter
instead (PyTorch: loss.backward(); portgrad: NetPortGradient(All)). Medians of batches of
back-to-back calls (bench/_timing.py); ratios are portgrad's time over the peer's (< 1: portgrad
faster). Peers that are not installed are reported so.
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # python bench/onnx_models.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

from ._threads import configure_from_argv  # noqa: E402

THREADS = configure_from_argv(sys.argv)

import numpy as np  # noqa: E402

from ._machine import cpu_model, git_commit  # noqa: E402
from ._timing import time_calls  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "onnx")
MODELS = {"lenet": "LeNet + batch norm, 1×8×8", "resblock": "ResNet block, 3×5×5", "conv1d": "1-D conv net, 2×31",
          "encoder": "2-layer pre-norm transformer encoder, 5×6", "transformer": "embedding + 2-layer transformer, 5 tokens",
          "vit": "vision transformer with a class token, 1×8×8"}


def torch_model(name, torch):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import make_onnx_testdata as m

    cls, _ = m.MODELS[name]
    model = cls().eval()
    ref = np.load(os.path.join(DATA, f"{name}.npz"))
    state = model.state_dict()
    for k in state:
        if f"p/{k}" in ref:
            state[k] = torch.from_numpy(ref[f"p/{k}"])
    model.load_state_dict(state)
    return model


def inputs(name, batch, pool=4):
    shape = np.load(os.path.join(DATA, f"{name}.npz"))["x"].shape[1:]
    rng = np.random.default_rng(0)
    if name == "transformer":
        return [rng.integers(0, 11, (batch, *shape)) for _ in range(pool)]
    return [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(pool)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)
    import portgrad as pg

    pg.set_num_threads(args.threads)
    repeat, min_time, warmup = (3, 0.0, 0.0) if args.quick else (11, 0.5, 0.2)
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None

    def t(fn, pool):
        return time_calls(fn, pool, repeat, min_time, warmup, smoke=args.quick)["median_s"]

    rows = []
    for name, what in MODELS.items():
        file = os.path.join(DATA, f"{name}-ts-18-dynamic.onnx")
        net = pg.import_onnx(file)
        pool = inputs(name, args.batch)
        real = name != "transformer"
        grad = pg.NetPortGradient("input") if real else pg.NetPortGradient(pg.All)
        r = {"model": name, "what": what,
             "pg_fwd": t(lambda x: net(x), pool), "pg_grad": t(lambda x: net(x, ["output", grad]), pool)}
        if ort is not None:
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(file, so, providers=["CPUExecutionProvider"])
            got = sess.run(None, {"input": pool[0]})[0]
            assert np.allclose(got, net(pool[0]), rtol=1e-3, atol=1e-4), f"{name}: onnxruntime disagrees"
            r["ort_fwd"] = t(lambda x: sess.run(None, {"input": x}), pool)
        if torch is not None:
            model = torch_model(name, torch)
            tpool = [torch.from_numpy(x) for x in pool]

            def fwd(x):
                with torch.no_grad():
                    return model(x)

            def grad_fn(x):
                if real:
                    x = x.clone().requires_grad_()
                    y = model(x)
                    return torch.autograd.grad(y.sum(), x)[0]
                model.zero_grad(set_to_none=True)
                y = model(x)
                y.sum().backward()
                return y

            r["torch_fwd"], r["torch_grad"] = t(fwd, tpool), t(grad_fn, tpool)
        rows.append(r)

    def us(v):
        return "—" if v is None else f"{v * 1e6:,.0f}"

    def ratio(a, b):
        return "—" if a is None or b is None else f"{a / b:.2f}"

    lines = [f"Imported ONNX models, batch {args.batch}, {args.threads} thread(s), float32; {cpu_model()}, "
             f"commit {git_commit()}. Times in µs (medians); ratio = portgrad / peer.", "",
             "| model | portgrad fwd | ONNX Runtime fwd | ratio | PyTorch fwd | ratio | portgrad fwd+grad | "
             "PyTorch fwd+grad | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']}: {r['what']} | {us(r['pg_fwd'])} | {us(r.get('ort_fwd'))} | "
                     f"{ratio(r['pg_fwd'], r.get('ort_fwd'))} | {us(r.get('torch_fwd'))} | "
                     f"{ratio(r['pg_fwd'], r.get('torch_fwd'))} | {us(r['pg_grad'])} | {us(r.get('torch_grad'))} | "
                     f"{ratio(r['pg_grad'], r.get('torch_grad'))} |")
    if ort is None:
        lines.append("\nONNX Runtime: not installed.")
    if torch is None:
        lines.append("\nPyTorch: not installed.")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
