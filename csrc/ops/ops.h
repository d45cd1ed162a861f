/// @brief Device-neutral entry points: each returns the kernel table of a family for a device.
/// Layers call these and never a kernel variant directly; the CPU tables choose their ISA once.
#pragma once
#include <algorithm>
#include <cstring>

#include "core/errors.h"
#include "core/tensor.h"
#include "kernels/families.h"
#include "ops/gpu_backend.h"

namespace portgrad::ops {

// Per family of kernels/families.def: ops::gemm<T>(device), ops::unary<T>(device), ...
#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512)                                             \
  template <typename T> const kernels::Family<T>& family(Device d) {                               \
    return d == Device::CPU ? kernels::family##_kernels<T>() : *gpu_tables<T>().family;            \
  }
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
// The fused MLP exists on the GPU only (CPU plans run the layers' own GEMMs).
template <typename T> const kernels::MlpKernels<T>& mlp() { return *gpu_tables<T>().mlp; }

// Memory moves inside the device's own memory (layers never touch data themselves).
inline void copy_bytes(Device d, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  if (d == Device::CPU) std::memcpy(dst, src, bytes);
  else gpu_check(require_gpu_backend().copy(dst, src, bytes, CopyKind::DeviceToDevice), "device copy");
}
template <typename T> void fill(Device d, int64_t n, T value, T* dst) {
  if (d == Device::CPU) std::fill_n(dst, n, value);
  else gpu_tables<T>().fill(n, value, dst);
}

}  // namespace portgrad::ops
