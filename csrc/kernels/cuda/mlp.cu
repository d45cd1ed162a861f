/// @brief The fused MLP on the GPU (kernels/mlp.h): one persistent kernel per call, each block with
/// every layer's weights in shared memory, walking over tiles of rows whose activations and
/// gradients stay in shared memory; plus, for parameter gradients, one pass that sums the blocks'
/// partial sums in a fixed order.
///
/// A block has 256 threads as a 16 x 16 grid; in each product a thread owns the outputs at rows
/// ty + 16i and columns tx + 16j and keeps them in registers while it walks over the inner
/// dimension, reading its operands from shared memory. The weights are stored transposed, with an
/// odd row stride, so both the forward product (along a weight's columns) and the input-gradient
/// product (along its rows) read shared memory without bank conflicts.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"
#include "kernels/cuda/unary_math.cuh"
#include "kernels/mlp.h"

namespace portgrad::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kSide = 16;                        // the thread grid is kSide x kSide
constexpr int kMaxTiles = kMlpMaxWidth / kSide;  // a thread's outputs along one side of a product

// Where each array of a block lives in its shared memory (element offsets; -1: not kept).
struct Layout {
  int rows = 0;                             // rows per tile: 16 x rows-per-thread
  int ldw[kMlpMaxLayers] = {};              // row stride of layer l's transposed weights (odd)
  int64_t wt[kMlpMaxLayers] = {};           // W_l^T: dims[l] x ldw[l]
  int64_t bias[kMlpMaxLayers] = {};         // b_l (zeros for a layer without biases)
  int64_t h[kMlpMaxLayers + 1] = {};        // h[l]: rows x dims[l], the input of layer l; h[L]: the output
  int64_t z[kMlpMaxLayers] = {};            // pre-activations, rows x dims[l + 1] (backward, with a function)
  int64_t g[2] = {-1, -1};                  // gradient buffers, rows x the widest layer (backward)
  int64_t elements = 0;
};

Layout layout_of(const MlpShape& s, int rows) {
  Layout lay;
  lay.rows = rows;
  int64_t at = 0;
  int widest = 0;
  for (int l = 0; l <= s.layers; ++l) widest = std::max(widest, s.dims[l]);
  for (int l = 0; l < s.layers; ++l) {
    lay.ldw[l] = s.dims[l + 1] | 1;
    lay.wt[l] = at;
    at += int64_t(s.dims[l]) * lay.ldw[l];
    lay.bias[l] = at;
    at += s.dims[l + 1];
  }
  if (!s.backward) {  // the forward pass alone: two buffers, used in turn
    const int64_t a = at, b = at + int64_t(rows) * widest;
    for (int l = 0; l <= s.layers; ++l) lay.h[l] = l % 2 ? b : a;
    for (int l = 0; l < s.layers; ++l) lay.z[l] = -1;
    lay.elements = b + int64_t(rows) * widest;
    return lay;
  }
  for (int l = 0; l <= s.layers; ++l) {
    lay.h[l] = at;
    at += int64_t(rows) * s.dims[l];
  }
  for (int l = 0; l < s.layers; ++l) {
    lay.z[l] = s.act[l] == UnaryFn::Count ? -1 : at;
    if (lay.z[l] >= 0) at += int64_t(rows) * s.dims[l + 1];
  }
  for (int i = 0; i < 2; ++i) {
    lay.g[i] = at;
    at += int64_t(rows) * widest;
  }
  lay.elements = at;
  return lay;
}

// The parameter gradients' elements, in the partial sums' order: W_0, b_0, W_1, b_1, ...
int64_t param_count(const MlpShape& s) {
  int64_t n = 0;
  for (int l = 0; l < s.layers; ++l) n += int64_t(s.dims[l + 1]) * (s.dims[l] + 1);
  return n;
}

// How a call runs: rows per tile, blocks, shared memory; rows == 0 where the shape does not fit.
struct Launch {
  int rows = 0;
  Layout layout;
  size_t shared_bytes = 0;
  int64_t tiles = 0;
  unsigned blocks = 0;
};

template <typename T>
Launch launch_for(const MlpShape& s, int64_t batch) {
  Launch k;
  if (!mlp_shape_valid(s) || batch < 0) return k;
  const size_t per_block = cuda::max_shared_per_block(), per_sm = cuda::shared_per_multiprocessor();
  for (int rows : {64, 32, 16}) {
    const Layout lay = layout_of(s, rows);
    const size_t bytes = size_t(lay.elements) * sizeof(T);
    if (bytes > per_block) continue;
    k.rows = rows;
    k.layout = lay;
    k.shared_bytes = bytes;
    k.tiles = (batch + rows - 1) / rows;
    // Blocks that fit on a multiprocessor at once (1 KiB of each block's shared memory is the
    // system's), at most 2048 threads; one wave of them: the grid is persistent.
    const int64_t fit = std::min<int64_t>(2048 / kThreads, std::max<int64_t>(1, per_sm / (bytes + 1024)));
    k.blocks = unsigned(std::min<int64_t>(k.tiles, int64_t(cuda::multiprocessor_count()) * fit));
    return k;
  }
  return k;
}

// acc[i][j] = sum over k < K of A(ty + 16i, k) B(k, tx + 16j), for the first `nr` rows and `nc`
// columns of the output (the thread's others are left at zero). A(r, k) = A[r ar + k ak],
// B(k, c) = B[k bk + c bc]; both in shared memory.
template <int TI, int TJ, typename T>
PG_DEVICE void product(int K, int nr, int nc, const T* A, int ar, int ak, const T* B, int bk, int bc,
                       T (&acc)[TI][TJ]) {
  const int tx = int(threadIdx.x) % kSide, ty = int(threadIdx.x) / kSide;
  const int ni = (nr + kSide - 1) / kSide, nj = (nc + kSide - 1) / kSide;  // the same for every thread
  int arow[TI], bcol[TJ];
PG_UNROLL
  for (int i = 0; i < TI; ++i) arow[i] = (ty + kSide * i < nr ? ty + kSide * i : 0) * ar;
PG_UNROLL
  for (int j = 0; j < TJ; ++j) bcol[j] = (tx + kSide * j < nc ? tx + kSide * j : 0) * bc;
PG_UNROLL
  for (int i = 0; i < TI; ++i)
PG_UNROLL
    for (int j = 0; j < TJ; ++j) acc[i][j] = T(0);
  for (int k = 0; k < K; ++k) {
    T a[TI], b[TJ];
PG_UNROLL
    for (int i = 0; i < TI; ++i)
      if (i < ni) a[i] = A[arow[i] + k * ak];
PG_UNROLL
    for (int j = 0; j < TJ; ++j)
      if (j < nj) b[j] = B[k * bk + bcol[j]];
PG_UNROLL
    for (int i = 0; i < TI; ++i)
PG_UNROLL
      for (int j = 0; j < TJ; ++j)
        if (i < ni && j < nj) acc[i][j] = unary_math::fma_(a[i], b[j], acc[i][j]);
  }
}

// One persistent block: TM rows per thread, so tiles of 16 TM rows.
template <typename T, int TM>
__global__ void __launch_bounds__(kThreads) mlp_kernel(MlpArgs<T> a, Layout lay, int64_t tiles, T* partial,
                                                       int64_t params) {
  constexpr int R = kSide * TM;
  T* sm = cuda::dynamic_shared<T>();
  const int tid = int(threadIdx.x), tx = tid % kSide, ty = tid / kSide;
  const MlpShape& s = a.shape;
  const int L = s.layers;

  for (int l = 0; l < L; ++l) {  // the weights, transposed (read along their rows: coalesced)
    const int n_in = s.dims[l], n_out = s.dims[l + 1];
    T* wt = sm + lay.wt[l];
    for (int e = tid; e < n_in * n_out; e += kThreads) wt[(e % n_in) * lay.ldw[l] + e / n_in] = a.weight[l][e];
    for (int o = tid; o < n_out; o += kThreads) sm[lay.bias[l] + o] = a.bias[l] ? a.bias[l][o] : T(0);
  }
  T* mine = partial ? partial + int64_t(blockIdx.x) * params : nullptr;  // this block's partial sums
  if (mine)
    for (int64_t e = tid; e < params; e += kThreads) mine[e] = T(0);
  __syncthreads();

  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t r0 = t * R;
    const int rows = int(a.batch - r0 < R ? a.batch - r0 : R);
    {  // the tile's inputs; rows past the batch are zeros, and none of their results is kept
      const int n = s.dims[0];
      T* h0 = sm + lay.h[0];
      for (int e = tid; e < R * n; e += kThreads) h0[e] = e / n < rows ? a.x[r0 * n + e] : T(0);
    }
    __syncthreads();

    for (int l = 0; l < L; ++l) {
      const int n_in = s.dims[l], n_out = s.dims[l + 1];
      T acc[TM][kMaxTiles];
      product(n_in, R, n_out, sm + lay.h[l], n_in, 1, sm + lay.wt[l], lay.ldw[l], 1, acc);
      const T* bias = sm + lay.bias[l];
      const UnaryFn f = s.act[l];
      T* z = lay.z[l] >= 0 ? sm + lay.z[l] : nullptr;
      T* h = sm + lay.h[l + 1];
PG_UNROLL
      for (int i = 0; i < TM; ++i)
PG_UNROLL
        for (int j = 0; j < kMaxTiles; ++j) {
          const int r = ty + kSide * i, c = tx + kSide * j;
          if (c >= n_out) continue;
          const T v = acc[i][j] + bias[c];
          if (z) z[r * n_out + c] = v;
          h[r * n_out + c] = f == UnaryFn::Count ? v : unary_math::forward(f, v);
        }
      __syncthreads();
    }
    const int n_y = s.dims[L];
    if (a.y)
      for (int e = tid; e < rows * n_y; e += kThreads) a.y[r0 * n_y + e] = sm[lay.h[L] + e];

    if (s.backward) {
      T* g = sm + lay.g[0];   // the gradient of the current layer's output, then of its pre-activation
      T* g2 = sm + lay.g[1];  // the gradient of its input
      for (int e = tid; e < R * n_y; e += kThreads)
        g[e] = e / n_y >= rows ? T(0) : a.dy ? a.dy[r0 * n_y + e] : T(1);
      __syncthreads();
      for (int l = L - 1; l >= 0; --l) {
        const int n_in = s.dims[l], n_out = s.dims[l + 1];
        if (lay.z[l] >= 0) {
          const T* z = sm + lay.z[l];
          for (int e = tid; e < rows * n_out; e += kThreads) g[e] = unary_math::backward(s.act[l], z[e], g[e]);
          __syncthreads();
        }
        if (mine && (a.dweight[l] || a.dbias[l])) {
          int64_t off = 0;  // this layer's place in the partial sums
          for (int q = 0; q < l; ++q) off += int64_t(s.dims[q + 1]) * (s.dims[q] + 1);
          if (a.dweight[l]) {  // dW (n_out x n_in) += g^T h_l, over the tile's rows
            T acc[kMaxTiles][kMaxTiles];
            product(rows, n_out, n_in, g, 1, n_out, sm + lay.h[l], n_in, 1, acc);
PG_UNROLL
            for (int i = 0; i < kMaxTiles; ++i)
PG_UNROLL
              for (int j = 0; j < kMaxTiles; ++j) {
                const int o = ty + kSide * i, c = tx + kSide * j;
                if (o < n_out && c < n_in) mine[off + int64_t(o) * n_in + c] += acc[i][j];
              }
          }
          if (a.dbias[l])
            for (int o = tid; o < n_out; o += kThreads) {
              T sum = T(0);
              for (int r = 0; r < rows; ++r) sum += g[r * n_out + o];
              mine[off + int64_t(n_out) * n_in + o] += sum;
            }
        }
        if (l > 0 || a.dx) {  // g2 (rows x n_in) = g W_l, W_l(o, c) read from the transposed copy
          T acc[TM][kMaxTiles];
          product(n_out, R, n_in, g, n_out, 1, sm + lay.wt[l], 1, lay.ldw[l], acc);
PG_UNROLL
          for (int i = 0; i < TM; ++i)
PG_UNROLL
            for (int j = 0; j < kMaxTiles; ++j) {
              const int r = ty + kSide * i, c = tx + kSide * j;
              if (c < n_in) g2[r * n_in + c] = acc[i][j];
            }
        }
        __syncthreads();
        T* swap = g;
        g = g2;
        g2 = swap;
      }
      if (a.dx) {
        const int n = s.dims[0];
        for (int e = tid; e < rows * n; e += kThreads) a.dx[r0 * n + e] = g[e];
      }
    }
    __syncthreads();  // the next tile overwrites what this one's last steps read
  }
}

// Parameter gradients: each element the sum of the blocks' partial sums, block 0 first.
template <typename T>
__global__ void mlp_sum_blocks(MlpArgs<T> a, const T* partial, unsigned blocks, int64_t params) {
  for (int64_t p = cuda::global_thread(); p < params; p += cuda::grid_threads()) {
    T sum = T(0);
    for (unsigned b = 0; b < blocks; ++b) sum += partial[int64_t(b) * params + p];
    int64_t off = 0;
    for (int l = 0; l < a.shape.layers; ++l) {
      const int64_t nw = int64_t(a.shape.dims[l + 1]) * a.shape.dims[l], nb = a.shape.dims[l + 1];
      if (p < off + nw) {
        if (a.dweight[l]) a.dweight[l][p - off] = sum;
        break;
      }
      if (p < off + nw + nb) {
        if (a.dbias[l]) a.dbias[l][p - off - nw] = sum;
        break;
      }
      off += nw + nb;
    }
  }
}

template <typename T>
size_t mlp_cuda_workspace(const MlpShape& s, int64_t batch) {
  const Launch k = launch_for<T>(s, batch);
  if (k.rows == 0) return SIZE_MAX;
  return s.backward && s.param_grads ? size_t(k.blocks) * size_t(param_count(s)) * sizeof(T) : 0;
}

template <typename T>
void mlp_cuda_run(const MlpArgs<T>& a) {
  const MlpShape& s = a.shape;
  const Launch k = launch_for<T>(s, a.batch);
  if (k.rows == 0) {
    cuda::note_error("fused MLP: the shape does not fit a block's shared memory");
    return;
  }
  const bool sums = s.backward && s.param_grads;
  T* partial = sums ? static_cast<T*>(a.workspace) : nullptr;
  const int64_t params = param_count(s);
  const dim3 grid(k.blocks), block(kThreads);
  switch (k.rows) {
    case 64: cuda::launch_shared(grid, block, k.shared_bytes, mlp_kernel<T, 4>, a, k.layout, k.tiles, partial, params); break;
    case 32: cuda::launch_shared(grid, block, k.shared_bytes, mlp_kernel<T, 2>, a, k.layout, k.tiles, partial, params); break;
    default: cuda::launch_shared(grid, block, k.shared_bytes, mlp_kernel<T, 1>, a, k.layout, k.tiles, partial, params); break;
  }
  if (sums) cuda::launch(dim3(cuda::grid_for(params, 256)), dim3(256), mlp_sum_blocks<T>, a, partial, k.blocks, params);
}

}  // namespace

const MlpKernels<float> mlp_cuda_f32{&mlp_cuda_workspace<float>, &mlp_cuda_run<float>};
const MlpKernels<double> mlp_cuda_f64{&mlp_cuda_workspace<double>, &mlp_cuda_run<double>};

}  // namespace portgrad::kernels
