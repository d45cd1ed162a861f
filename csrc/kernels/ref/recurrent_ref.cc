/// @brief Reference recurrent cells: the arithmetic of kernels/recurrent_cell.h in double, each
/// output rounded once.
#include <cmath>

#include "kernels/recurrent.h"
#include "kernels/recurrent_cell.h"

namespace portgrad::kernels {
namespace {

double sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x)); }
double tanh_(double x) { return std::tanh(x); }

template <typename T>
void lstm_forward_ref(int64_t batch, int64_t n, T* g, int64_t ldg, const T* c_prev, T* c, T* s, int64_t lds) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j) {
      T* row = g + b * ldg;
      double i = row[j], o = row[n + j], f = row[2 * n + j], m = row[3 * n + j], sv;
      const double cv = cell::lstm_forward(i, o, f, m, double(c_prev[b * n + j]), &sv, sigmoid, tanh_);
      row[j] = T(i), row[n + j] = T(o), row[2 * n + j] = T(f), row[3 * n + j] = T(m);
      c[b * n + j] = T(cv);
      s[b * lds + j] = T(sv);
    }
}

template <typename T>
void lstm_backward_ref(int64_t batch, int64_t n, const T* a, int64_t lda, const T* c_prev, const T* c, const T* ds,
                       int64_t ldds, const T* ds2, T* dc, T* dg, int64_t lddg) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const T* row = a + b * lda;
      const int64_t e = b * n + j;
      double d = double(ds[b * ldds + j]) + (ds2 ? double(ds2[e]) : 0.0), dcv = dc[e], di, dout, df, dm;
      cell::lstm_backward<double>(row[j], row[n + j], row[2 * n + j], row[3 * n + j], c_prev[e], c[e], d, dcv, di,
                                  dout, df, dm, tanh_);
      T* out = dg + b * lddg;
      out[j] = T(di), out[n + j] = T(dout), out[2 * n + j] = T(df), out[3 * n + j] = T(dm);
      dc[e] = T(dcv);
    }
}

template <typename T>
void gru_forward_ref(int64_t batch, int64_t n, T* g, int64_t ldg, const T* h, const T* s_prev, int64_t ldp, T* s,
                     int64_t lds) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j) {
      T* row = g + b * ldg;
      double i = row[j], r = row[n + j], m = row[2 * n + j];
      const double sv = cell::gru_forward(i, r, m, double(h[b * n + j]), double(s_prev[b * ldp + j]), sigmoid, tanh_);
      row[j] = T(i), row[n + j] = T(r), row[2 * n + j] = T(m);
      s[b * lds + j] = T(sv);
    }
}

template <typename T>
void gru_backward_ref(int64_t batch, int64_t n, const T* a, int64_t lda, const T* h, const T* s_prev, int64_t ldp,
                      const T* ds, int64_t ldds, const T* ds2, T* dg, int64_t lddg, T* dh, T* ds_prev) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const T* row = a + b * lda;
      const int64_t e = b * n + j;
      const double d = double(ds[b * ldds + j]) + (ds2 ? double(ds2[e]) : 0.0);
      double di, dr, dm, dhv, dp;
      cell::gru_backward<double>(row[j], row[n + j], row[2 * n + j], h[e], s_prev[b * ldp + j], d, di, dr, dm, dhv, dp);
      T* out = dg + b * lddg;
      out[j] = T(di), out[n + j] = T(dr), out[2 * n + j] = T(dm);
      dh[e] = T(dhv), ds_prev[e] = T(dp);
    }
}

template <typename T>
void lstm_jvp_ref(int64_t batch, int64_t n, const T* a, int64_t lda, const T* c_prev, const T* c, const T* tg,
                  int64_t ldtg, T* tc, T* ts, int64_t ldts) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const T *row = a + b * lda, *t = tg + b * ldtg;
      const int64_t e = b * n + j;
      double tsv;
      const double tcv = cell::lstm_jvp<double>(row[j], row[n + j], row[2 * n + j], row[3 * n + j], c_prev[e], c[e], t[j],
                                                t[n + j], t[2 * n + j], t[3 * n + j], tc[e], &tsv, tanh_);
      tc[e] = T(tcv);
      ts[b * ldts + j] = T(tsv);
    }
}

template <typename T>
void gru_jvp_ref(int64_t batch, int64_t n, const T* a, int64_t lda, const T* h, const T* th, const T* s_prev,
                 const T* ts_prev, int64_t ldp, const T* tg, int64_t ldtg, T* ts, int64_t ldts) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const T *row = a + b * lda, *t = tg + b * ldtg;
      const int64_t e = b * n + j;
      ts[b * ldts + j] = T(cell::gru_jvp<double>(row[j], row[n + j], row[2 * n + j], h[e], th[e], s_prev[b * ldp + j],
                                                 ts_prev[b * ldp + j], t[j], t[n + j], t[2 * n + j]));
    }
}

template <typename T>
void lstm_sequence_ref(const GemmKernels<T>& gemm, int64_t batch, int64_t time, int64_t n, const T* w,
                       const void* packed_w, const T* s0, const T* c0, T* z, T* c, T* s) {
  lstm_sequence_rows<T>(&lstm_forward_ref<T>, gemm, batch, 0, batch, time, n, w, packed_w, s0, c0, z, c, s);
}

template <typename T>
constexpr RecurrentKernels<T> table() {
  return {&lstm_forward_ref<T>, &lstm_backward_ref<T>, &gru_forward_ref<T>, &gru_backward_ref<T>,
          &lstm_jvp_ref<T>, &gru_jvp_ref<T>, &lstm_sequence_ref<T>};
}

}  // namespace

const RecurrentKernels<float> recurrent_ref_f32 = table<float>();
const RecurrentKernels<double> recurrent_ref_f64 = table<double>();

}  // namespace portgrad::kernels
