/// @brief CUDA softmax and log-softmax over the last axis (the softmax_cuda_* tables). A row is
/// owned by a group of G threads of a 256-thread block (G from the row length, kernels/cuda/
/// segment.cuh); max and sums are reduced through shared memory in a fixed order, so results are
/// deterministic. Numerics follow the reference: x - max before exp, three passes per row.
#include "kernels/cuda/segment.cuh"
#include "kernels/cuda/tables.h"

namespace portgrad::kernels {
namespace {

namespace m = portgrad::cuda::math;
using portgrad::cuda::group_max;
using portgrad::cuda::group_sum;
using portgrad::cuda::kSegmentBlock;

PG_DEVICE float fma_(float a, float b, float c) { return ::fmaf(a, b, c); }
PG_DEVICE double fma_(double a, double b, double c) { return ::fma(a, b, c); }

// exp(a - b) with the rounding error of the difference folded back in (TwoSum): exp(d) (1 + err),
// so a wide spread of logits costs no accuracy. Where d is not finite, err is meaningless: exp(d).
template <typename T>
PG_DEVICE T exp_diff(T a, T b) {
  const T d = a - b;
  const T e = m::exp(d);
  if (!m::is_finite(d)) return e;
  const T bb = a - d;
  const T err = (a - (d + bb)) + (bb - b);
  return fma_(e, err, e);
}

// The row this thread's group owns in the pass starting at row r0, and the thread's lane.
template <int G>
PG_DEVICE int64_t row_of(int64_t r0) { return r0 + threadIdx.x / G; }
template <int G>
PG_DEVICE int64_t lane_of() { return threadIdx.x % G; }
template <int G>
PG_DEVICE int64_t first_row() { return int64_t(blockIdx.x) * (kSegmentBlock / G); }
template <int G>
PG_DEVICE int64_t row_stride() { return int64_t(gridDim.x) * (kSegmentBlock / G); }

// Forward (kLog false) or log-softmax forward (kLog true). y may alias x: pass 3 writes each
// element after the last read of its row, from the thread that read it.
template <typename T, int G, bool kLog>
__global__ void __launch_bounds__(kSegmentBlock) forward_kernel(int64_t rows, int64_t cols, const T* x, T* y) {
  __shared__ T scratch[kSegmentBlock];
  for (int64_t r0 = first_row<G>(); r0 < rows; r0 += row_stride<G>()) {  // uniform over the block
    const int64_t r = row_of<G>(r0), lane = lane_of<G>();
    const bool active = r < rows;
    const T* xr = x + (active ? r : 0) * cols;
    T mx = -T(INFINITY);
    if (active)
      for (int64_t c = lane; c < cols; c += G) {
        const T v = xr[c];
        mx = (mx != mx || mx > v) ? mx : v;
      }
    mx = group_max<G>(mx, scratch);
    T s = T(0);
    if (active)
      for (int64_t c = lane; c < cols; c += G) s += exp_diff(xr[c], mx);
    s = group_sum<G>(s, scratch);
    if (!active) continue;
    T* yr = y + r * cols;
    if constexpr (kLog) {
      const T ls = m::log(s);
      for (int64_t c = lane; c < cols; c += G) yr[c] = (xr[c] - mx) - ls;
    } else {
      const T inv = T(1) / s;
      for (int64_t c = lane; c < cols; c += G) yr[c] = exp_diff(xr[c], mx) * inv;
    }
  }
}

// Softmax backward (kLog false): dx = y (dy - sum(dy y)); log-softmax backward (kLog true):
// dx = dy - exp(y) sum(dy). dx may alias dy.
template <typename T, int G, bool kLog>
__global__ void __launch_bounds__(kSegmentBlock) backward_kernel(int64_t rows, int64_t cols, const T* y,
                                                                 const T* dy, T* dx) {
  __shared__ T scratch[kSegmentBlock];
  for (int64_t r0 = first_row<G>(); r0 < rows; r0 += row_stride<G>()) {
    const int64_t r = row_of<G>(r0), lane = lane_of<G>();
    const bool active = r < rows;
    const int64_t off = (active ? r : 0) * cols;
    const T* yr = y + off;
    const T* dyr = dy + off;
    T s = T(0);
    if (active)
      for (int64_t c = lane; c < cols; c += G) s += kLog ? dyr[c] : dyr[c] * yr[c];
    s = group_sum<G>(s, scratch);
    if (!active) continue;
    T* dxr = dx + off;
    for (int64_t c = lane; c < cols; c += G) {
      if constexpr (kLog) dxr[c] = fma_(-m::exp(yr[c]), s, dyr[c]);
      else dxr[c] = yr[c] * (dyr[c] - s);
    }
  }
}

template <typename T, bool kLog>
void forward(int64_t rows, int64_t cols, const T* x, T* y) {
  if (rows <= 0 || cols <= 0) return;
  const int G = portgrad::cuda::segment_group(cols);
  auto k = portgrad::cuda::pick_group(G, &forward_kernel<T, 4, kLog>, &forward_kernel<T, 16, kLog>,
                                      &forward_kernel<T, 64, kLog>, &forward_kernel<T, 256, kLog>);
  portgrad::cuda::launch(dim3(portgrad::cuda::segment_blocks(rows, G)), dim3(kSegmentBlock), k, rows, cols, x, y);
}

// The masked softmax: a row's hidden logits count as -inf; a row that hides all is zeros.
template <typename T, int G>
__global__ void __launch_bounds__(kSegmentBlock) masked_kernel(int64_t rows, int64_t heads, int64_t m, int64_t cols,
                                                               const T* x, const T* mask, T* y) {
  __shared__ T scratch[kSegmentBlock];
  for (int64_t r0 = first_row<G>(); r0 < rows; r0 += row_stride<G>()) {
    const int64_t r = row_of<G>(r0), lane = lane_of<G>();
    const bool active = r < rows;
    const int64_t rr = active ? r : 0;
    const T* xr = x + rr * cols;
    const T* mr = mask + ((rr / (heads * m)) * m + rr % m) * cols;
    auto logit = [&](int64_t c) { return mr[c] != T(0) ? xr[c] : -T(INFINITY); };
    T mx = -T(INFINITY);
    if (active)
      for (int64_t c = lane; c < cols; c += G) {
        const T v = logit(c);
        mx = (mx != mx || mx > v) ? mx : v;
      }
    mx = group_max<G>(mx, scratch);
    T s = T(0);
    if (active && mx > -T(INFINITY))
      for (int64_t c = lane; c < cols; c += G) s += exp_diff(logit(c), mx);
    s = group_sum<G>(s, scratch);
    if (!active) continue;
    T* yr = y + r * cols;
    const T inv = s > T(0) ? T(1) / s : T(0);
    for (int64_t c = lane; c < cols; c += G) yr[c] = mr[c] != T(0) ? exp_diff(xr[c], mx) * inv : T(0);
  }
}

template <typename T>
void masked_forward(int64_t batch, int64_t heads, int64_t m, int64_t n, const T* x, const T* mask, T* y) {
  const int64_t rows = batch * heads * m;
  if (rows <= 0 || n <= 0) return;
  const int G = portgrad::cuda::segment_group(n);
  auto k = portgrad::cuda::pick_group(G, &masked_kernel<T, 4>, &masked_kernel<T, 16>, &masked_kernel<T, 64>,
                                      &masked_kernel<T, 256>);
  portgrad::cuda::launch(dim3(portgrad::cuda::segment_blocks(rows, G)), dim3(kSegmentBlock), k, rows, heads, m, n, x,
                         mask, y);
}

// The backward's tangent: two sums per row (y dy, and ty dy + y tdy), then the elements.
template <typename T, int G>
__global__ void __launch_bounds__(kSegmentBlock) backward_tangent_kernel(int64_t rows, int64_t cols, const T* y,
                                                                         const T* ty, const T* dy, const T* tdy,
                                                                         T* tdx) {
  __shared__ T scratch[kSegmentBlock];
  for (int64_t r0 = first_row<G>(); r0 < rows; r0 += row_stride<G>()) {
    const int64_t r = row_of<G>(r0), lane = lane_of<G>();
    const bool active = r < rows;
    const int64_t o = (active ? r : 0) * cols;
    T s = T(0), u = T(0);
    if (active)
      for (int64_t c = lane; c < cols; c += G) {
        s += dy[o + c] * y[o + c];
        u += ty[o + c] * dy[o + c] + y[o + c] * tdy[o + c];
      }
    s = group_sum<G>(s, scratch);
    u = group_sum<G>(u, scratch);
    if (!active) continue;
    for (int64_t c = lane; c < cols; c += G)
      tdx[o + c] = ty[o + c] * (dy[o + c] - s) + y[o + c] * (tdy[o + c] - u);
  }
}

template <typename T>
void backward_tangent(int64_t rows, int64_t cols, const T* y, const T* ty, const T* dy, const T* tdy, T* tdx) {
  if (rows <= 0 || cols <= 0) return;
  const int G = portgrad::cuda::segment_group(cols);
  auto k = portgrad::cuda::pick_group(G, &backward_tangent_kernel<T, 4>, &backward_tangent_kernel<T, 16>,
                                      &backward_tangent_kernel<T, 64>, &backward_tangent_kernel<T, 256>);
  portgrad::cuda::launch(dim3(portgrad::cuda::segment_blocks(rows, G)), dim3(kSegmentBlock), k, rows, cols, y, ty, dy,
                         tdy, tdx);
}

template <typename T, bool kLog>
void backward(int64_t rows, int64_t cols, const T* y, const T* dy, T* dx) {
  if (rows <= 0 || cols <= 0) return;
  const int G = portgrad::cuda::segment_group(cols);
  auto k = portgrad::cuda::pick_group(G, &backward_kernel<T, 4, kLog>, &backward_kernel<T, 16, kLog>,
                                      &backward_kernel<T, 64, kLog>, &backward_kernel<T, 256, kLog>);
  portgrad::cuda::launch(dim3(portgrad::cuda::segment_blocks(rows, G)), dim3(kSegmentBlock), k, rows, cols, y, dy,
                         dx);
}

template <typename T>
constexpr SoftmaxKernels<T> make() {
  return {&forward<T, false>, &backward<T, false>, &forward<T, true>, &backward<T, true>, &masked_forward<T>,
          &backward_tangent<T>};
}

}  // namespace

const SoftmaxKernels<float> softmax_cuda_f32 = make<float>();
const SoftmaxKernels<double> softmax_cuda_f64 = make<double>();

}  // namespace portgrad::kernels
