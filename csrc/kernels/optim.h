/// @brief Optimiser steps for NetTrain: each call updates one array in place from its gradient.
///
/// Every step first forms the gradient it uses, g = clip(scale * grad) + l2 * w: `scale` turns the
/// summed gradient into the batch mean's, clip (when > 0) bounds each component to [-clip, clip]
/// (Wolfram's "GradientClipping"), l2 (Wolfram's "L2Regularization") adds the gradient of
/// l2/2 |w|^2. The methods follow PyTorch's update formulas, in the element type, operation by
/// operation in the order written here (no fused multiply-adds: the reference, the SIMD variant
/// and a NumPy transcription give the same bits):
///   SGD:     v = momentum v + g;  w = w - lr v
///   ADAM:    w = w * (1 - lr weight_decay)  (decoupled weight decay: AdamW);
///            m = beta1 m + (1 - beta1) g;  s = beta2 s + ((1 - beta2) g) g;
///            w = w + (-lr / c1) (m / (sqrt(s) / sqrt(c2) + eps)),  c1 = 1 - beta1^t, c2 = 1 - beta2^t
///   RMSProp: s = rho s + ((1 - rho) g) g;  w = w + (-lr) (g / (sqrt(s) + eps))
/// Coefficients are computed in double as written ((1 - beta1), -lr / c1, ...) and rounded to the
/// element type once. moving_average serves BatchNormalizationLayer's moving statistics.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

// One step's coefficients (the bias corrections c1, c2 are for step t = 1, 2, ...).
struct OptimStep {
  double lr = 0.001, scale = 1.0, clip = 0.0, l2 = 0.0;
  double momentum = 0.0;                          // SGD
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // ADAM (eps for RMSProp too)
  double weight_decay = 0.0, c1 = 1.0, c2 = 1.0;  // ADAM
  double rho = 0.99;                              // RMSProp
};

template <typename T>
struct OptimKernels {
  void (*sgd)(int64_t n, const OptimStep& s, const T* grad, T* w, T* velocity);
  void (*adam)(int64_t n, const OptimStep& s, const T* grad, T* w, T* m, T* v);
  void (*rmsprop)(int64_t n, const OptimStep& s, const T* grad, T* w, T* sq);
  // avg = momentum avg + ((1 - momentum) scale) x.
  void (*moving_average)(int64_t n, double momentum, double scale, const T* x, T* avg);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(OptimKernels, optim)

}  // namespace portgrad::kernels
