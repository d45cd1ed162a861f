/// @brief Device-side forward of every elementwise function of kernels/unary.def, for kernels that
/// apply an activation in place of a separate pass (the GEMM epilogue, fused layers).
///
/// Same definitions and edge cases as the reference (kernels/ref/unary_ref.cc): the kinks
/// (Ramp(-0) = -0, ELU/SELU take x at x >= 0, HardSwish's x <= -3 and x >= 3 branches), the limits
/// at +-inf where a formula would give inf*0 (GELU, Swish, Mish are 0 at -inf; SoftSign(+-inf) = +-1),
/// NaN propagation through every function (comparisons are written so that a NaN takes the branch
/// that returns it), and NaN/+-inf outside or at the edge of a domain (Log, Sqrt) as in IEEE
/// arithmetic. The arithmetic is in T (the reference works in double and rounds once), so float
/// results are within a few ulp of the reference, and double results within an ulp or so.
#pragma once
#include "kernels/cuda/common.cuh"
#include "kernels/unary.h"

namespace portgrad::cuda {
namespace act_detail {

PG_DEVICE float erfc(float x) { return ::erfcf(x); }
PG_DEVICE double erfc(double x) { return ::erfc(x); }
PG_DEVICE float fma(float a, float b, float c) { return ::fmaf(a, b, c); }
PG_DEVICE double fma(double a, double b, double c) { return ::fma(a, b, c); }

// 1/sqrt(2) as hi + lo in T (lo = 1/sqrt(2) - hi, to T's precision).
template <typename T> struct InvSqrt2;
template <> struct InvSqrt2<float> {
  static constexpr float hi = 0.707106769084930419921875f, lo = 1.210161710447897e-08f;
};
template <> struct InvSqrt2<double> {
  static constexpr double hi = 0.70710678118654757, lo = -4.8336466567264567e-17;
};

// +-inf (not NaN), without numeric_limits (not usable in device code without relaxed constexpr).
template <typename T> PG_DEVICE bool is_inf(T x) { return x == x && !math::is_finite(x); }

// GELU(x) = 0.5 x erfc(-x/sqrt2) (no cancellation for negative x). erfc is ill-conditioned in its
// tail (relative condition 2z^2), so the rounding of z = -x/sqrt2 alone would cost 2z^2 ulp (1e-5
// relative in float near z = 9): z is kept as hi + lo and erfc(hi + lo) = erfc(hi) - lo*2/sqrt(pi)*e^-hi^2.
template <typename T> PG_DEVICE T gelu(T x) {
  const T z = -x * InvSqrt2<T>::hi;
  const T z_lo = fma(-x, InvSqrt2<T>::hi, -z) - x * InvSqrt2<T>::lo;
  const T e = erfc(z) - z_lo * T(1.12837916709551257390) * math::exp(-z * z);
  return T(0.5) * x * e;
}

template <typename T> PG_DEVICE T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + math::exp(-x));
  const T e = math::exp(x);
  return e / (T(1) + e);  // NaN arrives here and stays NaN
}

// tanh(softplus(x)) = n/(n+2) with n = e^x (e^x + 2); 1 beyond x = 40 (as the reference).
template <typename T> PG_DEVICE T mish_t(T x) {
  if (x > T(40)) return T(1);
  const T e = math::exp(x), n = e * (e + T(2));
  return n / (n + T(2));
}

}  // namespace act_detail

template <typename T>
PG_DEVICE T activation_forward(kernels::UnaryFn f, T x) {
  using kernels::UnaryFn;
  using act_detail::is_inf;
  const T kSeluL = T(1.0507009873554805), kSeluA = T(1.6732632423543772);
  switch (f) {
    case UnaryFn::Ramp: return x < T(0) ? T(0) : x;
    case UnaryFn::LogisticSigmoid: return act_detail::sigmoid(x);
    case UnaryFn::Tanh: return math::tanh(x);
    case UnaryFn::SoftPlus: return (x < T(0) ? T(0) : x) + math::log1p(math::exp(-math::abs(x)));
    case UnaryFn::ELU: return x >= T(0) ? x : math::expm1(x);
    case UnaryFn::SELU: return kSeluL * (x >= T(0) ? x : kSeluA * math::expm1(x));
    case UnaryFn::GELU:  // limits 0 at -inf and x at +inf (inf * 0 otherwise); NaN stays NaN
      return math::is_finite(x) ? act_detail::gelu(x) : x < T(0) ? T(0) : x;
    case UnaryFn::Swish: return (is_inf(x) && x < T(0)) ? T(0) : x * act_detail::sigmoid(x);
    case UnaryFn::Mish: return (is_inf(x) && x < T(0)) ? T(0) : x * act_detail::mish_t(x);
    case UnaryFn::SoftSign:
      return is_inf(x) ? (x < T(0) ? T(-1) : T(1)) : x / (T(1) + math::abs(x));
    case UnaryFn::HardTanh: return x < T(-1) ? T(-1) : x > T(1) ? T(1) : x;
    case UnaryFn::HardSigmoid: return x < T(-1) ? T(0) : x > T(1) ? T(1) : T(0.5) * (x + T(1));
    case UnaryFn::HardSwish: return x <= T(-3) ? T(0) : x >= T(3) ? x : x * (x + T(3)) / T(6);
    case UnaryFn::Sin: return math::sin(x);
    case UnaryFn::Cos: return math::cos(x);
    case UnaryFn::Exp: return math::exp(x);
    case UnaryFn::Log: return math::log(x);
    case UnaryFn::Sqrt: return math::sqrt(x);
    case UnaryFn::Abs: return math::abs(x);
    case UnaryFn::Erf: return math::erf(x);
    case UnaryFn::Square: return x * x;
    case UnaryFn::Count: break;
  }
  return math::sqrt(T(-1));  // unreachable for a valid f: NaN
}

}  // namespace portgrad::cuda
