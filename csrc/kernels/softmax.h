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
};

PORTGRAD_DECLARE_KERNEL_FAMILY(SoftmaxKernels, softmax)

}  // namespace portgrad::kernels
