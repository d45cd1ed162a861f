/// @brief General matrix multiply over strided operands.
///
///   C[i*ldc + j] = alpha * sum_p A[i*rsa + p*csa] * B[p*rsb + j*csb] + beta * C[i*ldc + j]
///   for i < m, j < n, p < k.
/// Strides express every transpose without materialising it: A^T is (rsa, csa) = (1, lda).
/// With beta == 0, C is not read (it may hold NaN). k == 0 gives C = beta * C.
/// C must not overlap A or B. alpha == 0 still reads A and B (NaN there propagates).
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

template <typename T>
struct GemmKernels {
  void (*gemm)(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
               const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc);
};

extern const GemmKernels<float> gemm_ref_f32;
extern const GemmKernels<double> gemm_ref_f64;
extern const GemmKernels<float> gemm_avx2_f32;
extern const GemmKernels<double> gemm_avx2_f64;

template <typename T> const GemmKernels<T>& gemm_kernels();
template <typename T> const GemmKernels<T>* gemm_kernels_for(Isa isa);

}  // namespace portgrad::kernels
