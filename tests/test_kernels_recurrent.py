"""The recurrent cell kernels (csrc/kernels/recurrent.h) of every variant against a NumPy float64
transcription of their formulas: LSTM and GRU forward, backward and forward mode, on awkward state
sizes (vector tails), strided gate and state rows (as the layers step through [batch, time, ...]
arrays), float32 and float64, with a missing ds2, large pre-activations (saturated gates) and the
in/out arguments' contract."""
import numpy as np
import pytest

from conftest import DTYPES, isa_params
from portgrad import _core

K = _core.kernels
ISAS = isa_params("recurrent")
SIZES = [(1, 1), (2, 7), (3, 8), (2, 17), (5, 33)]
TOL = {np.float32: 2e-6, np.float64: 1e-14}


def sig(x):
    return 1 / (1 + np.exp(-x))


def strided(rng, rows, cols, dtype, scale=1.0, pad=5):
    """A (rows, cols) view into a wider array: rows with a stride, columns contiguous."""
    wide = (scale * rng.standard_normal((rows, cols + pad))).astype(dtype)
    return wide[:, :cols]


def dense(rng, rows, cols, dtype, scale=1.0):
    return np.ascontiguousarray((scale * rng.standard_normal((rows, cols))).astype(dtype))


def close(got, want, dtype, what):
    want = np.asarray(want, np.float64)
    err = np.abs(got.astype(np.float64) - want)
    bound = TOL[dtype] * (1 + np.abs(want)) * 8
    assert np.all(err <= bound), f"{what}: off by {err.max():.3g}"


def lstm_ref(g, cp):
    n = cp.shape[1]
    i, o, f, m = sig(g[:, :n]), sig(g[:, n:2 * n]), sig(g[:, 2 * n:3 * n]), np.tanh(g[:, 3 * n:])
    c = f * cp + i * m
    return np.hstack([i, o, f, m]), c, o * np.tanh(c)


def gru_ref(g, h, sp):
    n = h.shape[1]
    i, r = sig(g[:, :n]), sig(g[:, n:2 * n])
    m = np.tanh(g[:, 2 * n:] + r * h)
    return np.hstack([i, r, m]), (1 - i) * m + i * sp


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_lstm_cell(isa, dtype):
    rng = np.random.default_rng(1)
    for B, n in SIZES:
        for scale in (1.0, 8.0):  # 8: saturated gates
            g = strided(rng, B, 4 * n, dtype, scale)
            g64 = g.astype(np.float64)
            cp = dense(rng, B, n, dtype)
            c, s = np.zeros((B, n), dtype), strided(rng, B, n, dtype)
            K.recurrent(isa, "lstm_forward", [g, cp, c, s])
            a, c_want, s_want = lstm_ref(g64, cp.astype(np.float64))
            what = f"{isa} {np.dtype(dtype).name} B={B} n={n} scale={scale}"
            close(g, a, dtype, f"lstm gates {what}")
            close(c, c_want, dtype, f"lstm c {what}")
            close(s, s_want, dtype, f"lstm s {what}")
            # backward, from the kernel's own gates and states
            A, C, CP = g.astype(np.float64), c.astype(np.float64), cp.astype(np.float64)
            i, o, f, m = np.split(A, 4, axis=1)
            for with_ds2 in (False, True):
                ds, ds2 = strided(rng, B, n, dtype), dense(rng, B, n, dtype) if with_ds2 else None
                dc = dense(rng, B, n, dtype)
                dc_in = dc.astype(np.float64)
                dg = strided(rng, B, 4 * n, dtype)
                K.recurrent(isa, "lstm_backward", [g, cp, c, ds, ds2, dc, dg])
                d = ds.astype(np.float64) + (ds2.astype(np.float64) if with_ds2 else 0)
                th = np.tanh(C)
                dct = dc_in + d * o * (1 - th ** 2)
                want = np.hstack([dct * m * i * (1 - i), d * th * o * (1 - o), dct * CP * f * (1 - f), dct * i * (1 - m * m)])
                close(dg, want, dtype, f"lstm dg {what} ds2={with_ds2}")
                close(dc, dct * f, dtype, f"lstm dc {what}")
            # forward mode
            tg, tc, ts = strided(rng, B, 4 * n, dtype), dense(rng, B, n, dtype), strided(rng, B, n, dtype)
            tc_in = tc.astype(np.float64)
            K.recurrent(isa, "lstm_jvp", [g, cp, c, tg, tc, ts])
            T = tg.astype(np.float64)
            ti, to, tf, tm = i * (1 - i) * T[:, :n], o * (1 - o) * T[:, n:2 * n], f * (1 - f) * T[:, 2 * n:3 * n], \
                (1 - m * m) * T[:, 3 * n:]
            tc_want = tf * CP + f * tc_in + ti * m + i * tm
            close(tc, tc_want, dtype, f"lstm tc {what}")
            close(ts, to * np.tanh(C) + o * (1 - np.tanh(C) ** 2) * tc_want, dtype, f"lstm ts {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
def test_gru_cell(isa, dtype):
    rng = np.random.default_rng(2)
    for B, n in SIZES:
        for scale in (1.0, 8.0):
            g = strided(rng, B, 3 * n, dtype, scale)
            g64 = g.astype(np.float64)
            h, sp, s = dense(rng, B, n, dtype), strided(rng, B, n, dtype), strided(rng, B, n, dtype)
            K.recurrent(isa, "gru_forward", [g, h, sp, s])
            a, s_want = gru_ref(g64, h.astype(np.float64), sp.astype(np.float64))
            what = f"{isa} {np.dtype(dtype).name} B={B} n={n} scale={scale}"
            close(g, a, dtype, f"gru gates {what}")
            close(s, s_want, dtype, f"gru s {what}")
            A, H, SP = g.astype(np.float64), h.astype(np.float64), sp.astype(np.float64)
            i, r, m = np.split(A, 3, axis=1)
            for with_ds2 in (False, True):
                ds, ds2 = strided(rng, B, n, dtype), dense(rng, B, n, dtype) if with_ds2 else None
                dg, dh, dp = strided(rng, B, 3 * n, dtype), np.zeros((B, n), dtype), np.zeros((B, n), dtype)
                K.recurrent(isa, "gru_backward", [g, h, sp, ds, ds2, dg, dh, dp])
                d = ds.astype(np.float64) + (ds2.astype(np.float64) if with_ds2 else 0)
                dz = d * (1 - i) * (1 - m * m)
                close(dg, np.hstack([d * (SP - m) * i * (1 - i), dz * H * r * (1 - r), dz]), dtype, f"gru dg {what}")
                close(dh, dz * r, dtype, f"gru dh {what}")
                close(dp, d * i, dtype, f"gru ds_prev {what}")
            th, tg, ts = dense(rng, B, n, dtype), strided(rng, B, 3 * n, dtype), strided(rng, B, n, dtype)
            wide = rng.standard_normal((B, 2 * n + 6)).astype(dtype)  # s_prev and its tangent: one row stride
            sp2, tp = wide[:, :n], wide[:, n + 3:2 * n + 3]
            K.recurrent(isa, "gru_jvp", [g, h, th, sp2, tp, tg, ts])
            T = tg.astype(np.float64)
            ti, tr = i * (1 - i) * T[:, :n], r * (1 - r) * T[:, n:2 * n]
            tm = (1 - m * m) * (T[:, 2 * n:] + tr * H + r * th.astype(np.float64))
            want = (1 - i) * tm + ti * (sp2.astype(np.float64) - m) + i * tp.astype(np.float64)
            close(ts, want, dtype, f"gru ts {what}")


def test_bad_arguments():
    g = np.zeros((2, 8))
    with pytest.raises(ValueError, match="expected shape"):
        K.recurrent("scalar", "lstm_forward", [g, np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2))])
    with pytest.raises(ValueError, match="C-contiguous"):
        K.recurrent("scalar", "lstm_forward", [g, np.zeros((2, 4))[:, :2], np.zeros((2, 2)), np.zeros((2, 2))])
    with pytest.raises(ValueError, match="missing"):
        K.recurrent("scalar", "lstm_forward", [g, np.zeros((2, 2))])
    with pytest.raises(TypeError, match="float64"):
        K.recurrent("scalar", "lstm_forward", [g, np.zeros((2, 2), np.float32), np.zeros((2, 2)), np.zeros((2, 2))])
    with pytest.raises(ValueError, match="unknown recurrent kernel"):
        K.recurrent("scalar", "rnn_forward", [g])
    with pytest.raises(ValueError, match="share a row stride"):
        K.recurrent("scalar", "gru_jvp", [np.zeros((2, 6)), np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)),
                                          np.zeros((2, 5))[:, :2], np.zeros((2, 6)), np.zeros((2, 2))])


def lstm_sequence_ref(w, z, s0, c0):
    """The LSTM through every step in float64: g_t = z_t + s_(t-1) W^T, then the cell."""
    B, T, _ = z.shape
    n = w.shape[1]
    g, c, s = np.empty(z.shape), np.empty((T, B, n)), np.empty((B, T, n))
    sp, cp = s0.astype(np.float64), c0.astype(np.float64)
    for t in range(T):
        g[:, t], c[t], s[:, t] = lstm_ref(z[:, t].astype(np.float64) + sp @ w.astype(np.float64).T, cp)
        sp, cp = s[:, t], c[t]
    return g, c, s


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("B, T, n", [(1, 1, 1), (3, 4, 7), (17, 3, 5), (40, 5, 9), (33, 2, 16)])
def test_lstm_sequence(isa, dtype, B, T, n):
    rng = np.random.default_rng(B * 100 + n)
    w = (rng.standard_normal((4 * n, n)) / np.sqrt(n)).astype(dtype)
    z, s0, c0 = (rng.standard_normal(shape).astype(dtype) for shape in ((B, T, 4 * n), (B, n), (B, n)))
    want = lstm_sequence_ref(w, z, s0, c0)
    for packed in (True, False):
        got = K.lstm_sequence(isa, w, z, s0, c0, packed)
        for name, a, b in zip(("gates", "c", "s"), got, want):
            close(a, b, dtype, f"{name} B={B} T={T} n={n} packed={packed}")
    # blocks of examples run through every step on their own threads: the same bits on any count
    bits = []
    for threads in (1, 2, 3):
        old = K.num_threads()
        K.set_num_threads(threads)
        try:
            bits.append(b"".join(a.tobytes() for a in K.lstm_sequence(isa, w, z, s0, c0)))
        finally:
            K.set_num_threads(old)
    assert bits[0] == bits[1] == bits[2]
    g, c, s = K.lstm_sequence(isa, w, z, s0, c0)
    assert g.shape == z.shape and c.shape == (T, B, n) and s.shape == (B, T, n)


@pytest.mark.parametrize("isa", ISAS)
def test_float32_gate_functions_within_a_few_ulp(isa):
    """The cells' float32 sigmoid and tanh (cheaper than the unary kernels'): within 4 ulp of the
    float64 values on a dense grid (and 2e-38 absolute where the true sigmoid is subnormal)."""
    x = np.concatenate([np.linspace(-100, 100, 40001), np.linspace(-0.3, 0.3, 20001), [0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(np.float32)
    n = x.size
    g = np.ascontiguousarray(np.stack([x, x, x, x], axis=1).reshape(n, 4))  # one row per value, n = 1
    c = np.empty((n, 1), np.float32)
    s = np.empty((n, 1), np.float32)
    K.recurrent(isa, "lstm_forward", [g, np.zeros((n, 1), np.float32), c, s])
    x64 = x.astype(np.float64)
    for got, want in ((g[:, 0], 1 / (1 + np.exp(-x64))), (g[:, 3], np.tanh(x64))):
        ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
        err = np.abs(got.astype(np.float64) - want)
        assert np.all((err <= 4 * ulp) | (err <= 2e-38)), f"max {np.max(err / ulp):.1f} ulp"
    assert g[-4, 3] == 0 and np.signbit(g[-3, 3])
