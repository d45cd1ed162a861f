"""Elementwise kernels: every function, ISA and dtype against independent numpy formulas, finite
differences, exact kink values, special values, tails and guard elements."""
import math

import numpy as np
import pytest
from conftest import ATOL, DTYPES, RTOL, assert_close, isa_params

from portgrad._core import kernels as K

ISAS = isa_params("unary")

L, A = 1.0507009873554805, 1.6732632423543772
_erf = np.vectorize(math.erf, otypes=[float])
_erfc = np.vectorize(math.erfc, otypes=[float])


def _sig(x):  # exp(-log(1 + e^-x)): stable everywhere
    return np.exp(-np.logaddexp(0.0, -x))


def _dsig(x):
    return 0.25 / np.cosh(0.5 * x) ** 2


def _sp(x):
    return np.logaddexp(0.0, x)


def _phi(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# name: (f, f', sampling range)
FUNCS = {
    "Ramp": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float), (-50, 50)),
    "LogisticSigmoid": (_sig, _dsig, (-50, 50)),
    "Tanh": (np.tanh, lambda x: 1.0 / np.cosh(x) ** 2, (-20, 20)),
    "SoftPlus": (_sp, _sig, (-50, 50)),
    "ELU": (lambda x: np.where(x >= 0, x, np.expm1(x)), lambda x: np.where(x >= 0, 1.0, np.exp(x)), (-50, 50)),
    "SELU": (lambda x: L * np.where(x >= 0, x, A * np.expm1(x)), lambda x: np.where(x >= 0, L, L * A * np.exp(x)),
             (-50, 50)),
    "GELU": (lambda x: 0.5 * x * _erfc(-x / math.sqrt(2)), lambda x: 0.5 * _erfc(-x / math.sqrt(2)) + x * _phi(x),
             (-12, 12)),
    "Swish": (lambda x: x * _sig(x), lambda x: _sig(x) + x * _dsig(x), (-50, 50)),
    "Mish": (lambda x: x * np.tanh(_sp(x)), lambda x: np.tanh(_sp(x)) + x * _sig(x) / np.cosh(_sp(x)) ** 2,
             (-50, 50)),
    "SoftSign": (lambda x: x / (1 + np.abs(x)), lambda x: 1.0 / (1 + np.abs(x)) ** 2, (-50, 50)),
    "HardTanh": (lambda x: np.clip(x, -1, 1), lambda x: (np.abs(x) < 1).astype(float), (-3, 3)),
    "HardSigmoid": (lambda x: np.clip((x + 1) / 2, 0, 1), lambda x: 0.5 * (np.abs(x) < 1), (-3, 3)),
    "HardSwish": (lambda x: x * np.clip(x + 3, 0, 6) / 6,
                  lambda x: np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, (2 * x + 3) / 6)), (-6, 6)),
    "Sin": (np.sin, np.cos, (-100, 100)),
    "Cos": (np.cos, lambda x: -np.sin(x), (-100, 100)),
    "Exp": (np.exp, np.exp, (-110, 90)),
    "Log": (np.log, lambda x: 1.0 / x, None),
    "Sqrt": (np.sqrt, lambda x: 0.5 / np.sqrt(x), None),
    "Abs": (np.abs, np.sign, (-50, 50)),
    "Erf": (_erf, lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x), (-6, 6)),
    "Square": (np.square, lambda x: 2 * x, (-1e3, 1e3)),
}
NAMES = list(FUNCS)
SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 255, 1000]
# Functions whose value or derivative crosses zero away from x = 0: an absolute floor, relative
# to the size of the terms (about 1), is needed there for float32.
ZERO_CROSSING = {"Sin", "Cos", "Mish", "GELU", "Swish"}
SPECIALS = [0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 10.0, -10.0, 30.0, -30.0]


def test_names_match_kernel_list():
    assert list(K.unary_names) == NAMES


def sample(name, n, dtype, seed=0):
    rng = np.random.default_rng(seed + 7919 * NAMES.index(name) + n)
    rng_ = FUNCS[name][2]
    if rng_ is None:  # positive domain over the whole float range, tiny and denormal included
        top = 30 if dtype == np.float32 else 300
        x = 10.0 ** rng.uniform(-top, top, n)
        spec = [0.5, 1.0, 2.0, 1e-3, 1e-40 if dtype == np.float32 else 1e-310]
    else:
        lo, hi = rng_
        x = rng.uniform(lo, hi, n)
        x[: n // 4] = rng.normal(0, 2, n // 4)
        spec = [s for s in SPECIALS if lo <= s <= hi]
    k = min(len(spec), n // 2)
    x[n - k:] = spec[:k]
    return x.astype(dtype)


def tol(name, dtype, backward=False):
    rtol, atol = RTOL[dtype], ATOL[dtype]
    if name in ZERO_CROSSING:
        atol = 4 * np.finfo(dtype).eps
    if name in ("Sin", "Cos") and dtype == np.float32:
        atol = 1e-6
    return rtol, atol


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_forward(name, isa, dtype):
    f = FUNCS[name][0]
    rtol, atol = tol(name, dtype)
    for n in SIZES:
        x = sample(name, n, dtype)
        with np.errstate(all="ignore"):
            ref = f(x.astype(np.float64))
        y = K.unary_forward(isa, name, x)
        assert y.shape == x.shape and y.dtype == dtype
        assert_close(y, ref, dtype, rtol, atol, what=f"{name} {isa} n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_backward(name, isa, dtype):
    f, df = FUNCS[name][:2]
    rtol, atol = tol(name, dtype, backward=True)
    for n in SIZES:
        x = sample(name, n, dtype, seed=1)
        x64 = x.astype(np.float64)
        dy = np.random.default_rng(n).uniform(-2, 2, n).astype(dtype)
        with np.errstate(all="ignore"):
            y = f(x64).astype(dtype)
            ref = dy.astype(np.float64) * df(x64)
        dx = K.unary_backward(isa, name, x, y, dy)
        # dy is in (-2, 2), so the absolute floor doubles.
        assert_close(dx, ref, dtype, rtol, 2 * atol, what=f"{name}' {isa} n={n}")
        # dx may alias dy
        dy2 = dy.copy()
        K.unary_backward(isa, name, x, y, dy2, out=dy2)
        assert np.array_equal(dy2, dx, equal_nan=True)


KINKS = {"Ramp": [0.0], "Abs": [0.0], "ELU": [0.0], "SELU": [0.0], "HardTanh": [-1.0, 1.0],
         "HardSigmoid": [-1.0, 1.0], "HardSwish": [-3.0, 3.0]}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_kink_derivatives_exact(isa, dtype):
    expected = {("Ramp", 0.0): 0.0, ("Abs", 0.0): 0.0, ("ELU", 0.0): 1.0, ("SELU", 0.0): L,
                ("HardTanh", -1.0): 0.0, ("HardTanh", 1.0): 0.0, ("HardSigmoid", -1.0): 0.0,
                ("HardSigmoid", 1.0): 0.0, ("HardSwish", -3.0): 0.0, ("HardSwish", 3.0): 1.0}
    for (name, x0), d in expected.items():
        for n in (1, 9):  # the tail path and the full-vector path
            x = np.full(n, x0, dtype)
            y = K.unary_forward(isa, name, x)
            dx = K.unary_backward(isa, name, x, y, np.ones(n, dtype))
            assert np.all(dx == dtype(d)), (name, x0, dx)
    # just inside the kinks the derivative is the interior one
    x = np.array([0.99, -0.99], dtype)
    assert np.all(K.unary_backward(isa, "HardTanh", x, x, np.ones(2, dtype)) == 1)
    assert np.all(K.unary_backward(isa, "HardSigmoid", x, x, np.ones(2, dtype)) == dtype(0.5))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_finite_differences_f64(name, isa):
    f = FUNCS[name][0]
    rng = np.random.default_rng(3)
    if FUNCS[name][2] is None:
        x = rng.uniform(0.1, 5.0, 200)
    else:
        x = rng.uniform(-4.0, 4.0, 200)
        for k in KINKS.get(name, []):
            x = x[np.abs(x - k) > 1e-3]
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    fd = (K.unary_forward(isa, name, x + h) - K.unary_forward(isa, name, x - h)) / (2 * h)
    dx = K.unary_backward(isa, name, x, K.unary_forward(isa, name, x), np.ones_like(x))
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)
    del f


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_special_values(isa, dtype):
    inf, nan = np.inf, np.nan

    def fwd(name, xs):
        return K.unary_forward(isa, name, np.array(xs, dtype)).astype(np.float64)

    def bwd(name, xs):
        x = np.array(xs, dtype)
        return K.unary_backward(isa, name, x, K.unary_forward(isa, name, x), np.ones_like(x)).astype(np.float64)

    eq = np.testing.assert_array_equal
    eq(fwd("Exp", [-inf, inf, nan, 1e4, -1e4, 0.0]), [0, inf, nan, inf, 0, 1])
    eq(fwd("Log", [0.0, -0.0, -1.0, -inf, inf, nan, 1.0]), [-inf, -inf, nan, nan, inf, nan, 0])
    eq(fwd("Sqrt", [0.0, -1.0, inf, nan, 4.0]), [0, nan, inf, nan, 2])
    eq(bwd("Log", [0.0, -1.0])[0], inf)
    assert np.isnan(bwd("Log", [-1.0])[0])
    eq(bwd("Sqrt", [0.0])[0], inf)
    assert np.isnan(bwd("Sqrt", [-1.0])[0])
    eq(fwd("LogisticSigmoid", [-inf, inf, nan, -1e3, 1e3, 0.0]), [0, 1, nan, 0, 1, 0.5])
    eq(fwd("Tanh", [-inf, inf, nan, -1e3, 1e3, 0.0]), [-1, 1, nan, -1, 1, 0])
    eq(fwd("SoftPlus", [-inf, inf, nan, -1e3, 1e3]), [0, inf, nan, 0, 1e3])
    eq(fwd("ELU", [-inf, inf]), [-1, inf])
    eq(fwd("SoftSign", [-inf, inf]), [-1, 1])
    eq(fwd("Erf", [-inf, inf, 0.0, nan]), [-1, 1, 0, nan])
    for name in ("Swish", "Mish", "GELU"):
        eq(fwd(name, [-inf, inf, nan, -1e3, 1e3]), [0, inf, nan, 0, 1e3])
        eq(bwd(name, [-inf, inf, -1e3, 1e3]), [0, 1, 0, 1])
    for name in ("LogisticSigmoid", "Tanh", "Erf"):
        eq(bwd(name, [-inf, inf, -1e3, 1e3]), [0, 0, 0, 0])
    eq(fwd("Sin", [inf, -inf, nan]), [nan, nan, nan])
    # every function propagates NaN
    for name in NAMES:
        for n in (1, 8, 9):
            y = fwd(name, [nan] * n)
            assert np.isnan(y).all(), name


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
def test_large_arguments_of_sin_cos(isa, dtype):
    # beyond the vector range reduction (|x| > 1e4 in float32) the kernel falls back per vector
    x = np.concatenate([np.linspace(-1e4, 1e4, 37), [1e5, -3e6, 1e10, 123456.7, -1e30, 7.0, 8.0, 9.0]]).astype(dtype)
    for name, f in (("Sin", np.sin), ("Cos", np.cos)):
        assert_close(K.unary_forward(isa, name, x), f(x.astype(np.float64)), dtype, RTOL[dtype],
                     1e-6 if dtype == np.float32 else 1e-15, what=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_guard_and_repeatable(name, isa, dtype):
    guard = dtype(-12345.5)
    for n in (1, 7, 9, 17):
        x = sample(name, n, dtype, seed=5)
        y = K.unary_forward(isa, name, x)
        out = np.full(n + 9, guard, dtype)
        K.unary_forward(isa, name, x, out=out)
        assert np.all(out[n:] == guard)
        assert out[:n].tobytes() == y.tobytes()
        assert K.unary_forward(isa, name, x).tobytes() == y.tobytes()
        dy = np.ones(n, dtype)
        out[:] = guard
        dx = K.unary_backward(isa, name, x, y, dy)
        K.unary_backward(isa, name, x, y, dy, out=out)
        assert np.all(out[n:] == guard)
        assert out[:n].tobytes() == dx.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_long_arrays_same_bits_on_any_thread_count(name, isa, dtype):
    """Arrays long enough to be shared out in blocks (a tail block, a tail vector): the bits of one
    thread on 2 and 3, forward and backward, and equal to short calls on pieces of the array."""
    n = 3 * 32768 + 8192 + 13
    x = sample(name, n, dtype, seed=12)
    dy = np.random.default_rng(2).uniform(-1, 1, n).astype(dtype)
    before = K.num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            K.set_num_threads(threads)
            y = K.unary_forward(isa, name, x)
            results.append((y.tobytes(), K.unary_backward(isa, name, x, y, dy).tobytes()))
        assert results[1] == results[0] and results[2] == results[0]
    finally:
        K.set_num_threads(before)
    piece = slice(40000, 40000 + 999)
    assert K.unary_forward(isa, name, x[piece]).tobytes() == np.frombuffer(results[0][0], dtype)[piece].tobytes()


@pytest.mark.skipif("avx2" not in ISAS, reason="no AVX2")
@pytest.mark.parametrize("name", NAMES)
def test_avx2_matches_reference_f32(name):
    x = sample(name, 4099, np.float32, seed=11)
    dy = np.random.default_rng(1).uniform(-1, 1, x.size).astype(np.float32)
    rtol, atol = tol(name, np.float32)
    ref_y = K.unary_forward("scalar", name, x)
    y = K.unary_forward("avx2", name, x)
    assert_close(y, ref_y.astype(np.float64), np.float32, 2 * rtol, atol, what=name)
    ref_dx = K.unary_backward("scalar", name, x, ref_y, dy)
    dx = K.unary_backward("avx2", name, x, y, dy)
    assert_close(dx, ref_dx.astype(np.float64), np.float32, 2 * rtol, atol, what=name + "'")


def test_bad_arguments():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="unknown elementwise"):
        K.unary_forward("scalar", "NoSuch", x)
    with pytest.raises(ValueError, match="unknown ISA"):
        K.unary_forward("sse9", "Ramp", x)
    with pytest.raises(TypeError):
        K.unary_forward("scalar", "Ramp", np.zeros(4, np.int32))
    with pytest.raises(TypeError):
        K.unary_forward("scalar", "Ramp", np.zeros((4, 4), np.float32)[:, 1])
    with pytest.raises(ValueError, match="at least"):
        K.unary_forward("scalar", "Ramp", x, out=np.zeros(3, np.float32))
    if not __import__("portgrad")._core.isa_supported("avx512"):
        with pytest.raises(ValueError, match="not available"):
            K.unary_forward("avx512", "Ramp", x)
    # aliases resolve
    np.testing.assert_array_equal(K.unary_forward("scalar", "ReLU", np.array([-1.0, 2.0])), [0, 2])


# ----------------------------------------------------------------------------- second derivatives
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_second_derivatives_vs_central_differences_of_the_first(name, isa):
    # a * b * f''(x) against (f'(x + h) - f'(x - h)) / 2h from the reference backward, in float64,
    # away from the kinks (where f'' is 0 by the first derivatives' one-sided choices).
    rng = np.random.default_rng(11)
    x = rng.uniform(0.1, 5.0, 300) if FUNCS[name][2] is None else rng.uniform(-4.0, 4.0, 300)
    for k in KINKS.get(name, []):
        x = x[np.abs(x - k) > 1e-3]
    a, b = rng.uniform(-2, 2, x.size), rng.uniform(-2, 2, x.size)
    h = 1e-5 * np.maximum(1.0, np.abs(x))
    d1 = lambda v: K.unary_backward("scalar", name, v, K.unary_forward("scalar", name, v), np.ones_like(v))  # noqa: E731
    fd = (d1(x + h) - d1(x - h)) / (2 * h)
    y = K.unary_forward(isa, name, x)
    got = K.unary_second(isa, name, x, y, a, b)
    np.testing.assert_allclose(got, a * b * fd, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got, K.unary_second("scalar", name, x, y, a, b))  # every ISA: the reference's
    x32 = x.astype(np.float32)
    got32 = K.unary_second(isa, name, x32, K.unary_forward(isa, name, x32), a.astype(np.float32), b.astype(np.float32))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, got, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", NAMES)
def test_second_derivatives_in_float32_are_the_references_bits(name, isa):
    """The vectorised float32 second derivatives (polynomials in y) round as the reference does: the
    same bits on awkward lengths, signed zeros, infinities and NaN in every operand, on long
    arrays shared out to threads too."""
    rng = np.random.default_rng(13)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-30, 3e38], np.float32)
    for n in (1, 3, 4, 5, 17, 30, 3 * 32768 + 5):
        x = sample(name, n, np.float32, seed=n)
        y = K.unary_forward(isa, name, x)
        a = rng.uniform(-2, 2, n).astype(np.float32)
        b = rng.uniform(-2, 2, n).astype(np.float32)
        if n > 27:
            y[:9], a[9:18], b[18:27] = special, special, special[::-1]
        got = K.unary_second(isa, name, x, y, a, b)
        want = K.unary_second("scalar", name, x, y, a, b)
        assert got.tobytes() == want.tobytes(), f"{name} n={n}: {np.flatnonzero(got.view(np.int32) != want.view(np.int32))[:5]}"


@pytest.mark.parametrize("isa", ISAS)
def test_second_derivatives_at_kinks_follow_the_first_derivatives(isa):
    x = np.array([0.0, -1.0, 1.0, -3.0, 3.0])
    one = np.ones(5)

    def second(name, v, a, b):
        return K.unary_second(isa, name, v, K.unary_forward(isa, name, v), a, b)

    for name in ("Ramp", "Abs", "HardTanh", "HardSigmoid"):
        np.testing.assert_array_equal(second(name, x, one, one), 0.0)
    np.testing.assert_array_equal(second("HardSwish", x, one, one), [1 / 3, 1 / 3, 1 / 3, 0, 0])
    np.testing.assert_array_equal(second("ELU", np.array([0.0, -1.0]), one[:2], one[:2]), [0.0, np.exp(-1.0)])
    assert second("SoftSign", np.zeros(1), np.ones(1), np.ones(1))[0] == 0.0
