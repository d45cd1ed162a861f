"""GEMM kernel variants against a float64 numpy oracle: tile-edge sweeps, primes, tall-skinny and
GEMV shapes, alpha/beta semantics, guard values around C, bit-identical reruns, bad arguments."""
import itertools

import numpy as np
import pytest

from conftest import isa_params
from portgrad import _core

K = _core.kernels

ISAS = isa_params("gemm")
SIMD_ISAS = [isa for isa in ISAS if isa != "scalar"]  # the threaded, packing variants
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


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_simd_matches_reference(isa, dtype):
    """Each SIMD variant against the reference twin on random data, within the fp error bound."""
    rng = np.random.default_rng(7)
    eps = np.finfo(dtype).eps
    for trans in TRANS:
        for m, n, k in [(50, 33, 77), (1, 129, 64), (97, 5, 200)]:
            A, B = operands(rng, m, n, k, dtype, *trans)
            C0 = rng.standard_normal((m, n)).astype(dtype)
            ref, fast = C0.copy(), C0.copy()
            K.gemm("scalar", A, B, ref, -1.5, 0.25, *trans)
            K.gemm(isa, A, B, fast, -1.5, 0.25, *trans)
            bound = 1.5 * (np.abs(op(A, trans[0])) @ np.abs(op(B, trans[1]))) + 0.25 * np.abs(C0)
            assert np.all(np.abs(fast.astype(np.float64) - ref) <= (k + 3) * eps * bound), \
                f"{isa} differs from reference beyond the error bound: {trans_id(trans)} {m}x{n}x{k}"


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


# --- gemm_ex (epilogues), pre-packed B, threads ----------------------------------------------
# The AVX2 tiles are 6 x 16 (float32) and 6 x 8 (float64), k in slices of 256, columns in
# groups of 64; the sizes below sweep 1..tile+1 around those and cross every block edge.

UNARY = {"Tanh": np.tanh, "Ramp": lambda x: np.maximum(x, 0.0)}  # both 1-Lipschitz
EPILOGUES = [  # (bias, unary, separate D, row_sums)
    (True, None, False, False), (False, "Tanh", False, False), (False, "Ramp", True, False),
    (False, None, False, True), (True, "Tanh", True, True), (True, "Ramp", False, True),
]


def epi_id(e):
    bias, unary, sep_d, rs = e
    return "+".join(p for p in ["bias" if bias else "", (unary or "") + ("->D" if sep_d else "") if unary else "",
                                "rowsums" if rs else ""] if p) or "none"


def run_ex(isa, rng, m, n, k, dtype, trans_a, trans_b, alpha, beta, epi, packed=False, threads=None):
    """One gemm_ex (or pack_b + gemm_packed_b) call with the epilogue `epi`, inside guarded
    buffers, checked against float64 numpy. Returns the outputs for bit comparisons."""
    bias_on, unary, sep_d, rs_on = epi
    A, B = operands(rng, m, n, k, dtype, trans_a, trans_b)
    C0 = np.full((m, n), np.nan, dtype) if beta == 0.0 else rng.standard_normal((m, n)).astype(dtype)
    cbuf, C, c_in = guarded_c(m, n, n + 3, dtype, C0)
    bias = rng.standard_normal(n).astype(dtype) if bias_on else None
    dbuf = D = None
    if unary and sep_d:
        dbuf, D, d_in = guarded_c(m, n, n + 1, dtype, np.nan)
    rbuf = row_sums = None
    if rs_on:
        rbuf = np.full(m + 10, SENTINEL, dtype)
        row_sums = rbuf[5:5 + m]
        row_sums[:] = np.nan
    if threads is not None:
        K.set_num_threads(threads)
    if packed:
        P = K.pack_b(isa, B, trans_b)
        K.gemm_packed_b(isa, A, P, C, alpha, beta, trans_a, bias=bias, unary=unary, D=D, row_sums=row_sums)
    else:
        K.gemm_ex(isa, A, B, C, alpha, beta, trans_a, trans_b, bias=bias, unary=unary, D=D, row_sums=row_sums)
    what = (f"{isa} {np.dtype(dtype).name} {trans_id((trans_a, trans_b))} m={m} n={n} k={k} "
            f"alpha={alpha} beta={beta} {epi_id(epi)}{' packed' if packed else ''}")
    assert np.all(cbuf[~c_in] == SENTINEL), f"wrote outside C: {what}"
    a, b = op(A, trans_a), op(B, trans_b)
    eps = np.finfo(dtype).eps
    expect = alpha * (a @ b)
    bound = abs(alpha) * (np.abs(a) @ np.abs(b))
    if beta != 0.0:
        expect += beta * C0.astype(np.float64)
        bound += abs(beta) * np.abs(C0.astype(np.float64))
    if bias_on:
        expect += bias.astype(np.float64)
        bound += np.abs(bias.astype(np.float64))
    tol = (k + 3) * eps * bound + np.finfo(dtype).tiny
    pre = C if not unary or sep_d else None  # the pre-activation, when the kernel keeps it
    if pre is not None:
        bad = np.abs(pre.astype(np.float64) - expect) > tol
        assert not bad.any(), f"C off by {np.max(np.abs(pre - expect))}: {what}"
    if unary:
        out = D if sep_d else C
        if sep_d:
            assert np.all(dbuf[~d_in] == SENTINEL), f"wrote outside D: {what}"
        f = UNARY[unary]
        # f is 1-Lipschitz: |f(C) - f(expect)| <= |C - expect| plus f's own few ulps.
        ftol = tol + 8 * eps * (1.0 + np.abs(expect))
        bad = np.abs(out.astype(np.float64) - f(expect)) > ftol
        assert not bad.any(), f"f(C) off by {np.max(np.abs(out - f(expect)))}: {what}"
    if rs_on:
        assert np.all(rbuf[:5] == SENTINEL) and np.all(rbuf[5 + m:] == SENTINEL), f"wrote outside row_sums: {what}"
        rs_tol = (k + 2) * eps * np.abs(a).sum(axis=1) + np.finfo(dtype).tiny
        assert np.all(np.abs(row_sums.astype(np.float64) - a.sum(axis=1)) <= rs_tol), f"row_sums: {what}"
    return C.copy(), None if D is None else D.copy(), None if row_sums is None else row_sums.copy()


EX_SIZES = ([(m, n, 5) for m in range(1, 8) for n in (1, 2, 7, 8, 9, 15, 16, 17, 33)]
            + [(6, 16, 1), (7, 17, 256), (13, 65, 257), (12, 64, 300), (1, 40, 70), (40, 1, 70),
               (61, 67, 71), (300, 5, 13), (5, 300, 13), (127, 130, 31),
               # narrow products (at most one vector of columns: A read in place), k over a kc slice
               (300, 10, 257), (131, 16, 400), (50, 8, 1000), (37, 4, 129)])


@pytest.mark.parametrize("packed", [False, True], ids=["gemm_ex", "packed_b"])
@pytest.mark.parametrize("trans", TRANS, ids=trans_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_epilogues(isa, dtype, trans, packed):
    """Every epilogue option on tile-edge sweeps, primes, tall-skinny shapes and block edges."""
    rng = np.random.default_rng(10)
    for idx, (m, n, k) in enumerate(EX_SIZES):
        epi = EPILOGUES[idx % len(EPILOGUES)]
        alpha, beta = ALPHA_BETA[idx % 3]
        run_ex(isa, rng, m, n, k, dtype, *trans, alpha, beta, epi, packed)


@pytest.mark.parametrize("epi", EPILOGUES, ids=epi_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_epilogue_options_each(isa, dtype, epi):
    """Each epilogue combination on a medium product, both entry points, NN and TT."""
    rng = np.random.default_rng(11)
    for trans in [(False, False), (True, True), (False, True)]:
        for packed in (False, True):
            run_ex(isa, rng, 23, 41, 37, dtype, *trans, 0.5, 1.0, epi, packed)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_epilogue_k_zero_and_empty(isa, dtype):
    rng = np.random.default_rng(12)
    for packed in (False, True):
        A = np.zeros((4, 0), dtype)
        B = np.zeros((0, 6), dtype)
        C = rng.standard_normal((4, 6)).astype(dtype)
        C0 = C.copy()
        bias = rng.standard_normal(6).astype(dtype)
        D = np.full((4, 6), np.nan, dtype)
        rs = np.full(4, np.nan, dtype)
        if packed:
            K.gemm_packed_b(isa, A, K.pack_b(isa, B), C, 1.0, 0.5, bias=bias, unary="Ramp", D=D, row_sums=rs)
        else:
            K.gemm_ex(isa, A, B, C, 1.0, 0.5, bias=bias, unary="Ramp", D=D, row_sums=rs)
        expect = (C0 * dtype(0.5)).astype(dtype) + bias
        np.testing.assert_allclose(C, expect, rtol=4 * np.finfo(dtype).eps)
        np.testing.assert_array_equal(D, np.maximum(C, 0))
        np.testing.assert_array_equal(rs, np.zeros(4, dtype))
        # empty m or n: nothing to do, must not crash
        K.gemm_ex(isa, np.zeros((0, 3), dtype), np.zeros((3, 5), dtype), np.zeros((0, 5), dtype), unary="Tanh")
        rs = np.full(2, np.nan, dtype)
        K.gemm_ex(isa, np.ones((2, 3), dtype), np.zeros((3, 0), dtype), np.zeros((2, 0), dtype), row_sums=rs)
        np.testing.assert_array_equal(rs, np.full(2, 3, dtype))


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_packed_b_same_bits_as_gemm_ex(isa, dtype):
    """Pre-packing B changes nothing but speed: same bits as gemm_ex on the packed path."""
    rng = np.random.default_rng(13)
    for trans in TRANS:
        for m, n, k in [(37, 45, 129), (64, 70, 300), (8, 200, 33), (300, 10, 257)]:
            A, B = operands(rng, m, n, k, dtype, *trans)
            bias = rng.standard_normal(n).astype(dtype)
            C1, C2 = np.empty((m, n), dtype), np.empty((m, n), dtype)
            K.gemm_ex(isa, A, B, C1, 0.5, 0.0, *trans, bias=bias, unary="Tanh")
            K.gemm_packed_b(isa, A, K.pack_b(isa, B, trans[1]), C2, 0.5, 0.0, trans[0], bias=bias, unary="Tanh")
            assert C1.tobytes() == C2.tobytes(), f"{trans_id(trans)} {m}x{n}x{k}"


# Big enough to run on several threads (each over the 128^3 multiply-adds that start them): rows
# split (many row tiles), columns split (few).
THREAD_SIZES = [(200, 130, 90), (7, 1000, 320), (13, 700, 257), (1031, 67, 33), (2051, 16, 129), (1500, 7, 300)]


@pytest.fixture
def restore_threads():
    saved = K.num_threads()
    yield
    K.set_num_threads(saved)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", SIMD_ISAS)  # the reference is single-threaded
def test_threads_bit_identical(isa, dtype, restore_threads):
    """1, 2 and 3 threads give identical bits (gemm, gemm_ex with every option, packed B)."""
    for idx, (m, n, k) in enumerate(THREAD_SIZES):
        trans = TRANS[idx % 4]
        for packed in (False, True):
            epi = (True, "Tanh", idx % 2 == 0, True)
            outs = []
            for threads in (1, 2, 3):
                rng = np.random.default_rng(14 + idx)  # same operands for every thread count
                outs.append(run_ex(isa, rng, m, n, k, dtype, *trans, 0.75, 0.5, epi, packed, threads))
            for got in outs[1:]:
                for x, y in zip(outs[0], got):
                    assert (x is None and y is None) or x.tobytes() == y.tobytes(), \
                        f"thread counts differ: {isa} {trans_id(trans)} {m}x{n}x{k} packed={packed}"


@pytest.mark.skipif(not _core.isa_supported("avx2"), reason="CPU lacks avx2")
def test_concurrent_callers(restore_threads):
    """Several Python threads in large GEMMs at once (the hooks release the GIL): each gets the
    single-thread bits, whether it had the pool or ran alone."""
    import threading
    K.set_num_threads(1)
    rng = np.random.default_rng(15)
    cases = []
    for i in range(4):
        A = rng.standard_normal((150 + i, 160)).astype(np.float32)
        B = rng.standard_normal((160, 170)).astype(np.float32)
        C = np.empty((150 + i, 170), np.float32)
        K.gemm_ex("avx2", A, B, C, unary="Tanh")
        cases.append((A, B, C))
    K.set_num_threads(2)
    errors = []

    def worker(i):
        A, B, expect = cases[i]
        for _ in range(15):
            C = np.empty_like(expect)
            K.gemm_ex("avx2", A, B, C, unary="Tanh")
            if C.tobytes() != expect.tobytes():
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_num_threads_hooks(restore_threads):
    assert K.num_threads() >= 1
    K.set_num_threads(3)
    assert K.num_threads() == 3
    with pytest.raises(ValueError, match="n >= 1"):
        K.set_num_threads(0)


def test_epilogue_bad_arguments():
    f32 = np.ones((3, 4), np.float32)
    B = np.ones((4, 2), np.float32)
    C = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="'bias' has 3 entries"):
        K.gemm_ex("scalar", f32, B, C, bias=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="'bias' has dtype float64"):
        K.gemm_ex("scalar", f32, B, C, bias=np.ones(2))
    with pytest.raises(ValueError, match="unknown elementwise"):
        K.gemm_ex("scalar", f32, B, C, unary="Nope")
    with pytest.raises(ValueError, match="without 'unary'"):
        K.gemm_ex("scalar", f32, B, C, D=np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="'D' has shape"):
        K.gemm_ex("scalar", f32, B, C, unary="Tanh", D=np.zeros((2, 3), np.float32))
    big = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps 'C'"):
        K.gemm_ex("scalar", f32, B, big[:, :2], unary="Tanh", D=big[:, 1:3])
    with pytest.raises(ValueError, match="'row_sums' has 2 entries"):
        K.gemm_ex("scalar", f32, B, C, row_sums=np.zeros(2, np.float32))
    for isa in ISAS:
        P = K.pack_b(isa, B)
        with pytest.raises(ValueError, match="pack_b made"):
            K.gemm_packed_b(isa, f32, P, np.zeros((3, 40), np.float32))
        with pytest.raises(ValueError, match="pack_b made"):
            K.gemm_packed_b(isa, f32, P[:-1], C)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")  # Python 3.12+: that is the point
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
@pytest.mark.skipif(not _core.isa_supported("avx2"), reason="CPU lacks avx2")
def test_threads_after_fork(restore_threads):
    """A forked child (multiprocessing's default on Linux) runs threaded GEMMs with a pool of its
    own instead of waiting for the parent's workers, and gets the same bits."""
    import os
    K.set_num_threads(2)
    rng = np.random.default_rng(16)
    A = rng.standard_normal((300, 200)).astype(np.float32)
    B = rng.standard_normal((200, 250)).astype(np.float32)
    C = np.empty((300, 250), np.float32)
    K.gemm("avx2", A, B, C)  # the parent's pool is up
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            C2 = np.empty_like(C)
            K.gemm("avx2", A, B, C2)
            os.write(w, b"1" if C2.tobytes() == C.tobytes() else b"0")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"1", "child's threaded GEMM differs from the parent's"


# --- operand prologue: op(A) read as dA * f'(Z) (the activation derivative of a backward pass) ----
# The two layouts of a Linear backward: dX = dZ . W (A stored m x k) and dW = dZ^T . X (A stored
# k x m, read transposed). Sizes cross the tiles, the 64-column chunks of the prologue, the k
# slices and (the last) the threshold for several threads.
PROLOGUE_SIZES = [(1, 5, 3), (7, 17, 9), (6, 16, 64), (13, 33, 70), (5, 300, 13), (61, 67, 257), (140, 131, 120)]


def prologue_operands(rng, name, m, k, dtype, trans_a):
    shape = (k, m) if trans_a else (m, k)
    dA = rng.standard_normal(shape).astype(dtype)
    if name in ("Log", "Sqrt"):  # inside the domain
        Z = rng.uniform(0.25, 3.0, shape).astype(dtype)
    else:
        Z = (2.0 * rng.standard_normal(shape)).astype(dtype)
    Y = K.unary_forward("scalar", name, Z)
    return dA, Z, Y


def run_prologue(isa, name, m, n, k, dtype, trans_a, packed=False):
    rng = np.random.default_rng(20 + m + n + k)
    dA, Z, Y = prologue_operands(rng, name, m, k, dtype, trans_a)
    B = rng.standard_normal((k, n)).astype(dtype)
    cbuf, C, c_in = guarded_c(m, n, n + 3, dtype, np.nan)
    rbuf = np.full(m + 10, SENTINEL, dtype)
    row_sums = rbuf[5:5 + m]
    pro = (name, Z, Y)
    if packed:
        K.gemm_packed_b(isa, dA, K.pack_b(isa, B, False), C, 1.0, 0.0, trans_a, row_sums=row_sums, prologue=pro)
    else:
        K.gemm_ex(isa, dA, B, C, 1.0, 0.0, trans_a, False, row_sums=row_sums, prologue=pro)
    what = f"{isa} {np.dtype(dtype).name} {name} {'T' if trans_a else 'N'} m={m} n={n} k={k} packed={packed}"
    assert np.all(cbuf[~c_in] == SENTINEL), f"wrote outside C: {what}"
    assert np.all(rbuf[:5] == SENTINEL) and np.all(rbuf[5 + m:] == SENTINEL), f"wrote outside row_sums: {what}"
    # dZ as this ISA's unary backward computes it (the contract of the prologue), against which the
    # product and row sums must be as accurate as a plain GEMM; for the fast ISA also the reference
    # dZ, within the unary kernel's own accuracy.
    # (The elementwise family has no AVX-512 variant: the AVX-512 GEMM folds in the AVX2 one.)
    dz = K.unary_backward("avx2" if isa == "avx512" else isa, name, Z, Y, dA)
    a = op(dz, trans_a)
    eps = np.finfo(dtype).eps
    expect = a @ B.astype(np.float64)
    tol = (k + 4) * eps * (np.abs(a) @ np.abs(B.astype(np.float64))) + np.finfo(dtype).tiny
    got = C.astype(np.float64)
    assert np.all(np.isfinite(got)), f"non-finite result {what}"
    bad = np.abs(got - expect) > tol
    assert not bad.any(), f"C off by {np.max(np.abs(got - expect))} ({bad.sum()} elements): {what}"
    rs_tol = (k + 4) * eps * np.abs(a).sum(axis=1) + np.finfo(dtype).tiny
    assert np.all(np.abs(row_sums.astype(np.float64) - a.sum(axis=1)) <= rs_tol), f"row_sums: {what}"
    return C.copy(), row_sums.copy()


@pytest.mark.parametrize("trans_a", [False, True], ids=["dZ.W", "dZ^T.X"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_prologue_every_activation(isa, dtype, trans_a):
    """Every elementwise function's derivative folded into A, with row sums, on awkward sizes."""
    for name in K.unary_names:
        for m, n, k in PROLOGUE_SIZES:
            run_prologue(isa, name, m, n, k, dtype, trans_a)
        run_prologue(isa, name, 13, 40, 70, dtype, trans_a, packed=True)


@pytest.mark.parametrize("isa", SIMD_ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_prologue_matches_reference(isa, dtype):
    """Each SIMD prologue against the reference GEMM (whose dZ is the reference unary backward)."""
    rng = np.random.default_rng(30)
    for name in K.unary_names:
        for trans_a in (False, True):
            m, n, k = 61, 67, 71
            dA, Z, Y = prologue_operands(rng, name, m, k, dtype, trans_a)
            B = rng.standard_normal((k, n)).astype(dtype)
            outs = []
            for variant in ("scalar", isa):
                C, rs = np.zeros((m, n), dtype), np.zeros(m, dtype)
                K.gemm_ex(variant, dA, B, C, trans_a=trans_a, row_sums=rs, prologue=(name, Z, Y))
                outs.append((C.astype(np.float64), rs.astype(np.float64)))
            a = np.abs(op(dA, trans_a) * op(K.unary_backward("scalar", name, Z, Y, np.ones_like(dA)), trans_a))
            eps = np.finfo(dtype).eps
            tol = (k + 64) * eps * (a @ np.abs(B.astype(np.float64))) + np.finfo(dtype).tiny
            assert np.all(np.abs(outs[0][0] - outs[1][0]) <= tol), f"{name} {np.dtype(dtype).name} trans_a={trans_a}"
            rs_tol = (k + 64) * eps * a.sum(axis=1) + np.finfo(dtype).tiny
            assert np.all(np.abs(outs[0][1] - outs[1][1]) <= rs_tol), f"{name} row sums trans_a={trans_a}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_prologue_threads_bit_identical(isa, dtype, restore_threads):
    """1 and 2 threads give identical bits with a prologue (rows split and columns split)."""
    for name in ("Ramp", "Tanh", "GELU", "Sin"):
        for trans_a in (False, True):
            for m, n, k in [(200, 130, 90), (13, 700, 257)]:
                outs = []
                for threads in (1, 2):
                    K.set_num_threads(threads)
                    outs.append(run_prologue(isa, name, m, n, k, dtype, trans_a))
                for x, y in zip(*outs):
                    assert x.tobytes() == y.tobytes(), f"thread counts differ: {isa} {name} {m}x{n}x{k}"


def test_prologue_k_zero_and_bad_arguments():
    for isa in ISAS:
        for n in (0, 3):  # n == 0: only the row sums (the bias gradient alone)
            rng = np.random.default_rng(40)
            dA, Z, Y = prologue_operands(rng, "Tanh", 5, 7, np.float64, True)
            rs = np.full(5, np.nan)
            K.gemm_ex(isa, dA, np.ones((7, n)), np.zeros((5, n)), trans_a=True, row_sums=rs, prologue=("Tanh", Z, Y))
            np.testing.assert_allclose(rs, K.unary_backward("scalar", "Tanh", Z, Y, dA).sum(axis=0), rtol=1e-13)
        rs = np.full(5, np.nan)
        z = np.zeros((5, 0))
        K.gemm_ex(isa, z, np.ones((0, 2)), np.zeros((5, 2)), row_sums=rs, prologue=("Tanh", z, z))
        assert np.all(rs == 0)
    A = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="shape and strides"):
        K.gemm_ex("scalar", A, np.ones((4, 2), np.float32), np.zeros((3, 2), np.float32),
                  prologue=("Tanh", np.ones((4, 3), np.float32).T, A))
    with pytest.raises(ValueError, match="unknown elementwise"):
        K.gemm_ex("scalar", A, np.ones((4, 2), np.float32), np.zeros((3, 2), np.float32), prologue=("Nope", A, A))


# --- scale epilogue: D = C * S[i % period] (an activation's tangent f'(z) t, directions stacked) ---
# m = directions * period (+ a partial direction where period does not divide m); sizes cross the
# tiles, the 64-column groups, the narrow (one-vector) path, the unpacked small path and the threads.
SCALE_SIZES = [(1, 5, 3, 1), (7, 17, 9, 3), (24, 16, 64, 8), (37, 70, 13, 10), (96, 10, 40, 12),
               (2048, 128, 130, 256), (300, 16, 128, 256)]


def run_scale(isa, m, n, k, period, dtype, packed=False, separate_d=False):
    rng = np.random.default_rng(50 + m + n + k)
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    S = rng.standard_normal((period, n + 2)).astype(dtype)[:, :n]  # rows with a stride
    plain = np.zeros((m, n), dtype)
    K.gemm_ex(isa, A, B, plain, bias=bias)
    cbuf, C, c_in = guarded_c(m, n, n + 3, dtype, np.nan)
    D = np.full((m, n), np.nan, dtype) if separate_d else None
    if packed:
        K.gemm_packed_b(isa, A, K.pack_b(isa, B, False), C, bias=bias, D=D, scale=S)
    else:
        K.gemm_ex(isa, A, B, C, bias=bias, D=D, scale=S)
    what = f"{isa} {np.dtype(dtype).name} m={m} n={n} k={k} period={period} packed={packed}"
    assert np.all(cbuf[~c_in] == SENTINEL), f"wrote outside C: {what}"
    # The contract: the product's bits (as without the epilogue) times S, rounded once.
    want = (plain * S[np.arange(m) % period]).astype(dtype)
    got = D if separate_d else C
    assert got.tobytes() == want.tobytes(), f"scale epilogue differs from product * scale: {what}"
    if separate_d:
        assert C.tobytes() == plain.tobytes(), f"C is not the plain product: {what}"
    return got.copy()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_scale_epilogue(isa, dtype):
    for m, n, k, period in SCALE_SIZES:
        run_scale(isa, m, n, k, period, dtype)
        run_scale(isa, m, n, k, period, dtype, packed=True)
        run_scale(isa, m, n, k, period, dtype, separate_d=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_scale_epilogue_threads_bit_identical(isa, dtype, restore_threads):
    for m, n, k, period in SCALE_SIZES[5:]:
        outs = []
        for threads in (1, 2, 3):
            K.set_num_threads(threads)
            outs.append(run_scale(isa, m, n, k, period, dtype))
        assert outs[0].tobytes() == outs[1].tobytes() == outs[2].tobytes(), f"{isa} {m}x{n}x{k}"


def test_scale_epilogue_bad_arguments():
    A, B, C = np.ones((4, 3)), np.ones((3, 5)), np.zeros((4, 5))
    S = np.zeros((2, 5))
    with pytest.raises(ValueError, match="exclude each other"):
        K.gemm_ex("scalar", A, B, C, unary="Tanh", scale=S)
    with pytest.raises(ValueError, match=r"\(period, 5\)"):
        K.gemm_ex("scalar", A, B, C, scale=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(period, 5\)"):
        K.gemm_ex("scalar", A, B, C, scale=np.zeros((5, 2)).T)
    with pytest.raises(ValueError, match="overlaps"):
        K.gemm_ex("scalar", A, B, C, scale=C[:2])
    with pytest.raises(TypeError, match="dtype"):
        K.gemm_ex("scalar", A, B, C, scale=S.astype(np.float32))


# --- batched products (attention's per example and head) ------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_gemm_batched_is_gemm_on_each_product(isa, dtype, restore_threads):
    """Every product of a two-level batch (strided views of [example, length, heads, size] arrays,
    as attention has them) has the bits of gemm on that product alone, on 1, 2 and 3 threads; and it
    is right against float64 numpy."""
    rng = np.random.default_rng(60)
    for (o, i, m, n, k) in [(1, 1, 3, 5, 7), (3, 2, 17, 13, 16), (16, 4, 33, 33, 16), (2, 3, 128, 16, 128)]:
        A4 = rng.standard_normal((o, m, i, k)).astype(dtype).transpose(0, 2, 1, 3)  # (o, i, m, k), rows strided
        B4 = rng.standard_normal((o, n, i, k)).astype(dtype).transpose(0, 2, 3, 1)  # (o, i, k, n): B^T views
        want = np.zeros((o, i, m, n), dtype)
        for a in range(o):
            for b in range(i):
                c = np.zeros((m, n), dtype)
                K.gemm(isa, A4[a, b], B4[a, b], c)
                want[a, b] = c
        for threads in (1, 2, 3):
            K.set_num_threads(threads)
            C = np.full((o, i, m, n), np.nan, dtype)
            K.gemm_batched(isa, A4, B4, C)
            assert C.tobytes() == want.tobytes(), f"{isa} {o}x{i} {m}x{n}x{k} threads={threads}"
        ref = np.einsum("oimk,oikn->oimn", A4.astype(np.float64), B4.astype(np.float64))
        tol = (k + 4) * np.finfo(dtype).eps * np.einsum("oimk,oikn->oimn", np.abs(A4.astype(np.float64)),
                                                         np.abs(B4.astype(np.float64)))
        assert np.all(np.abs(C - ref) <= tol)
    with pytest.raises(ValueError, match="do not multiply"):
        K.gemm_batched("scalar", np.ones((1, 1, 2, 3)), np.ones((1, 1, 2, 3)), np.zeros((1, 1, 2, 3)))
