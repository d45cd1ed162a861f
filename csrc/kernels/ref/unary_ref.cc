// PLACEHOLDER: replaced by the real kernels.
#include "kernels/unary.h"
namespace portgrad::kernels {
const UnaryKernels<float> unary_ref_f32{};
const UnaryKernels<double> unary_ref_f64{};
}  // namespace portgrad::kernels
