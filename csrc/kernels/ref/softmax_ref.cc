// PLACEHOLDER: replaced by the real kernels.
#include "kernels/softmax.h"
namespace portgrad::kernels {
const SoftmaxKernels<float> softmax_ref_f32{};
const SoftmaxKernels<double> softmax_ref_f64{};
}  // namespace portgrad::kernels
