/// @brief Reference optimiser steps: the elements of kernels/optim_step.h in a plain loop.
#include "kernels/optim.h"
#include "kernels/optim_step.h"

namespace portgrad::kernels {
namespace {

template <typename T>
void sgd_ref(int64_t n, const OptimStep& s, const T* grad, T* w, T* velocity) {
  const OptimCoefficients<T> k(s);
  for (int64_t i = 0; i < n; ++i) sgd_element(k, grad[i], w[i], velocity[i]);
}

template <typename T>
void adam_ref(int64_t n, const OptimStep& s, const T* grad, T* w, T* m, T* v) {
  const OptimCoefficients<T> k(s);
  for (int64_t i = 0; i < n; ++i) adam_element(k, grad[i], w[i], m[i], v[i]);
}

template <typename T>
void rmsprop_ref(int64_t n, const OptimStep& s, const T* grad, T* w, T* sq) {
  const OptimCoefficients<T> k(s);
  for (int64_t i = 0; i < n; ++i) rmsprop_element(k, grad[i], w[i], sq[i]);
}

template <typename T>
void moving_average_ref(int64_t n, double momentum, double scale, const T* x, T* avg) {
  const T a = T(momentum), b = T((1.0 - momentum) * scale);
  for (int64_t i = 0; i < n; ++i) avg[i] = a * avg[i] + b * x[i];
}

}  // namespace

const OptimKernels<float> optim_ref_f32{&sgd_ref<float>, &adam_ref<float>, &rmsprop_ref<float>,
                                        &moving_average_ref<float>};
const OptimKernels<double> optim_ref_f64{&sgd_ref<double>, &adam_ref<double>, &rmsprop_ref<double>,
                                         &moving_average_ref<double>};

}  // namespace portgrad::kernels
