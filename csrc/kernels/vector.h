/// @brief Small vector kernels the engine needs around GEMMs: bias add, column sums, axpy, the
/// batched outer product of per-example weight gradients, and rows scaled by one vector.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

template <typename T>
struct VectorKernels {
  // Arrays are dense and row-major (no row stride). y[i, j] += b[j] for a (rows x cols) y.
  void (*add_row_vector)(int64_t rows, int64_t cols, const T* b, T* y);
  // out[j] = beta * out[j] + sum_i x[i, j]. With beta == 0, out is not read (it may hold NaN).
  void (*sum_rows)(int64_t rows, int64_t cols, const T* x, T beta, T* out);
  // y[i] += alpha * x[i].
  void (*axpy)(int64_t n, T alpha, const T* x, T* y);
  // out[b, i, j] = u[b, i] * v[b, j] for b < batch, i < m, j < n (u: batch x m, v: batch x n):
  // one product per element, so every variant gives the same bits.
  void (*outer)(int64_t batch, int64_t m, int64_t n, const T* u, const T* v, T* out);
  // y[i, j] = x[i, j] * d[j] for a (rows x cols) x and y (y may be x): one product per element.
  void (*multiply_rows)(int64_t rows, int64_t cols, const T* d, const T* x, T* y);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(VectorKernels, vector)

}  // namespace portgrad::kernels
