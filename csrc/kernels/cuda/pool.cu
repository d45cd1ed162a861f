/// @brief CUDA pooling (Max, Mean, Total; 1 to 3 spatial dimensions, described as 3-D): the
/// semantics of kernels/pool.h and its reference twin ref/pool_ref.cc.
///
/// Forward: one thread per output, walking its window clipped to the input in d, h, w order.
/// Backward is a gather: one thread per input element loops over the outputs whose windows contain
/// it (in increasing flat order) and sums their dy, so no atomics are needed and every dx is summed
/// in a fixed order. Max backward recomputes each such window's first maximum (lowest flat index,
/// the reference's tie rule) and takes dy only where that is this element. Sums are in double and
/// rounded once, as in the reference.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

namespace portgrad::kernels {
namespace {

using cuda::grid_for;
using cuda::launch;

constexpr int kThreads = 256;

PG_DEVICE int64_t imax(int64_t a, int64_t b) { return a < b ? b : a; }
PG_DEVICE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// Output (p0, p1, p2)'s window clipped to the input: [a_d, b_d) per dimension (possibly empty).
struct Window {
  int64_t a[3], b[3];
  PG_DEVICE Window(const PoolShape& s, const int64_t p[3]) {
    for (int d = 0; d < 3; ++d) {
      const int64_t lo = p[d] * s.stride[d] - s.pad[d];
      a[d] = imax(lo, 0);
      b[d] = imin(lo + s.k[d], s.in[d]);
    }
  }
};

// Flat input offset (within the plane) of the first maximum of output p's window, or -1 when the
// window has no in-range position. Padding never wins; ties go to the lowest flat index; a NaN
// wins only as the first value (the reference's `v > best` comparison).
template <typename T>
PG_DEVICE int64_t first_max(const PoolShape& s, const int64_t p[3], const T* xc) {
  const Window w(s, p);
  int64_t arg = -1;
  T best = T(0);
  for (int64_t q0 = w.a[0]; q0 < w.b[0]; ++q0)
    for (int64_t q1 = w.a[1]; q1 < w.b[1]; ++q1) {
      const int64_t row = (q0 * s.in[1] + q1) * s.in[2];
      for (int64_t q2 = w.a[2]; q2 < w.b[2]; ++q2) {
        const T v = xc[row + q2];
        if (arg < 0 || v > best) {
          best = v;
          arg = row + q2;
        }
      }
    }
  return arg;
}

template <typename T, int kFn>
__global__ void __launch_bounds__(kThreads) pool_forward_kernel(PoolShape s, int64_t n, double inv, const T* x, T* y) {
  const int64_t in_sp = s.in[0] * s.in[1] * s.in[2], out_sp = s.out[0] * s.out[1] * s.out[2];
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_threads()) {
    const int64_t c = i / out_sp, pf = i % out_sp;
    const int64_t p[3] = {pf / (s.out[1] * s.out[2]), (pf / s.out[2]) % s.out[1], pf % s.out[2]};
    const T* xc = x + c * in_sp;
    if (kFn == int(PoolFn::Max)) {
      const int64_t arg = first_max(s, p, xc);
      y[i] = arg < 0 ? T(0) : xc[arg];
    } else {
      const Window w(s, p);
      double acc = 0.0;
      for (int64_t q0 = w.a[0]; q0 < w.b[0]; ++q0)
        for (int64_t q1 = w.a[1]; q1 < w.b[1]; ++q1) {
          const T* row = xc + (q0 * s.in[1] + q1) * s.in[2];
          for (int64_t q2 = w.a[2]; q2 < w.b[2]; ++q2) acc += static_cast<double>(row[q2]);
        }
      if (kFn == int(PoolFn::Mean)) acc *= inv;
      y[i] = static_cast<T>(acc);
    }
  }
}

template <typename T, int kFn>
__global__ void __launch_bounds__(kThreads)
    pool_backward_kernel(PoolShape s, int64_t n, double inv, const T* x, const T* dy, T* dx) {
  const int64_t in_sp = s.in[0] * s.in[1] * s.in[2], out_sp = s.out[0] * s.out[1] * s.out[2];
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_threads()) {
    const int64_t c = i / in_sp, qf = i % in_sp;
    const int64_t q[3] = {qf / (s.in[1] * s.in[2]), (qf / s.in[2]) % s.in[1], qf % s.in[2]};
    // Outputs whose window covers q: p*stride + t - pad == q with 0 <= t < k.
    int64_t lo[3], hi[3];
    for (int d = 0; d < 3; ++d) {
      const int64_t a = q[d] + s.pad[d] - (s.k[d] - 1);  // p*stride >= a
      lo[d] = a <= 0 ? 0 : (a + s.stride[d] - 1) / s.stride[d];
      hi[d] = imin((q[d] + s.pad[d]) / s.stride[d], s.out[d] - 1);
    }
    const T* xc = x + c * in_sp;
    const T* dyc = dy + c * out_sp;
    double acc = 0.0;
    int64_t p[3];
    for (p[0] = lo[0]; p[0] <= hi[0]; ++p[0])
      for (p[1] = lo[1]; p[1] <= hi[1]; ++p[1])
        for (p[2] = lo[2]; p[2] <= hi[2]; ++p[2]) {
          if (kFn == int(PoolFn::Max) && first_max(s, p, xc) != qf) continue;
          acc += static_cast<double>(dyc[(p[0] * s.out[1] + p[1]) * s.out[2] + p[2]]);
        }
    dx[i] = static_cast<T>(acc * inv);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pool_max_tangent_kernel(PoolShape s, int64_t n, const T* x, const T* tx, T* ty) {
  const int64_t in_sp = s.in[0] * s.in[1] * s.in[2], out_sp = s.out[0] * s.out[1] * s.out[2];
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_threads()) {
    const int64_t c = i / out_sp, pf = i % out_sp;
    const int64_t p[3] = {pf / (s.out[1] * s.out[2]), (pf / s.out[2]) % s.out[1], pf % s.out[2]};
    const int64_t arg = first_max(s, p, x + c * in_sp);
    ty[i] = arg < 0 ? T(0) : tx[c * in_sp + arg];
  }
}

template <typename T>
void max_tangent(const PoolShape& s, const T* x, const T* tx, T* ty) {
  const int64_t n = s.planes * s.out[0] * s.out[1] * s.out[2];
  if (n <= 0) return;
  const dim3 grid(grid_for(n, kThreads)), block(kThreads);
  launch(grid, block, &pool_max_tangent_kernel<T>, s, n, x, tx, ty);
}

template <typename T>
void forward(PoolFn fn, const PoolShape& s, const T* x, T* y) {
  const int64_t n = s.planes * s.out[0] * s.out[1] * s.out[2];
  if (n <= 0) return;
  const double inv = 1.0 / static_cast<double>(s.k[0] * s.k[1] * s.k[2]);
  const dim3 grid(grid_for(n, kThreads)), block(kThreads);
  switch (fn) {
    case PoolFn::Max: launch(grid, block, &pool_forward_kernel<T, int(PoolFn::Max)>, s, n, inv, x, y); break;
    case PoolFn::Mean: launch(grid, block, &pool_forward_kernel<T, int(PoolFn::Mean)>, s, n, inv, x, y); break;
    case PoolFn::Total: launch(grid, block, &pool_forward_kernel<T, int(PoolFn::Total)>, s, n, inv, x, y); break;
  }
}

template <typename T>
void backward(PoolFn fn, const PoolShape& s, const T* x, const T* dy, T* dx) {
  const int64_t n = s.planes * s.in[0] * s.in[1] * s.in[2];
  if (n <= 0) return;
  const double inv = fn == PoolFn::Mean ? 1.0 / static_cast<double>(s.k[0] * s.k[1] * s.k[2]) : 1.0;
  const dim3 grid(grid_for(n, kThreads)), block(kThreads);
  switch (fn) {
    case PoolFn::Max: launch(grid, block, &pool_backward_kernel<T, int(PoolFn::Max)>, s, n, inv, x, dy, dx); break;
    case PoolFn::Mean:
      launch(grid, block, &pool_backward_kernel<T, int(PoolFn::Mean)>, s, n, inv, x, dy, dx);
      break;
    case PoolFn::Total:
      launch(grid, block, &pool_backward_kernel<T, int(PoolFn::Total)>, s, n, inv, x, dy, dx);
      break;
  }
}

}  // namespace

const PoolKernels<float> pool_cuda_f32{&forward<float>, &backward<float>, &max_tangent<float>};
const PoolKernels<double> pool_cuda_f64{&forward<double>, &backward<double>, &max_tangent<double>};

}  // namespace portgrad::kernels
