/// @brief AVX-512 GEMM: the x86 GEMM (gemm_x86.h) on 512-bit registers, with a 12x32 (fp32) /
/// 12x16 (fp64) micro-kernel: 24 accumulators, two B vectors and a broadcast in the 32 registers,
/// twice the AVX2 tile's work per loaded element. Tails use mask registers (masked-off lanes are
/// neither read nor written, so they never fault). Epilogue activations and the backward prologue
/// run on the AVX2 unary kernels.
///
/// The tests run this file on CPUs without AVX-512 too, compiled against SIMDe's portable
/// AVX-512 (tests/test_gemm_avx512_emulated.py): keep to the intrinsics used here, which SIMDe
/// implements.
#include <immintrin.h>

#include "kernels/gemm.h"

namespace portgrad::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// Vector traits: one AVX-512 register of T.

template <typename T> struct Vec;

template <> struct Vec<float> {
  using R = __m512;
  using Mask = __mmask16;
  static constexpr int W = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float x) { return _mm512_set1_ps(x); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  // Lanes [0, count) enabled, count in [0, W].
  static Mask mask(int64_t count) { return static_cast<Mask>((1u << count) - 1u); }
  static R maskload(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void maskstore(float* p, Mask m, R v) { _mm512_mask_storeu_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  // Halves through memory: GCC 12 warns falsely on the undefined operand inside the 512-bit
  // extract and reduce intrinsics.
  static float hsum(R v) {
    alignas(64) float t[W];
    _mm512_store_ps(t, v);
    __m256 h = _mm256_add_ps(_mm256_load_ps(t), _mm256_load_ps(t + 8));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
};

template <> struct Vec<double> {
  using R = __m512d;
  using Mask = __mmask8;
  static constexpr int W = 8;
  static R zero() { return _mm512_setzero_pd(); }
  static R set1(double x) { return _mm512_set1_pd(x); }
  static R load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, R v) { _mm512_storeu_pd(p, v); }
  static Mask mask(int64_t count) { return static_cast<Mask>((1u << count) - 1u); }
  static R maskload(const double* p, Mask m) { return _mm512_maskz_loadu_pd(m, p); }
  static void maskstore(double* p, Mask m, R v) { _mm512_mask_storeu_pd(p, m, v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static double hsum(R v) {
    alignas(64) double t[W];
    _mm512_store_pd(t, v);
    __m256d h = _mm256_add_pd(_mm256_load_pd(t), _mm256_load_pd(t + 4));
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
  }
};

template <typename T> struct Tile;
template <> struct Tile<float> { static constexpr int MR = 12, NR = 32; };
template <> struct Tile<double> { static constexpr int MR = 12, NR = 16; };

}  // namespace
}  // namespace portgrad::kernels

#include "kernels/cpu/gemm_x86.h"

namespace portgrad::kernels {

const GemmKernels<float> gemm_avx512_f32 = gemm_table<float>();
const GemmKernels<double> gemm_avx512_f64 = gemm_table<double>();

}  // namespace portgrad::kernels
