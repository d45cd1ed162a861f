"""Engine requests for tests that look at plans (describe_plan, plan_passes)."""
from portgrad import _core


def request(c, outputs=(), input_grads=(), param_grads=(), imposed=(), probes=(), precision="Real32",
            device="CPU", mode="Test", tangent_inputs=(), tangent_params=(), tangent_outputs=(),
            grad_tangent_inputs=()):
    """An engine request from port and array indices (as the tests name them)."""
    outs, ins, arrays = ([n for n, *_ in ports] for ports in (c.outputs, c.inputs, c.params))
    names = _core.RequestNames([outs[k] for k in outputs], [ins[k] for k in input_grads],
                               [arrays[k] for k in param_grads], [outs[k] for k in imposed], list(probes),
                               [ins[k] for k in tangent_inputs], [arrays[k] for k in tangent_params],
                               [outs[k] for k in tangent_outputs],
                               grad_tangent_inputs=[ins[k] for k in grad_tangent_inputs])
    return c.request(_core.evaluation_options(precision, device, mode), names)
