/// @brief Device-neutral entry points: each returns the kernel table of a family for a device.
/// Layers call these and never a kernel variant directly; the CPU tables choose their ISA once.
#pragma once
#include <algorithm>
#include <cstring>

#include "core/errors.h"
#include "core/tensor.h"
#include "ops/gpu_backend.h"
#include "kernels/conv.h"
#include "kernels/embed.h"
#include "kernels/gemm.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/pool.h"
#include "kernels/shape_ops.h"
#include "kernels/softmax.h"
#include "kernels/unary.h"
#include "kernels/vector.h"

namespace portgrad::ops {

template <typename T> const kernels::GemmKernels<T>& gemm(Device d) {
  return d == Device::CPU ? kernels::gemm_kernels<T>() : *gpu_tables<T>().gemm;
}
template <typename T> const kernels::UnaryKernels<T>& unary(Device d) {
  return d == Device::CPU ? kernels::unary_kernels<T>() : *gpu_tables<T>().unary;
}
template <typename T> const kernels::SoftmaxKernels<T>& softmax(Device d) {
  return d == Device::CPU ? kernels::softmax_kernels<T>() : *gpu_tables<T>().softmax;
}
template <typename T> const kernels::LossKernels<T>& loss(Device d) {
  return d == Device::CPU ? kernels::loss_kernels<T>() : *gpu_tables<T>().loss;
}
template <typename T> const kernels::ShapeKernels<T>& shape(Device d) {
  return d == Device::CPU ? kernels::shape_kernels<T>() : *gpu_tables<T>().shape;
}
template <typename T> const kernels::VectorKernels<T>& vector(Device d) {
  return d == Device::CPU ? kernels::vector_kernels<T>() : *gpu_tables<T>().vector;
}

template <typename T> const kernels::NormKernels<T>& norm(Device d) {
  return d == Device::CPU ? kernels::norm_kernels<T>() : *gpu_tables<T>().norm;
}
template <typename T> const kernels::EmbedKernels<T>& embed(Device d) {
  return d == Device::CPU ? kernels::embed_kernels<T>() : *gpu_tables<T>().embed;
}
template <typename T> const kernels::ConvKernels<T>& conv(Device d) {
  return d == Device::CPU ? kernels::conv_kernels<T>() : *gpu_tables<T>().conv;
}
// The fused MLP exists on the GPU only (CPU plans run the layers' own GEMMs).
template <typename T> const kernels::MlpKernels<T>& mlp() { return *gpu_tables<T>().mlp; }
template <typename T> const kernels::PoolKernels<T>& pool(Device d) {
  return d == Device::CPU ? kernels::pool_kernels<T>() : *gpu_tables<T>().pool;
}

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
