/// @brief CUDA elementwise activation kernels (the unary_cuda_* tables): one grid-stride kernel
/// per function and direction, the math in T (float math for f32, double for f64), with the kinks,
/// limits at +-inf and NaN behaviour of the reference (kernels/ref/unary_ref.cc).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"
#include "kernels/cuda/unary_math.cuh"
#include "kernels/unary_second.h"

namespace portgrad::kernels {
namespace {

using portgrad::cuda::global_thread;
using portgrad::cuda::grid_threads;
using namespace unary_math;

constexpr unsigned kThreads = 256;

// y may alias x: each element is read, then written, by one thread.
template <typename T, UnaryFn F>
__global__ void __launch_bounds__(kThreads) forward_kernel(int64_t n, const T* x, T* y) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) y[i] = forward_of<F>(x[i]);
}

// dx may alias dy.
template <typename T, UnaryFn F>
__global__ void __launch_bounds__(kThreads) backward_kernel(int64_t n, const T* x, const T* dy, T* dx) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) dx[i] = backward_of<F>(x[i], dy[i]);
}

template <typename T>
void unary_forward(UnaryFn f, int64_t n, const T* x, T* y) {
  if (n <= 0) return;
  const dim3 grid(portgrad::cuda::grid_for(n, kThreads)), block(kThreads);
  switch (f) {
#define X(name, str) \
  case UnaryFn::name: portgrad::cuda::launch(grid, block, &forward_kernel<T, UnaryFn::name>, n, x, y); break;
#include "kernels/unary.def"
#undef X
    case UnaryFn::Count: portgrad::cuda::note_error("unary_forward: invalid function"); break;
  }
}

template <typename T>
void unary_backward(UnaryFn f, int64_t n, const T* x, const T* /*y*/, const T* dy, T* dx) {
  if (n <= 0) return;
  const dim3 grid(portgrad::cuda::grid_for(n, kThreads)), block(kThreads);
  switch (f) {
#define X(name, str) \
  case UnaryFn::name: portgrad::cuda::launch(grid, block, &backward_kernel<T, UnaryFn::name>, n, x, dy, dx); break;
#include "kernels/unary.def"
#undef X
    case UnaryFn::Count: portgrad::cuda::note_error("unary_backward: invalid function"); break;
  }
}

// Second derivatives: one definition with the reference's (kernels/unary_second.h), in double.
template <typename T>
__global__ void __launch_bounds__(kThreads) second_kernel(UnaryFn f, int64_t n, const T* x, const T* y, const T* a,
                                                          const T* b, T* out) {
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    out[i] = static_cast<T>(static_cast<double>(a[i]) * static_cast<double>(b[i]) *
                            unary_second_derivative(f, static_cast<double>(x[i]), static_cast<double>(y[i])));
}

template <typename T>
void unary_second(UnaryFn f, int64_t n, const T* x, const T* y, const T* a, const T* b, T* out) {
  if (n <= 0) return;
  const dim3 grid(portgrad::cuda::grid_for(n, kThreads)), block(kThreads);
  portgrad::cuda::launch(grid, block, &second_kernel<T>, f, n, x, y, a, b, out);
}

}  // namespace

const UnaryKernels<float> unary_cuda_f32{&unary_forward<float>, &unary_backward<float>, &unary_second<float>};
const UnaryKernels<double> unary_cuda_f64{&unary_forward<double>, &unary_backward<double>, &unary_second<double>};

}  // namespace portgrad::kernels
