/// @brief The arithmetic of one element of a recurrent cell (kernels/recurrent.h), written once for
/// the reference (in double) and the CUDA kernels (in T): U is the number type, sigmoid and tanh_
/// are its functions.
#pragma once

#if defined(__CUDACC__)
#define PG_CELL __host__ __device__ inline
#else
#define PG_CELL inline
#endif

namespace portgrad::kernels::cell {

// LSTM forward: gates (i, o, f, m) activated in place; returns c, writes s.
template <typename U, typename Sig, typename Tanh>
PG_CELL U lstm_forward(U& i, U& o, U& f, U& m, U c_prev, U* s, Sig sigmoid, Tanh tanh_) {
  i = sigmoid(i), o = sigmoid(o), f = sigmoid(f), m = tanh_(m);
  const U c = f * c_prev + i * m;
  *s = o * tanh_(c);
  return c;
}

// LSTM backward for one element: ds (total), dc (in from later; out to c_prev); gate gradients out.
template <typename U, typename Tanh>
PG_CELL void lstm_backward(U i, U o, U f, U m, U c_prev, U c, U ds, U& dc, U& di, U& dout, U& df, U& dm, Tanh tanh_) {
  const U th = tanh_(c);
  const U dct = dc + ds * o * (U(1) - th * th);
  dout = ds * th * o * (U(1) - o);
  di = dct * m * i * (U(1) - i);
  df = dct * c_prev * f * (U(1) - f);
  dm = dct * i * (U(1) - m * m);
  dc = dct * f;
}

// GRU forward: gates (i, r, m) activated in place (m from g_m + r h); returns s.
template <typename U, typename Sig, typename Tanh>
PG_CELL U gru_forward(U& i, U& r, U& m, U h, U s_prev, Sig sigmoid, Tanh tanh_) {
  i = sigmoid(i), r = sigmoid(r);
  m = tanh_(m + r * h);
  return (U(1) - i) * m + i * s_prev;
}

// GRU backward for one element: ds (total) -> the three gates' gradients, dh and the direct ds_prev.
template <typename U>
PG_CELL void gru_backward(U i, U r, U m, U h, U s_prev, U ds, U& di, U& dr, U& dm, U& dh, U& ds_prev) {
  const U dz = ds * (U(1) - i) * (U(1) - m * m);
  di = ds * (s_prev - m) * i * (U(1) - i);
  dm = dz;
  dr = dz * h * r * (U(1) - r);
  dh = dz * r;
  ds_prev = ds * i;
}

// LSTM tangent: gate pre-activation tangents (tgi, tgo, tgf, tgm) and tc_prev; returns tc, writes ts.
template <typename U, typename Tanh>
PG_CELL U lstm_jvp(U i, U o, U f, U m, U c_prev, U c, U tgi, U tgo, U tgf, U tgm, U tc_prev, U* ts, Tanh tanh_) {
  const U ti = i * (U(1) - i) * tgi, to = o * (U(1) - o) * tgo, tf = f * (U(1) - f) * tgf;
  const U tm = (U(1) - m * m) * tgm;
  const U tc = tf * c_prev + f * tc_prev + ti * m + i * tm;
  const U th = tanh_(c);
  *ts = to * th + o * (U(1) - th * th) * tc;
  return tc;
}

// GRU tangent: returns ts from the gates, h, th, s_prev, ts_prev and the pre-activation tangents.
template <typename U>
PG_CELL U gru_jvp(U i, U r, U m, U h, U th, U s_prev, U ts_prev, U tgi, U tgr, U tgm) {
  const U ti = i * (U(1) - i) * tgi, tr = r * (U(1) - r) * tgr;
  const U tm = (U(1) - m * m) * (tgm + tr * h + r * th);
  return (U(1) - i) * tm + ti * (s_prev - m) + i * ts_prev;
}

}  // namespace portgrad::kernels::cell
