/// @brief The CUDA device model on the CPU: what kernel sources see when compiled by a C++
/// compiler for the GPU emulator (the `_gpu_emulator` module), so every CUDA kernel runs in the
/// test suite on machines without a GPU.
///
/// A launch runs its blocks one after another; the threads of a block are fibers (ucontext) on the
/// calling OS thread, switched at __syncthreads, in a shuffled order so that a missing barrier
/// shows up as a wrong result. Supported: threadIdx/blockIdx/blockDim/gridDim, __syncthreads,
/// static __shared__ arrays, dynamic shared memory (through launch_shared and dynamic_shared in
/// common.cuh; it starts each block filled with NaN bytes), atomicAdd. Not supported (kernels must
/// not use them): warp intrinsics (__shfl*, __ballot*, warp-synchronous code), cooperative groups.
#pragma once
#if defined(__CUDACC__)
#error "emulator.h is for C++ compilation only"
#endif
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time, on one OS thread, so a function-local static is the block's shared memory.
#define __shared__ static

namespace portgrad::cuda::emulator {
void sync_threads();
// Runs body() once per thread of every block, each block with shared_bytes of dynamic shared
// memory; returns an error message or nullptr.
const char* run(dim3 grid, dim3 block, void (*body)(void*), void* ctx, size_t shared_bytes = 0);
// The running block's dynamic shared memory.
void* dynamic_shared();
// Called with true before a launch runs and false after it (the emulated runtime opens its device
// memory to the kernel only then, so host code touching device memory faults).
void set_launch_hook(void (*hook)(bool running));
// Graph capture: while the calling thread records, launches (and copies) are stored, not run.
bool recording();
void record(std::function<void()> work);
void begin_recording();
std::vector<std::function<void()>> end_recording();
// Held by every launch: the emulated runtime holds it too while it opens its memory for a copy.
std::mutex& launch_mutex();
}  // namespace portgrad::cuda::emulator

inline void __syncthreads() { portgrad::cuda::emulator::sync_threads(); }

// Fibers are switched only at barriers, so a read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  T old = *p;
  if (v > old) *p = v;
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  T old = *p;
  if (v < old) *p = v;
  return old;
}
