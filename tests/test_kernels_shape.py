"""Shape kernels (strided N-D copy, broadcast binary operations forward and backward, reductions
over axes) against numpy float64 on awkward sizes (1, 7, 8, 9, 17, 33, 255), every ISA; the
copy is bit-exact, and AVX2 agrees with the reference."""
import numpy as np
import pytest
from conftest import DTYPES, assert_close, isa_params

from portgrad._core import kernels as K

ISAS = isa_params("shape")

INNER = [1, 3, 7, 8, 9, 17, 33, 255]
BINARY = ["Plus", "Subtract", "Times", "Divide", "Power", "Max", "Min", "Greater", "GreaterEqual", "Less", "LessEqual",
          "Equal", "Mod", "FMod"]
COMPARISONS = {"Greater": np.greater, "GreaterEqual": np.greater_equal, "Less": np.less, "LessEqual": np.less_equal,
               "Equal": np.equal}
RT = {np.float32: 2e-6, np.float64: 2e-15}


def geometry(base, view):
    """(offset, strides) in elements of a numpy view into the flat array `base`."""
    size = base.itemsize
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // size
    return offset, [s // size for s in view.strides]


# ----------------------------------------------------------------------------- copy
def views(rng, dtype):
    """(base array, a strided view of it) pairs: transposes, steps, reversals, broadcasts."""
    for n in INNER:
        x = rng.normal(size=(3, n, 2)).astype(dtype)
        yield x, x.transpose(2, 0, 1)
        yield x, x[::-1, ::2, :]
        yield x, x[1]
        yield x, x[:, :, 1]
        yield x, np.broadcast_to(x[:, :1, :], (3, 5, 2))
        yield x, np.broadcast_to(x[0, :, 0], (4, n))
    x = rng.normal(size=(2, 3, 4, 5)).astype(dtype)
    yield x, x.transpose(3, 1, 0, 2)[::-1]
    yield x, x[0, 0, 0, 0, ...]  # rank 0 (a view, not a copied scalar)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_copy_gathers_any_view(isa, dtype):
    rng = np.random.default_rng(0)
    for base, view in views(rng, dtype):
        view = np.asarray(view)
        off, st = geometry(base, view)
        guard = 3
        dst = np.full(view.size + 2 * guard, 7.5, dtype)
        dims = list(view.shape)
        K.shape_copy(isa, dims, base.reshape(-1), off, st, dst, guard, [s // view.itemsize for s in
                                                                          np.empty(view.shape, dtype).strides])
        assert dst[guard:guard + view.size].tobytes() == np.ascontiguousarray(view).tobytes(), view.shape
        assert np.all(dst[:guard] == 7.5) and np.all(dst[guard + view.size:] == 7.5)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_copy_scatters_into_a_view(isa, dtype):
    rng = np.random.default_rng(1)
    for n in INNER:
        base = np.zeros((4, n, 3), dtype)
        view = base[::-2, :, 1:]
        src = rng.normal(size=view.shape).astype(dtype)
        off, st = geometry(base, view)
        flat = base.reshape(-1)
        K.shape_copy(isa, list(view.shape), src.reshape(-1), 0, [s // src.itemsize for s in src.strides], flat, off, st)
        expect = np.zeros_like(base)
        expect[::-2, :, 1:] = src
        assert base.tobytes() == expect.tobytes()


def test_copy_checks_reach():
    x = np.zeros(6)
    with pytest.raises(ValueError, match="outside"):
        K.shape_copy("scalar", [2, 4], x, 0, [3, 1], np.zeros(8), 0, [4, 1])
    with pytest.raises(ValueError, match="outside"):
        K.shape_copy("scalar", [3], x, 0, [-1], np.zeros(3), 0, [1])
    with pytest.raises(TypeError):
        K.shape_copy("scalar", [3], x, 0, [1], np.zeros(3, np.float32), 0, [1])


# ----------------------------------------------------------------------------- binary
def broadcast_strides(shape, out_shape):
    st = np.empty(shape, np.int8).strides if shape else ()
    st = [s for s in st]
    pad = len(out_shape) - len(shape)
    return [0] * pad + [0 if d == 1 else s for d, s in zip(shape, st)]


def pairs():
    for n in INNER:
        yield (2, n), (2, n)
        yield (3, n), (n,)
        yield (n,), (4, 1)
        yield (2, 1, n), (3, 1)
        yield (), (n,)
    yield (2, 3, 4), ()


def operands(rng, f, sa, sb, dtype):
    a = rng.normal(size=sa)
    b = rng.normal(size=sb)
    if f == "Power":
        a = rng.uniform(0.3, 2.0, sa)
        b = rng.uniform(-2.0, 2.0, sb)
    if f == "Divide":
        b = rng.uniform(0.5, 2.0, sb) * rng.choice([-1, 1], sb)
    if f in COMPARISONS:  # small integers: ties, so Equal and the non-strict ones are tested too
        a, b = rng.integers(-2, 3, sa).astype(float), rng.integers(-2, 3, sb).astype(float)
    if f in ("Mod", "FMod"):  # both signs; a / b odd multiples of 1/32: exact, and no quotient is a tie
        a = rng.integers(-40, 40, sa) / 8 + 1 / 16
        b = rng.choice([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0], sb)
    return np.asarray(a, dtype), np.asarray(b, dtype)


NP = {"Plus": np.add, "Subtract": np.subtract, "Times": np.multiply, "Divide": np.divide, "Power": np.power,
      "Max": np.maximum, "Min": np.minimum, "Mod": np.mod, "FMod": np.fmod, **{k: (lambda f: lambda a, b: f(a, b).astype(float))(f)
                                              for k, f in COMPARISONS.items()}}


def np_partials(f, a, b):
    if f == "Plus":
        return np.ones_like(a + b), np.ones_like(a + b)
    if f == "Subtract":
        return np.ones_like(a + b), -np.ones_like(a + b)
    if f == "Times":
        return b + 0 * a, a + 0 * b
    if f == "Divide":
        return 1 / b + 0 * a, -a / (b * b)
    if f == "Power":
        return b * a ** (b - 1), a ** b * np.log(a)
    if f in COMPARISONS:
        return np.zeros_like(a + b), np.zeros_like(a + b)
    if f in ("Mod", "FMod"):  # PyTorch's remainder and fmod
        return np.ones_like(a + b), -(np.floor if f == "Mod" else np.trunc)(a / b)
    m = (a >= b) if f == "Max" else (a <= b)
    return m.astype(float), (~m).astype(float)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("f", BINARY)
def test_binary_forward_and_backward(isa, dtype, f):
    rng = np.random.default_rng(BINARY.index(f))
    for sa, sb in pairs():
        out = np.broadcast_shapes(sa, sb)
        a, b = operands(rng, f, sa, sb, dtype)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        ast, bst = broadcast_strides(sa, out), broadcast_strides(sb, out)
        y = K.shape_binary_forward(isa, f, list(out), a.reshape(-1), ast, b.reshape(-1), bst)
        ref = np.broadcast_to(NP[f](a64, b64), out).reshape(-1)
        assert_close(y, ref, dtype, 4 * RT[dtype] if f == "Power" else RT[dtype], what=f"{f} {sa} {sb}")
        dy = rng.normal(size=out).astype(dtype)
        ga, gb = K.shape_binary_backward(isa, f, list(out), a.reshape(-1), ast, b.reshape(-1), bst, dy.reshape(-1))
        pa, pb = np_partials(f, a64, b64)
        dy64 = dy.astype(np.float64)
        tol = 8 * RT[dtype]
        assert_close(ga, (dy64 * pa).reshape(-1), dtype, tol, 1e-300, what=f"d{f}/da {sa} {sb}")
        assert_close(gb, (dy64 * pb).reshape(-1), dtype, tol, 1e-300, what=f"d{f}/db {sa} {sb}")
        only_a, none_b = K.shape_binary_backward(isa, f, list(out), a.reshape(-1), ast, b.reshape(-1), bst,
                                                 dy.reshape(-1), True, False)
        assert none_b is None and only_a.tobytes() == ga.tobytes()


@pytest.mark.parametrize("isa", ISAS)
def test_max_min_ties_go_to_the_first_operand(isa):
    a = np.array([1.0, 2.0, 3.0, 2.0, 5.0, 5.0, 0.0, -1.0, 4.0])
    b = np.array([1.0, 3.0, 3.0, 1.0, 5.0, 6.0, 0.0, -1.0, 4.0])
    dy = np.arange(1.0, 10.0)
    for f in ("Max", "Min"):
        ga, gb = K.shape_binary_backward(isa, f, [9], a, [1], b, [1], dy)
        tie = a == b
        assert np.all(ga[tie] == dy[tie]) and np.all(gb[tie] == 0)
        np.testing.assert_array_equal(ga + gb, dy)


@pytest.mark.parametrize("isa", ISAS)
def test_power_at_zero_and_below_follows_pytorch(isa):
    a = np.array([0.0, 0.0, 0.0, -2.0, -2.0, 2.0])
    b = np.array([0.0, 2.0, -1.0, 2.0, 0.5, 0.0])
    y = K.shape_binary_forward(isa, "Power", [6], a, [1], b, [1])
    np.testing.assert_array_equal(y[:4], [1.0, 0.0, np.inf, 4.0])
    assert np.isnan(y[4]) and y[5] == 1.0
    ga, gb = K.shape_binary_backward(isa, "Power", [6], a, [1], b, [1], np.ones(6))
    assert ga[0] == 0 and ga[1] == 0 and ga[5] == 0      # b == 0 -> 0; 2 * 0**1 = 0
    assert gb[0] == 0 and gb[1] == 0                      # a == 0, b >= 0 -> 0
    assert np.isnan(gb[3]) and np.isnan(gb[4])            # log of a negative base


# ----------------------------------------------------------------------------- reductions
def reductions():
    """(shape, reduced axes) with awkward sizes: innermost reduced (rows), innermost kept (columns), mixed."""
    for n in INNER:
        yield (4, n), (1,)
        yield (n, 5), (0,)
        yield (3, n, 2), (0, 2)
        yield (2, 3, n), (1,)
    yield (2, 3, 4), ()
    yield (2, 3, 4), (0, 1, 2)
    yield (5,), (0,)


def reduce_geometry(x, axes):
    st = [s // x.itemsize for s in x.strides]
    kept = [k for k in range(x.ndim) if k not in axes]
    return ([x.shape[k] for k in kept], [st[k] for k in kept], [x.shape[k] for k in axes], [st[k] for k in axes])


NPRED = {"Sum": np.sum, "Mean": np.mean, "Max": np.max, "Min": np.min}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("op", list(NPRED))
def test_reduce_and_backward(isa, dtype, op):
    rng = np.random.default_rng(7)
    for shape, axes in reductions():
        n = int(np.prod(shape))
        x = (rng.permutation(n) - n / 2.0).reshape(shape).astype(dtype) * dtype(0.25) if op in ("Max", "Min") \
            else rng.normal(size=shape).astype(dtype)
        kd, ks, rd, rs = reduce_geometry(x, axes)
        y = K.shape_reduce(isa, op, kd, ks, rd, rs, x.reshape(-1))
        x64 = x.astype(np.float64)
        ref = NPRED[op](x64, axis=axes).reshape(-1) if axes else x64.reshape(-1)
        # Sums are accumulated in double: only the final rounding remains (plus a floor for cancellation).
        atol = 1e-15 * np.abs(x64).sum() + 1e-300
        assert_close(y, ref, dtype, RT[dtype], atol, what=f"{op} {shape} {axes}")
        dy = rng.normal(size=y.shape).astype(dtype)
        dx = K.shape_reduce_backward(isa, op, kd, ks, rd, rs, x.reshape(-1), y, dy).reshape(shape)
        dy64 = dy.astype(np.float64).reshape([1 if k in axes else d for k, d in enumerate(shape)])
        if op == "Sum":
            want = np.broadcast_to(dy64, shape)
        elif op == "Mean":
            want = np.broadcast_to(dy64 / max(1, int(np.prod([shape[a] for a in axes]))), shape)
        else:
            want = np.where(x64 == NPRED[op](x64, axis=axes, keepdims=True), dy64, 0.0)
        assert_close(dx.reshape(-1), np.asarray(want).reshape(-1), dtype, RT[dtype], 1e-300,
                     what=f"d{op} {shape} {axes}")


@pytest.mark.parametrize("isa", ISAS)
def test_arg_extremum_gradient_goes_to_the_first(isa):
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, -5.0, 0.0, -5.0]])
    for op, first in (("Max", [1, 0, 2]), ("Min", [3, 0, 1])):
        y = K.shape_reduce(isa, op, [3], [4], [4], [1], x.reshape(-1))
        dx = K.shape_reduce_backward(isa, op, [3], [4], [4], [1], x.reshape(-1), y, np.array([1.0, 2.0, 3.0]))
        want = np.zeros((3, 4))
        want[np.arange(3), first] = [1.0, 2.0, 3.0]
        np.testing.assert_array_equal(dx.reshape(3, 4), want)


def test_reduce_propagates_nan():
    x = np.array([1.0, np.nan, 3.0, 0.5, 2.0, 1.0, 7.0, 1.0, 1.0], np.float32)
    for isa in ISAS:
        for op in NPRED:
            assert np.isnan(K.shape_reduce(isa, op, [], [], [9], [1], x)[0]), (isa, op)
            assert np.isnan(K.shape_reduce(isa, op, [9], [1], [], [], x)[1]), (isa, op)


@pytest.mark.skipif("avx2" not in ISAS, reason="no AVX2")
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_avx2_matches_reference_on_large_arrays(dtype):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(33, 255)).astype(dtype)
    for axes in ((0,), (1,)):
        kd, ks, rd, rs = reduce_geometry(x, axes)
        for op in NPRED:
            y = K.shape_reduce("avx2", op, kd, ks, rd, rs, x.reshape(-1))
            ref = K.shape_reduce("scalar", op, kd, ks, rd, rs, x.reshape(-1)).astype(np.float64)
            assert_close(y, ref, dtype, RT[dtype], 1e-13 * np.abs(x).sum(), what=f"{op} {axes}")
            assert K.shape_reduce("avx2", op, kd, ks, rd, rs, x.reshape(-1)).tobytes() == y.tobytes()
    b = rng.normal(size=255).astype(dtype)
    for f in ("Plus", "Times", "Divide", "Max"):
        args = ([33, 255], x.reshape(-1), [255, 1], b, [0, 1])
        assert_close(K.shape_binary_forward("avx2", f, *args),
                     K.shape_binary_forward("scalar", f, *args).astype(np.float64), dtype, RT[dtype], what=f)


@pytest.mark.parametrize("isa", ISAS)
def test_mod_and_fmod_signs_and_exact_multiples(isa):
    a = np.array([7.0, -7.0, 7.0, -7.0, 6.0, -6.0, 0.0, 1e-30, 5.5])
    b = np.array([3.0, 3.0, -3.0, -3.0, 3.0, 3.0, 2.0, 1.0, 0.0])
    for f in ("Mod", "FMod"):
        y = K.shape_binary_forward(isa, f, [9], a, [1], b, [1])
        np.testing.assert_array_equal(y[:8], NP[f](a[:8], b[:8]))  # the sign of b (Mod) or of a (FMod)
        assert np.isnan(y[8])  # b == 0
        ga, gb = K.shape_binary_backward(isa, f, [9], a, [1], b, [1], np.ones(9))
        np.testing.assert_array_equal(ga[:8], 1.0)
        np.testing.assert_array_equal(gb[:8], -(np.floor if f == "Mod" else np.trunc)(a[:8] / b[:8]))


def second_partials_f64(f, a, b):
    """(faa, fab, fbb) of Times, Divide, Power away from the conventions' points, in float64."""
    if f == "Times":
        return np.zeros_like(a), np.ones_like(a), np.zeros_like(a)
    if f == "Divide":
        return np.zeros_like(a), -1 / b ** 2, 2 * a / b ** 3
    la = np.log(a)
    return b * (b - 1) * a ** (b - 2), a ** (b - 1) * (1 + b * la), a ** b * la ** 2


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("f", ["Times", "Divide", "Power"])
@pytest.mark.parametrize("n", [1, 7, 33, 1000])
def test_binary_second_partials(isa, dtype, f, n):
    rng = np.random.default_rng(n)
    a = rng.uniform(0.3, 2.5, n).astype(dtype)
    b = (rng.uniform(0.5, 2.0, n) * rng.choice([-1, 1], n)).astype(dtype)
    dy, ta, tb = (rng.uniform(-1, 1, n).astype(dtype) for _ in range(3))
    ga, gb = K.shape_binary_second(isa, f, a, b, dy, ta, tb)
    aa, ab, bb = second_partials_f64(f, a.astype(np.float64), b.astype(np.float64))
    d, u, v = (x.astype(np.float64) for x in (dy, ta, tb))
    # relative to the terms' size: the two terms may cancel
    tol = 8 * RT[dtype]
    for got, p, q in [(ga, aa * u, ab * v), (gb, ab * u, bb * v)]:
        np.testing.assert_allclose(got, d * (p + q), rtol=0, atol=tol * np.max(np.abs(d) * (np.abs(p) + np.abs(q))))


@pytest.mark.parametrize("isa", ISAS)
def test_binary_second_of_power_follows_its_first_partials_conventions(isa):
    """Where a first partial is fixed by convention (df/da = 0 at b == 0; df/db = 0 at a == 0,
    b >= 0) its derivative is 0 too; b == 1 makes df/da constant; a == 0, b > 1 takes fab's limit 0;
    a < 0 gives NaN (log). Each point where all three are finite, one tangent at a time."""
    a = np.array([0.0, 0.0, 2.0, 2.0, 0.5, -2.0])
    b = np.array([3.0, 2.0, 0.0, 1.0, 1.0, 2.0])
    one, zero = np.ones(6), np.zeros(6)
    faa, fab = K.shape_binary_second(isa, "Power", a, b, one, one, zero)
    fab2, fbb = K.shape_binary_second(isa, "Power", a, b, one, zero, one)
    la = np.log(a[2:5])
    np.testing.assert_array_equal(faa[:5], [0.0, 2.0, 0.0, 0.0, 0.0])   # 3 * 2 * 0; 2 * 1 * 0^0; b == 0, 1
    np.testing.assert_array_equal(fab[:2], [0.0, 0.0])                  # a == 0, b > 1: the limit 0
    np.testing.assert_allclose(fab[2:5], a[2:5] ** (b[2:5] - 1) * (1 + b[2:5] * la), rtol=1e-15)
    np.testing.assert_array_equal(fab2[:5], fab[:5])
    np.testing.assert_array_equal(fbb[:2], [0.0, 0.0])                  # a == 0, b >= 0
    np.testing.assert_allclose(fbb[2:5], a[2:5] ** b[2:5] * la ** 2, rtol=1e-15)
    assert np.isnan(fab[5]) and np.isnan(fbb[5])                       # log of a negative base


def test_binary_second_matches_pytorch_double_backward():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    a0, b0, dy, ta, tb = (rng.uniform(0.3, 2.0, 50) for _ in range(5))
    for f, op in [("Times", torch.mul), ("Divide", torch.div), ("Power", torch.pow)]:
        # the JVP of (a, b) -> dy * (df/da, df/db) along (ta, tb): the second partials' terms
        def first_partials(x, y):
            return torch.autograd.grad(op(x, y), (x, y), torch.tensor(dy), create_graph=True)

        ja = torch.autograd.functional.jvp(first_partials, (torch.tensor(a0), torch.tensor(b0)),
                                           (torch.tensor(ta), torch.tensor(tb)))[1]
        ours = K.shape_binary_second("scalar", f, a0, b0, dy, ta, tb)
        np.testing.assert_allclose(ours[0], ja[0].numpy(), rtol=1e-12, atol=1e-14, err_msg=f)
        np.testing.assert_allclose(ours[1], ja[1].numpy(), rtol=1e-12, atol=1e-14, err_msg=f)
