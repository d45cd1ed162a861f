"""Recurrent layers: portgrad's LSTM and GRU against PyTorch's nn.LSTM and nn.GRU (eager, CPU), side
by side in one run.

    python -m bench.sequence [--threads 2] [--quick] [--markdown out.md]

Cases (issue 15): hidden 128, length 100, batch 32, inputs of 128, float32: the forward pass (every
step's state), and the forward pass with the input gradient of the summed states (PyTorch: autograd's
backward of out.sum()); and self-attention itself (AttentionLayer against
F.scaled_dot_product_attention: 4 heads of 16, length 128, batch 16), with the gradients of key,
value and query. The same weights everywhere (PyTorch's mapped gate by gate; its GRU's b_hn
as the GatedRecurrentLayer's state_biases); every peer's result is checked
against portgrad's before it is timed. Medians of batches of back-to-back calls, each peer's batches interleaved with portgrad's (bench/_timing.py);
ratio = portgrad's time over the peer's (< 1: portgrad faster).
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # python bench/sequence.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

from ._threads import configure_from_argv  # noqa: E402

THREADS = configure_from_argv(sys.argv)
# A recurrence is a stream of small parallel regions: PyTorch runs with OpenMP's own wait policy
# (spin briefly, then sleep), not the suite's PASSIVE, under which its threads sleep between steps
# (as in bench/train.py; measured here 4x slower).
os.environ.pop("OMP_WAIT_POLICY", None)

import numpy as np  # noqa: E402

from ._machine import cpu_model, git_commit, publish  # noqa: E402
from ._timing import time_side_by_side  # noqa: E402

B, T, K, N = 32, 100, 128, 128


def portgrad_net(pg, torch, kind, module):
    """The portgrad layer with module's weights (biases folded; PyTorch's gate blocks mapped)."""
    def split(w, blocks):
        return np.split(w.detach().numpy(), blocks, axis=0)
    wi, wh = split(module.weight_ih_l0, 4 if kind == "LSTM" else 3), split(module.weight_hh_l0, 4 if kind == "LSTM" else 3)
    bi, bh = split(module.bias_ih_l0, 4 if kind == "LSTM" else 3), split(module.bias_hh_l0, 4 if kind == "LSTM" else 3)
    if kind == "LSTM":
        order = {"InputGate": 0, "ForgetGate": 1, "MemoryGate": 2, "OutputGate": 3}
        layer = pg.LongShortTermMemoryLayer(N)
        biases = {g: bi[q] + bh[q] for g, q in order.items()}
    else:
        order = {"ResetGate": 0, "InputGate": 1, "MemoryGate": 2}
        layer = pg.GatedRecurrentLayer(N, state_biases=True)  # PyTorch's b_hn, inside the reset product
        biases = {"ResetGate": bi[0] + bh[0], "InputGate": bi[1] + bh[1], "MemoryGate": bi[2]}
    arrays = {}
    for g, q in order.items():
        arrays.update({(0, f"{g}InputWeights"): wi[q], (0, f"{g}StateWeights"): wh[q], (0, f"{g}Biases"): biases[g]})
    if kind == "GRU":
        arrays[(0, "MemoryGateStateBiases")] = bh[2]
    return pg.NetReplacePart(pg.NetInitialize(pg.NetChain([layer], input=(T, K))), arrays)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--quick", action="store_true", help="a smoke test, not a measurement")
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)
    import portgrad as pg

    pg.set_num_threads(args.threads)
    repeat, min_time, warmup = (3, 0.0, 0.0) if args.quick else (11, 0.5, 0.3)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch is not installed here: portgrad alone.")

    def side_by_side(row, fns):  # fns: {column: (fn, pool)}, timed with their batches interleaved
        row.update(time_side_by_side(fns, repeat, min_time, warmup, smoke=args.quick))

    rng = np.random.default_rng(0)
    pool = [rng.standard_normal((B, T, K)).astype(np.float32) for _ in range(3)]
    rows = []
    for kind in ("LSTM", "GRU"):
        if torch is not None:
            torch.manual_seed(0)
            module = (torch.nn.LSTM if kind == "LSTM" else torch.nn.GRU)(K, N, batch_first=True)
            net = portgrad_net(pg, torch, kind, module)
        else:
            layer = pg.LongShortTermMemoryLayer(N) if kind == "LSTM" else pg.GatedRecurrentLayer(N, state_biases=True)
            net = pg.NetInitialize(pg.NetChain([layer], input=(T, K)), seed=0)
        grad = pg.NetPortGradient("Input")
        fwd = {"case": f"{kind} forward, hidden {N}, length {T}, batch {B}"}
        bwd = {"case": f"{kind} forward + input gradient"}
        fwd_fns, bwd_fns = {"pg": (lambda x: net(x), pool)}, {"pg": (lambda x: net(x, grad), pool)}
        if torch is not None:
            tpool = [torch.from_numpy(x) for x in pool]
            with torch.no_grad():
                assert np.allclose(module(tpool[0])[0].numpy(), net(pool[0]), rtol=1e-4, atol=1e-5), kind

            def tf(x):
                with torch.no_grad():
                    return module(x)[0]

            def tb(x):
                x = x.detach().requires_grad_(True)
                module(x)[0].sum().backward()
                return x.grad

            assert np.allclose(tb(tpool[0]).numpy(), net(pool[0], grad), rtol=1e-3, atol=1e-4), kind
            fwd_fns["PyTorch eager"] = (tf, tpool)
            bwd_fns["PyTorch eager"] = (tb, tpool)
        side_by_side(fwd, fwd_fns)
        side_by_side(bwd, bwd_fns)
        rows += [fwd, bwd]

    # --- self-attention (the attention itself): d 64 as 4 heads of 16, length 128, batch 16
    L, H, D = 128, 4, 16
    att = pg.AttentionLayer(key=(L, H, D), value=(L, H, D), query=(L, H, D))
    apool = [rng.standard_normal((16, L, H, D)).astype(np.float32) for _ in range(3)]
    grads = [pg.NetPortGradient(p) for p in ("Key", "Value", "Query")]

    def kvq(x):
        return {"Key": x, "Value": x, "Query": x}

    fwd = {"case": f"self-attention, {H} heads x {D}, length {L}, batch 16"}
    bwd = {"case": "self-attention + gradients of key, value, query"}
    fwd_fns, bwd_fns = {"pg": (lambda x: att(kvq(x)), apool)}, {"pg": (lambda x: att(kvq(x), grads), apool)}
    if torch is not None:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tpool = [torch.from_numpy(x.transpose(0, 2, 1, 3).copy()) for x in apool]
        with torch.no_grad():
            assert np.allclose(sdpa(tpool[0], tpool[0], tpool[0]).numpy().transpose(0, 2, 1, 3), att(kvq(apool[0])),
                               rtol=1e-4, atol=1e-5)

        def ta(x):
            with torch.no_grad():
                return sdpa(x, x, x)

        def tab(x):
            k, v, q = (x.detach().requires_grad_(True) for _ in range(3))
            sdpa(q, k, v).sum().backward()
            return k.grad, v.grad, q.grad

        fwd_fns["PyTorch eager"] = (ta, tpool)
        bwd_fns["PyTorch eager"] = (tab, tpool)
    side_by_side(fwd, fwd_fns)
    side_by_side(bwd, bwd_fns)
    rows += [fwd, bwd]

    peers = ["PyTorch eager"] if torch is not None else []
    lines = [f"Recurrent layers, float32, {args.threads} thread(s); {cpu_model()}, commit {git_commit()}. "
             "Times in ms (medians); ratio = portgrad / peer.",
             "", "| case | portgrad | " + " | ".join(f"{k} | ratio" for k in peers) + " |",
             "|---|---|" + "---|---|" * len(peers)]
    for r in rows:
        cells = [r["case"], f"{r['pg'] * 1e3:.2f}"]
        for k in peers:
            cells += [f"{r[k] * 1e3:.2f}", f"{r['pg'] / r[k]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    publish("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
