/// @brief Device-neutral entry points: each returns the kernel table of a family for a device.
/// Layers call these and never a kernel variant directly; the CPU tables choose their ISA once.
#pragma once
#include "core/errors.h"
#include "core/tensor.h"
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

[[noreturn]] inline void no_backend(Device d) {
  throw ValueError("TargetDevice \"GPU\" is not available: this build of portgrad has no CUDA "
                   "backend; use TargetDevice=\"CPU\"");
}

template <typename T> const kernels::GemmKernels<T>& gemm(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::gemm_kernels<T>();
}
template <typename T> const kernels::UnaryKernels<T>& unary(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::unary_kernels<T>();
}
template <typename T> const kernels::SoftmaxKernels<T>& softmax(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::softmax_kernels<T>();
}
template <typename T> const kernels::LossKernels<T>& loss(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::loss_kernels<T>();
}
template <typename T> const kernels::ShapeKernels<T>& shape(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::shape_kernels<T>();
}
template <typename T> const kernels::VectorKernels<T>& vector(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::vector_kernels<T>();
}

template <typename T> const kernels::NormKernels<T>& norm(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::norm_kernels<T>();
}
template <typename T> const kernels::EmbedKernels<T>& embed(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::embed_kernels<T>();
}
template <typename T> const kernels::ConvKernels<T>& conv(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::conv_kernels<T>();
}
template <typename T> const kernels::PoolKernels<T>& pool(Device d) {
  if (d != Device::CPU) no_backend(d);
  return kernels::pool_kernels<T>();
}

}  // namespace portgrad::ops
