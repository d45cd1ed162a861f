/// @brief CUDA embedding kernels with the semantics of kernels/ref/embed_ref.cc: row gather, and its
/// backward, a scatter-add that gives the reference's bits.
///
/// scatter_add without atomics: the threads own disjoint parts of dW, (a chunk of rows) x (one
/// column), so each element of dW is written by one thread only. A thread zeroes its part, then
/// walks i = 0, 1, ..., n - 1 in order and adds dy[i, col] to dW[idx[i], col] when idx[i] falls in
/// its rows: every element of dW sees exactly the reference's sequence of additions, each rounded
/// to T. Neighbouring threads take neighbouring columns (coalesced), and rows are cut into chunks
/// only as far as needed to give the GPU enough threads; each thread reads all n indices (the
/// threads of a warp read the same one).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

namespace portgrad::kernels {
namespace {

using cuda::global_thread;
using cuda::grid_for;
using cuda::grid_threads;
using cuda::launch;

constexpr unsigned kThreads = 256;
// Threads scatter_add aims for (about what an H100 keeps resident); rows are chunked up to this.
constexpr int64_t kScatterThreads = int64_t(1) << 17;

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads)
    gather_k(int64_t total, int64_t size, const int64_t* idx, const T* W, T* y) {
  const I sz = static_cast<I>(size);
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    const I i = static_cast<I>(e) / sz;
    const I k = static_cast<I>(e) - i * sz;
    y[e] = W[idx[i] * size + static_cast<int64_t>(k)];
  }
}

template <typename T>
void gather(int64_t n, int64_t size, const int64_t* idx, const T* W, T* y) {
  if (n <= 0 || size <= 0) return;
  const int64_t total = n * size;
  const dim3 grid(grid_for(total, kThreads)), block(kThreads);
  if (total <= int64_t(0xffffffffu)) launch(grid, block, &gather_k<T, uint32_t>, total, size, idx, W, y);
  else launch(grid, block, &gather_k<T, uint64_t>, total, size, idx, W, y);
}

// Work item w = chunk * size + col: rows [chunk * per, min(rows, (chunk + 1) * per)) of column col.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    scatter_add_k(int64_t n, int64_t rows, int64_t size, int64_t per, int64_t items, const int64_t* idx,
                  const T* dy, T* dW) {
  for (int64_t w = global_thread(); w < items; w += grid_threads()) {
    const int64_t chunk = w / size, col = w - chunk * size;
    const int64_t r0 = chunk * per;
    const int64_t len = rows - r0 < per ? rows - r0 : per;
    T* out = dW + col;
    for (int64_t r = r0; r < r0 + len; ++r) out[r * size] = T(0);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = idx[i];
      if (static_cast<uint64_t>(r - r0) < static_cast<uint64_t>(len)) out[r * size] += dy[i * size + col];
    }
  }
}

template <typename T>
void scatter_add(int64_t n, int64_t rows, int64_t size, const int64_t* idx, const T* dy, T* dW) {
  if (rows <= 0 || size <= 0) return;
  if (n < 0) n = 0;
  int64_t chunks = (kScatterThreads + size - 1) / size;
  if (chunks > rows) chunks = rows;
  if (chunks < 1) chunks = 1;
  const int64_t per = (rows + chunks - 1) / chunks;
  chunks = (rows + per - 1) / per;  // no empty chunk
  const int64_t items = chunks * size;
  launch(dim3(grid_for(items, kThreads)), dim3(kThreads), &scatter_add_k<T>, n, rows, size, per, items, idx, dy,
         dW);
}

}  // namespace

const EmbedKernels<float> embed_cuda_f32{&gather<float>, &scatter_add<float>};
const EmbedKernels<double> embed_cuda_f64{&gather<double>, &scatter_add<double>};

}  // namespace portgrad::kernels
