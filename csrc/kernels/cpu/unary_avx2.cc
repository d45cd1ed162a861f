// PLACEHOLDER: replaced by the real kernels.
#include "kernels/unary.h"
namespace portgrad::kernels {
const UnaryKernels<float> unary_avx2_f32{};
const UnaryKernels<double> unary_avx2_f64{};
}  // namespace portgrad::kernels
