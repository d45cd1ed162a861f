// PLACEHOLDER: replaced by the real kernels.
#include "kernels/loss.h"
namespace portgrad::kernels {
const LossKernels<float> loss_avx2_f32{};
const LossKernels<double> loss_avx2_f64{};
}  // namespace portgrad::kernels
