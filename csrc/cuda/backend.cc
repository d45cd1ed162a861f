/// @brief The GpuBackend this module hands to the engine: the runtime's functions and the CUDA
/// kernel tables.
#include "cuda/backend.h"

#include "cuda/runtime.h"
#include "kernels/cuda/tables.h"

namespace portgrad::cuda {
namespace {

template <typename T>
GpuKernelTables<T> tables(const kernels::GemmKernels<T>& gemm, const kernels::UnaryKernels<T>& unary,
                          const kernels::SoftmaxKernels<T>& softmax, const kernels::LossKernels<T>& loss,
                          const kernels::VectorKernels<T>& vector, const kernels::ShapeKernels<T>& shape,
                          const kernels::EmbedKernels<T>& embed, const kernels::NormKernels<T>& norm,
                          const kernels::PoolKernels<T>& pool, const kernels::ConvKernels<T>& conv,
                          const kernels::MlpKernels<T>& mlp) {
  return {&gemm, &unary, &softmax, &loss, &vector, &shape, &embed, &norm, &pool, &conv, &mlp, fill<T>,
          first_nonfinite<T>};
}

GpuBackend make_backend() {
  using namespace kernels;
  GpuBackend b{};
  b.abi = kGpuBackendAbi;
  b.name = kBackendName;
  b.device_count = device_count;
  b.device_name = device_name;
  b.set_device = set_device;
  b.alloc = alloc;
  b.free = free;
  b.copy = copy;
  b.synchronize = synchronize;
  b.pointer_device = pointer_device;
  b.first_out_of_range = first_out_of_range;
  b.capture_begin = capture_begin;
  b.capture_end = capture_end;
  b.graph_launch = graph_launch;
  b.graph_destroy = graph_destroy;
  b.f32 = tables<float>(gemm_cuda_f32, unary_cuda_f32, softmax_cuda_f32, loss_cuda_f32, vector_cuda_f32,
                        shape_cuda_f32, embed_cuda_f32, norm_cuda_f32, pool_cuda_f32, conv_cuda_f32, mlp_cuda_f32);
  b.f64 = tables<double>(gemm_cuda_f64, unary_cuda_f64, softmax_cuda_f64, loss_cuda_f64, vector_cuda_f64,
                         shape_cuda_f64, embed_cuda_f64, norm_cuda_f64, pool_cuda_f64, conv_cuda_f64, mlp_cuda_f64);
  return b;
}

}  // namespace

const GpuBackend* backend() {
  static const GpuBackend b = make_backend();
  return &b;
}

}  // namespace portgrad::cuda
