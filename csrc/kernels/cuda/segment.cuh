/// @brief Reductions over segments (rows) shared by the softmax and loss kernels: a 256-thread
/// block is split into groups of G threads (G a power of two), each group owning one segment at a
/// time, so short rows do not leave most of a block idle. Reductions go through shared memory in a
/// fixed tree order (deterministic); every thread of the block reaches the same barriers.
#pragma once
#include "kernels/cuda/common.cuh"

namespace portgrad::cuda {

constexpr int kSegmentBlock = 256;

// Sum of v over the G threads of the caller's group, returned to each of them. `scratch` is a
// __shared__ T[kSegmentBlock]. Every thread of the block must call it (inactive ones with 0).
template <int G, typename T>
PG_DEVICE T group_sum(T v, T* scratch) {
  const unsigned t = threadIdx.x, lane = t % G, base = t - lane;
  scratch[t] = v;
  __syncthreads();
  for (int s = G / 2; s > 0; s /= 2) {
    if (lane < unsigned(s)) scratch[t] += scratch[t + s];
    __syncthreads();
  }
  const T total = scratch[base];
  __syncthreads();
  return total;
}

// Maximum of v over the caller's group; a NaN anywhere gives NaN (like block_max).
template <int G, typename T>
PG_DEVICE T group_max(T v, T* scratch) {
  const unsigned t = threadIdx.x, lane = t % G, base = t - lane;
  scratch[t] = v;
  __syncthreads();
  for (int s = G / 2; s > 0; s /= 2) {
    if (lane < unsigned(s)) {
      const T a = scratch[t], b = scratch[t + s];
      scratch[t] = (a != a || a > b) ? a : b;
    }
    __syncthreads();
  }
  const T m = scratch[base];
  __syncthreads();
  return m;
}

// The group size for segments of length len: 4, 16, 64 or 256 threads.
inline int segment_group(int64_t len) { return len <= 4 ? 4 : len <= 16 ? 16 : len <= 64 ? 64 : 256; }

// Blocks for `segments` segments, kSegmentBlock / G of them per block, grid-strided.
inline unsigned segment_blocks(int64_t segments, int G) {
  return grid_for(segments, unsigned(kSegmentBlock / G), 65535u);
}

// The kernel instantiation for group size G (one of segment_group's values).
template <typename K>
K pick_group(int G, K k4, K k16, K k64, K k256) {
  return G == 4 ? k4 : G == 16 ? k16 : G == 64 ? k64 : k256;
}

}  // namespace portgrad::cuda
