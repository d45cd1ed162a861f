// PLACEHOLDER: replaced by the real kernels.
#include "kernels/gemm.h"
namespace portgrad::kernels {
const GemmKernels<float> gemm_ref_f32{};
const GemmKernels<double> gemm_ref_f64{};
}  // namespace portgrad::kernels
