// PLACEHOLDER: replaced by the real kernels.
#include "kernels/vector.h"
namespace portgrad::kernels {
const VectorKernels<float> vector_avx2_f32{};
const VectorKernels<double> vector_avx2_f64{};
}  // namespace portgrad::kernels
