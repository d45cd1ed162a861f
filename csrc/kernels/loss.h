/// @brief Loss kernels: per-example losses of a batch and their gradients.
///
/// Every function works on `batch` examples laid out one after another. `dloss[b]` is the
/// cotangent of example b's loss. A null dx / dt pointer means "do not compute this gradient";
/// gradients are overwritten, not accumulated.
///
/// Logs are clamped: log(max(p, eps)) with eps = (machine epsilon of T)^2, so a probability of
/// exactly 0 or 1 gives a finite loss; the matching derivative uses max(p, eps) in the
/// denominator, so it is finite and keeps its sign. A loss over zero elements is 0.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

template <typename T>
struct LossKernels {
  // Mean squared error: loss[b] = mean_i (x[b,i] - t[b,i])^2, i < n.
  void (*mse_forward)(int64_t batch, int64_t n, const T* x, const T* t, T* loss);
  void (*mse_backward)(int64_t batch, int64_t n, const T* x, const T* t, const T* dloss, T* dx, T* dt);
  // Mean absolute error: loss[b] = mean_i |x - t|; d/dx = sign(x - t) / n with sign(0) = 0.
  void (*mae_forward)(int64_t batch, int64_t n, const T* x, const T* t, T* loss);
  void (*mae_backward)(int64_t batch, int64_t n, const T* x, const T* t, const T* dloss, T* dx, T* dt);
  // Binary cross-entropy: loss[b] = mean_i -(t log p + (1-t) log(1-p)).
  void (*bce_forward)(int64_t batch, int64_t n, const T* p, const T* t, T* loss);
  void (*bce_backward)(int64_t batch, int64_t n, const T* p, const T* t, const T* dloss, T* dp, T* dt);
  // Cross-entropy between distributions along the last axis (`classes` long); each example holds
  // `groups` distributions and its loss is their mean: loss[b] = mean_g -sum_c t log p.
  void (*ce_prob_forward)(int64_t batch, int64_t groups, int64_t classes, const T* p, const T* t, T* loss);
  void (*ce_prob_backward)(int64_t batch, int64_t groups, int64_t classes, const T* p, const T* t,
                           const T* dloss, T* dp, T* dt);
  // Cross-entropy against 0-based class indices (`groups` per example, each in [0, classes):
  // the caller checks): loss[b] = mean_g -log p[b, g, idx[b, g]].
  void (*ce_index_forward)(int64_t batch, int64_t groups, int64_t classes, const T* p,
                           const int64_t* idx, T* loss);
  void (*ce_index_backward)(int64_t batch, int64_t groups, int64_t classes, const T* p,
                            const int64_t* idx, const T* dloss, T* dp);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(LossKernels, loss)

}  // namespace portgrad::kernels
