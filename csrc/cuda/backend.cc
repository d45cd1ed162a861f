/// @brief The GpuBackend this module hands to the engine: the runtime's functions and the CUDA
/// kernel tables.
#include "cuda/backend.h"

#include "cuda/runtime.h"
#include "kernels/cuda/tables.h"

namespace portgrad::cuda {
namespace {

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
#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512) \
  b.f32.family = &family##_cuda_f32;                   \
  b.f64.family = &family##_cuda_f64;
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
  b.f32.mlp = &mlp_cuda_f32;
  b.f64.mlp = &mlp_cuda_f64;
  b.f32.fill = fill<float>;
  b.f64.fill = fill<double>;
  b.f32.first_nonfinite = first_nonfinite<float>;
  b.f64.first_nonfinite = first_nonfinite<double>;
  return b;
}

}  // namespace

const GpuBackend* backend() {
  static const GpuBackend b = make_backend();
  return &b;
}

}  // namespace portgrad::cuda
