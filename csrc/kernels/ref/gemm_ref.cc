/// @brief Reference GEMM over strided operands: plain loops, double accumulation, one rounding.
#include <cstring>

#include "kernels/gemm.h"

namespace portgrad::kernels {
namespace {

template <typename T> const UnaryKernels<T>& unary_ref();
template <> const UnaryKernels<float>& unary_ref<float>() { return unary_ref_f32; }
template <> const UnaryKernels<double>& unary_ref<double>() { return unary_ref_f64; }

// The test oracle: every product and sum in double, rounded to T once per output element (the
// bias is added before that rounding). beta == 0 never reads C (it may hold NaN); k == 0 gives
// C = beta * C (+ bias). Then the unary, if any, maps each row of C to D with the reference
// unary kernel (or the scale multiplies it), and row_sums are summed in double and
// rounded once. A prologue's op(A) element is the reference unary backward of that one element
// (rounded to T, as an unfused backward step would store it).
template <typename T>
void gemm_ex_ref(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                 const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc,
                 const GemmEpilogue<T>& epi) {
  const auto a_at = [&](int64_t i, int64_t p) {
    const int64_t o = i * rsa + p * csa;
    if (!epi.has_prologue()) return A[o];
    T dz;
    unary_ref<T>().backward(epi.a_derivative, 1, epi.a_x + o, epi.a_y + o, A + o, &dz);
    return dz;
  };
  constexpr int64_t kCols = 64;  // columns per pass: a prologue's element is computed once per pass
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j0 = 0; j0 < n; j0 += kCols) {
      const int64_t nb = n - j0 < kCols ? n - j0 : kCols;
      double acc[kCols] = {};
      for (int64_t p = 0; p < k; ++p) {
        const double a = static_cast<double>(a_at(i, p));
        for (int64_t j = 0; j < nb; ++j) acc[j] += a * static_cast<double>(B[p * rsb + (j0 + j) * csb]);
      }
      for (int64_t j = j0; j < j0 + nb; ++j) {
        double r = static_cast<double>(alpha) * acc[j - j0];
        if (beta != T(0)) r += static_cast<double>(beta) * static_cast<double>(C[i * ldc + j]);
        if (epi.bias) r += static_cast<double>(epi.bias[j]);
        C[i * ldc + j] = static_cast<T>(r);
      }
    }
    if (epi.unary != UnaryFn::Count && n > 0) {
      T* d = epi.D ? epi.D + i * epi.ldd : C + i * ldc;
      unary_ref<T>().forward(epi.unary, n, C + i * ldc, d);
    } else if (epi.scale) {
      T* d = epi.D ? epi.D + i * epi.ldd : C + i * ldc;
      const T* s = epi.scale + i % epi.scale_period * epi.lds;
      for (int64_t j = 0; j < n; ++j)
        d[j] = static_cast<T>(static_cast<double>(C[i * ldc + j]) * static_cast<double>(s[j]));
    }
    if (epi.row_sums) {
      double s = 0.0;
      for (int64_t p = 0; p < k; ++p) s += static_cast<double>(a_at(i, p));
      epi.row_sums[i] = static_cast<T>(s);
    }
  }
}

template <typename T>
void gemm_ref(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
              const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc) {
  gemm_ex_ref(m, n, k, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc, GemmEpilogue<T>{});
}

// The reference "packing" is a plain copy of op(B) into a (k x n) row-major array.
template <typename T>
size_t packed_b_bytes_ref(int64_t k, int64_t n) {
  return static_cast<size_t>(k > 0 && n > 0 ? k * n : 0) * sizeof(T);
}

template <typename T>
void pack_b_ref(int64_t k, int64_t n, const T* B, int64_t rsb, int64_t csb, void* packed) {
  T* out = static_cast<T*>(packed);
  for (int64_t p = 0; p < k; ++p)
    for (int64_t j = 0; j < n; ++j) out[p * n + j] = B[p * rsb + j * csb];
}

template <typename T>
void gemm_packed_b_ref(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                       int64_t csa, const void* packed_b, T beta, T* C, int64_t ldc,
                       const GemmEpilogue<T>& epi) {
  gemm_ex_ref(m, n, k, alpha, A, rsa, csa, static_cast<const T*>(packed_b), n, 1, beta, C, ldc, epi);
}

template <typename T>
void gemm_batched_ref(const GemmBatch& bt, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                      int64_t csa, const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < bt.count; ++i)
    gemm_ref(m, n, k, alpha, A + bt.a(i), rsa, csa, B + bt.b(i), rsb, csb, beta, C + bt.c(i), ldc);
}

template <typename T>
constexpr GemmKernels<T> table() {
  return {&gemm_ref<T>, &gemm_ex_ref<T>, &packed_b_bytes_ref<T>, &pack_b_ref<T>, &gemm_packed_b_ref<T>,
          &gemm_batched_ref<T>};
}

}  // namespace

const GemmKernels<float> gemm_ref_f32 = table<float>();
const GemmKernels<double> gemm_ref_f64 = table<double>();

}  // namespace portgrad::kernels
