/// @brief One element of every optimiser step (kernels/optim.h), for the reference and the CUDA
/// kernel: one definition, so the two agree (optim.cu is compiled with --fmad=false, the reference with
/// -ffp-contract=off). The SIMD variant repeats these operations in vector form.
#pragma once
#include <math.h>

#include "kernels/host_device.h"
#include "kernels/optim.h"

namespace portgrad::kernels {

// The step's coefficients in the element type, rounded once from double.
template <typename T>
struct OptimCoefficients {
  T scale, clip, l2, lr, momentum, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, decay_factor, step, sqrt_c2,
      rho, one_minus_rho, neg_lr;
  bool clipped, regularised;
  PG_HOST_DEVICE explicit OptimCoefficients(const OptimStep& s)
      : scale(T(s.scale)), clip(T(s.clip)), l2(T(s.l2)), lr(T(s.lr)), momentum(T(s.momentum)), beta1(T(s.beta1)),
        one_minus_beta1(T(1.0 - s.beta1)), beta2(T(s.beta2)), one_minus_beta2(T(1.0 - s.beta2)), eps(T(s.eps)),
        decay_factor(T(1.0 - s.lr * s.weight_decay)), step(T(-s.lr / s.c1)), sqrt_c2(T(sqrt(s.c2))), rho(T(s.rho)),
        one_minus_rho(T(1.0 - s.rho)), neg_lr(T(-s.lr)), clipped(s.clip > 0), regularised(s.l2 != 0) {}
};

template <typename T>
PG_HOST_DEVICE T optim_gradient(const OptimCoefficients<T>& k, T grad, T w) {
  T g = k.scale * grad;
  if (k.clipped) g = g > k.clip ? k.clip : (g < -k.clip ? -k.clip : g);  // NaN stays NaN
  if (k.regularised) g = g + k.l2 * w;
  return g;
}

template <typename T>
PG_HOST_DEVICE void sgd_element(const OptimCoefficients<T>& k, T grad, T& w, T& v) {
  const T g = optim_gradient(k, grad, w);
  v = k.momentum * v + g;
  w = w - k.lr * v;
}

template <typename T>
PG_HOST_DEVICE void adam_element(const OptimCoefficients<T>& k, T grad, T& w, T& m, T& s) {
  const T g = optim_gradient(k, grad, w);
  w = w * k.decay_factor;
  m = k.beta1 * m + k.one_minus_beta1 * g;
  s = k.beta2 * s + (k.one_minus_beta2 * g) * g;
  w = w + k.step * (m / (sqrt(s) / k.sqrt_c2 + k.eps));
}

template <typename T>
PG_HOST_DEVICE void rmsprop_element(const OptimCoefficients<T>& k, T grad, T& w, T& s) {
  const T g = optim_gradient(k, grad, w);
  s = k.rho * s + (k.one_minus_rho * g) * g;
  w = w + k.neg_lr * (g / (sqrt(s) + k.eps));
}

}  // namespace portgrad::kernels
