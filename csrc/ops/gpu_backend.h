/// @brief The boundary between the engine and a GPU backend module (`portgrad._cuda`, or the CPU
/// emulator `portgrad._gpu_emulator` used to test the same kernels without a GPU).
///
/// A backend is a separate shared object that the CPU build never needs: it hands the engine one
/// GpuBackend (plain function pointers, no C++ exceptions across the boundary) and the engine
/// registers it. Functions that can fail return nullptr on success or an error message (valid until
/// the next call on the same thread). Work is queued on the calling thread's stream of its current
/// device (set_device); `synchronize` waits for it and reports the first error of those launches.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/families.h"
#include "kernels/mlp.h"

namespace portgrad {

enum class CopyKind : int { HostToDevice = 0, DeviceToHost = 1, DeviceToDevice = 2 };

template <typename T>
struct GpuKernelTables {
  // One table per family of kernels/families.def, named as the family (gemm, unary, ...).
#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512) const kernels::Family<T>* family;
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
  const kernels::MlpKernels<T>* mlp;  // the fused MLP (GPU plans of small MLPs)
  // dst[i] = value for i < n.
  void (*fill)(int64_t n, T value, T* dst);
  // The flat index of the first element of x[0..n) that is not finite, or -1: the device check
  // of inputs that arrive as GPU arrays. Synchronises.
  const char* (*first_nonfinite)(int64_t n, const T* x, int64_t* index);
};

struct GpuBackend {
  uint32_t abi;  // kGpuBackendAbi of the build that made it (first, so that any layout can read it)
  const char* name;  // "CUDA" or "emulator"
  // Devices visible; 0 (with a reason in *why) when there is no usable driver or device.
  int (*device_count)(const char** why);
  const char* (*device_name)(int device);
  // Makes `device` current for the calling thread (and selects its stream there).
  const char* (*set_device)(int device);
  // Memory on the current device from the backend's caching allocator (bytes may be 0).
  const char* (*alloc)(size_t bytes, void** out);
  void (*free)(void* p);
  // Queued on the current stream; a copy to host memory waits for it.
  const char* (*copy)(void* dst, const void* src, size_t bytes, CopyKind kind);
  const char* (*synchronize)();
  // The device holding p, or -1 for host memory.
  int (*pointer_device)(const void* p);
  // The index of the first x[i] outside [0, bound), or -1. Synchronises.
  const char* (*first_out_of_range)(int64_t n, const int64_t* x, int64_t bound, int64_t* index);
  // CUDA graphs: capture the current stream's work, then replay it. A backend may leave these
  // null (the engine then launches every kernel on each call).
  const char* (*capture_begin)();
  const char* (*capture_end)(void** graph);
  const char* (*graph_launch)(void* graph);
  void (*graph_destroy)(void* graph);
  GpuKernelTables<float> f32;
  GpuKernelTables<double> f64;
};

// The layout the engine and a backend module share: a hash (FNV-1a) of the family list and of the
// sizes of the tables, made by the compiler. The engine refuses a backend built with another one.
// It sees a family added, removed, renamed or moved, a function added to or removed from a table,
// and a change of GpuBackend's size; it cannot see a changed signature that keeps every size (both
// modules come from one build unless an install mixed two).
namespace gpu_abi {
constexpr uint32_t fnv1a(uint32_t h, const char* s) {
  for (; *s; ++s) h = (h ^ uint8_t(*s)) * 16777619u;
  return h;
}
constexpr uint32_t fnv1a(uint32_t h, uint64_t v) {
  for (int i = 0; i < 8; ++i, v >>= 8) h = (h ^ uint8_t(v)) * 16777619u;
  return h;
}
constexpr char kFamilies[] =
#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512) #Family " " #family ";"
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
    "";
constexpr uint64_t kSizes[] = {
#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512) \
  sizeof(kernels::Family<float>), sizeof(kernels::Family<double>),
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
    sizeof(kernels::MlpKernels<float>), sizeof(kernels::MlpKernels<double>),
    sizeof(GpuKernelTables<float>), sizeof(GpuKernelTables<double>), sizeof(GpuBackend)};
constexpr uint32_t hash() {
  uint32_t h = fnv1a(2166136261u, kFamilies);
  for (uint64_t size : kSizes) h = fnv1a(h, size);
  return h;
}
}  // namespace gpu_abi
constexpr uint32_t kGpuBackendAbi = gpu_abi::hash();

// Registers the process's GPU backend (once; a second, different one is refused with an error).
void register_gpu_backend(const GpuBackend* backend);
// The registered backend, or nullptr.
const GpuBackend* gpu_backend();
// The registered backend; throws the "GPU not available" error (with how to get one) otherwise.
const GpuBackend& require_gpu_backend();
// Throws RuntimeError(`what`: message) if message is not null.
void gpu_check(const char* message, const char* what);

template <typename T> const GpuKernelTables<T>& gpu_tables();
template <> inline const GpuKernelTables<float>& gpu_tables<float>() { return require_gpu_backend().f32; }
template <> inline const GpuKernelTables<double>& gpu_tables<double>() { return require_gpu_backend().f64; }

}  // namespace portgrad
