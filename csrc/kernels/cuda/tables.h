/// @brief The CUDA kernel tables: one per family of kernels/families.def (and the fused MLP) and
/// element type, in the layout of the CPU tables (kernels/<family>.h). Every pointer they take is
/// device memory on the current device, except the small shape arrays of the shape family (dims,
/// strides), which are host memory. Launches go to cuda::current_stream() and return without
/// waiting.
#pragma once
#include "kernels/families.h"
#include "kernels/mlp.h"

namespace portgrad::kernels {

#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512) \
  extern const Family<float> family##_cuda_f32;        \
  extern const Family<double> family##_cuda_f64;
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
// The fused MLP, a GPU-only kernel (its reference twin is the test oracle alone).
extern const MlpKernels<float> mlp_cuda_f32;
extern const MlpKernels<double> mlp_cuda_f64;

}  // namespace portgrad::kernels
