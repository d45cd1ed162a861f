"""portgrad on the GPU against PyTorch CUDA: ``python -m bench.gpu`` (see bench/README.md, "GPU").

One run times every case for portgrad (``TargetDevice="GPU"``) and, side by side, PyTorch eager on
the same CUDA device (and the same eager code captured in a CUDA graph), with the same weights and
the same inputs; prints a markdown table per case and writes JSON with the device to
bench/results/gpu-<device>-<timestamp>.json. Every result is checked against the other side (and,
where it is cheap, against portgrad on the CPU) before it is timed.
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import socket
import subprocess
import sys
import traceback
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ._machine import cpu_model, git_commit
from ._timing import time_calls
from .cases import build_cnn, build_net
from .spec import CnnSpec, GemmSpec, MlpSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "bench", "results")

# Timing (bench/_timing.py): batches of back-to-back calls, each synchronised.
MAX_BATCHES = 5000        # long GPU runs: more batches of short calls
POOL_BYTES = 512 << 20    # distinct inputs cycled through: as many as fit (2 to 8)
CPU_CHECK_ROWS = 256      # row-wise results are checked against the CPU on this many examples
CPU_CHECK_FLOPS = 2e11    # results summed over the batch (parameter gradients): full CPU check below this

IMPL_NAMES = {
    "portgrad": "portgrad",
    "portgrad-fused": "portgrad, the fused MLP kernel (PORTGRAD_FUSED_MLP=1)",
    "torch": "PyTorch eager CUDA",
    "torch-graph": "PyTorch CUDA graph",
    "torch-tf32": "torch.matmul, TF32 on (information)",
}
GEMM_TORCH_NAME = "torch.matmul (cuBLAS), TF32 off"
PEERS = ("torch", "torch-graph")
KIND_TEXT = {"fwd": "forward", "igrad": "forward + input gradient",
             "fwd_bwd": "forward + all parameter and input gradients", "gemm": "Y = X·Wᵀ"}


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class GpuCase:
    name: str
    group: str                 # large, ceiling, small, tiny, cnn
    spec: Union[MlpSpec, CnnSpec, GemmSpec]
    kind: str                  # fwd, igrad, fwd_bwd (MLP); fwd, igrad (CNN); gemm
    data: str = "device"       # where inputs and results live: "device" or "host" (NumPy in, NumPy out)
    tflops: bool = True        # show TFLOP/s
    ceiling: bool = False      # show the fraction of the measured matrix-product ceiling

    @property
    def title(self) -> str:
        s = self.spec
        where = ("data in device memory" if self.data == "device" else "from NumPy to NumPy (host copies timed)")
        if isinstance(s, GemmSpec):
            return (f"matrix-product ceiling: {s.m}x{s.n}x{s.k} float32 (portgrad: LinearLayer {s.k}→{s.n} without "
                    f"biases, batch {s.m}, forward), {where}")
        if isinstance(s, CnnSpec):
            conv = " → ".join(f"conv {n} {s.k}x{s.k} + ReLU + maxpool {s.pool}" for n in s.stages)
            return (f"CNN {'×'.join(map(str, s.in_shape))}: {conv} → linear {s.n_out}, batch {s.batch}: "
                    f"{KIND_TEXT[self.kind]}, {where}")
        act = {"Ramp": "ReLU"}.get(s.act, s.act.lower())
        batch = "batch 1 (one example)" if s.batch is None else f"batch {s.batch}"
        return f"MLP {'→'.join(map(str, s.dims))} {act}, {batch}: {KIND_TEXT[self.kind]}, {where}"

    def flops(self) -> int:
        return self.spec.flops(self.kind)

    @property
    def batch(self) -> Optional[int]:
        s = self.spec
        return s.m if isinstance(s, GemmSpec) else s.batch


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}m"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}k"
    return str(n)


def make_cases(smoke: bool) -> list:
    """The cases at full size, or (smoke) at tiny sizes that the CPU emulator runs in seconds."""
    if smoke:
        large_dims, large_batches, gemm_n = (8, 32, 32, 8), (4, 16), 32
        small_batches, cnn = (16, 64), CnnSpec((3, 8, 8), (4, 8), 10, 2)
    else:
        large_dims, large_batches, gemm_n = (1024, 4096, 4096, 1024), (1024, 65536), 8192
        small_batches, cnn = (1 << 14, 1 << 16, 1 << 18, 1 << 20), CnnSpec((3, 32, 32), (16, 32), 10, 32)
    cases = [GpuCase(f"matmul-{gemm_n}", "ceiling", GemmSpec(gemm_n, gemm_n, gemm_n, "float32"), "gemm")]
    for b in large_batches:
        spec = MlpSpec(large_dims, "Ramp", b)
        cases += [GpuCase(f"large-fwd-{_size(b)}", "large", spec, "fwd", ceiling=True),
                  GpuCase(f"large-fwd-bwd-{_size(b)}", "large", spec, "fwd_bwd", ceiling=True)]
    for b in small_batches:
        spec = MlpSpec((2, 64, 64, 64, 1), "Tanh", b)
        cases += [GpuCase(f"small-fwd-{_size(b)}", "small", spec, "fwd"),
                  GpuCase(f"small-igrad-{_size(b)}", "small", spec, "igrad"),
                  GpuCase(f"small-fwd-bwd-{_size(b)}", "small", spec, "fwd_bwd")]
    tiny = MlpSpec((2, 64, 64, 1), "Tanh", None)
    for data, suffix in (("device", ""), ("host", "-host")):
        cases += [GpuCase(f"tiny-fwd{suffix}", "tiny", tiny, "fwd", data=data, tflops=False),
                  GpuCase(f"tiny-igrad{suffix}", "tiny", tiny, "igrad", data=data, tflops=False)]
    cases += [GpuCase("cnn-fwd", "cnn", cnn, "fwd"), GpuCase("cnn-igrad", "cnn", cnn, "igrad")]
    return cases


# --------------------------------------------------------------------------- the two libraries
class Env:
    """What this process can run: portgrad's GPU module, and torch with CUDA (or why not)."""

    def __init__(self, device: int, peers):
        import portgrad as pg
        from portgrad import _gpu

        self.pg, self.device = pg, device
        self.emulated = os.environ.get("PORTGRAD_GPU_EMULATOR", "0") not in ("", "0")
        self.target = "GPU" if device == 0 else ("GPU", device)
        try:
            self.gpu = _gpu.module()
            self.gpu_error = None
            if device >= _gpu.device_count():
                raise ValueError(f"portgrad sees {_gpu.device_count()} GPU(s); --device {device} is not one")
        except (ValueError, ImportError) as e:  # ImportError: a GPU module that is built but does not load
            self.gpu, self.gpu_error = None, f"{e}" if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        self.torch, self.torch_skip = None, None
        if not peers:
            self.torch_skip = "--peers none"
        else:
            try:
                import torch
            except Exception as e:  # noqa: BLE001 - any import failure: the peer is skipped
                self.torch_skip = f"torch is not installed ({type(e).__name__}: {e})"
            else:
                if not torch.cuda.is_available():
                    self.torch_skip = (f"torch {torch.__version__} has no CUDA device here (torch.cuda.is_available() "
                                       f"is False; CUDA build: {torch.version.cuda or 'none'})")
                elif device >= torch.cuda.device_count():
                    self.torch_skip = (f"torch sees {torch.cuda.device_count()} CUDA device(s); --device {device} "
                                       "is not one")
                else:
                    self.torch = torch
                    self.tdev = torch.device("cuda", device)
                    torch.cuda.set_device(self.tdev)
                    set_tf32(torch, False)
                    torch.backends.cudnn.benchmark = True  # PyTorch's best convolution algorithms (tuned in warm-up)
        self.peers = [p for p in peers if self.torch is not None]
        # portgrad reads torch's CUDA tensors in place (__cuda_array_interface__); the emulator's
        # "device" memory is host memory, so under it portgrad gets its own DeviceArrays.
        self.share_torch_inputs = self.torch is not None and not self.emulated

    def sync(self):
        if self.torch is not None:
            self.torch.cuda.synchronize(self.tdev)

    def free(self, torch_cache: bool = True):
        """Returns cached device memory; PyTorch's only when no captured graph is alive
        (torch_cache), since emptying its cache can release memory a live graph replays into."""
        if self.torch is not None:
            self.torch.cuda.synchronize(self.tdev)
            if torch_cache:
                self.torch.cuda.empty_cache()
        if self.gpu is not None and hasattr(self.gpu, "empty_cache"):
            self.gpu.empty_cache()


def set_tf32(torch, on: bool) -> None:
    """TF32 for float32 matrix products and convolutions: off, so PyTorch computes in full float32 like
    portgrad (torch >= 2.9 has fp32_precision, and mixing it with the legacy allow_tf32 flags raises)."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(m, "fp32_precision"):
        m.fp32_precision = "tf32" if on else "ieee"
    else:
        m.allow_tf32 = on
    conv = getattr(c, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if on else "ieee"
    else:
        c.allow_tf32 = on


def tf32_state(torch) -> dict:
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(m, "fp32_precision"):
        conv = getattr(c, "conv", None)
        return {"matmul_fp32_precision": m.fp32_precision,
                "cudnn_conv_fp32_precision": getattr(conv, "fp32_precision", None)}
    return {"matmul_allow_tf32": m.allow_tf32, "cudnn_allow_tf32": c.allow_tf32}


@dataclass
class Impl:
    fn: object                 # timed: one call on one pool input, returning when the GPU is done
    to_numpy: object           # result -> list of NumPy arrays (not timed)
    pool: list                 # the inputs it is called on


def _pg_np(r, req):
    if isinstance(r, dict):
        r = [r[k] for k in req]
    items = r if isinstance(r, (list, tuple)) else [r]
    return [a.numpy() if hasattr(a, "numpy") and not isinstance(a, np.ndarray) else np.asarray(a) for a in items]


def _torch_np(r):
    items = r if isinstance(r, (list, tuple)) else [r]
    return [t.detach().float().cpu().numpy() for t in items]


def portgrad_request(case, positions):
    NPG = _pg().NetPortGradient
    if case.kind in ("fwd", "gemm"):
        return None
    if case.kind == "igrad":
        return NPG("Input")
    # all parameter gradients and the input gradient, torch's parameter order; a tuple is cached by the net
    return tuple(NPG((p, a)) for p in positions for a in ("Weights", "Biases")) + (NPG("Input"),)


def _pg():
    import portgrad
    return portgrad


def portgrad_impl(env, case, net, positions, pools, fused=False) -> Impl:
    """portgrad's calls; fused: on a net of its own whose plans are made with the fused MLP on."""
    req = portgrad_request(case, positions)
    target = env.target
    if fused:
        net = build_portgrad(case)[0]
    if case.data == "host":
        def fn(x):
            return net(x, req, TargetDevice=target)
        impl = Impl(fn, lambda r: _pg_np(r, req), pools["host"])
    else:
        def fn(x):  # device data in, device results out (DeviceResults follows the input)
            return net(x, req, TargetDevice=target, DeviceResults=True)
        impl = Impl(fn, lambda r: _pg_np(r, req), pools["torch"] if env.share_torch_inputs else pools["pg"])
    if fused:  # plans are made on a call and kept: make this net's with the fusion on
        os.environ["PORTGRAD_FUSED_MLP"] = "1"
        try:
            fn(impl.pool[0])
        finally:
            del os.environ["PORTGRAD_FUSED_MLP"]
    return impl


def _torch_mlp_model(torch, spec, weights, dev, requires_grad):
    layers = []
    for i, (W, b) in enumerate(weights):
        lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            if b is not None:
                lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append({"Tanh": torch.nn.Tanh, "Ramp": torch.nn.ReLU}[spec.act]())
    model = torch.nn.Sequential(*layers).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(requires_grad)
    return model


def _torch_cnn_fn(torch, spec, weights, dev, requires_grad):
    from .peers.torch_cpu import cnn_function
    ts = [(torch.from_numpy(W).to(dev).requires_grad_(requires_grad),
           torch.from_numpy(b).to(dev).requires_grad_(requires_grad)) for W, b in weights]
    return cnn_function(spec, ts), [t for wb in ts for t in wb]


def torch_body(env, case, weights):
    """The eager computation on a CUDA tensor x (no synchronisation): forward; the input gradient of
    sum(output); or all parameter gradients and the input gradient of sum(output)."""
    torch, dev = env.torch, env.tdev
    want_params = case.kind == "fwd_bwd"
    if isinstance(case.spec, CnnSpec):
        model, params = _torch_cnn_fn(torch, case.spec, weights, dev, want_params)
    else:
        model = _torch_mlp_model(torch, case.spec, weights, dev, want_params)
        params = list(model.parameters())  # W0, b0, W1, b1, ...: portgrad's order and shapes

    if case.kind == "fwd":
        def body(x):
            with torch.no_grad():
                return model(x)
        return body
    if case.kind == "igrad":
        def body(x):
            xt = x.detach().requires_grad_(True)  # a new view: the pool tensor stays usable by portgrad
            (dx,) = torch.autograd.grad(model(xt).sum(), xt)
            return dx
        return body

    def body(x):  # fwd_bwd
        xt = x.detach().requires_grad_(True)
        return list(torch.autograd.grad(model(xt).sum(), params + [xt]))
    return body


def torch_impl(env, case, weights, pools, key) -> Impl:
    torch, dev = env.torch, env.tdev
    sync = torch.cuda.synchronize
    if isinstance(case.spec, GemmSpec):
        W = torch.from_numpy(weights[0][0]).to(dev)      # (n, k): Y = X·Wᵀ, the LinearLayer's product
        Wt = W.t()
        C = torch.empty((case.spec.m, case.spec.n), dtype=torch.float32, device=dev)
        tf32 = key == "torch-tf32"

        def fn(x):
            if tf32:
                set_tf32(torch, True)
            try:
                torch.matmul(x, Wt, out=C)
                sync(dev)
            finally:
                if tf32:
                    set_tf32(torch, False)
            return C
        return Impl(fn, _torch_np, pools["torch"])

    body = torch_body(env, case, weights)
    if key == "torch" and case.data == "host":
        def fn(x):  # NumPy in, NumPy out: both copies are timed (.cpu() waits for the GPU)
            r = body(torch.from_numpy(x).to(dev))
            return [t.cpu().numpy() for t in r] if isinstance(r, list) else r.cpu().numpy()
        return Impl(fn, lambda r: r if isinstance(r, list) else [r], pools["host"])

    if key == "torch":
        def fn(x):
            r = body(x)
            sync(dev)
            return r
        return Impl(fn, _torch_np, pools["torch"])

    # torch-graph: the same eager code captured once in a CUDA graph (whole-network capture; static
    # input buffer), replayed per call after copying the call's input into the buffer.
    static_x = pools["torch"][0].clone()
    stream = torch.cuda.Stream(dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warms up autograd, cuBLAS workspaces and cuDNN's algorithm choice
            body(static_x)
    torch.cuda.current_stream(dev).wait_stream(stream)
    sync(dev)
    graph = torch.cuda.CUDAGraph()
    # Captured on a stream of its own: PyTorch keys cuBLAS workspaces by stream, and a graph captured
    # on the shared default capture stream can replay into a workspace that an earlier case's graph
    # released (pytorch/pytorch#193402; an illegal address on the H200 in the fwd+bwd case).
    with torch.cuda.graph(graph, stream=stream):
        static_out = body(static_x)

    def fn(x, _keep=stream):  # the capture stream lives as long as its graph
        static_x.copy_(x)
        graph.replay()
        sync(dev)
        return static_out
    return Impl(fn, _torch_np, pools["torch"])


# --------------------------------------------------------------------------- inputs
def make_pools(env, case, smoke) -> dict:
    """The same random non-zero float32 inputs for everyone: on the host, as torch CUDA tensors
    (read in place by portgrad too, off the emulator) and as portgrad DeviceArrays where torch has
    no CUDA device."""
    s = case.spec
    shape = (s.m, s.k) if isinstance(s, GemmSpec) else s.input_shape()
    per = int(np.prod(shape)) * 4
    count = 2 if smoke else max(2, min(8, POOL_BYTES // max(per, 1)))
    rng = np.random.default_rng(12345)
    host = []
    for _ in range(count):
        a = rng.random(shape, dtype=np.float32)
        a *= 2
        a -= 1
        a[a == 0] = 0.5
        host.append(a)
    pools = {"host": host}
    if case.data == "device":
        if env.torch is not None:
            pools["torch"] = [env.torch.from_numpy(a).to(env.tdev) for a in host]
            env.sync()
        if not env.share_torch_inputs:
            pools["pg"] = [env.gpu.DeviceArray.from_numpy(a, device=env.device) for a in host]
    return pools


def build_portgrad(case):
    """The portgrad net of a case and its arrays [(W, b or None), ...] (float32, copied by the peers)."""
    pg = _pg()
    s = case.spec
    if isinstance(s, GemmSpec):
        net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(s.n, biases=False)], input=s.k), seed=0)
        return net, [0], [(np.ascontiguousarray(pg.NetExtract(net, (0, "Weights"))), None)]
    if isinstance(s, CnnSpec):
        return build_cnn(s)
    return build_net(s)


# --------------------------------------------------------------------------- checking
def compare(ref, got):
    """None when `got` matches `ref` within a loose float32 tolerance, else what differs.

    Entries must agree within 1e-3 relative, with an absolute floor of 1e-3 × the array's largest
    value; failing that, the arrays still pass when their relative (Frobenius) error is below 5e-3
    and no entry is off by 5% of the largest value: different but correct summation orders (cuBLAS
    split-K, a ReLU pre-activation within rounding of 0 switching sides) stay inside this, a
    semantic error (a transpose, a missing bias, a mean for a sum, garbage) does not."""
    if len(ref) != len(got):
        return f"{len(got)} results, expected {len(ref)}"
    for i, (a, b) in enumerate(zip(ref, got)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return f"result {i}: shape {b.shape}, expected {a.shape}"
        if not a.size:
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.all(np.isfinite(b64)):
            return f"result {i}: {int(np.sum(~np.isfinite(b64)))} non-finite entries"
        scale = float(np.max(np.abs(a64)))
        diff = np.abs(b64 - a64)
        close = bool(np.all(diff <= 1e-3 * np.abs(a64) + 1e-3 * scale + 1e-7))
        norm = float(np.linalg.norm(a64))
        rel = float(np.linalg.norm(b64 - a64)) / max(norm, 1e-300)
        if not close:
            close = norm > 0 and rel < 5e-3 and float(diff.max()) <= 0.05 * scale
        if not close:
            return (f"result {i}: max abs difference {float(diff.max()):.3g} (largest |value| {scale:.3g}), "
                    f"relative error {rel:.2g}")
    return None


def _rows_of(results, rows):
    return [r[:rows] for r in results]


def cpu_reference(case, net, positions, host_x):
    """portgrad on the CPU, where that is cheap: row-wise results (outputs, input gradients) on the
    first CPU_CHECK_ROWS examples; results summed over the batch only below CPU_CHECK_FLOPS.
    Returns (results, rows compared or None for all) or (None, why not)."""
    req = portgrad_request(case, positions)
    if case.kind == "fwd_bwd":
        if case.flops() > CPU_CHECK_FLOPS:
            return None, f"no CPU check ({case.flops() / 1e9:.0f} GFLOP)"
        return _pg_np(net(host_x, req), req), None
    if case.batch is None or case.batch <= CPU_CHECK_ROWS:
        return _pg_np(net(host_x, req), req), None
    return _pg_np(net(np.ascontiguousarray(host_x[:CPU_CHECK_ROWS]), req), req), CPU_CHECK_ROWS


# --------------------------------------------------------------------------- one case
def impls_of(env, case) -> list:
    keys = ["portgrad"] + (["portgrad-fused"] if case.group in ("small", "tiny") else [])
    if isinstance(case.spec, GemmSpec):
        return keys + (["torch", "torch-tf32"] if "torch" in env.peers else [])
    keys += [k for k in env.peers if k == "torch" or case.data == "device"]
    return keys


def run_case(env, case, args) -> dict:
    res = {"name": case.name, "group": case.group, "title": case.title, "kind": case.kind, "data": case.data,
           "flops": case.flops(), "show_tflops": case.tflops, "show_ceiling": case.ceiling,
           "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(case.spec).items()}, "rows": []}
    keys = impls_of(env, case)
    for k in keys:
        name = GEMM_TORCH_NAME if (k == "torch" and isinstance(case.spec, GemmSpec)) else IMPL_NAMES[k]
        res["rows"].append({"impl": k, "name": name})
    if env.torch is None:
        res["rows"].append({"impl": "torch", "name": IMPL_NAMES["torch"], "status": "skipped",
                            "detail": env.torch_skip})
    rows = {r["impl"]: r for r in res["rows"]}

    net, positions, weights = build_portgrad(case)
    pools = make_pools(env, case, args.smoke)
    impls, results = {}, {}
    # Build every implementation and compute one result each (untimed), then check, then time.
    for k in keys:
        try:
            impl = portgrad_impl(env, case, net, positions, pools, fused=k == "portgrad-fused") \
                if k.startswith("portgrad") else torch_impl(env, case, weights, pools, k)
            r = impl.fn(impl.pool[0])
            results[k] = [np.array(a) for a in impl.to_numpy(r)]
            impls[k] = impl
        except Exception as e:  # noqa: BLE001 - one failing implementation must not end the run
            rows[k].update(status="error", detail=f"{type(e).__name__}: {e}")
            if args.verbose:
                traceback.print_exc()

    # The correctness guard: portgrad's GPU result against PyTorch's and (where cheap) portgrad's CPU
    # result; PyTorch's against portgrad's CPU result, or against portgrad's GPU result.
    cpu, cpu_rows = None, None
    if not args.no_cpu_check:
        try:
            cpu, cpu_rows = cpu_reference(case, net, positions, pools["host"][0])
        except Exception as e:  # noqa: BLE001
            cpu, cpu_rows = None, f"CPU check failed: {type(e).__name__}: {e}"
    cpu_note = cpu_rows if cpu is None else None
    for k in impls:
        checks, bad = [], []
        if k == "torch-tf32":
            rows[k]["check"] = {"status": "unchecked", "detail": "TF32 (reduced precision): for information"}
            continue
        if cpu is not None:
            got = results[k] if cpu_rows is None else _rows_of(results[k], cpu_rows)
            what = "portgrad CPU" + ("" if cpu_rows is None else f" (first {cpu_rows} examples)")
            checks.append(what)
            d = compare(cpu, got)
            if d:
                bad.append(f"vs {what}: {d}")
        # PyTorch eager against portgrad's GPU result only where there is no CPU reference: a wrong
        # portgrad GPU result must not mark the peer's row too.
        other = {"portgrad": "torch", "portgrad-fused": "portgrad", "torch": "portgrad" if cpu is None else None,
                 "torch-graph": "torch"}.get(k)
        if other in results:
            checks.append(rows[other]["name"])
            d = compare(results[other], results[k])
            if d:
                bad.append(f"vs {rows[other]['name']}: {d}")
        if bad:
            rows[k]["check"] = {"status": "MISMATCH", "against": checks, "detail": "; ".join(bad)}
        elif checks:
            rows[k]["check"] = {"status": "ok", "against": checks}
        else:
            rows[k]["check"] = {"status": "unchecked", "detail": cpu_note or "nothing to compare with"}
    results = None

    for k in keys:
        impl = impls.pop(k, None)
        if impl is None:
            continue
        try:
            t = time_calls(impl.fn, impl.pool, args.repeat, args.min_time, args.warmup, min_warmup_calls=3,
                           max_batches=MAX_BATCHES, smoke=args.smoke)
            rows[k].update(status="ok", **t)
            rows[k]["tflops"] = case.flops() / t["median_s"] / 1e12
        except Exception as e:  # noqa: BLE001
            rows[k].update(status="error", detail=f"{type(e).__name__}: {e}")
            if args.verbose:
                traceback.print_exc()
        finally:
            impl = None
            env.free(torch_cache=not impls)  # the torch-graph implementation may still be waiting
    pools = net = None
    env.free()
    base = rows["portgrad"].get("median_s") if rows["portgrad"].get("status") == "ok" else None
    for r in res["rows"]:
        if r.get("status") == "ok" and base:
            r["ratio"] = r["median_s"] / base
    return res


def add_ceiling(cases, ceiling_res):
    """Each large-MLP row's TFLOP/s as a fraction of the card's measured float32 ceiling (torch.matmul,
    TF32 off) and of portgrad's own large product."""
    if ceiling_res is None:
        return
    by = {r["impl"]: r for r in ceiling_res["rows"] if r.get("status") == "ok"}
    cublas = by.get("torch", {}).get("tflops")
    own = by.get("portgrad", {}).get("tflops")
    for c in cases:
        if not c.get("show_ceiling"):
            continue
        c["ceiling"] = {"cublas_fp32_tflops": cublas, "portgrad_product_tflops": own, "case": ceiling_res["name"]}
        for r in c["rows"]:
            if r.get("status") == "ok":
                if cublas:
                    r["of_ceiling"] = r["tflops"] / cublas
                if own:
                    r["of_portgrad_product"] = r["tflops"] / own


# --------------------------------------------------------------------------- reporting
def fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def case_table(res) -> str:
    tf, ceil = res["show_tflops"], res["show_ceiling"]
    head = ["implementation", "median", "min", "time / portgrad's"] + (["TFLOP/s"] if tf else []) + \
        (["of fp32 ceiling"] if ceil else []) + ["check"]
    lines = [f"#### `{res['name']}` — {res['title']}", "", "| " + " | ".join(head) + " |",
             "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for r in res["rows"]:
        name = f"**{r['name']}**" if r["impl"] == "portgrad" else r["name"]
        chk = r.get("check", {})
        if chk.get("status") == "MISMATCH":
            check = f"⚠ **MISMATCH** {chk['detail']}"
        elif chk.get("status") == "ok":
            check = "ok (vs " + ", ".join(chk["against"]) + ")"
        else:
            check = chk.get("detail", "")
        if r.get("status") == "ok":
            cells = [name, fmt_time(r["median_s"]), fmt_time(r["min_s"]),
                     f"{r['ratio']:.2f}×" if "ratio" in r else "—"]
            if tf:
                cells.append(f"{r['tflops']:.3g}" if r["tflops"] >= 0.01 else f"{r['tflops']:.2g}")
            if ceil:
                cells.append(f"{r['of_ceiling']:.2f}" if "of_ceiling" in r else "—")
        else:
            detail = "see the header" if r.get("status") == "skipped" else r.get("detail", "")
            cells = [name, f"{r.get('status', '?')}: {detail}", "", ""] + [""] * (tf + ceil)
        cells.append(check)
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _ok(results, case, impl):
    r = results.get(case, {}).get(impl)
    if not r or r.get("status") != "ok":
        return None
    return r


def goals(cases) -> list:
    """(goal, measured, verdict) — measured and reported, never asserted. A portgrad row that failed
    its check counts as not measured."""
    res = {c["name"]: {r["impl"]: r for r in c["rows"]} for c in cases}
    out = []

    def portgrad_ok(name):
        r = _ok(res, name, "portgrad")
        return r if r and r.get("check", {}).get("status") != "MISMATCH" else None

    parts, ok = [], True
    for c in cases:
        if c["group"] != "large":
            continue
        r = portgrad_ok(c["name"])
        if r is None or "of_ceiling" not in r:
            continue
        parts.append(f"{c['name']} {r['of_ceiling']:.2f} ({r['tflops']:.3g} TFLOP/s)")
        ok = ok and r["of_ceiling"] >= 0.9
    out.append(("large MLP ≥ 0.9× the cuBLAS float32 ceiling (TFLOP/s of torch.matmul 8192³, TF32 off)",
                "; ".join(parts) or "not measured", ("met" if ok else "**missed**") if parts else "not measured"))
    for group, text in (("small", "small MLP (width 64) ahead of PyTorch"),
                        ("tiny", "batch-1 latency ahead of PyTorch")):
        for peer, suffix in (("torch", "eager"), ("torch-graph", "CUDA graph (information)")):
            parts, ok = [], True
            for c in cases:
                if c["group"] != group:
                    continue
                p, q = portgrad_ok(c["name"]), _ok(res, c["name"], peer)
                if p is None or q is None:
                    continue
                ratio = q["median_s"] / p["median_s"]
                parts.append(f"{c['name']} {ratio:.2f}×")
                ok = ok and ratio >= 1.0
            if peer == "torch-graph" and not parts:
                continue
            verdict = ("met" if ok else "**missed**") if parts else "not measured"
            out.append((f"{text} {suffix}", "; ".join(parts) or "not measured", verdict))
    return out


def goals_table(cases) -> str:
    lines = ["| goal | measured (PyTorch time / portgrad's, or fraction of the ceiling) | verdict |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {v} |" for g, m, v in goals(cases)]
    return "\n".join(lines)


def machine_header(m) -> str:
    lines = [f"- device: {m['device_name']} (portgrad: {m['portgrad_device_name']}; backend {m['portgrad_backend']})"
             + ("; **EMULATED on the CPU: timings are meaningless**" if m["emulated"] else ""),
             f"- driver {m.get('driver_version') or '?'}, CUDA driver API {m.get('cuda_driver_api') or '?'}; "
             f"torch {m.get('torch_version') or 'not used'} (CUDA {m.get('torch_cuda') or '-'}, cuDNN "
             f"{m.get('cudnn') or '-'}; {m.get('torch_tf32') or '-'}); portgrad {m['portgrad_version']}",
             f"- host {m['hostname']}: {m['cpu_model']}, {m['platform']}, Python {m['python']}",
             f"- {m['timestamp']}, portgrad commit {m['git_commit']}"]
    if m.get("peer_skipped"):
        lines.append(f"- PyTorch peer skipped: {m['peer_skipped']}")
    return "\n".join(lines)


def report(data) -> str:
    parts = ["### Device", "", machine_header(data["machine"]), ""]
    for c in data["cases"]:
        parts += [case_table(c), ""]
    parts += ["### Goals", "", data["goals"], ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- the machine
def _cuda_driver_api():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return f"{v.value // 1000}.{v.value % 1000 // 10}"
    except (OSError, AttributeError):
        pass
    return None


def _nvidia_smi(device):
    try:
        out = subprocess.run(["nvidia-smi", "-i", str(device), "--query-gpu=name,driver_version,clocks.max.sm,"
                              "clocks.max.mem,power.limit,memory.total,pci.bus_id", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    keys = ["name", "driver_version", "max_sm_clock", "max_mem_clock", "power_limit", "memory_total", "pci_bus_id"]
    return dict(zip(keys, [s.strip() for s in out.stdout.strip().splitlines()[0].split(",")]))


def machine_info(env, args) -> dict:
    pg = env.pg
    smi = {} if env.emulated else _nvidia_smi(env.device)
    m = {
        "hostname": socket.gethostname(),
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "device_index": env.device,
        "emulated": env.emulated,
        "portgrad_version": pg.__version__,
        "portgrad_backend": getattr(env.gpu, "name", env.gpu.__name__),
        "portgrad_device_name": env.gpu.device_name(env.device),
        "driver_version": smi.get("driver_version"),
        "nvidia_smi": smi,
        "cuda_driver_api": None if env.emulated else _cuda_driver_api(),
        "numpy_version": np.__version__,
        "peer_skipped": env.torch_skip,
        "options": {k: getattr(args, k) for k in ("repeat", "min_time", "warmup", "smoke", "cases", "no_cpu_check")},
    }
    t = env.torch
    if t is not None:
        props = t.cuda.get_device_properties(env.device)
        m.update(torch_version=t.__version__, torch_cuda=t.version.cuda, cudnn=t.backends.cudnn.version(),
                 torch_device_name=t.cuda.get_device_name(env.device),
                 torch_tf32=", ".join(f"{k}={v}" for k, v in tf32_state(t).items()),
                 cudnn_benchmark=t.backends.cudnn.benchmark,
                 device_properties={"compute_capability": f"{props.major}.{props.minor}",
                                    "multiprocessors": props.multi_processor_count,
                                    "total_memory": props.total_memory})
    else:
        try:
            import torch
            m["torch_version"] = torch.__version__
        except Exception:  # noqa: BLE001
            pass
    m["device_name"] = m.get("torch_device_name") or m["portgrad_device_name"]
    return m


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, metavar="PATTERN",
                   help="run the cases whose name matches this regular expression (a substring works)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help="PyTorch variants beside portgrad (default: %(default)s); 'none' for portgrad alone")
    p.add_argument("--device", type=int, default=0, help="the CUDA device index (default 0)")
    p.add_argument("--repeat", type=int, default=11, metavar="N",
                   help="timed batches per implementation, at least (default %(default)s; "
                        "calls under 100 µs get ≥ 31)")
    p.add_argument("--min-time", type=float, default=1.0, metavar="SECONDS",
                   help="keep adding batches until this much time is spent per implementation (default %(default)s)")
    p.add_argument("--warmup", type=float, default=0.5, metavar="SECONDS",
                   help="untimed calls before timing, at least 3 (default %(default)s)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, few repeats: a smoke test (for the emulator / CI), not a measurement")
    p.add_argument("--no-cpu-check", action="store_true", help="skip the check against portgrad on the CPU")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="where to write the JSON (default bench/results/gpu-<device>-<timestamp>.json)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failing implementations")
    args = p.parse_args(argv)
    if args.smoke:
        args.repeat, args.min_time, args.warmup = min(args.repeat, 3), 0.0, 0.0
    peers = [] if args.peers.strip() in ("", "none") else [s.strip() for s in args.peers.split(",") if s.strip()]
    unknown = [s for s in peers if s not in PEERS]
    if unknown:
        p.error(f"unknown peer {unknown[0]!r}; peers are {', '.join(PEERS)}")
    if "torch-graph" in peers and "torch" not in peers:
        peers.insert(0, "torch")  # the graph rows are checked against eager
    args.peers = peers
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    all_cases = make_cases(args.smoke)
    if args.list:
        for c in all_cases:
            print(f"{c.name:22s} {c.title}")
        return 0
    cases = [c for c in all_cases if args.cases is None or re.search(args.cases, c.name)]
    if not cases:
        print(f"no case matches {args.cases!r}; --list shows them", file=sys.stderr)
        return 2
    # The large-MLP cases report a fraction of the measured matrix-product ceiling: measure it too.
    if any(c.ceiling for c in cases) and not any(c.group == "ceiling" for c in cases):
        cases.insert(0, next(c for c in all_cases if c.group == "ceiling"))

    env = Env(args.device, args.peers)
    if env.gpu is None:
        print(f"portgrad GPU benchmarks skipped: {env.gpu_error}")
        if env.torch_skip:
            print(f"PyTorch peer skipped: {env.torch_skip}")
        return 0
    if env.torch_skip:
        print(f"PyTorch peer skipped: {env.torch_skip}", flush=True)
    machine = machine_info(env, args)
    print(machine_header(machine) + "\n", flush=True)

    done, ceiling = [], None
    for case in cases:
        res = run_case(env, case, args)
        if case.group == "ceiling":
            ceiling = res
        add_ceiling([res], ceiling)
        done.append(res)
        print(case_table(res) + "\n", flush=True)

    data = {"machine": machine, "cases": done}
    data["goals"] = goals_table(done)
    data["markdown"] = report(data)
    print("### Goals\n\n" + data["goals"] + "\n")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.json or os.path.join(RESULTS_DIR, f"gpu-{_slug(machine['device_name'])}-{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False, default=str)
    print(f"JSON written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
