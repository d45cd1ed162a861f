/// @brief Vectorised math for AVX2+FMA (exp, expm1, log, log1p, erf/erfc, sin/cos) on __m256
/// (fp32) and __m256d (fp64), plus thin overloads so that one template serves both widths.
///
/// Include ONLY from *_avx2.cc files: everything here is `static inline`, so no AVX2 copy of a
/// function can be picked by the linker for code that runs without AVX2 (STYLE.md 4).
/// Accuracy (measured by the kernel tests against float64): fp32 functions within a few ulp over
/// the whole range, fp64 exp/log within a few ulp. Special values follow IEEE: exp(-inf) = 0,
/// exp(large) = inf, log(0) = -inf, log(x<0) = NaN, NaN propagates.
#pragma once
#include <immintrin.h>

// __m256 / __m256d as template arguments lose their alignment attribute, which is harmless here
// (they are only used as value types of inline functions, never in containers).
#pragma GCC diagnostic ignored "-Wignored-attributes"

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace portgrad::kernels {
namespace {

// ---- width traits: loads, stores and tail masks -------------------------------------------------
template <typename V> struct VT;
template <> struct VT<__m256> {
  using S = float;
  static constexpr int W = 8;
  static inline __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
  static inline __m256i mask(int64_t rem) {  // lanes < rem set
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline __m256 mload(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  static inline void mstore(float* p, __m256i m, __m256 v) { _mm256_maskstore_ps(p, m, v); }
  static inline __m256 set(double v) { return _mm256_set1_ps(static_cast<float>(v)); }
  static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
template <> struct VT<__m256d> {
  using S = double;
  static constexpr int W = 4;
  static inline __m256d load(const double* p) { return _mm256_loadu_pd(p); }
  static inline void store(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
  static inline __m256i mask(int64_t rem) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(rem), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static inline __m256d mload(const double* p, __m256i m) { return _mm256_maskload_pd(p, m); }
  static inline void mstore(double* p, __m256i m, __m256d v) { _mm256_maskstore_pd(p, m, v); }
  static inline __m256d set(double v) { return _mm256_set1_pd(v); }
  static inline double hsum(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static inline double hmax(__m256d v) {
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

// ---- arithmetic overloads ------------------------------------------------------------------------
static inline __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
static inline __m256d add(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
static inline __m256 sub(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
static inline __m256d sub(__m256d a, __m256d b) { return _mm256_sub_pd(a, b); }
static inline __m256 mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
static inline __m256d mul(__m256d a, __m256d b) { return _mm256_mul_pd(a, b); }
static inline __m256 div(__m256 a, __m256 b) { return _mm256_div_ps(a, b); }
static inline __m256d div(__m256d a, __m256d b) { return _mm256_div_pd(a, b); }
static inline __m256 fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }     // a*b+c
static inline __m256d fma(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
static inline __m256 fnma(__m256 a, __m256 b, __m256 c) { return _mm256_fnmadd_ps(a, b, c); }   // c-a*b
static inline __m256d fnma(__m256d a, __m256d b, __m256d c) { return _mm256_fnmadd_pd(a, b, c); }
static inline __m256 fms(__m256 a, __m256 b, __m256 c) { return _mm256_fmsub_ps(a, b, c); }     // a*b-c
static inline __m256d fms(__m256d a, __m256d b, __m256d c) { return _mm256_fmsub_pd(a, b, c); }
// min/max return the second operand when either is NaN: put the variable second to keep NaN.
static inline __m256 vmin(__m256 a, __m256 b) { return _mm256_min_ps(a, b); }
static inline __m256d vmin(__m256d a, __m256d b) { return _mm256_min_pd(a, b); }
static inline __m256 vmax(__m256 a, __m256 b) { return _mm256_max_ps(a, b); }
static inline __m256d vmax(__m256d a, __m256d b) { return _mm256_max_pd(a, b); }
static inline __m256 vand(__m256 a, __m256 b) { return _mm256_and_ps(a, b); }
static inline __m256d vand(__m256d a, __m256d b) { return _mm256_and_pd(a, b); }
static inline __m256 vor(__m256 a, __m256 b) { return _mm256_or_ps(a, b); }
static inline __m256d vor(__m256d a, __m256d b) { return _mm256_or_pd(a, b); }
static inline __m256 vxor(__m256 a, __m256 b) { return _mm256_xor_ps(a, b); }
static inline __m256d vxor(__m256d a, __m256d b) { return _mm256_xor_pd(a, b); }
static inline __m256 vandnot(__m256 a, __m256 b) { return _mm256_andnot_ps(a, b); }  // ~a & b
static inline __m256d vandnot(__m256d a, __m256d b) { return _mm256_andnot_pd(a, b); }
static inline __m256 vsqrt(__m256 a) { return _mm256_sqrt_ps(a); }
static inline __m256d vsqrt(__m256d a) { return _mm256_sqrt_pd(a); }
static inline __m256 vround(__m256 a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline __m256d vround(__m256d a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// blend(a, b, m): m ? b : a, lane by lane.
static inline __m256 blend(__m256 a, __m256 b, __m256 m) { return _mm256_blendv_ps(a, b, m); }
static inline __m256d blend(__m256d a, __m256d b, __m256d m) { return _mm256_blendv_pd(a, b, m); }
template <int P> static inline __m256 cmp(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, P); }
template <int P> static inline __m256d cmp(__m256d a, __m256d b) { return _mm256_cmp_pd(a, b, P); }
template <typename V> static inline V lt(V a, V b) { return cmp<_CMP_LT_OQ>(a, b); }
template <typename V> static inline V le(V a, V b) { return cmp<_CMP_LE_OQ>(a, b); }
template <typename V> static inline V gt(V a, V b) { return cmp<_CMP_GT_OQ>(a, b); }
template <typename V> static inline V ge(V a, V b) { return cmp<_CMP_GE_OQ>(a, b); }
template <typename V> static inline V eq(V a, V b) { return cmp<_CMP_EQ_OQ>(a, b); }
template <typename V> static inline V C(double v) { return VT<V>::set(v); }
template <typename V> static inline V vabs(V x) { return vandnot(C<V>(-0.0), x); }
template <typename V> static inline V signbit(V x) { return vand(C<V>(-0.0), x); }
// An integer lane mask as a float mask of the width's type.
template <typename V> static inline V as_mask(__m256i m);
template <> inline __m256 as_mask<__m256>(__m256i m) { return _mm256_castsi256_ps(m); }
template <> inline __m256d as_mask<__m256d>(__m256i m) { return _mm256_castsi256_pd(m); }
static inline bool any(__m256 m) { return _mm256_movemask_ps(m) != 0; }
static inline bool any(__m256d m) { return _mm256_movemask_pd(m) != 0; }

// Horner's rule with FMA: c[0] + x (c[1] + x (c[2] + ...)).
template <typename V, int N>
static inline V horner(V x, const double (&c)[N]) {
  V p = C<V>(c[N - 1]);
  for (int i = N - 2; i >= 0; --i) p = fma(p, x, C<V>(c[i]));
  return p;
}

// 2^n for integral-valued n (as floating point) in the exponent range, built in the exponent bits.
static inline __m256 pow2i(__m256 n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
static inline __m256d pow2i(__m256d n) {
  const __m256i k = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023));
  return _mm256_castsi256_pd(_mm256_slli_epi64(k, 52));
}
// p * 2^n in two steps, so that results overflow to inf and underflow through the denormals
// with a single rounding.
template <typename V>
static inline V ldexp2(V p, V n) {
  const V n1 = vround(mul(n, C<V>(0.5)));
  const V n2 = sub(n, n1);
  return mul(mul(p, pow2i(n1)), pow2i(n2));
}

// ---- exp -----------------------------------------------------------------------------------------
// exp(x) = 2^n exp(r), n = round(x / ln2), |r| <= ln2/2; exp(r) by its Taylor series
// (degree 7 in fp32: truncation 4e-9; degree 13 in fp64: 2e-18).
// s * exp(x), scaled last so that it overflows only when the product does.
static inline __m256 vexp_mul(__m256 x, __m256 s) {
  x = vmin(C<__m256>(176.0), vmax(C<__m256>(-104.0), x));  // keeps 2^(n/2) normal; NaN stays NaN
  const __m256 n = vround(mul(x, C<__m256>(1.44269504088896341)));
  __m256 r = fnma(n, C<__m256>(0.693359375), x);              // exact: few bits in the constant
  r = fnma(n, C<__m256>(-2.12194440e-4), r);
  static const double c[] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040};
  return ldexp2(mul(s, horner(r, c)), n);
}
static inline __m256d vexp_mul(__m256d x, __m256d s) {
  x = vmin(C<__m256d>(1400.0), vmax(C<__m256d>(-746.0), x));
  const __m256d n = vround(mul(x, C<__m256d>(1.44269504088896341)));
  __m256d r = fnma(n, C<__m256d>(6.93147180369123816490e-01), x);  // 32-bit head: exact product
  r = fnma(n, C<__m256d>(1.90821492927058770002e-10), r);
  static const double c[] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                             1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600,
                             1.0 / 6227020800.0};
  return ldexp2(mul(s, horner(r, c)), n);
}
static inline __m256 vexp(__m256 x) { return vexp_mul(x, C<__m256>(1.0)); }
static inline __m256d vexp(__m256d x) { return vexp_mul(x, C<__m256d>(1.0)); }

// exp(x) - 1 without cancellation near 0: Taylor series for |x| < 0.5, exp(x) - 1 beyond.
static inline __m256 vexpm1(__m256 x) {
  static const double c[] = {1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
                             1.0 / 362880};
  const __m256 small = mul(x, horner(x, c));
  const __m256 big = sub(vexp(x), C<__m256>(1.0));
  return blend(big, small, lt(vabs(x), C<__m256>(0.5)));
}
static inline __m256d vexpm1(__m256d x) {
  static const double c[] = {1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
                             1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0,
                             1.0 / 87178291200.0, 1.0 / 1307674368000.0, 1.0 / 20922789888000.0};
  const __m256d small = mul(x, horner(x, c));
  const __m256d big = sub(vexp(x), C<__m256d>(1.0));
  return blend(big, small, lt(vabs(x), C<__m256d>(0.5)));
}

// ---- log -----------------------------------------------------------------------------------------
// x = 2^e m, m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact); log(1+f) = f - (h - s (h + R)) with
// s = f/(2+f), h = f^2/2, R = 2 atanh(s)/s - 2 as a series in s^2 (fdlibm's arrangement).
static inline __m256 vlog_core(__m256 x, __m256* e_out) {
  const __m256 tiny = lt(x, C<__m256>(1.17549435e-38));  // denormals: scale up by 2^23 first
  x = blend(x, mul(x, C<__m256>(8388608.0)), tiny);
  const __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
  e = sub(e, vand(tiny, C<__m256>(23.0)));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                                 _mm256_set1_epi32(0x3f800000)));
  const __m256 big = gt(m, C<__m256>(1.41421356237309505));
  m = blend(m, mul(m, C<__m256>(0.5)), big);
  e = add(e, vand(big, C<__m256>(1.0)));
  *e_out = e;
  return sub(m, C<__m256>(1.0));
}
static inline __m256d vlog_core(__m256d x, __m256d* e_out) {
  const __m256d tiny = lt(x, C<__m256d>(2.2250738585072014e-308));
  x = blend(x, mul(x, C<__m256d>(4503599627370496.0)), tiny);  // 2^52
  const __m256i bits = _mm256_castpd_si256(x);
  // exponent: the high 32 bits of each lane, shifted; gather them into 4 int32 and convert.
  const __m256i hi = _mm256_srli_epi64(bits, 52);
  const __m128i e32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(hi, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0)));
  __m256d e = sub(_mm256_cvtepi32_pd(e32), C<__m256d>(1023.0));
  e = sub(e, vand(tiny, C<__m256d>(52.0)));
  __m256d m = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000fffffffffffffLL)),
                                                  _mm256_set1_epi64x(0x3ff0000000000000LL)));
  const __m256d big = gt(m, C<__m256d>(1.41421356237309505));
  m = blend(m, mul(m, C<__m256d>(0.5)), big);
  e = add(e, vand(big, C<__m256d>(1.0)));
  *e_out = e;
  return sub(m, C<__m256d>(1.0));
}
template <typename V, int N>
static inline V vlog_impl(V x, const double (&rc)[N]) {
  V e;
  const V f = vlog_core(x, &e);
  const V s = div(f, add(C<V>(2.0), f));
  const V z = mul(s, s);
  const V R = mul(z, horner(z, rc));
  const V h = mul(C<V>(0.5), mul(f, f));
  V r = sub(f, fnma(s, add(h, R), h));                 // f - (h - s (h + R))
  r = fma(e, C<V>(1.90821492927058770002e-10), r);     // + e ln2_lo
  r = fma(e, C<V>(6.93147180369123816490e-01), r);     // + e ln2_hi
  // x <= 0, NaN and +inf: -inf at +-0, NaN below 0 and for NaN, +inf at +inf.
  V sp = blend(blend(C<V>(NAN), C<V>(-INFINITY), eq(x, C<V>(0.0))), C<V>(INFINITY), eq(x, C<V>(INFINITY)));
  sp = blend(sp, x, cmp<_CMP_UNORD_Q>(x, x));
  return blend(r, sp, vor(cmp<_CMP_NGT_UQ>(x, C<V>(0.0)), eq(x, C<V>(INFINITY))));
}
static inline __m256 vlog(__m256 x) {
  static const double rc[] = {2.0 / 3, 2.0 / 5, 2.0 / 7, 2.0 / 9, 2.0 / 11};
  return vlog_impl(x, rc);
}
static inline __m256d vlog(__m256d x) {
  static const double rc[] = {2.0 / 3, 2.0 / 5, 2.0 / 7, 2.0 / 9, 2.0 / 11, 2.0 / 13, 2.0 / 15, 2.0 / 17,
                              2.0 / 19, 2.0 / 21, 2.0 / 23};
  return vlog_impl(x, rc);
}
// log(1+u) for u >= -1 (Kahan's trick): log(w) * u / (w - 1) with w = 1 + u, or u where w == 1.
template <typename V>
static inline V vlog1p(V u) {
  const V w = add(C<V>(1.0), u);
  const V wm1 = sub(w, C<V>(1.0));
  const V r = mul(vlog(w), div(u, wm1));
  return blend(r, u, eq(wm1, C<V>(0.0)));
}

// ---- erf / erfc (fp32) ---------------------------------------------------------------------------
// erf(x) = x P(x^2) for |x| < 1 (fitted, 6e-8 relative); erfc(z) = exp(-z^2) Q(1/(1+z/2)) for
// z >= 0.75 (fitted on [0.5, 10], 1.2e-8 relative), with z^2 passed as an exact hi + lo pair so
// that the rounding of z^2 is not amplified by the exponential.
static inline __m256 erf_small(__m256 x) {
  static const double c[] = {1.128379107e+00, -3.761233687e-01, 1.128024980e-01, -2.671299316e-02,
                             4.919287749e-03, -5.637869472e-04};
  return mul(x, horner(mul(x, x), c));
}
static inline __m256 erfc_big(__m256 z, __m256 z2hi, __m256 z2lo) {
  static const double c[] = {3.122132284e-06, 2.819980085e-01, 2.834068835e-01,  2.366033345e-01,
                             2.269535959e-01, -8.157663792e-02, 3.507313430e-01, -5.337027907e-01,
                             2.830640376e-01, -3.980949149e-02, -7.686269004e-03};
  const __m256 t = div(C<__m256>(1.0), fma(z, C<__m256>(0.5), C<__m256>(1.0)));
  const __m256 e = vexp(sub(C<__m256>(0.0), z2hi));
  return mul(fnma(e, z2lo, e), horner(t, c));  // exp(-hi - lo) ~ exp(-hi) (1 - lo)
}
// erfc(z) for z >= 0 (z may be +inf or NaN), z^2 = hi + lo.
static inline __m256 verfc_pos(__m256 z, __m256 z2hi, __m256 z2lo) {
  const __m256 small = sub(C<__m256>(1.0), erf_small(z));
  return blend(erfc_big(z, z2hi, z2lo), small, lt(z, C<__m256>(0.75)));
}
static inline __m256 verf(__m256 x) {
  const __m256 ax = vmin(C<__m256>(10.0), vabs(x));  // erf = 1 beyond; NaN kept
  const __m256 hi = mul(ax, ax), lo = fms(ax, ax, hi);
  const __m256 big = sub(C<__m256>(1.0), erfc_big(ax, hi, lo));
  const __m256 r = blend(vor(big, signbit(x)), erf_small(x), lt(ax, C<__m256>(1.0)));
  return r;
}

// ---- sin / cos (fp32) ----------------------------------------------------------------------------
// Cody-Waite reduction by pi/2 with a three-part constant (exact head), valid for |x| <= 1e4;
// lanes beyond (or inf/NaN) are recomputed with std::sin / std::cos.
static inline __m256 vsincos(__m256 x, bool cosine) {
  const __m256 ax = vabs(x);
  const __m256 j = vround(mul(ax, C<__m256>(0.63661977236758134)));
  __m256 r = fnma(j, C<__m256>(1.5703125), ax);
  r = fnma(j, C<__m256>(4.837512969970703125e-4), r);
  r = fnma(j, C<__m256>(7.54978995489188216e-8), r);
  __m256i q = _mm256_cvtps_epi32(j);
  if (cosine) q = _mm256_add_epi32(q, _mm256_set1_epi32(1));
  const __m256 z = mul(r, r);
  static const double sc[] = {-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4};
  static const double cc[] = {4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5};
  const __m256 s = fma(mul(z, r), horner(z, sc), r);
  const __m256 c = fma(mul(z, z), horner(z, cc), fnma(C<__m256>(0.5), z, C<__m256>(1.0)));
  const __m256 use_cos = _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_slli_epi32(q, 31), 31));
  __m256 res = blend(s, c, use_cos);
  __m256 neg = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(q, 1), 31));  // bit 1 -> sign
  if (!cosine) neg = vxor(neg, signbit(x));
  res = vxor(res, neg);
  const __m256 far = cmp<_CMP_NLE_UQ>(ax, C<__m256>(1e4));
  if (any(far)) {
    alignas(32) float xs[8], rs[8];
    _mm256_store_ps(xs, x);
    _mm256_store_ps(rs, res);
    const int m = _mm256_movemask_ps(far);
    for (int i = 0; i < 8; ++i)
      if (m & (1 << i)) rs[i] = cosine ? std::cos(xs[i]) : std::sin(xs[i]);
    res = _mm256_load_ps(rs);
  }
  return res;
}

// ---- sigmoid, tanh ---------------------------------------------------------------------------------
// sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e), e = exp(-|x|): no overflow, no cancellation.
template <typename V> static inline V sigmoid(V x) {
  const V e = vexp(sub(C<V>(0.0), vabs(x)));
  return div(blend(C<V>(1.0), e, lt(x, C<V>(0.0))), add(C<V>(1.0), e));
}
// tanh(x) = sign(x) em / (em + 2), em = expm1(2|x|).
template <typename V> static inline V vtanh(V x) {
  const double cap = std::is_same_v<V, __m256> ? 10.0 : 20.0;  // tanh rounds to 1 beyond
  const V ax = vmin(C<V>(cap), vabs(x));
  const V em = vexpm1(add(ax, ax));
  return vor(div(em, add(em, C<V>(2.0))), signbit(x));
}

// ---- fast float sigmoid and tanh (the unary kernels' forward, the recurrent cells) -------------
// exp(x) for x <= 0 with 2^n as one exponent-bit scaling (the result stays normal): 0 below -87,
// where the true value is below 1.6e-38 (subnormal: an absolute difference of at most 1.6e-38).
// About half the work of vexp. NaN stays NaN.
static inline __m256 vexp_nonpositive(__m256 x) {
  const __m256 below = lt(x, C<__m256>(-87.0));
  x = vmax(C<__m256>(-87.0), x);  // (max returns its second operand for NaN)
  const __m256 n = vround(mul(x, C<__m256>(1.44269504088896341)));
  __m256 r = fnma(n, C<__m256>(0.693359375), x);
  r = fnma(n, C<__m256>(-2.12194440e-4), r);
  static const double c[] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040};
  return vandnot(below, mul(horner(r, c), pow2i(n)));
}
// a / b for b in [1, 2] (1 + e): the reciprocal estimate (12 bits) and two corrections of the
// quotient by its exact residual (FMA): within an ulp, and exact where the quotient is (1, 1/2),
// at a fraction of a division's cost (several of those per element bound the LSTM cell).
static inline __m256 div_1_2(__m256 a, __m256 b) {
  const __m256 r = _mm256_rcp_ps(b);
  __m256 q = mul(a, r);
  q = fma(fnma(b, q, a), r, q);
  return fma(fnma(b, q, a), r, q);
}
// sigmoid as above, with that exp (0 below -87: absolute 1.6e-38).
static inline __m256 sigmoid_fast(__m256 x) {
  const __m256 e = vexp_nonpositive(sub(C<__m256>(0.0), vabs(x)));
  return div_1_2(blend(C<__m256>(1.0), e, lt(x, C<__m256>(0.0))), add(C<__m256>(1.0), e));
}
// tanh: (1 - e) / (1 + e), e = exp(-2|x|), for |x| >= 1/4 (1 - e >= 0.39: no cancellation worth an
// ulp); below, its Taylor series to x^11 (truncation < 3e-10 relative). Within 3 ulp.
static inline __m256 tanh_fast(__m256 x) {
  const __m256 ax = vabs(x);
  const __m256 e = vexp_nonpositive(mul(C<__m256>(-2.0), ax));
  const __m256 big = vor(div_1_2(sub(C<__m256>(1.0), e), add(C<__m256>(1.0), e)), signbit(x));
  const __m256 x2 = mul(x, x);
  static const double c[] = {-1.0 / 3, 2.0 / 15, -17.0 / 315, 62.0 / 2835, -1382.0 / 155925};
  const __m256 small = vor(fma(mul(x, x2), horner(x2, c), x), signbit(x));  // (tanh(-0) = -0)
  return blend(big, small, lt(ax, C<__m256>(0.25)));
}
// float64 keeps the accurate functions.
static inline __m256d sigmoid_fast(__m256d x) { return sigmoid(x); }
static inline __m256d tanh_fast(__m256d x) { return vtanh(x); }

}  // namespace
}  // namespace portgrad::kernels
