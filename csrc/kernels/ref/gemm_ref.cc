/// @brief Reference GEMM over strided operands: plain loops, double accumulation, one rounding.
#include "kernels/gemm.h"

namespace portgrad::kernels {
namespace {

// The test oracle: every product and sum in double, rounded to T once per output element.
// beta == 0 never reads C (it may hold NaN); k == 0 gives C = beta * C.
template <typename T>
void gemm_ref(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
              const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < k; ++p)
        acc += static_cast<double>(A[i * rsa + p * csa]) * static_cast<double>(B[p * rsb + j * csb]);
      double r = static_cast<double>(alpha) * acc;
      if (beta != T(0)) r += static_cast<double>(beta) * static_cast<double>(C[i * ldc + j]);
      C[i * ldc + j] = static_cast<T>(r);
    }
  }
}

}  // namespace

const GemmKernels<float> gemm_ref_f32{&gemm_ref<float>};
const GemmKernels<double> gemm_ref_f64{&gemm_ref<double>};

}  // namespace portgrad::kernels
