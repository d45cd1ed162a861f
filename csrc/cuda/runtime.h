/// @brief The device runtime behind a GPU backend: devices, per-thread streams, a caching
/// allocator, copies, graphs. Implemented twice: runtime_cuda.cu (the CUDA runtime) and
/// runtime_emulated.cc (host memory, for the CPU emulator). backend.cc turns it into a GpuBackend.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/gpu_backend.h"

namespace portgrad::cuda {

extern const char* const kBackendName;
int device_count(const char** why);
const char* device_name(int device);
const char* set_device(int device);
int current_device();
const char* alloc(size_t bytes, void** out);
void free(void* p);
const char* copy(void* dst, const void* src, size_t bytes, CopyKind kind);
const char* synchronize();
int pointer_device(const void* p);
const char* capture_begin();
const char* capture_end(void** graph);
const char* graph_launch(void* graph);
void graph_destroy(void* graph);
// 8 bytes of device memory on the current device for results of check kernels (one per device).
int64_t* result_slot();
// Bytes held by the caching allocator (in use + cached), and releasing the cached ones.
size_t memory_in_use();
size_t memory_cached();
void empty_cache();

}  // namespace portgrad::cuda

namespace portgrad::cuda {
// The backend's own kernels (checks.cu).
template <typename T> void fill(int64_t n, T value, T* dst);
template <typename T> const char* first_nonfinite(int64_t n, const T* x, int64_t* index);
const char* first_out_of_range(int64_t n, const int64_t* x, int64_t bound, int64_t* index);
}  // namespace portgrad::cuda
