"""Misuse raises a clear Python exception naming the port and the shapes — or gives a correct
result — and never crashes. Every test runs twice: evaluating on the CPU, and on the GPU (a CUDA
device, or the emulator of the CUDA kernels; see conftest.py), where the errors must be the same."""
import numpy as np
import pytest

import portgrad as pg

NPG = pg.NetPortGradient


@pytest.fixture(autouse=True, params=["CPU", pytest.param("GPU", marks=pytest.mark.cuda)])
def device(request, monkeypatch):
    """Evaluations default to this TargetDevice (a test that names one keeps it)."""
    if request.param == "GPU":
        if not pg.gpu_available():
            pytest.skip("no GPU backend")
        call = pg.Net.__call__

        def on_gpu(self, *args, **kw):
            kw.setdefault("TargetDevice", "GPU")
            return call(self, *args, **kw)

        monkeypatch.setattr(pg.Net, "__call__", on_gpu)
    return request.param


@pytest.fixture(scope="module")
def mlp():
    return pg.NetInitialize(pg.NetChain([pg.LinearLayer(4), "Tanh", pg.LinearLayer(2)], input=3), seed=0)


@pytest.fixture(scope="module")
def classifier():
    return pg.NetInitialize(pg.NetChain([pg.LinearLayer(4), pg.SoftmaxLayer(), pg.CrossEntropyLossLayer("Index")],
                                        input=3), seed=0)


X = np.array([0.5, -1.0, 2.0])


# --------------------------------------------------------------------- shapes
@pytest.mark.parametrize("bad, given", [
    (np.ones(4), "(4,)"), (np.ones((2, 2, 3)), "(2, 2, 3)"), (np.ones((3, 2)), "(3, 2)"), (1.0, "()"),
    (np.ones((0,)), "(0,)"),
])
def test_wrong_shape_or_rank(mlp, bad, given):
    with pytest.raises(ValueError, match=r'port "Input"') as e:
        mlp(bad)
    msg = str(e.value)
    assert "(3,)" in msg and "(n, 3)" in msg and f"given shape {given}" in msg


def test_target_shape_and_batch_disagreement(classifier):
    with pytest.raises(ValueError, match=r'"Input" and "Target" disagree: a batch of 2 vs a batch of 3'):
        classifier({"Input": np.ones((2, 3)), "Target": np.array([1, 1, 1])})
    with pytest.raises(ValueError, match="one example"):
        classifier({"Input": np.ones((2, 3)), "Target": 1})
    with pytest.raises(ValueError, match=r'port "Target".*expected an array of shape \(\)'):
        classifier({"Input": X, "Target": np.array([[1, 2]])})


def test_ragged_list(mlp):
    with pytest.raises(ValueError, match=r"port 'Input': a ragged batch \(examples of shapes \(3,\), \(2,\)\)"):
        mlp([[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="port 'Input': cannot make an array"):
        mlp([[1, 2, 3], "abc"])  # not a batch of examples at all


# --------------------------------------------------------------------- dtypes and values
@pytest.mark.parametrize("bad, exc, fragment", [
    (np.ones(3, complex), TypeError, "complex values are not supported"),
    (np.array([1, 2, None], object), TypeError, "expected real numbers, given an array of dtype object"),
    (np.array(["a", "b", "c"]), TypeError, "expected real numbers"),
    ("abc", TypeError, "expected real numbers"),
    (np.array([b"a", b"b", b"c"]), TypeError, "expected real numbers"),
    (np.array(["2020-01-01"] * 3, dtype="datetime64[D]"), TypeError, "expected real numbers"),
])
def test_non_real_dtypes(mlp, bad, exc, fragment):
    with pytest.raises(exc, match=r'port "Input"') as e:
        mlp(bad)
    assert fragment in str(e.value)


@pytest.mark.parametrize("precision", ["Real32", "Real64"])
@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "an infinity"), (-np.inf, "an infinity")])
def test_non_finite_inputs(mlp, precision, value, word):
    x = np.ones((4, 3))
    x[2, 1] = value
    with pytest.raises(ValueError, match=f'port "Input" contains {word} at flat index 7'):
        mlp(x, WorkingPrecision=precision)
    with pytest.raises(ValueError, match="must be finite"):
        mlp(x, NPG("Input"), WorkingPrecision=precision)


def test_non_finite_imposed_gradient(mlp):
    with pytest.raises(ValueError, match='gradient imposed on output "Output" is not finite at flat index 1'):
        mlp({"Input": X, NPG("Output"): np.array([1.0, np.nan])}, NPG("Input"))


def test_imposed_gradient_wrong_shape(mlp):
    with pytest.raises(ValueError, match=r'imposed on output "Output": expected shape \(2,\).*given shape \(3,\)'):
        mlp({"Input": X, NPG("Output"): np.ones(3)}, NPG("Input"))
    with pytest.raises(ValueError, match=r"expected shape \(5, 2\)"):
        mlp({"Input": np.ones((5, 3)), NPG("Output"): np.ones(2)}, NPG("Input"))
    with pytest.raises(TypeError, match="complex"):
        mlp({"Input": X, NPG("Output"): np.ones(2, complex)}, NPG("Input"))


@pytest.mark.parametrize("conv", [
    lambda a: a.astype(np.int64), lambda a: a.astype(np.int8), lambda a: a.astype(np.uint8),
    lambda a: a.astype(bool), lambda a: a.astype(np.float16), lambda a: a.tolist(),
], ids=["int64", "int8", "uint8", "bool", "float16", "list"])
def test_integer_boolean_and_list_inputs_are_converted(mlp, conv):
    a = np.array([[1, 0, 2], [0, 1, 1]], dtype=np.float64)
    data = conv(a)
    expect = mlp(np.asarray(data, dtype=np.float64).astype(np.float32))
    got = mlp(data)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(mlp(data, NPG("Input")), mlp(np.asarray(data, dtype=np.float32), NPG("Input")))


def test_python_scalars_and_lists():
    tanh = pg.ElementwiseLayer("Tanh")
    assert tanh(0.5) == pytest.approx(np.tanh(0.5), rel=1e-6)
    assert tanh(1) == pytest.approx(np.tanh(1.0), rel=1e-6)
    np.testing.assert_allclose(tanh([0.5, -1.0], NPG("Input")), 1 - np.tanh([0.5, -1.0]) ** 2, rtol=1e-6)
    lin = pg.NetInitialize(pg.LinearLayer(2, input=3), seed=3)
    np.testing.assert_array_equal(lin([1, 2, 3]), lin(np.array([1.0, 2.0, 3.0])))


@pytest.mark.parametrize("layout", ["fortran", "transposed", "strided", "readonly", "negative-stride"])
@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_non_contiguous_and_read_only_inputs(mlp, layout, precision):
    rng = np.random.default_rng(11)
    if layout == "fortran":
        x = np.asfortranarray(rng.standard_normal((6, 3)))
    elif layout == "transposed":
        x = rng.standard_normal((3, 6)).T
    elif layout == "strided":
        x = rng.standard_normal((12, 6))[::2, ::2]
    elif layout == "negative-stride":
        x = rng.standard_normal((6, 3))[::-1, ::-1]
    else:
        x = rng.standard_normal((6, 3))
        x.flags.writeable = False
    c = np.ascontiguousarray(x)
    before = x.copy()
    spec = ["Output", NPG("Input"), NPG((0, "Weights"))]
    got = mlp(x, spec, WorkingPrecision=precision)
    want = mlp(c, spec, WorkingPrecision=precision)
    for k in spec:
        np.testing.assert_array_equal(got[k], want[k])
    np.testing.assert_array_equal(x, before)  # inputs are not written to


def test_input_array_is_not_modified(mlp):
    x = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    before = x.copy()
    mlp({"Input": x, NPG("Output"): np.ones((4, 2), np.float32)}, [NPG("Input"), NPG(pg.All)])
    np.testing.assert_array_equal(x, before)


# --------------------------------------------------------------------- names and positions
def test_unknown_input_port(mlp, classifier):
    with pytest.raises(KeyError, match="no input port 'Inptu'; its input ports are 'Input'"):
        mlp({"Inptu": X})
    with pytest.raises(ValueError, match="no data for input port 'Target'"):
        classifier({"Input": X})
    with pytest.raises(TypeError, match="input keys must be port names"):
        mlp({1: X})


def test_unknown_output(mlp):
    with pytest.raises(KeyError, match="no output port 'Out'; its output ports are 'Output'"):
        mlp(X, "Out")
    with pytest.raises(KeyError, match="imposes a gradient on an output port"):
        mlp({"Input": X, NPG("Out"): np.ones(2)}, NPG("Input"))
    with pytest.raises(TypeError, match="a request is an output port name"):
        mlp(X, 3)


def test_unknown_array(mlp):
    with pytest.raises(KeyError, match="layer 0 has no array 'Weight'; its arrays are Weights, Biases"):
        mlp(X, NPG((0, "Weight")))
    with pytest.raises(KeyError, match="no array 'Foo'"):
        mlp(X, NPG("Foo"))
    with pytest.raises(KeyError, match="it has no arrays"):
        mlp(X, NPG((1, "Weights")))
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        mlp(X, NPG(("nope", "Weights")))
    with pytest.raises(TypeError, match="NetPortGradient takes"):
        NPG(3.5)


@pytest.mark.parametrize("pos", [3, 10, -4])
def test_out_of_range_position(mlp, pos):
    with pytest.raises(IndexError, match=f"position {pos} is out of range: the net has 3 layers"):
        mlp(X, NPG((pos, "Weights")))
    with pytest.raises(IndexError, match="out of range"):
        pg.NetReplacePart(mlp, {(pos, "Weights"): np.ones((4, 3))})


def test_net_extract_out_of_range_position(mlp):
    with pytest.raises(IndexError, match="out of range"):
        pg.NetExtract(mlp, 7)


# --------------------------------------------------------------------- class indices
@pytest.mark.parametrize("target", [4, -1, 2 ** 40, [0, 4]])
def test_out_of_range_index_target(classifier, target):
    x = X if np.ndim(target) == 0 else np.ones((2, 3))
    with pytest.raises(IndexError, match=r'port "Target": class index -?\d+ is out of range for 4 classes '
                                         r'\(indices are 0-based: 0 to 3\)'):
        classifier({"Input": x, "Target": target})


def test_huge_float_index_target(classifier):
    with pytest.raises(IndexError) as e:
        classifier({"Input": X, "Target": 1e20})
    assert "-9223372036854775808" not in str(e.value)


def test_non_integer_index_target(classifier):
    with pytest.raises(ValueError, match=r'port "Target" takes 0-based class indices \(integers\); given the value 1.5'):
        classifier({"Input": X, "Target": 1.5})
    with pytest.raises(ValueError, match="class indices"):
        classifier({"Input": X, "Target": np.nan})
    with pytest.raises(TypeError, match="given booleans"):
        classifier({"Input": X, "Target": True})
    # An integral float is an index.
    assert classifier({"Input": X, "Target": 2.0}) == classifier({"Input": X, "Target": 2})


def test_index_target_has_no_gradient(classifier):
    with pytest.raises(ValueError, match="'Target' takes integer class indices and has no gradient"):
        classifier({"Input": X, "Target": 1}, NPG("Target"))
    grads = classifier({"Input": X, "Target": 1}, NPG(pg.All))
    assert NPG("Target") not in grads and NPG("Input") in grads


# --------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("precision", ["Real32", "Real64"])
def test_empty_batch_gives_empty_results_and_zero_array_gradients(mlp, precision):
    """The engine's choice: a batch of 0 is valid; outputs are empty and array gradients are 0."""
    x = np.zeros((0, 3))
    res = mlp(x, ["Output", NPG("Input"), NPG(pg.All)], WorkingPrecision=precision)
    assert res["Output"].shape == (0, 2) and res[NPG("Input")].shape == (0, 3)
    grads = res[NPG(pg.All)]
    assert len(grads) == 5
    for key, g in grads.items():
        if key != NPG("Input"):
            assert g.shape == mlp.arrays["/".join(map(str, key.target))]
            assert np.all(g == 0), key


# --------------------------------------------------------------------- net state and options
def test_uninitialised_net():
    net = pg.NetChain([pg.LinearLayer(4), "Tanh"], input=3)
    with pytest.raises(ValueError, match=r'not initialised: array "0/Weights".*NetInitialize'):
        net(X)
    with pytest.raises(ValueError, match="NetInitialize"):
        pg.LinearLayer(2, input=3)(X, NPG("Weights"))
    with pytest.raises(ValueError, match="NetInitialize"):
        pg.NetExtract(pg.LinearLayer(2, input=3), "Weights")
    with pytest.raises(ValueError, match="no declared input shape"):
        pg.NetInitialize(pg.LinearLayer(3))


def test_partially_initialised_net():
    w = np.ones((4, 3))
    net = pg.NetReplacePart(pg.LinearLayer(4, input=3), {"Weights": w})  # Biases still unset
    with pytest.raises(ValueError, match='array "Biases" has no value'):
        net(X)
    full = pg.NetInitialize(net)
    np.testing.assert_array_equal(pg.NetExtract(full, "Weights"), w)  # kept: not reinitialised
    np.testing.assert_array_equal(pg.NetExtract(full, "Biases"), 0)


def test_net_replace_part_errors(mlp):
    with pytest.raises(ValueError, match=r"array '0/Weights': expected shape \(4, 3\), given shape \(3, 4\)"):
        pg.NetReplacePart(mlp, {(0, "Weights"): np.ones((3, 4))})
    with pytest.raises(ValueError, match="must be finite"):
        pg.NetReplacePart(mlp, {(0, "Weights"): np.full((4, 3), np.nan)})
    with pytest.raises(TypeError, match="expected real numbers"):
        pg.NetReplacePart(mlp, {(0, "Weights"): np.full((4, 3), "a")})
    with pytest.raises(TypeError, match="expected real numbers"):
        pg.NetReplacePart(mlp, {(0, "Weights"): np.ones((4, 3), complex)})
    with pytest.raises(KeyError, match="no array 'Bias'"):
        pg.NetReplacePart(mlp, {(0, "Bias"): np.ones(4)})
    with pytest.raises(TypeError, match="takes a dict"):
        pg.NetReplacePart(mlp, [((0, "Weights"), np.ones((4, 3)))])


def test_bad_options(mlp):
    with pytest.raises(ValueError, match="WorkingPrecision must be 'Real32' or 'Real64', given 'Real16'"):
        mlp(X, WorkingPrecision="Real16")
    with pytest.raises(ValueError, match="TargetDevice must be 'CPU', 'GPU' or \\('GPU', index\\), given 'TPU'"):
        mlp(X, TargetDevice="TPU")
    with pytest.raises(ValueError, match="NetEvaluationMode must be 'Test' or 'Train'"):
        mlp(X, NetEvaluationMode="Foo")
    with pytest.raises(ValueError, match="method must be"):
        pg.NetInitialize(mlp, method="Zeros")


# A GPU request without a GPU: tests/test_gpu.py::test_no_gpu_says_how_to_get_one (a child process,
# since the test session runs TargetDevice="GPU" on the emulator where there is no CUDA device).


def test_bad_layer_specs():
    with pytest.raises(ValueError, match='unknown elementwise function "Foo"; known: Ramp'):
        pg.ElementwiseLayer("Foo", input=3)(X)
    with pytest.raises(TypeError):
        pg.ElementwiseLayer(np.tanh)
    with pytest.raises(ValueError, match="form must be"):
        pg.CrossEntropyLossLayer("Hinge")
    with pytest.raises(ValueError, match="cannot reshape"):
        pg.ReshapeLayer((4, -1), input=6)(np.ones(6))
    with pytest.raises(ValueError, match="dimensions must be positive"):
        pg.LinearLayer(0)
    with pytest.raises(TypeError, match="not a layer"):
        pg.NetChain([pg.LinearLayer(2), 2.5])
    with pytest.raises(ValueError, match="at least one layer"):
        pg.NetChain([])
    with pytest.raises(ValueError, match=r'port "Target" has shape \(3,\).*needs a target of shape \(4,\)'):
        pg.MeanSquaredLossLayer(input=4, target=3)({"Input": np.ones(4), "Target": np.ones(3)})
    with pytest.raises(ValueError, match="declare one with input="):
        pg.NetChain([pg.LinearLayer(2), pg.SoftmaxLayer()]).output_ports
