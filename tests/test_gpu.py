"""TargetDevice="GPU": every layer, every NetPortGradient form, graphs and chains on the GPU against
the CPU result; device arrays in and out; the bad-input suite on the device.

On a machine with a CUDA device these run the CUDA kernels; elsewhere (conftest.py) they run the
same kernel sources in portgrad._gpu_emulator, the CPU emulator of the CUDA device model.
"""
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import portgrad as pg
from portgrad import _gpu
from child_env import child_env
from layer_registry import PARAMS
from plan_requests import request

pytestmark = pytest.mark.cuda
NPG = pg.NetPortGradient
EMULATED = os.environ.get("PORTGRAD_GPU_EMULATOR", "0") not in ("", "0")


@pytest.fixture(scope="module", autouse=True)
def gpu():
    if not _gpu.available():
        pytest.skip("no GPU backend (no CUDA device and the emulator is off)")
    return _gpu.module()


def rng_for(*key):
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


TOL = {"Real32": dict(rtol=2e-5, atol=2e-6), "Real64": dict(rtol=1e-11, atol=1e-13)}


def assert_same(gpu, cpu, precision, what):
    """GPU against CPU results (arrays, or dicts of them), scaled to each array's magnitude."""
    if isinstance(cpu, dict):
        assert set(gpu) == set(cpu), what
        for k in cpu:
            assert_same(gpu[k], cpu[k], precision, f"{what}[{k!r}]")
        return
    gpu = np.asarray(gpu)
    cpu = np.asarray(cpu)
    assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype, (what, gpu.shape, cpu.shape, gpu.dtype, cpu.dtype)
    if cpu.dtype.kind != "f":
        np.testing.assert_array_equal(gpu, cpu, err_msg=what)
        return
    tol = TOL[precision]
    scale = float(np.max(np.abs(cpu))) if cpu.size else 0.0
    np.testing.assert_allclose(gpu, cpu, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1.0), err_msg=what)


def both(net, data, spec, **options):
    cpu = net(data, spec, TargetDevice="CPU", **options)
    gpu = net(data, spec, TargetDevice="GPU", **options)
    return gpu, cpu


# ------------------------------------------------------------------------------ every layer
@pytest.mark.parametrize("case", PARAMS)
@pytest.mark.parametrize("precision", ["Real32", "Real64"])
@pytest.mark.parametrize("batch", [None, 3], ids=["single", "b3"])
def test_layer_outputs_and_all_gradients(case, precision, batch):
    net = case.net()
    rng = rng_for(case.id, precision, batch)
    data = case.sample(rng, batch)
    spec = [case.out, NPG(pg.All)]
    gpu, cpu = both(net, data, spec, WorkingPrecision=precision)
    assert_same(gpu, cpu, precision, f"{case.id}")
    # An imposed output gradient (a vector-Jacobian product) and each input port on its own.
    y = cpu[case.out]
    data[NPG(case.out)] = rng.uniform(-1, 1, np.shape(y))
    for port in case.real_ports:
        gpu, cpu = both(net, data, NPG(port), WorkingPrecision=precision)
        assert_same(gpu, cpu, precision, f"{case.id} NetPortGradient({port!r}) imposed")


@pytest.mark.parametrize("case", PARAMS)
@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_layer_tangents(case, precision):
    """Forward mode (NetPortTangent) on the device: every input's and array's tangent at once."""
    net = case.net()
    rng = rng_for(case.id, precision, "tangent")
    data = case.sample(rng, 3)
    for port in case.real_ports:
        data[pg.NetPortTangent(port)] = rng.uniform(-1, 1, np.shape(data[port]))
    for name in case.params:
        data[pg.NetPortTangent(name)] = rng.uniform(-1, 1, np.shape(pg.NetExtract(net, name)))
    if not any(isinstance(k, pg.NetPortTangent) for k in data):
        pytest.skip("nothing to impose a tangent on")
    gpu, cpu = both(net, data, pg.NetPortTangent(case.out), WorkingPrecision=precision)
    assert_same(gpu, cpu, precision, f"{case.id} NetPortTangent")


@pytest.mark.parametrize("case", [c for c in PARAMS if c.values[0].params])
def test_layer_per_example_gradients(case):
    net = case.net()
    data = case.sample(rng_for(case.id, "per-example"), 3)
    spec = [pg.NetPortGradient(name, PerExample=True) for name in case.params]
    for precision in ("Real32", "Real64"):
        gpu, cpu = both(net, data, spec, WorkingPrecision=precision)
        assert_same(gpu, cpu, precision, f"{case.id} PerExample")


@pytest.mark.parametrize("case", PARAMS)
def test_layer_second_order(case):
    """Tangents of gradients (Hessian-vector products) on the device, where the layer has them."""
    net = case.net()
    rng = rng_for(case.id, "second")
    data = case.sample(rng, 3)
    for port in case.real_ports:
        data[pg.NetPortTangent(port)] = rng.uniform(-1, 1, np.shape(data[port]))
    for name in case.params:
        data[pg.NetPortTangent(name)] = rng.uniform(-1, 1, np.shape(pg.NetExtract(net, name)))
    spec = [pg.NetPortTangent(NPG(p)) for p in case.real_ports] + [pg.NetPortTangent(NPG(n)) for n in case.params]
    if not spec:
        pytest.skip("nothing to differentiate")
    try:
        cpu = net(data, spec, WorkingPrecision="Real64")
    except ValueError as e:
        assert "no second derivatives yet" in str(e)
        with pytest.raises(ValueError, match="no second derivatives yet"):
            net(data, spec, WorkingPrecision="Real64", TargetDevice="GPU")
        return
    gpu = net(data, spec, WorkingPrecision="Real64", TargetDevice="GPU")
    assert_same(gpu, cpu, "Real64", f"{case.id} second order")


@pytest.mark.parametrize("method", ["Forward", "Reverse"])
def test_jacobians(method):
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(6), "Tanh", pg.LinearLayer(4), pg.SoftmaxLayer()], input=3), seed=8)
    x = rng_for("jacobian", method).standard_normal((5, 3))
    for precision in ("Real32", "Real64"):
        gpu, cpu = both(net, x, pg.NetPortJacobian("Input", Method=method), WorkingPrecision=precision)
        assert_same(gpu, cpu, precision, f"NetPortJacobian {method} {precision}")


@pytest.mark.parametrize("case", PARAMS)
def test_layer_train_mode_matches_cpu(case):
    """Train mode: dropout masks and batch statistics are the CPU's, bit for bit in the mask."""
    rng = rng_for(case.id, "train")
    data = case.sample(rng, 4)
    cpu_net, gpu_net = case.net(), case.net()
    spec = [case.out, NPG(pg.All)]
    cpu = cpu_net(data, spec, NetEvaluationMode="Train", RandomSeeding=11, WorkingPrecision="Real64")
    gpu = gpu_net(data, spec, NetEvaluationMode="Train", RandomSeeding=11, WorkingPrecision="Real64",
                  TargetDevice="GPU")
    assert_same(gpu, cpu, "Real64", f"{case.id} Train")
    # Neither net changed (Train mode uses batch statistics; a net is a value).
    for name in case.params:
        assert_same(pg.NetExtract(gpu_net, name), pg.NetExtract(cpu_net, name), "Real32", f"{case.id} {name}")


# ------------------------------------------------------------------------------ nets
def mlp():
    return pg.NetInitialize(pg.NetChain([pg.LinearLayer(17), "Tanh", pg.LinearLayer(9), "Ramp", pg.LinearLayer(3),
                                         pg.SoftmaxLayer()], input=5), seed=3)


def residual_graph():
    g = pg.NetGraph({"a": pg.LinearLayer(8), "act": pg.ElementwiseLayer("GELU"), "b": pg.LinearLayer(8),
                     "sum": pg.ThreadingLayer("Plus"), "out": pg.LinearLayer(2)},
                    [("a", "act", "b"), (["act", "b"], "sum"), ("sum", "out")], input=6)
    return pg.NetInitialize(g, seed=5)


def lenet():
    return pg.NetInitialize(pg.NetChain([
        pg.ConvolutionLayer(4, 3, padding=1), pg.BatchNormalizationLayer(), "Ramp", pg.PoolingLayer(2, 2),
        pg.ConvolutionLayer(6, 3, stride=2), "Tanh", pg.FlattenLayer(), pg.DropoutLayer(0.25), pg.LinearLayer(10),
        pg.SoftmaxLayer()], input=(2, 10, 10)), seed=7)


# name: (constructor, input shape, its first layer)
NETS = {"mlp": (mlp, (5,), 0), "residual": (residual_graph, (6,), "a"), "lenet": (lenet, (2, 10, 10), 0)}
FORMS = {
    "output": lambda first: None,
    "input-gradient": lambda first: NPG("Input"),
    "all": lambda first: [NPG(pg.All)],
    "weights-of-first": lambda first: NPG((first, "Weights")),
    "probe+output+input": lambda first: [pg.NetPort(first, "Output"), "Output", NPG("Input")],
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_nets_every_gradient_form(name, form, precision):
    make, shape, first = NETS[name]
    net = make()
    x = rng_for(name, form).normal(size=(4,) + shape)
    gpu, cpu = both(net, x, FORMS[form](first), WorkingPrecision=precision)
    assert_same(gpu, cpu, precision, f"{name} {form}")


def test_repeated_calls_replay_with_new_data():
    """The second and later calls of a plan replay a captured graph: inputs must still be read anew."""
    net = mlp()
    rng = rng_for("replay")
    for k in range(4):
        x = rng.normal(size=(3, 5))
        g = rng.normal(size=(3, 3))
        data = {"Input": x, NPG("Output"): g}
        gpu, cpu = both(net, data, ["Output", NPG("Input"), NPG(pg.All)])
        assert_same(gpu, cpu, "Real32", f"call {k}")


def test_random_chains():
    rng = rng_for("chains")
    acts = ["Tanh", "Ramp", "LogisticSigmoid", "GELU", "SoftPlus", "ELU", "Swish", "Sin"]
    for trial in range(6):
        layers, width = [], int(rng.integers(1, 9))
        for _ in range(int(rng.integers(1, 5))):
            layers += [pg.LinearLayer(int(rng.integers(1, 40))), str(rng.choice(acts))]
        net = pg.NetInitialize(pg.NetChain(layers, input=width), seed=trial)
        x = rng.normal(size=(int(rng.integers(1, 70)), width))
        gpu, cpu = both(net, x, ["Output", NPG("Input"), NPG(pg.All)], WorkingPrecision="Real64")
        assert_same(gpu, cpu, "Real64", f"chain {trial}")


def test_large_linear_uses_the_big_gemm_path():
    """Sizes past the GEMM's tiles and its library threshold."""
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(300), "Ramp", pg.LinearLayer(70)], input=130), seed=1)
    x = rng_for("big").normal(size=(67, 130))
    gpu, cpu = both(net, x, ["Output", NPG("Input"), NPG(pg.All)])
    assert_same(gpu, cpu, "Real32", "large linear")


# ------------------------------------------------------------------------------ the fused MLP
def gpu_plan(net, batch, precision="Real32", outputs=(0,), input_grads=(), param_grads=(), imposed=(), train=False):
    c = net._core_net()
    req = request(c, outputs, input_grads, param_grads, imposed, precision=precision, device="GPU",
                  mode="Train" if train else "Test")
    return c.describe_plan(req, batch)


FUSED_MLPS = {
    # name: (layers, input width); the bench's small MLP, odd widths, no biases, a function last,
    # one layer, the widest that a block holds with its backward pass
    "2-64-64-64-1 tanh": ([64, "Tanh", 64, "Tanh", 64, "Tanh", 1], 2),
    "odd widths": ([17, "GELU", pg.LinearLayer(33, biases=False), "Sin", 5, "LogisticSigmoid"], 3),
    "one layer": ([pg.LinearLayer(7)], 9),
    "ramp, no biases": ([pg.LinearLayer(31, biases=False), "Ramp", pg.LinearLayer(2, biases=False)], 16),
    "128 wide": ([128, "Swish", 128, "Tanh"], 128),
}


@pytest.mark.parametrize("name", FUSED_MLPS)
@pytest.mark.parametrize("precision", ["Real32", "Real64"])
@pytest.mark.parametrize("batch", [None, 5, 64, 211], ids=["single", "b5", "b64", "b211"])
def test_fused_mlp_every_gradient_form(name, precision, batch, monkeypatch):
    """With PORTGRAD_FUSED_MLP=1, a chain of LinearLayers and elementwise functions runs as one fused
    kernel on the GPU, with the CPU's results: outputs, input gradients, every array gradient,
    imposed output gradients."""
    monkeypatch.setenv("PORTGRAD_FUSED_MLP", "1")
    layers, width = FUSED_MLPS[name]
    net = pg.NetInitialize(pg.NetChain(layers, input=width), seed=3)
    params = list(range(len(net._core_net().params)))
    rows = 1 if batch is None else batch
    plan = gpu_plan(net, rows, precision, input_grads=[0], param_grads=params)
    if name == "128 wide" and precision == "Real64":  # two 128x128 float64 layers do not fit one block
        assert not plan[0].startswith("fused"), plan
    else:
        assert plan[0].startswith("fused MLP") and "with array gradients" in plan[0], plan
    rng = rng_for("fused", name, precision, batch)
    x = rng.normal(size=(width,) if batch is None else (batch, width))
    gpu, cpu = both(net, x, ["Output", NPG("Input"), NPG(pg.All)], WorkingPrecision=precision)
    assert_same(gpu, cpu, precision, name)
    out = np.asarray(cpu["Output"])
    g = rng.normal(size=out.shape)
    data = {"Input": x, NPG("Output"): g}
    gpu, cpu = both(net, data, [NPG("Input"), NPG((0, "Weights"))], WorkingPrecision=precision)
    assert_same(gpu, cpu, precision, f"{name}, imposed output gradient")


def test_fused_mlp_only_where_it_applies(monkeypatch):
    net = pg.NetInitialize(pg.NetChain([64, "Tanh", 64, "Tanh", 1], input=2), seed=0)
    # Opt-in: a kernel per layer by default (and a plan, once made, is kept: another batch size below)
    assert gpu_plan(net, 9)[0] == "forward 0 (LinearLayer) + Tanh"
    monkeypatch.setenv("PORTGRAD_FUSED_MLP", "1")
    assert gpu_plan(net, 10)[0] == "fused MLP 2-64-64-1 Tanh@0 Tanh@1: forward"
    assert gpu_plan(net, 10, input_grads=[0])[0] == "fused MLP 2-64-64-1 Tanh@0 Tanh@1: forward, backward"
    # Train mode, an internal value, a layer other than Linear or elementwise, a layer wider than 128,
    # two functions in a row, a net that starts with a function: a step per layer.
    c = net._core_net()
    probed = c.describe_plan(request(c, [0], probes=[("1", "Output")], device="GPU"), 10)
    others = [gpu_plan(net, 10, train=True), probed,
              gpu_plan(pg.NetInitialize(pg.NetChain([8, "Tanh", pg.SoftmaxLayer()], input=3), seed=0), 4),
              gpu_plan(pg.NetInitialize(pg.NetChain([129, "Tanh", 1], input=3), seed=0), 4),
              gpu_plan(pg.NetInitialize(pg.NetChain([8, "Tanh", "Sin", 1], input=3), seed=0), 4),
              gpu_plan(pg.NetInitialize(pg.NetChain(["Tanh", 8, "Tanh", 1], input=3), seed=0), 4)]
    for lines in others:
        assert not any(line.startswith("fused") for line in lines), lines


def test_fused_mlp_too_big_for_a_block_runs_layer_by_layer(monkeypatch):
    """Weights and activations past one block's shared memory: the per-layer path, same results; and
    PORTGRAD_FUSED_MLP=0 turns the fusion off."""
    monkeypatch.setenv("PORTGRAD_FUSED_MLP", "1")
    net = pg.NetInitialize(pg.NetChain([128, "Tanh", 128, "Tanh", 128, "Tanh", 4], input=100), seed=2)
    params = list(range(len(net._core_net().params)))
    assert not gpu_plan(net, 50, input_grads=[0], param_grads=params)[0].startswith("fused")
    assert gpu_plan(net, 50)[0].startswith("fused")  # its forward pass alone fits
    x = rng_for("big-mlp").normal(size=(50, 100))
    gpu, cpu = both(net, x, ["Output", NPG(pg.All)])
    assert_same(gpu, cpu, "Real32", "too big to fuse")
    small = pg.NetInitialize(pg.NetChain([16, "Tanh", 1], input=2), seed=0)
    monkeypatch.setenv("PORTGRAD_FUSED_MLP", "0")
    assert gpu_plan(small, 3)[0].startswith("forward 0 (LinearLayer)")


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_large_backward_as_plain_products(precision):
    """Large Linear backward steps on the GPU: f' applied into the workspace, then plain products
    (cuBLASLt's where built with it), the bias gradient as a product with ones."""
    net = pg.NetInitialize(pg.NetChain([150, "Tanh", pg.LinearLayer(140, biases=False), 5, "Sin"], input=120), seed=4)
    x = rng_for("plain-backward", precision).normal(size=(130, 120))
    g = rng_for("plain-backward-g", precision).normal(size=(130, 5))
    gpu, cpu = both(net, x, ["Output", NPG("Input"), NPG(pg.All)], WorkingPrecision=precision)
    assert_same(gpu, cpu, precision, "plain backward")
    gpu, cpu = both(net, {"Input": x, NPG("Output"): g}, [NPG("Input"), NPG((0, "Biases"))], WorkingPrecision=precision)
    assert_same(gpu, cpu, precision, "plain backward, imposed")


def test_dropped_nets_give_their_device_memory_back(gpu):
    """Plans, staged inputs and device results are freed with their nets; the cache goes back to the
    driver on empty_cache (what compute-sanitizer's leak check relies on)."""
    import gc

    def use(net):
        x = rng_for("memory").normal(size=(100, 4))
        return [net(x, spec, TargetDevice="GPU", DeviceResults=True, WorkingPrecision=p)
                for spec in ("Output", NPG("Input"), NPG(pg.All)) for p in ("Real32", "Real64")]

    def make():
        return pg.NetInitialize(pg.NetChain([32, "Tanh", 32, "Ramp", 3], input=4), seed=0)

    # A first net of the same kind: whatever a process sets up once on first use is not a net's.
    first = make()
    use(first)
    del first
    gc.collect()
    base = gpu.memory_in_use()
    net = make()
    res = use(net)
    assert gpu.memory_in_use() > base
    del net, res
    gc.collect()
    assert gpu.memory_in_use() == base
    gpu.empty_cache()
    assert gpu.memory_cached() == 0


def test_refused_requests_take_no_device_memory(gpu):
    """A request the plan refuses (no forward mode, no second derivatives, no per-example gradients)
    is refused before the plan's arena is taken: nothing stays behind on the device."""
    import gc
    net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(3), pg.BatchNormalizationLayer(), "Tanh"], input=2), seed=0)
    x = rng_for("refused").normal(size=(4, 2))
    net(x, TargetDevice="GPU")  # what a process sets up once on first use is not the refusals'
    gc.collect()
    base = gpu.memory_in_use()
    train = dict(TargetDevice="GPU", NetEvaluationMode="Train")
    for data, spec in [(x, NPG((0, "Weights"), PerExample=True)),
                       ({"Input": x, pg.NetPortTangent("Input"): x}, pg.NetPortTangent("Output")),
                       ({"Input": x, pg.NetPortTangent("Input"): x}, pg.NetPortTangent(NPG("Input")))]:
        for _ in range(3):
            with pytest.raises(ValueError, match="BatchNormalizationLayer"):
                net(data, spec, **train)
    gc.collect()
    assert gpu.memory_in_use() == base


# ------------------------------------------------------------------------------ device arrays
def test_device_arrays_in_and_out(gpu):
    net = mlp()
    x = rng_for("dev").normal(size=(4, 5)).astype(np.float32)
    d = gpu.DeviceArray.from_numpy(x)
    assert d.shape == (4, 5) and d.dtype == np.float32 and d.device == 0
    cai = d.__cuda_array_interface__
    assert cai["shape"] == (4, 5) and cai["typestr"] == "<f4" and cai["data"][0] == d.ptr
    np.testing.assert_array_equal(d.numpy(), x)
    cpu = net(x, ["Output", NPG("Input")])
    out = net(d, ["Output", NPG("Input")], TargetDevice="GPU")  # device in: device out
    assert all(isinstance(v, gpu.DeviceArray) for v in out.values())
    assert_same({k: v.numpy() for k, v in out.items()}, cpu, "Real32", "device in, device out")
    host = net(d, "Output", TargetDevice="GPU", DeviceResults=False)
    assert isinstance(host, np.ndarray)
    assert_same(host, cpu["Output"], "Real32", "device in, host out")
    dev = net(x, "Output", TargetDevice="GPU", DeviceResults=True)
    assert isinstance(dev, gpu.DeviceArray) and dev.shape == (4, 3)
    assert_same(np.asarray(dev), cpu["Output"], "Real32", "host in, device out")


def test_device_array_imposed_gradient(gpu):
    net = mlp()
    rng = rng_for("imposed-dev")
    x = rng.normal(size=(2, 5))
    g = rng.normal(size=(2, 3)).astype(np.float32)
    cpu = net({"Input": x, NPG("Output"): g}, NPG("Input"))
    got = net({"Input": x, NPG("Output"): gpu.DeviceArray.from_numpy(g)}, NPG("Input"), TargetDevice="GPU")
    assert_same(np.asarray(got), cpu, "Real32", "imposed gradient from the device")


def test_class_indices_from_the_device(gpu):
    net = pg.NetInitialize(pg.NetChain([pg.EmbeddingLayer(4, 10), pg.FlattenLayer(), pg.LinearLayer(3)], input=(6,)),
                           seed=2)
    idx = rng_for("emb").integers(0, 10, size=(5, 6))
    cpu = net(idx, ["Output", NPG(pg.All)])
    gpu_out = net(gpu.DeviceArray.from_numpy(idx.astype(np.int64)), ["Output", NPG(pg.All)], TargetDevice="GPU",
                  DeviceResults=False)
    assert_same(gpu_out, cpu, "Real32", "embedding with device indices")


class DlpackOnly:
    """A GPU array seen only through DLPack (as JAX's are): no __cuda_array_interface__."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, stream=None):
        return self.array.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def test_dlpack_inputs_are_read_in_place(gpu):
    net = mlp()
    rng = rng_for("dlpack-in")
    x = rng.normal(size=(3, 5)).astype(np.float32)
    g = rng.normal(size=(3, 3)).astype(np.float32)
    d = gpu.DeviceArray.from_numpy(x)
    assert d.__dlpack_device__() == (2, 0)  # kDLCUDA
    cpu = net({"Input": x, NPG("Output"): g}, ["Output", NPG("Input")])
    got = net({"Input": DlpackOnly(d), NPG("Output"): DlpackOnly(gpu.DeviceArray.from_numpy(g))},
              ["Output", NPG("Input")], TargetDevice="GPU")
    assert all(isinstance(v, gpu.DeviceArray) for v in got.values())
    assert_same({k: v.numpy() for k, v in got.items()}, cpu, "Real32", "DLPack inputs")
    # The producer's array outlives the call and is intact (the engine released the tensor it took).
    np.testing.assert_array_equal(d.numpy(), x)
    with pytest.raises(TypeError, match="must have dtype float32; given float64"):
        net(DlpackOnly(gpu.DeviceArray.from_numpy(x.astype(np.float64))), TargetDevice="GPU")


def test_dlpack_round_trip_with_torch(gpu):
    torch = pytest.importorskip("torch")
    if EMULATED or not torch.cuda.is_available():
        pytest.skip("needs PyTorch with CUDA and a CUDA device")
    net = mlp()
    x = torch.randn(8, 5, device="cuda", dtype=torch.float32)
    y = net(x, "Output", TargetDevice="GPU")
    t = torch.from_dlpack(y)
    assert t.is_cuda and tuple(t.shape) == (8, 3)
    np.testing.assert_allclose(t.cpu().numpy(), net(x.cpu().numpy(), "Output"), rtol=2e-5, atol=2e-6)


def test_dlpack_round_trip_with_cupy(gpu):
    cupy = pytest.importorskip("cupy")
    if EMULATED:
        pytest.skip("needs a CUDA device")
    net = mlp()
    x = cupy.random.standard_normal((8, 5), dtype=cupy.float32)
    y = cupy.from_dlpack(net(x, "Output", TargetDevice="GPU"))
    np.testing.assert_allclose(cupy.asnumpy(y), net(cupy.asnumpy(x), "Output"), rtol=2e-5, atol=2e-6)


# ------------------------------------------------------------------------------ bad input on the device
def test_nonfinite_device_input_names_port_and_index(gpu):
    net = mlp()
    x = np.zeros((3, 5), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"port \"Input\" contains NaN at flat index 11"):
        net(gpu.DeviceArray.from_numpy(x), TargetDevice="GPU")
    x[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"an infinity at flat index 11"):
        net(gpu.DeviceArray.from_numpy(x), TargetDevice="GPU")
    with pytest.raises(ValueError, match=r"contains NaN"):
        net(np.full((2, 5), np.nan), TargetDevice="GPU")


def test_device_class_index_out_of_range(gpu):
    net = pg.NetInitialize(pg.NetChain([pg.EmbeddingLayer(3, 4)], input=(2,)), seed=0)
    with pytest.raises(IndexError, match=r": index 9 is out of range for 4 rows of the embedding"):
        net(gpu.DeviceArray.from_numpy(np.array([[1, 9]], np.int64)), TargetDevice="GPU")


def test_device_array_wrong_dtype_shape_and_target(gpu):
    net = mlp()
    d64 = gpu.DeviceArray.from_numpy(np.zeros((2, 5)))
    with pytest.raises(TypeError, match=r"must have dtype float32; given float64"):
        net(d64, TargetDevice="GPU")
    with pytest.raises(ValueError, match=r"expected an array of shape \(5,\).*given a GPU array of shape \(2, 4\)"):
        net(gpu.DeviceArray.from_numpy(np.zeros((2, 4), np.float32)), TargetDevice="GPU")
    with pytest.raises(ValueError, match=r"holds a GPU array; evaluate with TargetDevice=\"GPU\""):
        net(gpu.DeviceArray.from_numpy(np.zeros((2, 5), np.float32)))
    with pytest.raises(ValueError, match=r"DeviceResults=True needs TargetDevice=\"GPU\""):
        net(np.zeros((2, 5)), DeviceResults=True)


class FakeDeviceArray:
    """A host array that claims to be GPU memory through __cuda_array_interface__."""

    def __init__(self, a):
        self.a = a
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (a.ctypes.data, False),
                                          "strides": None, "version": 3}


def test_host_memory_posing_as_gpu_memory_is_refused(gpu):
    net = mlp()
    with pytest.raises(ValueError, match=r'port "Input": the array claims GPU memory.*not in the memory of any GPU'):
        net(FakeDeviceArray(np.zeros((2, 5), np.float32)), TargetDevice="GPU")
    with pytest.raises(ValueError, match=r'imposed on output "Output": the array claims GPU memory'):
        net({"Input": np.zeros((2, 5)), NPG("Output"): FakeDeviceArray(np.zeros((2, 3), np.float32))}, NPG("Input"),
            TargetDevice="GPU")


class RawInterface:
    def __init__(self, cai):
        self.__cuda_array_interface__ = cai


@pytest.mark.parametrize("cai, message", [
    ({}, r"malformed __cuda_array_interface__ \(KeyError"),
    ({"shape": "abc", "typestr": "<f4", "data": (0, False)}, "malformed __cuda_array_interface__"),
    ({"shape": (2, 5), "typestr": 5, "data": (0, False)}, "malformed __cuda_array_interface__"),
    ({"shape": (2, 5), "typestr": "<f4", "data": None}, "malformed __cuda_array_interface__"),
    ({"shape": (2, 5), "typestr": "<f4", "data": (0, False), "strides": (4,)}, r"1 strides for 2 dimensions"),
    ({"shape": (2, 5), "typestr": "<c8", "data": (0, False)}, "must be float32, float64 or int64"),
    (5, "malformed __cuda_array_interface__"),
], ids=["empty", "shape-str", "typestr-int", "data-none", "strides-short", "complex", "not-a-dict"])
def test_malformed_cuda_array_interface(gpu, cai, message):
    with pytest.raises(TypeError, match=message):
        mlp()(RawInterface(cai), TargetDevice="GPU")


def test_bad_target_device(gpu):
    net = mlp()
    x = np.zeros((2, 5))
    with pytest.raises(ValueError, match=r"this machine has \d+ GPU"):
        net(x, TargetDevice=("GPU", 99))
    for bad in ["TPU", ("GPU", -1), ("GPU", "0"), ("CPU", 1), ["GPU", 0]]:
        with pytest.raises(ValueError, match="TargetDevice"):
            net(x, TargetDevice=bad)


def test_host_shape_errors_are_the_cpu_ones():
    net = mlp()
    with pytest.raises(ValueError, match=r"port \"Input\": expected an array of shape \(5,\)"):
        net(np.zeros((2, 4)), TargetDevice="GPU")


# ------------------------------------------------------------------------------ processes
def run_child(code, **env):
    e = child_env()
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not EMULATED, reason="device indices are tested on the emulator's devices")
def test_second_device_index():
    code = """
import numpy as np, portgrad as pg
net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(4), "Tanh"], input=3), seed=0)
x = np.random.default_rng(0).normal(size=(2, 3))
a = net(x, pg.NetPortGradient("Input"))
b = net(x, pg.NetPortGradient("Input"), TargetDevice=("GPU", 1))
d = pg._gpu.module().DeviceArray.from_numpy(x.astype(np.float32), device=1)
c = net(d, "Output", TargetDevice=("GPU", 1))
assert c.device == 1
print(float(np.max(np.abs(a - b))))
"""
    r = run_child(code, PORTGRAD_GPU_EMULATOR="2")
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 1e-5


def test_no_gpu_says_how_to_get_one():
    """Without the emulator, a machine without a CUDA build or device gets the explanation."""
    code = """
import numpy as np, portgrad as pg
net = pg.NetInitialize(pg.NetChain([pg.LinearLayer(2)], input=3), seed=0)
try:
    import portgrad._cuda as c
    has_device = c.device_count()[0] > 0
except ImportError:
    has_device = False
try:
    net(np.zeros(3), TargetDevice="GPU")
    print("ran" if has_device else "BUG: ran without a GPU")
except ValueError as e:
    print(e)
"""
    r = run_child(code, PORTGRAD_GPU_EMULATOR="0")
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out == "ran" or ('TargetDevice "GPU" is not available' in out and 'TargetDevice="CPU"' in out), out
