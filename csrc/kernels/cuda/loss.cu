/// @brief CUDA loss kernels (the loss_cuda_* tables). Forward: each example's terms are summed by
/// a group of G threads (kernels/cuda/segment.cuh) in a fixed tree order, so the per-example
/// losses are deterministic; backward: one grid-stride pass over the elements. Clamped logs, null
/// gradient pointers and means over zero elements follow the reference (kernels/ref/loss_ref.cc).
#include "kernels/cuda/segment.cuh"
#include "kernels/cuda/tables.h"

namespace portgrad::kernels {
namespace {

namespace m = portgrad::cuda::math;
using portgrad::cuda::global_thread;
using portgrad::cuda::grid_threads;
using portgrad::cuda::group_sum;
using portgrad::cuda::kSegmentBlock;

constexpr unsigned kThreads = 256;

// The log clamp (machine epsilon of T)^2, exact in T.
PG_DEVICE float clamp_eps(float) { return 0x1p-46f; }
PG_DEVICE double clamp_eps(double) { return 0x1p-104; }
template <typename T> PG_DEVICE T clamped(T p) { return m::max(p, clamp_eps(T())); }
// log(max(1 - p, eps)), as log1p(-p) while 1 - p >= eps: full accuracy for small p.
template <typename T> PG_DEVICE T log_1mp(T p) {
  return T(1) - p < clamp_eps(T()) ? m::log(clamp_eps(T())) : m::log1p(-p);
}
template <typename T> PG_DEVICE T sign(T v) { return v > T(0) ? T(1) : v < T(0) ? T(-1) : T(0); }

// Per-element terms of the forward losses, by flat index j of the example's elements.
template <typename T>
struct MseTerm {
  const T* x;
  const T* t;
  PG_DEVICE T operator()(int64_t j) const {
    const T d = x[j] - t[j];
    return d * d;
  }
};
template <typename T>
struct MaeTerm {
  const T* x;
  const T* t;
  PG_DEVICE T operator()(int64_t j) const { return m::abs(x[j] - t[j]); }
};
template <typename T>
struct BceTerm {
  const T* p;
  const T* t;
  PG_DEVICE T operator()(int64_t j) const {
    const T pj = p[j], tj = t[j];
    return -(tj * m::log(clamped(pj)) + (T(1) - tj) * log_1mp(pj));
  }
};
template <typename T>
struct CeProbTerm {
  const T* p;
  const T* t;
  PG_DEVICE T operator()(int64_t j) const { return -(t[j] * m::log(clamped(p[j]))); }
};
// j is the row (example b, group g) = b * groups + g.
template <typename T>
struct CeIndexTerm {
  const T* p;
  const int64_t* idx;
  int64_t classes;
  PG_DEVICE T operator()(int64_t j) const { return -m::log(clamped(p[j * classes + idx[j]])); }
};

// loss[b] = (sum_{i < len} term(b * len + i)) / count, or 0 when count == 0.
template <typename T, int G, typename Term>
__global__ void __launch_bounds__(kSegmentBlock) forward_kernel(int64_t batch, int64_t len, int64_t count, Term term,
                                                                T* loss) {
  __shared__ T scratch[kSegmentBlock];
  constexpr int kPerBlock = kSegmentBlock / G;
  const int64_t lane = threadIdx.x % G;
  for (int64_t b0 = int64_t(blockIdx.x) * kPerBlock; b0 < batch; b0 += int64_t(gridDim.x) * kPerBlock) {
    const int64_t b = b0 + threadIdx.x / G;
    T s = T(0);
    if (b < batch)
      for (int64_t i = lane; i < len; i += G) s += term(b * len + i);
    s = group_sum<G>(s, scratch);
    if (b < batch && lane == 0) loss[b] = count > 0 ? s / T(count) : T(0);
  }
}

template <typename T, typename Term>
void launch_forward(int64_t batch, int64_t len, int64_t count, Term term, T* loss) {
  if (batch <= 0) return;
  const int G = portgrad::cuda::segment_group(len);
  auto k = portgrad::cuda::pick_group(G, &forward_kernel<T, 4, Term>, &forward_kernel<T, 16, Term>,
                                      &forward_kernel<T, 64, Term>, &forward_kernel<T, 256, Term>);
  portgrad::cuda::launch(dim3(portgrad::cuda::segment_blocks(batch, G)), dim3(kSegmentBlock), k, batch, len, count,
                         term, loss);
}

dim3 elementwise_grid(int64_t n) { return dim3(portgrad::cuda::grid_for(n, kThreads)); }

// ---- MSE / MAE: g = k (x - t) with k = 2 dloss / n, or g = k sign(x - t) with k = dloss / n.
template <typename T, bool kAbs>
__global__ void __launch_bounds__(kThreads) diff_backward_kernel(int64_t total, int64_t n, const T* x, const T* t,
                                                                 const T* dloss, T* dx, T* dt) {
  for (int64_t j = global_thread(); j < total; j += grid_threads()) {
    const T d = x[j] - t[j];
    T g;
    if constexpr (kAbs) g = dloss[j / n] / T(n) * sign(d);
    else g = T(2) * dloss[j / n] / T(n) * d;
    if (dx) dx[j] = g;
    if (dt) dt[j] = -g;
  }
}

template <typename T>
void mse_forward(int64_t batch, int64_t n, const T* x, const T* t, T* loss) {
  launch_forward(batch, n, n, MseTerm<T>{x, t}, loss);
}
template <typename T>
void mae_forward(int64_t batch, int64_t n, const T* x, const T* t, T* loss) {
  launch_forward(batch, n, n, MaeTerm<T>{x, t}, loss);
}

template <typename T, bool kAbs>
void diff_backward(int64_t batch, int64_t n, const T* x, const T* t, const T* dloss, T* dx, T* dt) {
  const int64_t total = batch * n;
  if (batch <= 0 || n <= 0 || (!dx && !dt)) return;
  portgrad::cuda::launch(elementwise_grid(total), dim3(kThreads), &diff_backward_kernel<T, kAbs>, total, n, x, t,
                         dloss, dx, dt);
}

// ---- BCE: dp = k (-t/a + (1-t)/c), dt = -k (log a - log c), a = max(p, eps), c = max(1-p, eps).
template <typename T>
__global__ void __launch_bounds__(kThreads) bce_backward_kernel(int64_t total, int64_t n, const T* p, const T* t,
                                                                const T* dloss, T* dp, T* dt) {
  for (int64_t j = global_thread(); j < total; j += grid_threads()) {
    const T k = dloss[j / n] / T(n);
    const T pj = p[j], tj = t[j];
    const T w = T(1) - pj;
    const T a = clamped(pj), c = clamped(w);
    if (dp) {
      // -t/a + (1-t)/c = ((1-t) a - t c) / (a c); unclamped the numerator is p - t (no cancellation).
      const bool unclamped = pj >= clamp_eps(T()) && w >= clamp_eps(T());
      const T num = unclamped ? pj - tj : (T(1) - tj) * a - tj * c;
      dp[j] = k * (num / (a * c));
    }
    if (dt) {
      // -(log a - log c) = log((1-p)/p); near p = 1/2 the logs cancel, so there log1p((1-2p)/p)
      // with 1 - 2p exact.
      const bool mid = pj > T(0.25) && pj < T(0.75);
      dt[j] = k * (mid ? m::log1p((T(1) - T(2) * pj) / pj) : log_1mp(pj) - m::log(a));
    }
  }
}

template <typename T>
void bce_forward(int64_t batch, int64_t n, const T* p, const T* t, T* loss) {
  launch_forward(batch, n, n, BceTerm<T>{p, t}, loss);
}

template <typename T>
void bce_backward(int64_t batch, int64_t n, const T* p, const T* t, const T* dloss, T* dp, T* dt) {
  const int64_t total = batch * n;
  if (batch <= 0 || n <= 0 || (!dp && !dt)) return;
  portgrad::cuda::launch(elementwise_grid(total), dim3(kThreads), &bce_backward_kernel<T>, total, n, p, t, dloss, dp,
                         dt);
}

// ---- Cross-entropy against distributions: dp = -k t / a, dt = -k log a, k = dloss / groups.
template <typename T>
__global__ void __launch_bounds__(kThreads) ce_prob_backward_kernel(int64_t total, int64_t m_per, int64_t groups,
                                                                    const T* p, const T* t, const T* dloss, T* dp,
                                                                    T* dt) {
  for (int64_t j = global_thread(); j < total; j += grid_threads()) {
    const T k = dloss[j / m_per] / T(groups);
    const T a = clamped(p[j]);
    if (dp) dp[j] = -k * t[j] / a;
    if (dt) dt[j] = -k * m::log(a);
  }
}

template <typename T>
void ce_prob_forward(int64_t batch, int64_t groups, int64_t classes, const T* p, const T* t, T* loss) {
  launch_forward(batch, groups * classes, groups, CeProbTerm<T>{p, t}, loss);
}

template <typename T>
void ce_prob_backward(int64_t batch, int64_t groups, int64_t classes, const T* p, const T* t, const T* dloss, T* dp,
                      T* dt) {
  const int64_t m_per = groups * classes, total = batch * m_per;
  if (batch <= 0 || m_per <= 0 || (!dp && !dt)) return;
  portgrad::cuda::launch(elementwise_grid(total), dim3(kThreads), &ce_prob_backward_kernel<T>, total, m_per, groups,
                         p, t, dloss, dp, dt);
}

// ---- Cross-entropy against class indices: dp is 0 except -k / max(p, eps) at each row's class.
template <typename T>
__global__ void __launch_bounds__(kThreads) ce_index_backward_kernel(int64_t total, int64_t groups, int64_t classes,
                                                                     const T* p, const int64_t* idx,
                                                                     const T* dloss, T* dp) {
  for (int64_t j = global_thread(); j < total; j += grid_threads()) {
    const int64_t row = j / classes, c = j - row * classes;
    if (c == idx[row]) {
      const T k = dloss[row / groups] / T(groups);
      dp[j] = -k / clamped(p[j]);
    } else {
      dp[j] = T(0);
    }
  }
}

template <typename T>
void ce_index_forward(int64_t batch, int64_t groups, int64_t classes, const T* p, const int64_t* idx, T* loss) {
  launch_forward(batch, groups, groups, CeIndexTerm<T>{p, idx, classes}, loss);
}

template <typename T>
void ce_index_backward(int64_t batch, int64_t groups, int64_t classes, const T* p, const int64_t* idx,
                       const T* dloss, T* dp) {
  const int64_t total = batch * groups * classes;
  if (!dp || batch <= 0 || groups <= 0 || classes <= 0) return;
  portgrad::cuda::launch(elementwise_grid(total), dim3(kThreads), &ce_index_backward_kernel<T>, total, groups,
                         classes, p, idx, dloss, dp);
}

template <typename T>
constexpr LossKernels<T> make() {
  return {&mse_forward<T>,      &diff_backward<T, false>, &mae_forward<T>,     &diff_backward<T, true>,
          &bce_forward<T>,      &bce_backward<T>,         &ce_prob_forward<T>, &ce_prob_backward<T>,
          &ce_index_forward<T>, &ce_index_backward<T>};
}

}  // namespace

const LossKernels<float> loss_cuda_f32 = make<float>();
const LossKernels<double> loss_cuda_f64 = make<double>();

}  // namespace portgrad::kernels
