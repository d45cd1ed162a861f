/// @brief AVX2+FMA GEMM: the x86 GEMM (gemm_x86.h) on 256-bit registers, with a 6x16 (fp32) /
/// 6x8 (fp64) micro-kernel: 12 accumulators, two B vectors and a broadcast fill the 16 registers.
#include <immintrin.h>

#include "kernels/gemm.h"

namespace portgrad::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// Vector traits: one AVX2 register of T.

template <typename T> struct Vec;

template <> struct Vec<float> {
  using R = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  // Lanes [0, count) enabled, count in [0, W].
  static Mask mask(int64_t count) {
    static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + W - count));
  }
  static R maskload(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void maskstore(float* p, Mask m, R v) { _mm256_maskstore_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
};

template <> struct Vec<double> {
  using R = __m256d;
  using Mask = __m256i;
  static constexpr int W = 4;
  static R zero() { return _mm256_setzero_pd(); }
  static R set1(double x) { return _mm256_set1_pd(x); }
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, R v) { _mm256_storeu_pd(p, v); }
  static Mask mask(int64_t count) {
    static const int64_t table[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + W - count));
  }
  static R maskload(const double* p, Mask m) { return _mm256_maskload_pd(p, m); }
  static void maskstore(double* p, Mask m, R v) { _mm256_maskstore_pd(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static double hsum(R v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
  }
};

template <typename T> struct Tile;
template <> struct Tile<float> { static constexpr int MR = 6, NR = 16; };
template <> struct Tile<double> { static constexpr int MR = 6, NR = 8; };

}  // namespace
}  // namespace portgrad::kernels

#include "kernels/cpu/gemm_x86.h"

namespace portgrad::kernels {

const GemmKernels<float> gemm_avx2_f32 = gemm_table<float>();
const GemmKernels<double> gemm_avx2_f64 = gemm_table<double>();

}  // namespace portgrad::kernels
