/// @brief Small vector kernels the engine needs around GEMMs: bias add, column sums, axpy.
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
};

PORTGRAD_DECLARE_KERNEL_FAMILY(VectorKernels, vector)

}  // namespace portgrad::kernels
