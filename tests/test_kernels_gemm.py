"""GEMM kernel variants against a float64 numpy oracle: tile-edge sweeps, primes, tall-skinny and
GEMV shapes, alpha/beta semantics, guard values around C, bit-identical reruns, bad arguments."""
import itertools

import numpy as np
import pytest

from portgrad import _core

K = _core.kernels

ISAS = [
    pytest.param(isa, marks=pytest.mark.skipif(not _core.isa_supported(isa), reason=f"CPU lacks {isa}"))
    for isa in ("scalar", "avx2")
]
DTYPES = [np.float32, np.float64]
TRANS = list(itertools.product([False, True], repeat=2))  # (trans_a, trans_b): NN, NT, TN, TT
ALPHA_BETA = [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)]
SENTINEL = 12345.5  # exactly representable in float32 and float64


def trans_id(t):
    return ("T" if t[0] else "N") + ("T" if t[1] else "N")


def operands(rng, m, n, k, dtype, trans_a, trans_b):
    """Random A, B stored so that op(A) is m x k and op(B) is k x n."""
    A = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    B = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return A, B


def op(X, t):
    X = X.astype(np.float64)
    return X.T if t else X


def check(C, A, B, C0, alpha, beta, trans_a, trans_b, what=""):
    """C (the kernel's result) against alpha*op(A)@op(B) + beta*C0 in float64, within the
    classical elementwise bound (k + 2) * eps * (|alpha| |op(A)| |op(B)| + |beta| |C0|)."""
    dtype = C.dtype
    a, b = op(A, trans_a), op(B, trans_b)
    k = a.shape[1]
    expect = alpha * (a @ b)
    bound = abs(alpha) * (np.abs(a) @ np.abs(b))
    if beta != 0.0:
        expect = expect + beta * C0.astype(np.float64)
        bound = bound + abs(beta) * np.abs(C0.astype(np.float64))
    eps = np.finfo(dtype).eps
    tol = (k + 2) * eps * bound + np.finfo(dtype).tiny
    got = C.astype(np.float64)
    assert np.all(np.isfinite(got)), f"non-finite result {what}"
    bad = np.abs(got - expect) > tol
    if bad.any():
        i, j = np.argwhere(bad)[0]
        pytest.fail(f"{what}: C[{i},{j}] = {got[i, j]!r}, expected {expect[i, j]!r} (tol {tol[i, j]:.3g}); "
                    f"{bad.sum()} of {bad.size} outside tolerance")


def run_case(isa, rng, m, n, k, dtype, trans_a, trans_b, alpha, beta):
    A, B = operands(rng, m, n, k, dtype, trans_a, trans_b)
    if beta == 0.0:
        C0 = np.full((m, n), np.nan, dtype)  # must not be read
    else:
        C0 = rng.standard_normal((m, n)).astype(dtype)
    C = C0.copy()
    K.gemm(isa, A, B, C, alpha, beta, trans_a, trans_b)
    check(C, A, B, C0, alpha, beta, trans_a, trans_b,
          f"{isa} {np.dtype(dtype).name} {trans_id((trans_a, trans_b))} m={m} n={n} k={k} alpha={alpha} beta={beta}")
    return C


@pytest.mark.parametrize("trans", TRANS, ids=trans_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_tile_edges(isa, dtype, trans):
    """m in 1..7 (tiles of 6 and 4 rows), n in 1..17 (tiles of 16 / 8 columns, 2 / 4 rows of B),
    k around the vector width; every alpha/beta pair."""
    rng = np.random.default_rng(1)
    for m, n, k in itertools.product(range(1, 8), range(1, 18), [1, 2, 7, 8, 17, 33]):
        alpha, beta = ALPHA_BETA[(m + n + k) % 3]
        run_case(isa, rng, m, n, k, dtype, *trans, alpha, beta)


LARGE = [
    (13, 31, 61), (127, 61, 31), (61, 127, 13), (31, 13, 127),  # primes
    (1000, 3, 5), (3, 1000, 7), (1, 1024, 300), (1024, 1, 300),  # tall-skinny, GEMV
    (65, 70, 1001),  # k >= 1000
    (1, 1029, 13), (7, 1029, 6),  # single rows: several column chunks, k % 4 tail
]


@pytest.mark.parametrize("alpha_beta", ALPHA_BETA, ids=str)
@pytest.mark.parametrize("trans", TRANS, ids=trans_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_large_and_skinny(isa, dtype, trans, alpha_beta):
    rng = np.random.default_rng(2)
    for m, n, k in LARGE:
        run_case(isa, rng, m, n, k, dtype, *trans, *alpha_beta)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_k_zero_and_empty(isa, dtype):
    rng = np.random.default_rng(3)
    for trans in TRANS:
        A, B = operands(rng, 5, 9, 0, dtype, *trans)
        C = np.full((5, 9), np.nan, dtype)
        K.gemm(isa, A, B, C, 1.0, 0.0, *trans)
        assert np.array_equal(C, np.zeros((5, 9), dtype)), "k == 0, beta == 0 must give zeros"
        C0 = rng.standard_normal((5, 9)).astype(dtype)
        C = C0.copy()
        K.gemm(isa, A, B, C, 3.0, -0.5, *trans)
        np.testing.assert_array_equal(C, (C0 * dtype(-0.5)).astype(dtype))
        for m, n in [(0, 9), (5, 0), (0, 0)]:
            A, B = operands(rng, m, n, 4, dtype, *trans)
            C = np.full((m, n), np.nan, dtype)
            K.gemm(isa, A, B, C, 1.0, 0.0, *trans)  # nothing to do, must not crash


def guarded_c(m, n, ldc, dtype, fill, pad=19):
    """C as a (m, n) view with row stride ldc inside a sentinel-filled buffer that also has
    `pad` elements before and after; returns (buffer, view, mask of the view's elements)."""
    buf = np.full(pad + m * ldc + pad, SENTINEL, dtype)
    body = buf[pad:pad + m * ldc].reshape(m, ldc)
    body[:, :n] = fill
    inside = np.zeros(buf.shape, bool)
    inside[pad:pad + m * ldc].reshape(m, ldc)[:, :n] = True
    return buf, body[:, :n], inside


@pytest.mark.parametrize("trans", TRANS, ids=trans_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_guards_and_ldc(isa, dtype, trans):
    """ldc > n: columns past n, and memory before and after C, stay untouched."""
    rng = np.random.default_rng(4)
    for (m, n, k), extra in itertools.product([(1, 1, 1), (5, 7, 3), (7, 17, 9), (6, 16, 8), (13, 9, 33), (3, 31, 2)],
                                              [0, 1, 5]):
        for alpha, beta in ALPHA_BETA:
            A, B = operands(rng, m, n, k, dtype, *trans)
            C0 = np.full((m, n), np.nan, dtype) if beta == 0 else rng.standard_normal((m, n)).astype(dtype)
            buf, C, inside = guarded_c(m, n, n + extra, dtype, C0)
            K.gemm(isa, A, B, C, alpha, beta, *trans)
            assert np.all(buf[~inside] == SENTINEL), f"wrote outside C: m={m} n={n} k={k} ldc={n + extra}"
            check(C, A, B, C0, alpha, beta, *trans, f"guarded m={m} n={n} k={k} ldc={n + extra}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_strided_operands(isa, dtype):
    """A and B as views with leading dimensions > k or n, element steps > 1, negative strides:
    exercises every path (contiguous rows, contiguous k, generic)."""
    rng = np.random.default_rng(5)
    m, n, k = 11, 19, 23
    big_a = rng.standard_normal((2 * m + 3, 2 * k + 5)).astype(dtype)
    big_b = rng.standard_normal((2 * k + 3, 2 * n + 5)).astype(dtype)
    views_a = [big_a[:m, :k], big_a[1:m + 1, 2:k + 2], big_a[:2 * m:2, :k], big_a[:m, :2 * k:2], big_a[m - 1::-1, :k]]
    views_b = [big_b[:k, :n], big_b[3:k + 3, 1:n + 1], big_b[:k, :2 * n:2], big_b[:2 * k:2, :n], big_b[:k, n - 1::-1]]
    for A, B in itertools.product(views_a, views_b):
        for alpha, beta in ALPHA_BETA:
            C0 = rng.standard_normal((m, n)).astype(dtype)
            C = C0.copy()
            K.gemm(isa, A, B, C, alpha, beta)
            check(C, A, B, C0, alpha, beta, False, False, f"strides A={A.strides} B={B.strides}")
            # The same views transposed: B^T (n x k) times A^T (k x m) = C^T.
            Ct0 = rng.standard_normal((n, m)).astype(dtype)
            Ct = Ct0.copy()
            K.gemm(isa, B, A, Ct, alpha, beta, True, True)
            check(Ct, B, A, Ct0, alpha, beta, True, True, f"transposed strides A={A.strides} B={B.strides}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_bit_identical_reruns(isa, dtype):
    rng = np.random.default_rng(6)
    for trans in TRANS:
        for m, n, k in [(37, 45, 129), (1, 300, 257), (64, 64, 64)]:
            A, B = operands(rng, m, n, k, dtype, *trans)
            C0 = rng.standard_normal((m, n)).astype(dtype)
            C1, C2 = C0.copy(), C0.copy()
            K.gemm(isa, A, B, C1, 0.75, 0.5, *trans)
            K.gemm(isa, A, B, C2, 0.75, 0.5, *trans)
            assert C1.tobytes() == C2.tobytes(), f"two runs differ: {trans_id(trans)} {m}x{n}x{k}"


@pytest.mark.skipif(not _core.isa_supported("avx2"), reason="CPU lacks avx2")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_avx2_matches_reference(dtype):
    """The AVX2 variant against the reference twin on random data, within the fp error bound."""
    rng = np.random.default_rng(7)
    eps = np.finfo(dtype).eps
    for trans in TRANS:
        for m, n, k in [(50, 33, 77), (1, 129, 64), (97, 5, 200)]:
            A, B = operands(rng, m, n, k, dtype, *trans)
            C0 = rng.standard_normal((m, n)).astype(dtype)
            ref, fast = C0.copy(), C0.copy()
            K.gemm("scalar", A, B, ref, -1.5, 0.25, *trans)
            K.gemm("avx2", A, B, fast, -1.5, 0.25, *trans)
            bound = 1.5 * (np.abs(op(A, trans[0])) @ np.abs(op(B, trans[1]))) + 0.25 * np.abs(C0)
            assert np.all(np.abs(fast.astype(np.float64) - ref) <= (k + 3) * eps * bound), \
                f"avx2 differs from reference beyond the error bound: {trans_id(trans)} {m}x{n}x{k}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_active_variant_is_the_chosen_one(dtype):
    """'active' (the engine's choice, PORTGRAD_ISA aware) gives the bits of the named ISA's variant."""
    rng = np.random.default_rng(8)
    A, B = operands(rng, 9, 21, 35, dtype, False, False)
    C1 = np.empty((9, 21), dtype)
    C2 = np.empty((9, 21), dtype)
    K.gemm("active", A, B, C1)
    K.gemm(_core.active_isa(), A, B, C2)
    assert C1.tobytes() == C2.tobytes()


def test_bad_arguments():
    f32 = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="float32"):
        K.gemm("scalar", f32, np.ones((4, 2), np.float64), np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        K.gemm("scalar", np.ones((3, 4), np.int32), np.ones((4, 2), np.int32), np.zeros((3, 2), np.int32))
    with pytest.raises(ValueError, match="inner dimensions"):
        K.gemm("scalar", f32, np.ones((5, 2), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        K.gemm("scalar", f32, np.ones((4, 2), np.float32), np.zeros((3, 3), np.float32))
    ro = np.zeros((3, 2), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.gemm("scalar", f32, np.ones((4, 2), np.float32), ro)
    with pytest.raises(ValueError, match="unit column stride"):
        K.gemm("scalar", f32, np.ones((4, 2), np.float32), np.zeros((3, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="unknown ISA"):
        K.gemm("sse9", f32, np.ones((4, 2), np.float32), np.zeros((3, 2), np.float32))


@pytest.mark.skipif(_core.isa_supported("avx512"), reason="only checks the refusal on CPUs without avx512")
def test_unsupported_isa_raises():
    f32 = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="not available"):
        K.gemm("avx512", f32, np.ones((4, 2), np.float32), np.zeros((3, 2), np.float32))
