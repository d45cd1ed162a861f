/// @brief The pointwise part of one time step of a recurrent cell (LSTM and Wolfram's GRU), forward
/// and backward: the gate activations and the state updates between the step's matrix products.
///
/// Rows are examples; each row of a gate array holds the gates' blocks of n one after another
/// (LSTM: input, output, forget, memory; GRU: input, reset, memory). Arrays with a row stride take
/// it as an ld argument (the layers keep [batch, time, ...] arrays and step through time); the
/// others are dense (batch x n). A null ds2 adds nothing.
#pragma once
#include <cstdint>

#include "kernels/gemm.h"
#include "kernels/isa.h"

namespace portgrad::kernels {

template <typename T>
struct RecurrentKernels {
  // LSTM: i = s(g_i), o = s(g_o), f = s(g_f), m = tanh(g_m) overwrite g (s: the logistic sigmoid);
  // c = f c_prev + i m; s = o tanh(c).
  void (*lstm_forward)(int64_t batch, int64_t n, T* g, int64_t ldg, const T* c_prev, T* c, T* s, int64_t lds);
  // From the activated gates a, c_prev and c: with ds the gradient of s (ds + ds2) and dc the
  // gradient of c from the later steps (in), dg = the gradient of the pre-activations and dc = the
  // gradient of c_prev (out).
  void (*lstm_backward)(int64_t batch, int64_t n, const T* a, int64_t lda, const T* c_prev, const T* c, const T* ds,
                        int64_t ldds, const T* ds2, T* dc, T* dg, int64_t lddg);
  // GRU (Wolfram): g holds W_ix x + W_is s_prev + b_i, W_rx x + W_rs s_prev + b_r and W_mx x + b_m;
  // h = W_ms s_prev. i = s(g_i), r = s(g_r), m = tanh(g_m + r h) overwrite g; s = (1 - i) m + i s_prev.
  void (*gru_forward)(int64_t batch, int64_t n, T* g, int64_t ldg, const T* h, const T* s_prev, int64_t ldp, T* s,
                      int64_t lds);
  // From the activated gates a, h and s_prev, with ds the gradient of s (ds + ds2): dg the gradient
  // of the three blocks of g, dh of h, and ds_prev the part of s_prev's gradient that does not go
  // through the products (i ds); dh and ds_prev dense.
  void (*gru_backward)(int64_t batch, int64_t n, const T* a, int64_t lda, const T* h, const T* s_prev, int64_t ldp,
                       const T* ds, int64_t ldds, const T* ds2, T* dg, int64_t lddg, T* dh, T* ds_prev);
  // Forward mode. LSTM: from the activated gates a, c_prev, c and the pre-activations' tangents tg,
  // with tc the tangent of c_prev (in) and of c (out): ts, the tangent of s.
  void (*lstm_jvp)(int64_t batch, int64_t n, const T* a, int64_t lda, const T* c_prev, const T* c, const T* tg,
                   int64_t ldtg, T* tc, T* ts, int64_t ldts);
  // GRU: from the activated gates a, h and its tangent th (dense), s_prev and its tangent ts_prev
  // (both row stride ldp) and the three pre-activations' tangents tg (the memory block without r h):
  // ts, the tangent of s.
  void (*gru_jvp)(int64_t batch, int64_t n, const T* a, int64_t lda, const T* h, const T* th, const T* s_prev,
                  const T* ts_prev, int64_t ldp, const T* tg, int64_t ldtg, T* ts, int64_t ldts);
  // The LSTM through every step: for t < time, g_t += s_(t-1) W^T, then lstm_forward. W (4n x n)
  // stacks the gates' state weights; packed_w is W^T packed by gemm.pack_b (null: gemm reads W).
  // z [batch, time, 4n] holds the input parts (overwritten by the activated gates), c [time,
  // batch, n] the cell states, s [batch, time, n] the states; s0 and c0 [batch, n] start them.
  // Examples are independent through time, so a variant may run blocks of them through all the
  // steps on one thread each (no synchronisation per step). Results do not depend on the thread
  // count.
  void (*lstm_sequence)(const GemmKernels<T>& gemm, int64_t batch, int64_t time, int64_t n, const T* w,
                        const void* packed_w, const T* s0, const T* c0, T* z, T* c, T* s);
};

// Examples [lo, hi) of lstm_sequence, step by step with `cell` (lstm_forward of a variant).
template <typename T>
void lstm_sequence_rows(void (*cell)(int64_t, int64_t, T*, int64_t, const T*, T*, T*, int64_t),
                        const GemmKernels<T>& gemm, int64_t batch, int64_t lo, int64_t hi, int64_t time, int64_t n,
                        const T* w, const void* packed_w, const T* s0, const T* c0, T* z, T* c, T* s) {
  const int64_t rows = hi - lo, ldz = time * 4 * n, lds = time * n;
  const GemmEpilogue<T> none;
  for (int64_t t = 0; t < time; ++t) {
    const T* s_prev = t ? s + lo * lds + (t - 1) * n : s0 + lo * n;
    const int64_t ldp = t ? lds : n;
    T* zt = z + lo * ldz + t * 4 * n;
    if (packed_w) gemm.gemm_packed_b(rows, 4 * n, n, T(1), s_prev, ldp, 1, packed_w, T(1), zt, ldz, none);
    else gemm.gemm_ex(rows, 4 * n, n, T(1), s_prev, ldp, 1, w, 1, n, T(1), zt, ldz, none);
    cell(rows, n, zt, ldz, t ? c + (t - 1) * batch * n + lo * n : c0 + lo * n, c + t * batch * n + lo * n,
         s + lo * lds + t * n, lds);
  }
}

PORTGRAD_DECLARE_KERNEL_FAMILY(RecurrentKernels, recurrent)

}  // namespace portgrad::kernels
