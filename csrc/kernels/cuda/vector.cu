/// @brief CUDA vector kernels (the vector_cuda_* tables): bias add, column sums, axpy, batched outer product,
/// rows scaled by a vector.
/// sum_rows is deterministic: each column is owned by one block, whose threads sum strided rows
/// and then reduce through shared memory in a fixed tree order.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

namespace portgrad::kernels {
namespace {

using portgrad::cuda::global_thread;
using portgrad::cuda::grid_threads;

constexpr unsigned kThreads = 256;

// y[i, j] += b[j], over the flat index of the dense (rows x cols) y.
template <typename T>
__global__ void __launch_bounds__(kThreads) add_row_vector_kernel(int64_t total, int64_t cols, const T* b, T* y) {
  for (int64_t i = global_thread(); i < total; i += grid_threads()) y[i] += b[i % cols];
}

template <typename T>
void add_row_vector(int64_t rows, int64_t cols, const T* b, T* y) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t total = rows * cols;
  portgrad::cuda::launch(dim3(portgrad::cuda::grid_for(total, kThreads)), dim3(kThreads), &add_row_vector_kernel<T>,
                         total, cols, b, y);
}

// Block (TX, 256 / TX): TX adjacent columns, each summed by 256 / TX threads over strided rows,
// then a tree over threadIdx.y. Columns are grid-strided in tiles of TX (uniform over the block).
template <typename T, int TX>
__global__ void __launch_bounds__(kThreads) sum_rows_kernel(int64_t rows, int64_t cols, const T* x, T beta, T* out) {
  constexpr int TY = int(kThreads) / TX;
  __shared__ T scratch[TY][TX];
  const unsigned tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t c0 = int64_t(blockIdx.x) * TX; c0 < cols; c0 += int64_t(gridDim.x) * TX) {
    const int64_t c = c0 + tx;
    T acc = T(0);
    if (c < cols)
      for (int64_t r = ty; r < rows; r += TY) acc += x[r * cols + c];
    scratch[ty][tx] = acc;
    __syncthreads();
    for (int s = TY / 2; s > 0; s /= 2) {
      if (ty < unsigned(s)) scratch[ty][tx] += scratch[ty + s][tx];
      __syncthreads();
    }
    if (ty == 0 && c < cols) {
      const T total = scratch[0][tx];
      out[c] = beta != T(0) ? total + beta * out[c] : total;  // beta == 0: out is not read
    }
    __syncthreads();  // scratch is reused by the next tile
  }
}

template <typename T>
void sum_rows(int64_t rows, int64_t cols, const T* x, T beta, T* out) {
  if (cols <= 0) return;
  // rows == 0 still writes out (beta * out, or 0); the kernel handles it with an empty row loop.
  if (cols < 8) {
    portgrad::cuda::launch(dim3(portgrad::cuda::grid_for(cols, 1, 65535u)), dim3(1, kThreads),
                           &sum_rows_kernel<T, 1>, rows, cols, x, beta, out);
  } else {
    portgrad::cuda::launch(dim3(portgrad::cuda::grid_for(cols, 8, 65535u)), dim3(8, kThreads / 8),
                           &sum_rows_kernel<T, 8>, rows, cols, x, beta, out);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) axpy_kernel(int64_t n, T alpha, const T* x, T* y) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) y[i] += alpha * x[i];
}

template <typename T>
void axpy(int64_t n, T alpha, const T* x, T* y) {
  if (n <= 0) return;
  portgrad::cuda::launch(dim3(portgrad::cuda::grid_for(n, kThreads)), dim3(kThreads), &axpy_kernel<T>, n, alpha, x,
                         y);
}

// out[b, i, j] = u[b, i] v[b, j] over the flat index of the dense (batch x m x n) out.
template <typename T>
__global__ void __launch_bounds__(kThreads) outer_kernel(int64_t total, int64_t m, int64_t n, const T* u, const T* v,
                                                         T* out) {
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    const int64_t j = e % n, bi = e / n, b = bi / m;
    out[e] = u[bi] * v[b * n + j];
  }
}

template <typename T>
void outer(int64_t batch, int64_t m, int64_t n, const T* u, const T* v, T* out) {
  if (batch <= 0 || m <= 0 || n <= 0) return;
  const int64_t total = batch * m * n;
  portgrad::cuda::launch(dim3(portgrad::cuda::grid_for(total, kThreads)), dim3(kThreads), &outer_kernel<T>, total, m,
                         n, u, v, out);
}

// y[i, j] = x[i, j] d[j] over the flat index of the dense (rows x cols) y.
template <typename T>
__global__ void __launch_bounds__(kThreads) multiply_rows_kernel(int64_t total, int64_t cols, const T* d, const T* x,
                                                                 T* y) {
  for (int64_t i = global_thread(); i < total; i += grid_threads()) y[i] = x[i] * d[i % cols];
}

template <typename T>
void multiply_rows(int64_t rows, int64_t cols, const T* d, const T* x, T* y) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t total = rows * cols;
  portgrad::cuda::launch(dim3(portgrad::cuda::grid_for(total, kThreads)), dim3(kThreads), &multiply_rows_kernel<T>,
                         total, cols, d, x, y);
}

}  // namespace

const VectorKernels<float> vector_cuda_f32{&add_row_vector<float>, &sum_rows<float>, &axpy<float>, &outer<float>,
                                           &multiply_rows<float>};
const VectorKernels<double> vector_cuda_f64{&add_row_vector<double>, &sum_rows<double>, &axpy<double>,
                                            &outer<double>, &multiply_rows<double>};

}  // namespace portgrad::kernels
