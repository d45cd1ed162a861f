"""portgrad.dask.evaluate on a real distributed.LocalCluster (2 worker processes, started and closed
here): outputs, input gradients, Jacobians and batch-summed array gradients equal one in-process
call on the same data; the same chunking gives the same bits; a worker killed mid-computation is
retried by Dask and the result is still right; bad data in one chunk is the in-process error,
naming the chunk; and `import portgrad` never imports dask."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402

import portgrad as pg  # noqa: E402
import portgrad.dask as pgd  # noqa: E402
from child_env import child_env  # noqa: E402

NPG, NPT = pg.NetPortGradient, pg.NetPortTangent
R64 = dict(WorkingPrecision="Real64")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def mlp(seed=0):
    return pg.NetInitialize(pg.NetChain([pg.LinearLayer(16), "Tanh", pg.LinearLayer(3)], input=5), seed=seed)


def data(n=1000, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 5))


def test_results_equal_one_in_process_call(client):
    net, x = mlp(), data()
    spec = ["Output", NPG("Input"), NPG((0, "Weights")), NPG((2, "Biases")), pg.NetPortJacobian("Input")]
    lazy = pgd.evaluate(net, da.from_array(x, chunks=96), spec, **R64)
    assert lazy["Output"].chunks[0] == da.from_array(x, chunks=96).chunks[0]
    got = client.compute(lazy).result()
    want = net(x, spec, **R64)
    for k in ("Output", NPG("Input"), pg.NetPortJacobian("Input")):  # per example (other batch sizes:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=1e-14)  # a product may round differently)
    for k in (NPG((0, "Weights")), NPG((2, "Biases"))):  # summed by a tree over the chunks
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12)
    again = client.compute(pgd.evaluate(net, da.from_array(x, chunks=96), spec, **R64)).result()
    for k in spec:
        np.testing.assert_array_equal(again[k], got[k])  # the same chunking: the same bits


def test_dict_data_imposed_gradients_and_float32(client):
    net, x = mlp(1), data(300, 1)
    g = np.random.default_rng(2).standard_normal((300, 3))
    lazy = pgd.evaluate(net, {"Input": da.from_array(x, chunks=64), NPG("Output"): da.from_array(g, chunks=64)},
                        [NPG("Input"), NPG(pg.All)])
    got = client.compute(lazy).result()
    want = net({"Input": x, NPG("Output"): g}, [NPG("Input"), NPG(pg.All)])
    assert got[NPG("Input")].dtype == np.float32
    np.testing.assert_allclose(got[NPG("Input")], want[NPG("Input")], rtol=1e-6, atol=1e-7)
    for k, v in want[NPG(pg.All)].items():
        np.testing.assert_allclose(got[NPG(pg.All)][k], v, rtol=2e-5, atol=2e-5)


def test_target_device_on_the_workers(client):
    """TargetDevice="GPU" runs on the workers' GPU (a CUDA device, or the emulator the tests use)."""
    from portgrad import _gpu
    if not _gpu.available():
        pytest.skip("no GPU backend")
    net, x = mlp(4), data(200, 4)
    got = client.compute(pgd.evaluate(net, da.from_array(x, chunks=50), [NPG("Input"), NPG((0, "Weights"))],
                                      TargetDevice="GPU", **R64)).result()
    want = net(x, [NPG("Input"), NPG((0, "Weights"))], **R64)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-11, atol=1e-12)


def test_bad_data_names_the_chunk(client):
    net, x = mlp(), data(400)
    x[250, 2] = np.nan
    with pytest.raises(ValueError, match=r"contains NaN .* \(in chunk 2: examples 200 to 299\)"):
        client.compute(pgd.evaluate(net, da.from_array(x, chunks=100))).result()


def test_a_killed_worker_is_retried(client):
    net, x = mlp(3), data(4000, 3)

    def slow_net_call(v):  # each chunk takes ~0.2 s, so a worker dies with work in hand
        time.sleep(0.2)
        return v

    dx = da.from_array(x, chunks=100).map_blocks(slow_net_call, dtype=x.dtype)
    future = client.compute(pgd.evaluate(net, dx, ["Output", NPG((0, "Weights"))], **R64))
    time.sleep(1.0)
    victim = list(client.scheduler_info()["workers"])[0]
    client.run(os._exit, 1, workers=[victim], on_error="ignore")  # (its connection drops: expected)
    got = future.result(timeout=120)
    want = net(x, ["Output", NPG((0, "Weights"))], **R64)
    np.testing.assert_allclose(got["Output"], want["Output"], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(got[NPG((0, "Weights"))], want[NPG((0, "Weights"))], rtol=1e-12)


def test_local_scheduler_and_clear_errors():
    net, x = mlp(), data(50)
    with dask.config.set(scheduler="threads"):
        out, = dask.compute(pgd.evaluate(net, da.from_array(x, chunks=20), **R64))
    np.testing.assert_allclose(out, net(x, **R64), rtol=1e-13, atol=1e-14)
    with pytest.raises(TypeError, match="must include a dask array"):
        pgd.evaluate(net, x)
    with pytest.raises(ValueError, match="chunked along an axis other than the batch"):
        pgd.evaluate(net, da.from_array(x, chunks=(20, 2)))
    with pytest.raises(ValueError, match="the same batch chunks"):
        pgd.evaluate(net, {"Input": da.from_array(x, chunks=20), NPG("Output"): da.from_array(x[:, :3], chunks=25)},
                     NPG("Input"))


def test_import_portgrad_does_not_import_dask():
    code = "import sys, portgrad; assert 'dask' not in sys.modules, 'dask imported'; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_array_tangents_are_shared_and_array_hvps_summed():
    net, x = mlp(5), data(120, 5)
    V = np.random.default_rng(6).standard_normal((16, 5))
    spec = [NPT("Output"), NPT(NPG((0, "Weights")))]
    lazy = pgd.evaluate(net, {"Input": da.from_array(x, chunks=50), NPT((0, "Weights")): V}, spec, **R64)
    with dask.config.set(scheduler="threads"):
        got, = dask.compute(lazy)
    want = net({"Input": x, NPT((0, "Weights")): V}, spec, **R64)
    np.testing.assert_allclose(got[NPT("Output")], want[NPT("Output")], rtol=1e-12, atol=1e-13)  # (products of
    # other row counts: the last bit may differ)
    np.testing.assert_allclose(got[NPT(NPG((0, "Weights")))], want[NPT(NPG((0, "Weights")))], rtol=1e-12, atol=1e-12)
