/// @brief CUDA optimiser steps (the optim_cuda_* tables): kernels/optim_step.h's element
/// operations, one thread an element (grid-strided).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"
#include "kernels/optim_step.h"

namespace portgrad::kernels {
namespace {

using portgrad::cuda::global_thread;
using portgrad::cuda::grid_threads;

constexpr unsigned kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) sgd_kernel(int64_t n, OptimCoefficients<T> k, const T* grad, T* w, T* v) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) sgd_element(k, grad[i], w[i], v[i]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) adam_kernel(int64_t n, OptimCoefficients<T> k, const T* grad, T* w, T* m,
                                                        T* s) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) adam_element(k, grad[i], w[i], m[i], s[i]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rmsprop_kernel(int64_t n, OptimCoefficients<T> k, const T* grad, T* w,
                                                           T* s) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) rmsprop_element(k, grad[i], w[i], s[i]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) moving_average_kernel(int64_t n, T a, T b, const T* x, T* avg) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) avg[i] = a * avg[i] + b * x[i];
}

dim3 grid(int64_t n) { return dim3(portgrad::cuda::grid_for(n, kThreads)); }

template <typename T>
void sgd(int64_t n, const OptimStep& s, const T* grad, T* w, T* v) {
  if (n > 0) portgrad::cuda::launch(grid(n), dim3(kThreads), &sgd_kernel<T>, n, OptimCoefficients<T>(s), grad, w, v);
}

template <typename T>
void adam(int64_t n, const OptimStep& s, const T* grad, T* w, T* m, T* v) {
  if (n > 0)
    portgrad::cuda::launch(grid(n), dim3(kThreads), &adam_kernel<T>, n, OptimCoefficients<T>(s), grad, w, m, v);
}

template <typename T>
void rmsprop(int64_t n, const OptimStep& s, const T* grad, T* w, T* sq) {
  if (n > 0)
    portgrad::cuda::launch(grid(n), dim3(kThreads), &rmsprop_kernel<T>, n, OptimCoefficients<T>(s), grad, w, sq);
}

template <typename T>
void moving_average(int64_t n, double momentum, double scale, const T* x, T* avg) {
  if (n > 0)
    portgrad::cuda::launch(grid(n), dim3(kThreads), &moving_average_kernel<T>, n, T(momentum),
                           T((1.0 - momentum) * scale), x, avg);
}

}  // namespace

const OptimKernels<float> optim_cuda_f32{&sgd<float>, &adam<float>, &rmsprop<float>, &moving_average<float>};
const OptimKernels<double> optim_cuda_f64{&sgd<double>, &adam<double>, &rmsprop<double>, &moving_average<double>};

}  // namespace portgrad::kernels
