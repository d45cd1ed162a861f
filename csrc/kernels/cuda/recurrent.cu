/// @brief CUDA recurrent cells (the recurrent_cuda_* tables): one thread per (example, element),
/// the arithmetic of kernels/recurrent_cell.h in T with unary_math's sigmoid and tanh.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"
#include "kernels/cuda/unary_math.cuh"
#include "kernels/recurrent_cell.h"

namespace portgrad::kernels {
namespace {

using portgrad::cuda::global_thread;
using portgrad::cuda::grid_threads;

constexpr unsigned kThreads = 256;

template <typename T> struct Sig {
  PG_DEVICE T operator()(T x) const { return unary_math::sigmoid(x); }
};
template <typename T> struct Tanh {
  PG_DEVICE T operator()(T x) const { return unary_math::forward(UnaryFn::Tanh, x); }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_forward_kernel(int64_t batch, int64_t n, T* g, int64_t ldg,
                                                                const T* c_prev, T* c, T* s, int64_t lds) {
  for (int64_t e = global_thread(); e < batch * n; e += grid_threads()) {
    const int64_t b = e / n, j = e - b * n;
    T* row = g + b * ldg;
    T i = row[j], o = row[n + j], f = row[2 * n + j], m = row[3 * n + j], sv;
    c[e] = cell::lstm_forward(i, o, f, m, c_prev[e], &sv, Sig<T>{}, Tanh<T>{});
    row[j] = i, row[n + j] = o, row[2 * n + j] = f, row[3 * n + j] = m;
    s[b * lds + j] = sv;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_backward_kernel(int64_t batch, int64_t n, const T* a, int64_t lda,
                                                                 const T* c_prev, const T* c, const T* ds, int64_t ldds,
                                                                 const T* ds2, T* dc, T* dg, int64_t lddg) {
  for (int64_t e = global_thread(); e < batch * n; e += grid_threads()) {
    const int64_t b = e / n, j = e - b * n;
    const T* row = a + b * lda;
    T dcv = dc[e], di, dout, df, dm;
    const T d = ds[b * ldds + j] + (ds2 ? ds2[e] : T(0));
    cell::lstm_backward<T>(row[j], row[n + j], row[2 * n + j], row[3 * n + j], c_prev[e], c[e], d, dcv, di, dout, df,
                           dm, Tanh<T>{});
    T* out = dg + b * lddg;
    out[j] = di, out[n + j] = dout, out[2 * n + j] = df, out[3 * n + j] = dm;
    dc[e] = dcv;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gru_forward_kernel(int64_t batch, int64_t n, T* g, int64_t ldg, const T* h,
                                                               const T* s_prev, int64_t ldp, T* s, int64_t lds) {
  for (int64_t e = global_thread(); e < batch * n; e += grid_threads()) {
    const int64_t b = e / n, j = e - b * n;
    T* row = g + b * ldg;
    T i = row[j], r = row[n + j], m = row[2 * n + j];
    s[b * lds + j] = cell::gru_forward(i, r, m, h[e], s_prev[b * ldp + j], Sig<T>{}, Tanh<T>{});
    row[j] = i, row[n + j] = r, row[2 * n + j] = m;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gru_backward_kernel(int64_t batch, int64_t n, const T* a, int64_t lda,
                                                                const T* h, const T* s_prev, int64_t ldp, const T* ds,
                                                                int64_t ldds, const T* ds2, T* dg, int64_t lddg, T* dh,
                                                                T* ds_prev) {
  for (int64_t e = global_thread(); e < batch * n; e += grid_threads()) {
    const int64_t b = e / n, j = e - b * n;
    const T* row = a + b * lda;
    const T d = ds[b * ldds + j] + (ds2 ? ds2[e] : T(0));
    T di, dr, dm, dhv, dp;
    cell::gru_backward<T>(row[j], row[n + j], row[2 * n + j], h[e], s_prev[b * ldp + j], d, di, dr, dm, dhv, dp);
    T* out = dg + b * lddg;
    out[j] = di, out[n + j] = dr, out[2 * n + j] = dm;
    dh[e] = dhv, ds_prev[e] = dp;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) lstm_jvp_kernel(int64_t batch, int64_t n, const T* a, int64_t lda,
                                                            const T* c_prev, const T* c, const T* tg, int64_t ldtg,
                                                            T* tc, T* ts, int64_t ldts) {
  for (int64_t e = global_thread(); e < batch * n; e += grid_threads()) {
    const int64_t b = e / n, j = e - b * n;
    const T *row = a + b * lda, *t = tg + b * ldtg;
    T tsv;
    tc[e] = cell::lstm_jvp<T>(row[j], row[n + j], row[2 * n + j], row[3 * n + j], c_prev[e], c[e], t[j], t[n + j],
                              t[2 * n + j], t[3 * n + j], tc[e], &tsv, Tanh<T>{});
    ts[b * ldts + j] = tsv;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gru_jvp_kernel(int64_t batch, int64_t n, const T* a, int64_t lda,
                                                           const T* h, const T* th, const T* s_prev, const T* ts_prev,
                                                           int64_t ldp, const T* tg, int64_t ldtg, T* ts, int64_t ldts) {
  for (int64_t e = global_thread(); e < batch * n; e += grid_threads()) {
    const int64_t b = e / n, j = e - b * n;
    const T *row = a + b * lda, *t = tg + b * ldtg;
    ts[b * ldts + j] = cell::gru_jvp<T>(row[j], row[n + j], row[2 * n + j], h[e], th[e], s_prev[b * ldp + j],
                                        ts_prev[b * ldp + j], t[j], t[n + j], t[2 * n + j]);
  }
}

template <typename T>
dim3 grid(int64_t batch, int64_t n) {
  return dim3(portgrad::cuda::grid_for(batch * n, kThreads));
}

template <typename T>
void lstm_forward(int64_t batch, int64_t n, T* g, int64_t ldg, const T* c_prev, T* c, T* s, int64_t lds) {
  if (batch <= 0 || n <= 0) return;
  portgrad::cuda::launch(grid<T>(batch, n), dim3(kThreads), &lstm_forward_kernel<T>, batch, n, g, ldg, c_prev, c, s, lds);
}
template <typename T>
void lstm_backward(int64_t batch, int64_t n, const T* a, int64_t lda, const T* c_prev, const T* c, const T* ds,
                   int64_t ldds, const T* ds2, T* dc, T* dg, int64_t lddg) {
  if (batch <= 0 || n <= 0) return;
  portgrad::cuda::launch(grid<T>(batch, n), dim3(kThreads), &lstm_backward_kernel<T>, batch, n, a, lda, c_prev, c, ds,
                         ldds, ds2, dc, dg, lddg);
}
template <typename T>
void gru_forward(int64_t batch, int64_t n, T* g, int64_t ldg, const T* h, const T* s_prev, int64_t ldp, T* s,
                 int64_t lds) {
  if (batch <= 0 || n <= 0) return;
  portgrad::cuda::launch(grid<T>(batch, n), dim3(kThreads), &gru_forward_kernel<T>, batch, n, g, ldg, h, s_prev, ldp,
                         s, lds);
}
template <typename T>
void gru_backward(int64_t batch, int64_t n, const T* a, int64_t lda, const T* h, const T* s_prev, int64_t ldp,
                  const T* ds, int64_t ldds, const T* ds2, T* dg, int64_t lddg, T* dh, T* ds_prev) {
  if (batch <= 0 || n <= 0) return;
  portgrad::cuda::launch(grid<T>(batch, n), dim3(kThreads), &gru_backward_kernel<T>, batch, n, a, lda, h, s_prev, ldp,
                         ds, ldds, ds2, dg, lddg, dh, ds_prev);
}

template <typename T>
void lstm_jvp(int64_t batch, int64_t n, const T* a, int64_t lda, const T* c_prev, const T* c, const T* tg, int64_t ldtg,
              T* tc, T* ts, int64_t ldts) {
  if (batch <= 0 || n <= 0) return;
  portgrad::cuda::launch(grid<T>(batch, n), dim3(kThreads), &lstm_jvp_kernel<T>, batch, n, a, lda, c_prev, c, tg, ldtg,
                         tc, ts, ldts);
}
template <typename T>
void gru_jvp(int64_t batch, int64_t n, const T* a, int64_t lda, const T* h, const T* th, const T* s_prev,
             const T* ts_prev, int64_t ldp, const T* tg, int64_t ldtg, T* ts, int64_t ldts) {
  if (batch <= 0 || n <= 0) return;
  portgrad::cuda::launch(grid<T>(batch, n), dim3(kThreads), &gru_jvp_kernel<T>, batch, n, a, lda, h, th, s_prev,
                         ts_prev, ldp, tg, ldtg, ts, ldts);
}

// Step by step: each step's product and cell are launches in order on the stream.
template <typename T>
void lstm_sequence(const GemmKernels<T>& gemm, int64_t batch, int64_t time, int64_t n, const T* w,
                   const void* packed_w, const T* s0, const T* c0, T* z, T* c, T* s) {
  lstm_sequence_rows<T>(&lstm_forward<T>, gemm, batch, 0, batch, time, n, w, packed_w, s0, c0, z, c, s);
}

}  // namespace

const RecurrentKernels<float> recurrent_cuda_f32{&lstm_forward<float>, &lstm_backward<float>, &gru_forward<float>,
                                                 &gru_backward<float>,  &lstm_jvp<float>,      &gru_jvp<float>,
                                                 &lstm_sequence<float>};
const RecurrentKernels<double> recurrent_cuda_f64{&lstm_forward<double>, &lstm_backward<double>, &gru_forward<double>,
                                                  &gru_backward<double>,  &lstm_jvp<double>,      &gru_jvp<double>,
                                                  &lstm_sequence<double>};

}  // namespace portgrad::kernels
