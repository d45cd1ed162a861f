/// @brief Reference vector kernels (bias add, column sums, axpy, batched outer product,
/// rows scaled by a vector): plain loops in double.
#include "kernels/vector.h"

namespace portgrad::kernels {
namespace {

template <typename T>
void add_row_vector_ref(int64_t rows, int64_t cols, const T* b, T* y) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      y[i * cols + j] = static_cast<T>(static_cast<double>(y[i * cols + j]) + static_cast<double>(b[j]));
}

// beta == 0 never reads out (it may hold NaN).
template <typename T>
void sum_rows_ref(int64_t rows, int64_t cols, const T* x, T beta, T* out) {
  for (int64_t j = 0; j < cols; ++j) {
    double acc = 0.0;
    for (int64_t i = 0; i < rows; ++i) acc += static_cast<double>(x[i * cols + j]);
    if (beta != T(0)) acc += static_cast<double>(beta) * static_cast<double>(out[j]);
    out[j] = static_cast<T>(acc);
  }
}

template <typename T>
void axpy_ref(int64_t n, T alpha, const T* x, T* y) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = static_cast<T>(static_cast<double>(y[i]) + static_cast<double>(alpha) * static_cast<double>(x[i]));
}

template <typename T>
void outer_ref(int64_t batch, int64_t m, int64_t n, const T* u, const T* v, T* out) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        out[(b * m + i) * n + j] = static_cast<T>(static_cast<double>(u[b * m + i]) * static_cast<double>(v[b * n + j]));
}

template <typename T>
void multiply_rows_ref(int64_t rows, int64_t cols, const T* d, const T* x, T* y) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      y[i * cols + j] = static_cast<T>(static_cast<double>(x[i * cols + j]) * static_cast<double>(d[j]));
}

}  // namespace

const VectorKernels<float> vector_ref_f32{&add_row_vector_ref<float>, &sum_rows_ref<float>,
                                          &axpy_ref<float>, &outer_ref<float>, &multiply_rows_ref<float>};
const VectorKernels<double> vector_ref_f64{&add_row_vector_ref<double>, &sum_rows_ref<double>,
                                           &axpy_ref<double>, &outer_ref<double>, &multiply_rows_ref<double>};

}  // namespace portgrad::kernels
