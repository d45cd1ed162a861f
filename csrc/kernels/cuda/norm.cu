/// @brief CUDA normalisation kernels (batch statistics per channel, layer statistics per row) and
/// dropout: the layout and semantics of kernels/norm.h and its reference twin ref/norm_ref.cc.
///
/// Statistics and gradient sums are accumulated in double (as the reference does) and reduced
/// through shared memory in a fixed order, so every result is deterministic: a channel (batch
/// norm) or a row (layer norm) is one block, each thread sums a fixed strided subset, block_sum
/// combines the partial sums in a fixed tree. The elementwise maps also compute in double and round
/// once, as the reference does. The dropout mask comes from kernels/norm.h's dropout_rng (host and
/// device functions under nvcc), so it matches the CPU bit for bit.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

namespace portgrad::kernels {
namespace {

using cuda::block_sum;
using cuda::grid_for;
using cuda::launch;

constexpr int kThreads = 256;     // threads of the per-channel and per-row reduction blocks
constexpr int kEltThreads = 256;  // threads of the elementwise kernels
constexpr unsigned kMaxBlocks = 65535;

PG_DEVICE double D(float v) { return v; }
PG_DEVICE double D(double v) { return v; }

// Walks the m = batch*spatial values of one channel of a (batch, channels, spatial) tensor: one
// thread starts at position `start` (of the channel's batch-major order) and steps by `step`,
// without a division per step. offset(c) is the element's flat index; the walk ends when b
// reaches batch (at once when spatial is 0).
struct ChannelWalk {
  int64_t b, k, step_b, step_k, S, CS;
  PG_DEVICE ChannelWalk(int64_t start, int64_t step, int64_t channels, int64_t spatial)
      : b(INT64_MAX), k(0), step_b(0), step_k(0), S(spatial), CS(channels * spatial) {
    if (spatial > 0) {
      b = start / spatial;
      k = start % spatial;
      step_b = step / spatial;
      step_k = step % spatial;
    }
  }
  PG_DEVICE int64_t offset(int64_t c) const { return b * CS + c * S + k; }
  PG_DEVICE void next() {
    b += step_b;
    k += step_k;
    if (k >= S) {
      k -= S;
      ++b;
    }
  }
};

// --- Batch normalisation ----------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_moments_kernel(int64_t B, int64_t C, int64_t S, const T* x, T* mean, T* var) {
  __shared__ double scratch[kThreads];
  const double m = double(B) * double(S);
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    double s = 0;
    for (ChannelWalk w(threadIdx.x, kThreads, C, S); w.b < B; w.next()) s += D(x[w.offset(c)]);
    const double mu = block_sum<kThreads>(s, scratch) / m;
    double q = 0;
    for (ChannelWalk w(threadIdx.x, kThreads, C, S); w.b < B; w.next()) {
      const double d = D(x[w.offset(c)]) - mu;
      q += d * d;
    }
    q = block_sum<kThreads>(q, scratch);
    if (threadIdx.x == 0) {
      mean[c] = static_cast<T>(mu);
      var[c] = static_cast<T>(q / m);
    }
  }
}

template <typename T>
void channel_moments(int64_t B, int64_t C, int64_t S, const T* x, T* mean, T* var) {
  if (C <= 0) return;
  if (B <= 0 || S <= 0) return;  // m = 0: outside the contract (m >= 1); nothing sensible to write
  const unsigned blocks = static_cast<unsigned>(C < kMaxBlocks ? C : kMaxBlocks);
  launch(dim3(blocks), dim3(kThreads), &channel_moments_kernel<T>, B, C, S, x, mean, var);
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads) inv_std_kernel(int64_t n, const T* var, double eps, T* invstd) {
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_threads())
    invstd[i] = static_cast<T>(1.0 / cuda::math::sqrt(D(var[i]) + eps));
}

template <typename T>
void inv_std(int64_t n, const T* var, double eps, T* invstd) {
  if (n <= 0) return;
  launch(dim3(grid_for(n, kEltThreads)), dim3(kEltThreads), &inv_std_kernel<T>, n, var, eps, invstd);
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    channel_forward_kernel(int64_t n, int64_t C, int64_t S, const T* x, const T* mean, const T* invstd,
                           const T* gamma, const T* beta, T* y) {
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_threads()) {
    const int64_t c = (i / S) % C;
    y[i] = static_cast<T>(D(gamma[c]) * ((D(x[i]) - D(mean[c])) * D(invstd[c])) + D(beta[c]));
  }
}

template <typename T>
void channel_forward(int64_t B, int64_t C, int64_t S, const T* x, const T* mean, const T* invstd, const T* gamma,
                     const T* beta, T* y) {
  const int64_t n = B * C * S;
  if (B <= 0 || C <= 0 || S <= 0) return;
  launch(dim3(grid_for(n, kEltThreads)), dim3(kEltThreads), &channel_forward_kernel<T>, n, C, S, x, mean, invstd,
         gamma, beta, y);
}

// One block per channel: both sums, then dx of that channel (so dx may even alias dy).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_backward_kernel(int64_t B, int64_t C, int64_t S, const T* x, const T* dy, const T* mean,
                            const T* invstd, const T* gamma, bool batch_stats, T* dx, T* dgamma, T* dbeta) {
  __shared__ double scratch[kThreads];
  const double m = double(B) * double(S);
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    const double mu = D(mean[c]), is = D(invstd[c]);
    double sdy = 0, sdyx = 0;
    if (dgamma || dbeta || (dx && batch_stats)) {
      for (ChannelWalk w(threadIdx.x, kThreads, C, S); w.b < B; w.next()) {
        const int64_t i = w.offset(c);
        const double g = D(dy[i]);
        sdy += g;
        sdyx += g * ((D(x[i]) - mu) * is);
      }
      sdy = block_sum<kThreads>(sdy, scratch);
      sdyx = block_sum<kThreads>(sdyx, scratch);
    }
    if (threadIdx.x == 0) {
      if (dgamma) dgamma[c] = static_cast<T>(sdyx);
      if (dbeta) dbeta[c] = static_cast<T>(sdy);
    }
    if (!dx) continue;
    const double gis = D(gamma[c]) * is;
    const double a = batch_stats ? sdy / m : 0.0, q = batch_stats ? sdyx / m : 0.0;
    for (ChannelWalk w(threadIdx.x, kThreads, C, S); w.b < B; w.next()) {
      const int64_t i = w.offset(c);
      dx[i] = static_cast<T>(gis * (D(dy[i]) - a - (D(x[i]) - mu) * is * q));
    }
  }
}

template <typename T>
void channel_backward(int64_t B, int64_t C, int64_t S, const T* x, const T* dy, const T* mean, const T* invstd,
                      const T* gamma, bool batch_stats, T* dx, T* dgamma, T* dbeta) {
  if (C <= 0 || (!dx && !dgamma && !dbeta)) return;
  const unsigned blocks = static_cast<unsigned>(C < kMaxBlocks ? C : kMaxBlocks);
  launch(dim3(blocks), dim3(kThreads), &channel_backward_kernel<T>, B, C, S, x, dy, mean, invstd, gamma,
         batch_stats, dx, dgamma, dbeta);
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    running_update_kernel(int64_t C, double momentum, double unbias, const T* mean, const T* var, T* rmean,
                          T* rvar) {
  for (int64_t c = cuda::global_thread(); c < C; c += cuda::grid_threads()) {
    rmean[c] = static_cast<T>(momentum * D(rmean[c]) + (1.0 - momentum) * D(mean[c]));
    rvar[c] = static_cast<T>(momentum * D(rvar[c]) + (1.0 - momentum) * D(var[c]) * unbias);
  }
}

template <typename T>
void running_update(int64_t C, double momentum, int64_t m, const T* mean, const T* var, T* rmean, T* rvar) {
  if (C <= 0) return;
  const double unbias = m > 1 ? double(m) / double(m - 1) : 1.0;
  launch(dim3(grid_for(C, kEltThreads)), dim3(kEltThreads), &running_update_kernel<T>, C, momentum, unbias, mean,
         var, rmean, rvar);
}

// --- Layer normalisation ----------------------------------------------------------------------

// Rows of up to this many values use small blocks (fewer idle threads).
constexpr int kSmallRowThreads = 64;
constexpr int64_t kSmallRow = 256;

// One block per row (b, r) of the batch*rows rows.
template <typename T, int kT>
__global__ void __launch_bounds__(kT)
    row_forward_kernel(int64_t rows_total, int64_t R, int64_t N, bool per_element, double eps, const T* x,
                       const T* gamma, const T* beta, T* y, T* mean, T* invstd) {
  __shared__ double scratch[kT];
  for (int64_t row = blockIdx.x; row < rows_total; row += gridDim.x) {
    const int64_t r = row % R;
    const T* xr = x + row * N;
    T* yr = y + row * N;
    double s = 0;
    for (int64_t k = threadIdx.x; k < N; k += kT) s += D(xr[k]);
    const double mu = block_sum<kT>(s, scratch) / double(N);
    double q = 0;
    for (int64_t k = threadIdx.x; k < N; k += kT) {
      const double d = D(xr[k]) - mu;
      q += d * d;
    }
    q = block_sum<kT>(q, scratch);
    const double is = 1.0 / cuda::math::sqrt(q / double(N) + eps);
    if (threadIdx.x == 0) {
      mean[row] = static_cast<T>(mu);
      invstd[row] = static_cast<T>(is);
    }
    for (int64_t k = threadIdx.x; k < N; k += kT) {
      const int64_t p = per_element ? r * N + k : r;
      yr[k] = static_cast<T>(D(gamma[p]) * ((D(xr[k]) - mu) * is) + D(beta[p]));
    }
  }
}

template <typename T>
void row_forward(int64_t B, int64_t R, int64_t N, bool per_element, double eps, const T* x, const T* gamma,
                 const T* beta, T* y, T* mean, T* invstd) {
  const int64_t rows_total = B * R;
  if (B <= 0 || R <= 0 || N <= 0) return;
  const unsigned blocks = static_cast<unsigned>(rows_total < kMaxBlocks ? rows_total : kMaxBlocks);
  if (N <= kSmallRow)
    launch(dim3(blocks), dim3(kSmallRowThreads), &row_forward_kernel<T, kSmallRowThreads>, rows_total, R, N,
           per_element, eps, x, gamma, beta, y, mean, invstd);
  else
    launch(dim3(blocks), dim3(kThreads), &row_forward_kernel<T, kThreads>, rows_total, R, N, per_element, eps, x,
           gamma, beta, y, mean, invstd);
}

// Per-element parameter gradients: one thread per element p of the example, summing over the batch
// in order.
template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    row_param_grad_elem_kernel(int64_t B, int64_t R, int64_t N, const T* x, const T* dy, const T* mean,
                               const T* invstd, T* dgamma, T* dbeta) {
  const int64_t P = R * N;
  for (int64_t p = cuda::global_thread(); p < P; p += cuda::grid_threads()) {
    const int64_t r = p / N;
    double sg = 0, sb = 0;
    for (int64_t b = 0; b < B; ++b) {
      const double mu = D(mean[b * R + r]), is = D(invstd[b * R + r]);
      const int64_t i = b * P + p;
      sg += D(dy[i]) * ((D(x[i]) - mu) * is);
      sb += D(dy[i]);
    }
    if (dgamma) dgamma[p] = static_cast<T>(sg);
    if (dbeta) dbeta[p] = static_cast<T>(sb);
  }
}

// Per-row parameter gradients: one block per row index r, summing over batch and cols.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    row_param_grad_row_kernel(int64_t B, int64_t R, int64_t N, const T* x, const T* dy, const T* mean,
                              const T* invstd, T* dgamma, T* dbeta) {
  __shared__ double scratch[kThreads];
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    double sg = 0, sb = 0;
    // The batch's values of row r, as a (B, R, N) channel walk with R channels of N positions.
    for (ChannelWalk w(threadIdx.x, kThreads, R, N); w.b < B; w.next()) {
      const int64_t i = w.offset(r);
      const double mu = D(mean[w.b * R + r]), is = D(invstd[w.b * R + r]);
      sg += D(dy[i]) * ((D(x[i]) - mu) * is);
      sb += D(dy[i]);
    }
    sg = block_sum<kThreads>(sg, scratch);
    sb = block_sum<kThreads>(sb, scratch);
    if (threadIdx.x == 0) {
      if (dgamma) dgamma[r] = static_cast<T>(sg);
      if (dbeta) dbeta[r] = static_cast<T>(sb);
    }
  }
}

// dx: one block per row (b, r).
template <typename T, int kT>
__global__ void __launch_bounds__(kT)
    row_dx_kernel(int64_t rows_total, int64_t R, int64_t N, bool per_element, const T* x, const T* dy,
                  const T* mean, const T* invstd, const T* gamma, T* dx) {
  __shared__ double scratch[kT];
  for (int64_t row = blockIdx.x; row < rows_total; row += gridDim.x) {
    const int64_t r = row % R, base = row * N;
    const double mu = D(mean[row]), is = D(invstd[row]);
    double sg = 0, sgx = 0;
    for (int64_t k = threadIdx.x; k < N; k += kT) {
      const double g = D(dy[base + k]) * D(gamma[per_element ? r * N + k : r]);
      sg += g;
      sgx += g * ((D(x[base + k]) - mu) * is);
    }
    sg = block_sum<kT>(sg, scratch) / double(N);
    sgx = block_sum<kT>(sgx, scratch) / double(N);
    for (int64_t k = threadIdx.x; k < N; k += kT) {
      const double g = D(dy[base + k]) * D(gamma[per_element ? r * N + k : r]);
      dx[base + k] = static_cast<T>(is * (g - sg - (D(x[base + k]) - mu) * is * sgx));
    }
  }
}

template <typename T>
void row_backward(int64_t B, int64_t R, int64_t N, bool per_element, const T* x, const T* dy, const T* mean,
                  const T* invstd, const T* gamma, T* dx, T* dgamma, T* dbeta) {
  if (R <= 0 || N < 0) return;
  // Parameter gradients first (the reference's order: dx may alias dy).
  if (dgamma || dbeta) {
    if (per_element) {
      const int64_t P = R * N;
      if (P > 0)
        launch(dim3(grid_for(P, kEltThreads)), dim3(kEltThreads), &row_param_grad_elem_kernel<T>, B, R, N, x, dy,
               mean, invstd, dgamma, dbeta);
    } else {
      const unsigned blocks = static_cast<unsigned>(R < kMaxBlocks ? R : kMaxBlocks);
      launch(dim3(blocks), dim3(kThreads), &row_param_grad_row_kernel<T>, B, R, N, x, dy, mean, invstd, dgamma,
             dbeta);
    }
  }
  if (!dx || B <= 0 || N == 0) return;
  const int64_t rows_total = B * R;
  const unsigned blocks = static_cast<unsigned>(rows_total < kMaxBlocks ? rows_total : kMaxBlocks);
  if (N <= kSmallRow)
    launch(dim3(blocks), dim3(kSmallRowThreads), &row_dx_kernel<T, kSmallRowThreads>, rows_total, R, N, per_element,
           x, dy, mean, invstd, gamma, dx);
  else
    launch(dim3(blocks), dim3(kThreads), &row_dx_kernel<T, kThreads>, rows_total, R, N, per_element, x, dy, mean,
           invstd, gamma, dx);
}

// --- Dropout ----------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    dropout_kernel(int64_t n, uint32_t thr, double scale, uint64_t key, const T* x, T* y) {
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_threads())
    y[i] = dropout_rng::bits(key, uint64_t(i)) >= thr ? static_cast<T>(D(x[i]) * scale) : T(0);
}

template <typename T>
void dropout(int64_t n, double p, uint64_t key, const T* x, T* y) {
  if (n <= 0) return;
  const uint32_t thr = dropout_rng::threshold(p);
  const double scale = 1.0 / (1.0 - p);
  launch(dim3(grid_for(n, kEltThreads)), dim3(kEltThreads), &dropout_kernel<T>, n, thr, scale, key, x, y);
}

template <typename T>
constexpr NormKernels<T> table() {
  return {&channel_moments<T>, &inv_std<T>,      &channel_forward<T>, &channel_backward<T>, &running_update<T>,
          &row_forward<T>,     &row_backward<T>, &dropout<T>};
}

}  // namespace

const NormKernels<float> norm_cuda_f32 = table<float>();
const NormKernels<double> norm_cuda_f64 = table<double>();

}  // namespace portgrad::kernels
