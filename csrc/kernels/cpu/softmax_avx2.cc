// PLACEHOLDER: replaced by the real kernels.
#include "kernels/softmax.h"
namespace portgrad::kernels {
const SoftmaxKernels<float> softmax_avx2_f32{};
const SoftmaxKernels<double> softmax_avx2_f64{};
}  // namespace portgrad::kernels
