/// @brief Softmax and log-softmax over the last axis of a row-major (rows x cols) array, forward
/// and backward.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

template <typename T>
struct SoftmaxKernels {
  // y[r, :] = exp(x[r, :] - max) / sum(exp(x[r, :] - max)). y may alias x.
  void (*forward)(int64_t rows, int64_t cols, const T* x, T* y);
  // dx[r, :] = y[r, :] * (dy[r, :] - sum(dy[r, :] * y[r, :])). dx may alias dy.
  void (*backward)(int64_t rows, int64_t cols, const T* y, const T* dy, T* dx);
  // y[r, :] = (x[r, :] - max) - log(sum(exp(x[r, :] - max))). y may alias x.
  void (*log_forward)(int64_t rows, int64_t cols, const T* x, T* y);
  // dx[r, :] = dy[r, :] - exp(y[r, :]) * sum(dy[r, :]), y the log-softmax. dx may alias dy.
  void (*log_backward)(int64_t rows, int64_t cols, const T* y, const T* dy, T* dx);
  // Softmax under a mask shared by `heads`: x and y are [batch, heads, m, n], mask [batch, m, n];
  // y[b, h, i, :] is the softmax of x[b, h, i, :] over the j with mask[b, i, j] != 0, and 0 at the
  // other j; a row whose mask is all 0 is all 0 (a query that sees no key attends to nothing).
  // y may alias x. (The softmax backward serves it: its zeros stay zeros.)
  void (*masked_forward)(int64_t batch, int64_t heads, int64_t m, int64_t n, const T* x, const T* mask, T* y);
  // The tangent of the backward dx = y (dy - sum(dy y)) along (ty, tdy):
  // tdx = ty (dy - sum(dy y)) + y (tdy - sum(ty dy + y tdy)), row by row. tdx may alias tdy.
  void (*backward_tangent)(int64_t rows, int64_t cols, const T* y, const T* ty, const T* dy, const T* tdy, T* tdx);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(SoftmaxKernels, softmax)

}  // namespace portgrad::kernels
