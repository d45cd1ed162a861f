"""Each compiler pass of a plan (csrc/graph/passes.h) on its own, through Net.plan_passes: what must
run, activation fusion, the arena layout, gradient accumulation and device staging."""
import numpy as np
import pytest

import portgrad as pg
from portgrad import _gpu
from plan_requests import request


def passes(net, batch=1, **spec):
    c = net._core_net()
    return c.plan_passes(request(c, **spec), batch)


@pytest.fixture(scope="module")
def mlp():
    return pg.NetInitialize(pg.NetChain([4, "Tanh", 3, "Tanh", 1], input=2), seed=0)


@pytest.fixture(scope="module")
def shared_input():
    """x feeds two layers: its gradient has two contributions."""
    return pg.NetInitialize(pg.NetGraph(
        {"p": pg.LinearLayer(3), "q": pg.LinearLayer(3), "loss": pg.MeanSquaredLossLayer()},
        [(pg.NetPort("Input"), "p"), (pg.NetPort("Input"), "q"),
         ("p", pg.NetPort("loss", "Input")), ("q", pg.NetPort("loss", "Target"))], input=4), seed=1)


@pytest.fixture(scope="module")
def two_heads():
    """Inputs A and B, one head each: an imposed gradient on head "PA" never reaches B."""
    return pg.NetInitialize(pg.NetGraph(
        {"p": pg.LinearLayer(2), "q": pg.LinearLayer(2)},
        [(pg.NetPort("A"), "p"), (pg.NetPort("B"), "q"), ("p", pg.NetPort("PA")), ("q", pg.NetPort("QB"))],
        inputs={"A": 3, "B": 4}), seed=2)


# ------------------------------------------------------------------ 1. select_work
def test_an_output_alone_runs_no_backward(mlp):
    w = passes(mlp, outputs=[0])["select_work"]
    assert w["forward"] == ["0", "1", "2", "3", "4"]
    assert w["backward"] == [] and w["needs_gradient"] == [] and w["arrays"] == []


def test_an_input_gradient_alone_computes_no_array_gradient(mlp):
    p = passes(mlp, input_grads=[0])
    assert p["select_work"]["backward"] == ["0", "1", "2", "3", "4"]
    assert p["select_work"]["arrays"] == []
    assert p["lay_out_arena"]["array_gradients"] == {}


def test_an_array_gradient_runs_backward_only_after_its_layer(mlp):
    # d/d(2/Weights) needs the backward of layers 4, 3 and 2, not of 1 and 0.
    w = passes(mlp, param_grads=[2])["select_work"]
    assert w["arrays"] == ["2/Weights"]
    assert w["backward"] == ["2", "3", "4"]
    assert "Input" not in w["needs_gradient"] and "0/Output" not in w["needs_gradient"]


def test_an_input_the_seed_does_not_reach_gets_no_backward(two_heads):
    c = two_heads._core_net()
    outs = [name for name, _ in c.outputs]
    w = passes(two_heads, input_grads=[0, 1], imposed=[outs.index("PA")])["select_work"]
    assert w["backward"] == ["p"]  # q depends on B but does not reach PA
    assert w["forward"] == ["p"]   # and nothing asks for QB
    both = passes(two_heads, input_grads=[0, 1])["select_work"]  # the gradient of PA + QB
    assert sorted(both["backward"]) == ["p", "q"]


def test_class_indices_get_no_gradient():
    net = pg.NetInitialize(pg.NetChain([3, pg.CrossEntropyLossLayer("Index")], input=2), seed=0)
    c = net._core_net()
    ins = [name for name, *_ in c.inputs]
    w = passes(net, input_grads=[ins.index("Input")])["select_work"]
    assert "Input" in w["needs_gradient"] and "Target" not in w["needs_gradient"]
    assert "Target" not in passes(net, input_grads=[ins.index("Input")])["lay_out_arena"]["gradients"]


# ------------------------------------------------------------------ 2. fuse_activations
def test_linear_and_tanh_fuse_forward_and_backward(mlp):
    assert passes(mlp, input_grads=[0])["fuse_activations"] == [("0", "1", True), ("2", "3", True)]
    # Without a backward pass only the forward is fused.
    assert passes(mlp, outputs=[0])["fuse_activations"] == [("0", "1", False), ("2", "3", False)]


def test_reading_the_pre_activation_prevents_its_fusion(mlp):
    p = passes(mlp, outputs=[0], input_grads=[0], probes=[("0", "Output")])
    assert p["fuse_activations"] == [("2", "3", True)]


# ------------------------------------------------------------------ 3. lay_out_arena
def test_the_arena_is_aligned_and_sized_by_batch(mlp):
    for batch in (1, 7, 64):
        p = passes(mlp, batch, outputs=[0], input_grads=[0], precision="Real64")
        layout = p["lay_out_arena"]
        offsets = [o for key in ("values", "gradients", "array_gradients", "saved", "prepared")
                   for o in layout[key].values()]
        assert all(o % 64 == 0 for o in offsets)
        assert len(set(offsets)) == len(offsets), "two buffers at one offset"
        # A value of shape (4,) takes batch x 4 float64 numbers, rounded up to 64 bytes.
        values = sorted(layout["values"].items(), key=lambda kv: kv[1])
        ends = [o for _, o in values[1:]] + [layout["arena_bytes"]]
        sizes = dict(zip((k for k, _ in values), (e - o for (_, o), e in zip(values, ends))))
        assert sizes["0/Output"] >= -(-batch * 4 * 8 // 64) * 64
        assert layout["arena_bytes"] >= sum(-(-batch * n * 8 // 64) * 64 for n in (4, 4, 3, 3, 1))


def test_a_backward_fused_pre_activation_has_no_gradient_buffer(mlp):
    grads = passes(mlp, input_grads=[0])["lay_out_arena"]["gradients"]
    assert "0/Output" not in grads and "2/Output" not in grads  # folded into the Linear backward
    assert {"Input", "1/Output", "3/Output"} <= set(grads)
    probed = passes(mlp, outputs=[0], input_grads=[0], probes=[("0", "Output")])["lay_out_arena"]["gradients"]
    assert "0/Output" in probed  # not fused: the Tanh backward writes it


def test_a_gpu_plan_reserves_no_cpu_im2col_workspace():
    net = pg.NetInitialize(pg.NetChain([pg.ConvolutionLayer(4, 3), pg.FlattenLayer(), 2], input=(2, 9, 9)), seed=0)
    cpu = passes(net, 8, outputs=[0])["lay_out_arena"]["workspace_bytes"]
    if pg.active_isa() == "scalar":
        pytest.skip("the reference convolution needs no im2col workspace")
    assert cpu >= 8 * 2 * 3 * 3 * 7 * 7 * 4 // 8  # im2col of at least one example in float32
    if not _gpu.available():
        pytest.skip("no GPU backend")
    _gpu.module()
    gpu = passes(net, 8, outputs=[0], device="GPU")["lay_out_arena"]["workspace_bytes"]
    assert gpu < cpu


# ------------------------------------------------------------------ 4. plan_accumulation
def test_a_value_with_two_consumers_gets_its_second_contribution_added(shared_input):
    acc = passes(shared_input, input_grads=[0])["plan_accumulation"]
    into_input = [(node, how) for node, value, how in acc if value == "Input"]
    assert sorted(node for node, _ in into_input) == ["p", "q"]
    assert [how for _, how in into_input] == ["writes", "adds"]  # in the order the backward runs
    assert all(how == "writes" for _, value, how in acc if value != "Input")


def test_a_chain_accumulates_nothing(mlp):
    assert all(how == "writes" for _, _, how in passes(mlp, input_grads=[0])["plan_accumulation"])
    assert passes(mlp, outputs=[0])["plan_accumulation"] == []


def test_accumulation_matches_the_sum_of_both_paths(shared_input):
    # The accumulated gradient is the sum of the two paths (checked against float64 NumPy).
    x = np.random.default_rng(3).standard_normal((5, 4))
    W = {k: [pg.NetExtract(shared_input, (k, a)).astype(np.float64) for a in ("Weights", "Biases")] for k in "pq"}
    p = x @ W["p"][0].T + W["p"][1]
    q = x @ W["q"][0].T + W["q"][1]
    d = 2 * (p - q) / p.shape[1]  # d mean((p - q)^2) / dp, per example
    want = d @ W["p"][0] - d @ W["q"][0]
    got = shared_input(x, pg.NetPortGradient("Input"), WorkingPrecision="Real64")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ 5. stage_on_device
def test_a_cpu_plan_stages_nothing(mlp):
    staged = passes(mlp, 4, outputs=[0])["stage_on_device"]
    assert staged == {"arrays": {}, "input_bytes": {}, "added_bytes": 0}


def test_a_gpu_plan_stages_every_array_and_input():
    if not _gpu.available():
        pytest.skip("no GPU backend")
    _gpu.module()
    net = pg.NetInitialize(pg.NetChain([3, pg.CrossEntropyLossLayer("Index")], input=2), seed=0)
    staged = passes(net, 10, outputs=[0], device="GPU", precision="Real64")["stage_on_device"]
    assert set(staged["arrays"]) == {"0/Weights", "0/Biases"}
    assert staged["input_bytes"] == {"Input": 10 * 2 * 8, "Target": 10 * 8}  # class indices are int64
    assert staged["added_bytes"] >= 3 * 2 * 8 + 3 * 8 + 10 * 2 * 8 + 10 * 8


def test_bad_batch_is_refused(mlp):
    with pytest.raises(ValueError, match="negative batch"):
        passes(mlp, -1, outputs=[0])


# ------------------------------------------------------------------ forward mode
def test_tangents_run_only_where_a_tangent_flows_to_a_requested_output(two_heads, mlp):
    p = passes(two_heads, batch=2, tangent_inputs=[0], tangent_outputs=[0, 1])
    w = p["select_work"]
    assert w["tangent"] == ["p"]                 # B has no tangent: q's tangent step does not run
    assert w["backward"] == []
    t = p["lay_out_arena"]["tangents"]
    assert set(t) == {"A", "p/Output", "q/Output"}  # q's output tangent is asked for: zeros
    assert p["fuse_activations"] == []           # (no activation to fuse)
    a = passes(mlp, tangent_params=[2], tangent_outputs=[0])
    assert a["select_work"]["tangent"] == ["2", "3", "4"]  # from the layer of array 2 on
    assert list(a["lay_out_arena"]["array_tangents"]) == ["2/Weights"]


def test_a_linear_writes_its_activation_tangent(mlp):
    """Forward mode fuses each Linear + Tanh pair: the Linear's tangent product scales by tanh'(z) in
    its epilogue, the Tanh runs no tangent step, and the pre-activations' tangents get no buffer."""
    p = passes(mlp, batch=3, tangent_inputs=[0], tangent_outputs=[0])
    assert p["fuse_activations"] == [("0", "1", False), ("2", "3", False)]
    assert p["fuse_tangents"] == [("0", "1"), ("2", "3")]
    assert set(p["lay_out_arena"]["tangents"]) == {"Input", "1/Output", "3/Output", "4/Output"}
    assert "0/Output" in p["lay_out_arena"]["values"]  # the pre-activation stays: f'(z) reads it
    # With a gradient's tangent (second order) nothing is fused: those steps read every tangent.
    h = passes(mlp, batch=3, tangent_inputs=[0], grad_tangent_inputs=[0])
    assert h["fuse_activations"] == [] and h["fuse_tangents"] == []
    # Exp's tangent is not f'(z) times t (exp(z) t is formed without overflow): not fused.
    e = pg.NetInitialize(pg.NetChain([4, "Exp", 1], input=2), seed=0)
    assert passes(e, batch=3, tangent_inputs=[0], tangent_outputs=[0])["fuse_tangents"] == []


def test_fused_and_unfused_tangents_agree():
    """The fused Linear + Tanh tangent against the same net with the pre-activation also an output
    (so nothing fuses), to rounding, in float64, with several directions."""
    net = pg.NetInitialize(pg.NetChain([5, "Tanh", 3], input=4), seed=3)
    x = np.random.default_rng(4).standard_normal((6, 4))
    fused = net(x, pg.NetPortJacobian("Input"), WorkingPrecision="Real64")
    g = pg.NetInitialize(pg.NetGraph({"l": pg.LinearLayer(5), "t": pg.ElementwiseLayer("Tanh"),
                                      "o": pg.LinearLayer(3)},
                                     [(pg.NetPort("Input"), "l"), ("l", "t"), ("t", "o"), ("o", pg.NetPort("Output")),
                                      ("l", pg.NetPort("Z"))], input=4), seed=3)
    assert passes(g, batch=6, tangent_inputs=[0], tangent_outputs=[0])["fuse_tangents"] == []
    g = pg.NetReplacePart(g, {("l", "Weights"): pg.NetExtract(net, (0, "Weights")),
                              ("l", "Biases"): pg.NetExtract(net, (0, "Biases")),
                              ("o", "Weights"): pg.NetExtract(net, (2, "Weights")),
                              ("o", "Biases"): pg.NetExtract(net, (2, "Biases"))})
    plain = g(x, pg.NetPortJacobian("Input", "Output"), WorkingPrecision="Real64")
    np.testing.assert_allclose(fused, plain, rtol=1e-13, atol=1e-15)
