/// @brief What every CUDA kernel file includes: the CUDA runtime under nvcc, the CPU emulator
/// (kernels/cuda/emulator.h) under a C++ compiler, and the few helpers both share: launch(),
/// block-wide reductions, math overloads for float and double.
///
/// Rules for kernel files, so the same source runs on a GPU and in the emulator:
///   - launch kernels only through portgrad::cuda::launch (never <<<>>> directly);
///   - shared memory is static (`__shared__ T tile[N]`), or dynamic through launch_shared and
///     dynamic_shared below, never a kernel's own `extern __shared__`;
///   - no warp intrinsics or warp-synchronous code: reduce through shared memory and __syncthreads
///     (block_sum below), which is also deterministic;
///   - kernels never allocate; scratch comes from the caller (the plan's workspace).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cmath>

#include "kernels/host_device.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define PG_DEVICE __device__ __forceinline__
#else
#include "kernels/cuda/emulator.h"
#define PG_DEVICE inline
#endif

// `#pragma unroll` for nvcc only (a C++ compiler warns about the unknown pragma).
#if defined(__CUDACC__)
#define PG_UNROLL _Pragma("unroll")
#else
#define PG_UNROLL
#endif

namespace portgrad::cuda {

// The stream every kernel of the calling host thread is queued on (set by the runtime per device).
cudaStream_t current_stream();
// Records the first error of this thread's launches; the runtime reports it at the next synchronisation.
void note_error(const char* what);

#if defined(__CUDACC__)
template <typename... KArgs, typename... Args>
void launch(dim3 grid, dim3 block, void (*kernel)(KArgs...), Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  kernel<<<grid, block, 0, current_stream()>>>(static_cast<KArgs>(args)...);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) note_error(cudaGetErrorString(e));
}
#else
template <typename... KArgs, typename... Args>
void launch(dim3 grid, dim3 block, void (*kernel)(KArgs...), Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  auto bound = [=] { kernel(static_cast<KArgs>(args)...); };
  using Bound = decltype(bound);
  auto call = [grid, block, bound]() mutable {
    const char* e = emulator::run(grid, block, [](void* p) { (*static_cast<Bound*>(p))(); }, &bound);
    if (e) note_error(e);
  };
  if (emulator::recording()) emulator::record(call);  // a graph capture: replayed by graph_launch
  else call();
}
#endif

// What kernels that size their launch by the device need to know of the current device.
int multiprocessor_count();
// The shared memory one block may have (opted in to past the 48 KiB default), and one multiprocessor.
size_t max_shared_per_block();
size_t shared_per_multiprocessor();

#if defined(__CUDACC__)
// Raises a kernel's dynamic shared memory limit (once per kernel and size) where it needs more
// than the default; false (with the error noted) if the device refuses.
bool allow_shared(const void* kernel, size_t bytes);

// launch() with `shared_bytes` of dynamic shared memory, which the kernel reaches with dynamic_shared<T>().
template <typename... KArgs, typename... Args>
void launch_shared(dim3 grid, dim3 block, size_t shared_bytes, void (*kernel)(KArgs...), Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (!allow_shared(reinterpret_cast<const void*>(kernel), shared_bytes)) return;
  kernel<<<grid, block, shared_bytes, current_stream()>>>(static_cast<KArgs>(args)...);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) note_error(cudaGetErrorString(e));
}

template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char pg_dynamic_shared[];
  return reinterpret_cast<T*>(pg_dynamic_shared);
}
#else
template <typename... KArgs, typename... Args>
void launch_shared(dim3 grid, dim3 block, size_t shared_bytes, void (*kernel)(KArgs...), Args... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (shared_bytes > max_shared_per_block()) {
    note_error("too much shared memory requested for a block");
    return;
  }
  auto bound = [=] { kernel(static_cast<KArgs>(args)...); };
  using Bound = decltype(bound);
  auto call = [grid, block, shared_bytes, bound]() mutable {
    const char* e = emulator::run(grid, block, [](void* p) { (*static_cast<Bound*>(p))(); }, &bound, shared_bytes);
    if (e) note_error(e);
  };
  if (emulator::recording()) emulator::record(call);
  else call();
}

template <typename T>
inline T* dynamic_shared() {
  return static_cast<T*>(emulator::dynamic_shared());
}
#endif

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, never more than needed.
inline unsigned grid_for(int64_t n, unsigned threads, unsigned max_blocks = 4096) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : b > max_blocks ? max_blocks : b);
}

// Thread index and stride of a 1-D grid-stride loop.
PG_DEVICE int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
PG_DEVICE int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// Sum of v over the block's threads (blockDim.x == kThreads, a power of two), returned to every
// thread. `scratch` is a __shared__ T[kThreads] of the caller. Fixed tree order: deterministic.
template <int kThreads, typename T>
PG_DEVICE T block_sum(T v, T* scratch) {
  const unsigned t = threadIdx.x;
  scratch[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < unsigned(s)) scratch[t] += scratch[t + s];
    __syncthreads();
  }
  const T total = scratch[0];
  __syncthreads();  // scratch may be reused right after
  return total;
}

// Maximum of v over the block (NaN-propagating like fmax is not: a NaN input gives NaN).
template <int kThreads, typename T>
PG_DEVICE T block_max(T v, T* scratch) {
  const unsigned t = threadIdx.x;
  scratch[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < unsigned(s)) {
      const T a = scratch[t], b = scratch[t + s];
      scratch[t] = (a != a || a > b) ? a : b;
    }
    __syncthreads();
  }
  const T m = scratch[0];
  __syncthreads();
  return m;
}

// Math for float and double under one name (device code has no std:: overload set).
namespace math {
PG_DEVICE float exp(float x) { return ::expf(x); }
PG_DEVICE double exp(double x) { return ::exp(x); }
PG_DEVICE float expm1(float x) { return ::expm1f(x); }
PG_DEVICE double expm1(double x) { return ::expm1(x); }
PG_DEVICE float log(float x) { return ::logf(x); }
PG_DEVICE double log(double x) { return ::log(x); }
PG_DEVICE float log1p(float x) { return ::log1pf(x); }
PG_DEVICE double log1p(double x) { return ::log1p(x); }
PG_DEVICE float tanh(float x) { return ::tanhf(x); }
PG_DEVICE double tanh(double x) { return ::tanh(x); }
PG_DEVICE float erf(float x) { return ::erff(x); }
PG_DEVICE double erf(double x) { return ::erf(x); }
PG_DEVICE float sqrt(float x) { return ::sqrtf(x); }
PG_DEVICE double sqrt(double x) { return ::sqrt(x); }
PG_DEVICE float sin(float x) { return ::sinf(x); }
PG_DEVICE double sin(double x) { return ::sin(x); }
PG_DEVICE float cos(float x) { return ::cosf(x); }
PG_DEVICE double cos(double x) { return ::cos(x); }
PG_DEVICE float abs(float x) { return ::fabsf(x); }
PG_DEVICE double abs(double x) { return ::fabs(x); }
PG_DEVICE float pow(float x, float y) { return ::powf(x, y); }
PG_DEVICE double pow(double x, double y) { return ::pow(x, y); }
PG_DEVICE double fmod(double x, double y) { return ::fmod(x, y); }
PG_DEVICE double rint(double x) { return ::rint(x); }
PG_DEVICE bool is_nan(float x) { return x != x; }
PG_DEVICE bool is_nan(double x) { return x != x; }
PG_DEVICE bool is_finite(float x) { return ::fabsf(x) <= 3.402823466e38f; }
PG_DEVICE bool is_finite(double x) { return ::fabs(x) <= 1.7976931348623157e308; }
template <typename T> PG_DEVICE T min(T a, T b) { return b < a ? b : a; }
template <typename T> PG_DEVICE T max(T a, T b) { return a < b ? b : a; }
}  // namespace math

}  // namespace portgrad::cuda
