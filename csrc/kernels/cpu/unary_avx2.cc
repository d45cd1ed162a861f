/// @brief AVX2+FMA elementwise kernels: every function vectorised in fp32; in fp64 all but GELU,
/// Erf, Sin and Cos, which call the reference (scalar <cmath>). Tails use masked loads/stores,
/// so the last partial vector runs the same math as the others. Long arrays are shared out to the
/// GEMM's threads in fixed blocks (each element's math is its own: the same bits on any count).
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "kernels/cpu/threadpool.h"
#include "kernels/cpu/vecmath_avx2.h"
#include "kernels/gemm.h"
#include "kernels/unary.h"

namespace portgrad::kernels {
namespace {

constexpr double kSeluL = 1.0507009873554805;
constexpr double kSeluA = 1.6732632423543772;

template <typename V, typename F>
inline void map1(int64_t n, const typename VT<V>::S* x, typename VT<V>::S* y, F f) {
  constexpr int W = VT<V>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) VT<V>::store(y + i, f(VT<V>::load(x + i)));
  if (i < n) {
    const __m256i m = VT<V>::mask(n - i);
    VT<V>::mstore(y + i, m, f(VT<V>::mload(x + i, m)));
  }
}

// dx = g(x, y, dy)
template <typename V, typename G>
inline void map3(int64_t n, const typename VT<V>::S* x, const typename VT<V>::S* y,
                 const typename VT<V>::S* dy, typename VT<V>::S* dx, G g) {
  constexpr int W = VT<V>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) VT<V>::store(dx + i, g(VT<V>::load(x + i), VT<V>::load(y + i), VT<V>::load(dy + i)));
  if (i < n) {
    const __m256i m = VT<V>::mask(n - i);
    VT<V>::mstore(dx + i, m, g(VT<V>::mload(x + i, m), VT<V>::mload(y + i, m), VT<V>::mload(dy + i, m)));
  }
}
// dx = dy * d(x, y)
template <typename V, typename D>
inline void map_bwd(int64_t n, const typename VT<V>::S* x, const typename VT<V>::S* y,
                    const typename VT<V>::S* dy, typename VT<V>::S* dx, D d) {
  map3<V>(n, x, y, dy, dx, [d](V v, V w, V g) { return mul(g, d(v, w)); });
}

// sigmoid'(x) = e / (1 + e)^2
template <typename V> inline V sigmoid_deriv(V x) {
  const V e = vexp(sub(C<V>(0.0), vabs(x)));
  const V d = add(C<V>(1.0), e);
  return div(e, mul(d, d));
}
template <typename V> inline V is_neg_inf(V x) { return eq(x, C<V>(-INFINITY)); }

// Mish: t = tanh(softplus(x)) = n / (n + 2), n = e (e + 2), e = exp(xc) with x clamped to where t
// is not yet 1 (and above where e underflows, so that xc * 0 stays 0).
template <typename V> inline V mish_xc(V x) {
  const double cap = std::is_same_v<V, __m256> ? 20.0 : 40.0;
  return vmin(C<V>(cap), vmax(C<V>(-800.0), x));
}

template <typename V>
void forward(UnaryFn f, int64_t n, const typename VT<V>::S* x, typename VT<V>::S* y) {
  if constexpr (std::is_same_v<V, __m256d>) {
    if (f == UnaryFn::GELU || f == UnaryFn::Erf || f == UnaryFn::Sin || f == UnaryFn::Cos)
      return unary_ref_f64.forward(f, n, x, y);
  }
  switch (f) {
    case UnaryFn::Ramp: return map1<V>(n, x, y, [](V v) { return vmax(C<V>(0.0), v); });
    case UnaryFn::LogisticSigmoid: return map1<V>(n, x, y, [](V v) { return sigmoid_fast(v); });
    case UnaryFn::Tanh: return map1<V>(n, x, y, [](V v) { return tanh_fast(v); });
    case UnaryFn::SoftPlus:
      return map1<V>(n, x, y, [](V v) {
        return add(vmax(C<V>(0.0), v), vlog1p(vexp(sub(C<V>(0.0), vabs(v)))));
      });
    case UnaryFn::ELU:
      return map1<V>(n, x, y, [](V v) { return blend(vexpm1(v), v, ge(v, C<V>(0.0))); });
    case UnaryFn::SELU:
      return map1<V>(n, x, y, [](V v) {
        return mul(C<V>(kSeluL), blend(mul(C<V>(kSeluA), vexpm1(v)), v, ge(v, C<V>(0.0))));
      });
    case UnaryFn::GELU:
      if constexpr (std::is_same_v<V, __m256>) {
        return map1<V>(n, x, y, [](V v) {
          // Phi(x) = erfc(-x/sqrt2)/2 from erfc(|x|/sqrt2), with (x/sqrt2)^2 = x^2/2 exact (hi+lo).
          const V xc = vmin(C<V>(15.0), vmax(C<V>(-15.0), v));
          const V h = mul(xc, xc), l = fms(xc, xc, h);
          const V e = mul(C<V>(0.5), verfc_pos(mul(vabs(xc), C<V>(0.70710678118654752)), mul(C<V>(0.5), h),
                                               mul(C<V>(0.5), l)));
          const V phi = blend(sub(C<V>(1.0), e), e, lt(xc, C<V>(0.0)));
          return blend(mul(v, phi), C<V>(0.0), is_neg_inf(v));
        });
      }
      break;
    case UnaryFn::Swish:
      return map1<V>(n, x, y, [](V v) { return blend(mul(v, sigmoid(v)), C<V>(0.0), is_neg_inf(v)); });
    case UnaryFn::Mish:
      return map1<V>(n, x, y, [](V v) {
        const V e = vexp(mish_xc(v));
        const V nn = mul(e, add(e, C<V>(2.0)));
        return blend(mul(v, div(nn, add(nn, C<V>(2.0)))), C<V>(0.0), is_neg_inf(v));
      });
    case UnaryFn::SoftSign:
      return map1<V>(n, x, y, [](V v) {
        const V r = div(v, add(C<V>(1.0), vabs(v)));
        return blend(r, vor(C<V>(1.0), signbit(v)), eq(vabs(v), C<V>(INFINITY)));
      });
    case UnaryFn::HardTanh: return map1<V>(n, x, y, [](V v) { return vmin(C<V>(1.0), vmax(C<V>(-1.0), v)); });
    case UnaryFn::HardSigmoid:
      return map1<V>(n, x, y, [](V v) { return vmin(C<V>(1.0), vmax(C<V>(0.0), fma(v, C<V>(0.5), C<V>(0.5)))); });
    case UnaryFn::HardSwish:
      return map1<V>(n, x, y, [](V v) {
        const V r = div(mul(v, add(v, C<V>(3.0))), C<V>(6.0));
        return blend(blend(r, C<V>(0.0), le(v, C<V>(-3.0))), v, ge(v, C<V>(3.0)));
      });
    case UnaryFn::Sin:
      if constexpr (std::is_same_v<V, __m256>) return map1<V>(n, x, y, [](V v) { return vsincos(v, false); });
      break;
    case UnaryFn::Cos:
      if constexpr (std::is_same_v<V, __m256>) return map1<V>(n, x, y, [](V v) { return vsincos(v, true); });
      break;
    case UnaryFn::Exp: return map1<V>(n, x, y, [](V v) { return vexp(v); });
    case UnaryFn::Log: return map1<V>(n, x, y, [](V v) { return vlog(v); });
    case UnaryFn::Sqrt: return map1<V>(n, x, y, [](V v) { return vsqrt(v); });
    case UnaryFn::Abs: return map1<V>(n, x, y, [](V v) { return vabs(v); });
    case UnaryFn::Erf:
      if constexpr (std::is_same_v<V, __m256>) return map1<V>(n, x, y, [](V v) { return verf(v); });
      break;
    case UnaryFn::Square: return map1<V>(n, x, y, [](V v) { return mul(v, v); });
    case UnaryFn::Count: break;
  }
}

template <typename V>
void backward(UnaryFn f, int64_t n, const typename VT<V>::S* x, const typename VT<V>::S* y,
              const typename VT<V>::S* dy, typename VT<V>::S* dx) {
  if constexpr (std::is_same_v<V, __m256d>) {
    if (f == UnaryFn::GELU || f == UnaryFn::Erf || f == UnaryFn::Sin || f == UnaryFn::Cos)
      return unary_ref_f64.backward(f, n, x, y, dy, dx);
  }
  const V one = C<V>(1.0), zero = C<V>(0.0);
  switch (f) {
    case UnaryFn::Ramp: return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) { return vand(gt(v, zero), one); });
    case UnaryFn::LogisticSigmoid: return map_bwd<V>(n, x, y, dy, dx, [](V v, V) { return sigmoid_deriv(v); });
    case UnaryFn::Tanh:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {  // 4e / (1+e)^2, e = exp(-2|x|)
        const V e = vexp(sub(zero, add(vabs(v), vabs(v))));
        const V d = add(one, e);
        return div(mul(C<V>(4.0), e), mul(d, d));
      });
    case UnaryFn::SoftPlus: return map_bwd<V>(n, x, y, dy, dx, [](V v, V) { return sigmoid(v); });
    case UnaryFn::ELU:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) { return blend(vexp(v), one, ge(v, zero)); });
    case UnaryFn::SELU:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {
        return blend(mul(C<V>(kSeluL * kSeluA), vexp(v)), C<V>(kSeluL), ge(v, zero));
      });
    case UnaryFn::GELU:
      if constexpr (std::is_same_v<V, __m256>) {
        return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {  // Phi(x) + x phi(x)
          const V xc = vmin(C<V>(15.0), vmax(C<V>(-15.0), v));
          const V h = mul(mul(C<V>(0.5), xc), xc), l = fms(mul(C<V>(0.5), xc), xc, h);
          const V e = mul(C<V>(0.5), verfc_pos(mul(vabs(xc), C<V>(0.70710678118654752)), h, l));
          const V Phi = blend(sub(one, e), e, lt(xc, zero));
          const V g = vexp(sub(zero, h));
          const V phi = mul(C<V>(0.39894228040143267794), fnma(g, l, g));
          return fma(xc, phi, Phi);
        });
      }
      break;
    case UnaryFn::Swish:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {  // s + x e/(1+e)^2
        const V xc = vmin(C<V>(800.0), vmax(C<V>(-800.0), v));
        return fma(xc, sigmoid_deriv(xc), sigmoid(xc));
      });
    case UnaryFn::Mish:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {  // t + x sigmoid(x) 4(n+1)/(n+2)^2
        const V xc = mish_xc(v);
        const V e = vexp(xc);
        const V nn = mul(e, add(e, C<V>(2.0)));
        const V n2 = add(nn, C<V>(2.0));
        const V t = div(nn, n2);
        const V s = div(e, add(one, e));
        const V omt2 = div(mul(C<V>(4.0), add(nn, one)), mul(n2, n2));
        return fma(mul(xc, s), omt2, t);
      });
    case UnaryFn::SoftSign:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {
        const V d = add(one, vabs(v));
        return div(one, mul(d, d));
      });
    case UnaryFn::HardTanh:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) { return vand(vand(gt(v, C<V>(-1.0)), lt(v, one)), one); });
    case UnaryFn::HardSigmoid:
      return map_bwd<V>(n, x, y, dy, dx,
                        [=](V v, V) { return vand(vand(gt(v, C<V>(-1.0)), lt(v, one)), C<V>(0.5)); });
    case UnaryFn::HardSwish:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {
        const V d = div(fma(v, C<V>(2.0), C<V>(3.0)), C<V>(6.0));
        return blend(blend(d, zero, le(v, C<V>(-3.0))), one, ge(v, C<V>(3.0)));
      });
    case UnaryFn::Sin:
      if constexpr (std::is_same_v<V, __m256>) return map_bwd<V>(n, x, y, dy, dx, [](V v, V) { return vsincos(v, true); });
      break;
    case UnaryFn::Cos:
      if constexpr (std::is_same_v<V, __m256>)
        return map_bwd<V>(n, x, y, dy, dx, [](V v, V) { return vxor(C<V>(-0.0), vsincos(v, false)); });
      break;
    case UnaryFn::Exp:  // dy * exp(x), scaled last so that it overflows only when the product does
      return map3<V>(n, x, y, dy, dx, [](V v, V, V g) { return vexp_mul(v, g); });
    case UnaryFn::Log:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) { return blend(div(one, v), C<V>(NAN), lt(v, zero)); });
    case UnaryFn::Sqrt: return map_bwd<V>(n, x, y, dy, dx, [](V v, V) { return div(C<V>(0.5), vsqrt(v)); });
    case UnaryFn::Abs:
      return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {
        return vor(vand(gt(v, zero), one), vand(lt(v, zero), C<V>(-1.0)));
      });
    case UnaryFn::Erf:
      if constexpr (std::is_same_v<V, __m256>) {
        return map_bwd<V>(n, x, y, dy, dx, [=](V v, V) {  // 2/sqrt(pi) exp(-x^2), x^2 as hi + lo
          const V ax = vmin(C<V>(11.0), vabs(v));  // exp(-121) is 0 in fp32
          const V h = mul(ax, ax), l = fms(ax, ax, h);
          const V g = vexp(sub(zero, h));
          return mul(C<V>(1.12837916709551257390), fnma(g, l, g));
        });
      }
      break;
    case UnaryFn::Square: return map_bwd<V>(n, x, y, dy, dx, [](V v, V) { return add(v, v); });
    case UnaryFn::Count: break;
  }
}

// Second derivatives, out = a b f''(x), in double and rounded once as the reference computes them.
// In float, for the functions whose f'' is a polynomial in y = f(x) or a constant, four elements at
// a time with the reference's operations in its order: a product of two floats is exact in double
// and no sum here can take a fused multiply-add, so the bits are the reference's. Other functions,
// the tail, and float64 (where the products round) call the reference.
template <typename D>
void second_f32(UnaryFn f, int64_t n, const float* x, const float* y, const float* a, const float* b, float* out,
                D d) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d ab = _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i)), _mm256_cvtps_pd(_mm_loadu_ps(b + i)));
    _mm_storeu_ps(out + i, _mm256_cvtpd_ps(_mm256_mul_pd(ab, d(_mm256_cvtps_pd(_mm_loadu_ps(y + i))))));
  }
  if (i < n) unary_ref_f32.second(f, n - i, x + i, y + i, a + i, b + i, out + i);
}

template <typename T>
void second(UnaryFn f, int64_t n, const T* x, const T* y, const T* a, const T* b, T* out) {
  if constexpr (std::is_same_v<T, float>) {
    const __m256d one = _mm256_set1_pd(1.0), two = _mm256_set1_pd(2.0), zero = _mm256_setzero_pd();
    switch (f) {
      case UnaryFn::Tanh:  // -2 t (1 - t^2)
        return second_f32(f, n, x, y, a, b, out, [=](__m256d t) {
          return _mm256_mul_pd(_mm256_mul_pd(_mm256_set1_pd(-2.0), t), _mm256_sub_pd(one, _mm256_mul_pd(t, t)));
        });
      case UnaryFn::LogisticSigmoid:  // s (1 - s) (1 - 2 s)
        return second_f32(f, n, x, y, a, b, out, [=](__m256d s) {
          return _mm256_mul_pd(_mm256_mul_pd(s, _mm256_sub_pd(one, s)), _mm256_sub_pd(one, _mm256_mul_pd(two, s)));
        });
      case UnaryFn::Exp: return second_f32(f, n, x, y, a, b, out, [](__m256d e) { return e; });
      case UnaryFn::Sin:
      case UnaryFn::Cos:  // -y, by its sign bit as the reference negates
        return second_f32(f, n, x, y, a, b, out, [](__m256d s) { return _mm256_xor_pd(s, _mm256_set1_pd(-0.0)); });
      case UnaryFn::Square: return second_f32(f, n, x, y, a, b, out, [=](__m256d) { return two; });
      case UnaryFn::Ramp:
      case UnaryFn::Abs:
      case UnaryFn::HardTanh:
      case UnaryFn::HardSigmoid: return second_f32(f, n, x, y, a, b, out, [=](__m256d) { return zero; });
      default: return unary_ref_f32.second(f, n, x, y, a, b, out);
    }
  } else {
    unary_ref_f64.second(f, n, x, y, a, b, out);
  }
}


// f(lo, hi) over [0, n): in blocks of kBlock elements claimed by the GEMM's threads where n is
// long enough to pay for them (about 30 us of tanh on one core), else at once.
constexpr int64_t kBlock = 8192;
constexpr int64_t kParallelMin = 32768;  // (gemm_x86.h's kUnaryParallelMin)

template <typename F>
void in_blocks(int64_t n, F f) {
  cpu::for_blocks(gemm_num_threads(), n, kBlock, kParallelMin, f);
}

template <typename V>
void forward_blocks(UnaryFn f, int64_t n, const typename VT<V>::S* x, typename VT<V>::S* y) {
  in_blocks(n, [&](int64_t lo, int64_t hi) { forward<V>(f, hi - lo, x + lo, y + lo); });
}

template <typename V>
void backward_blocks(UnaryFn f, int64_t n, const typename VT<V>::S* x, const typename VT<V>::S* y,
                     const typename VT<V>::S* dy, typename VT<V>::S* dx) {
  in_blocks(n, [&](int64_t lo, int64_t hi) { backward<V>(f, hi - lo, x + lo, y + lo, dy + lo, dx + lo); });
}

template <typename T>
void second_blocks(UnaryFn f, int64_t n, const T* x, const T* y, const T* a, const T* b, T* out) {
  in_blocks(n, [&](int64_t lo, int64_t hi) { second<T>(f, hi - lo, x + lo, y + lo, a + lo, b + lo, out + lo); });
}

}  // namespace

const UnaryKernels<float> unary_avx2_f32{&forward_blocks<__m256>, &backward_blocks<__m256>, &second_blocks<float>};
const UnaryKernels<double> unary_avx2_f64{&forward_blocks<__m256d>, &backward_blocks<__m256d>, &second_blocks<double>};

}  // namespace portgrad::kernels
