/// @brief The device-side math of every elementwise function of kernels/unary.def: forward_of,
/// derivative_of and backward_of, with the kinks, limits at +-inf and NaN behaviour of the
/// reference (kernels/ref/unary_ref.cc), in T (float math for f32, double for f64). Used by the
/// unary kernels and by every kernel that applies an activation in its epilogue (the GEMM).
#pragma once
#include "kernels/cuda/common.cuh"
#include "kernels/unary.h"

namespace portgrad::kernels::unary_math {

namespace m = portgrad::cuda::math;


PG_DEVICE float erfc_(float x) { return ::erfcf(x); }
PG_DEVICE double erfc_(double x) { return ::erfc(x); }
PG_DEVICE float fma_(float a, float b, float c) { return ::fmaf(a, b, c); }
PG_DEVICE double fma_(double a, double b, double c) { return ::fma(a, b, c); }
// exp(-a b) with the product taken exactly (hi + lo): exp(-hi) (1 - lo). Rounding a*b alone
// would cost |a b| ulps of relative accuracy (e.g. 36 ulps for exp(-x^2) at x = 6).
template <typename T>
PG_DEVICE T exp_neg_product(T a, T b) {
  const T hi = a * b, lo = fma_(a, b, -hi);
  const T g = m::exp(-hi);
  if (!(g > T(0))) return g;  // 0 (then lo may be NaN, at |a b| = inf) or NaN
  return fma_(-g, lo, g);
}
template <typename T> PG_DEVICE T inf_() { return T(INFINITY); }
template <typename T> PG_DEVICE bool is_inf(T x) { return m::abs(x) == inf_<T>(); }
template <typename T> PG_DEVICE T qnan_() { return T(NAN); }

// 1/sqrt(2) as hi + lo in T.
PG_DEVICE float inv_sqrt2_lo(float) { return 1.2101617104478970e-08f; }
PG_DEVICE double inv_sqrt2_lo(double) { return -4.8336466567264567e-17; }

// erfc(-x/sqrt2) = 2 Phi(x), with the rounding of the argument -x/sqrt2 corrected to first order
// (d/du erfc(u) = -2/sqrt(pi) e^(-u^2)): for x << 0 erfc's condition number (2u^2) would
// otherwise turn that rounding into ~1e-5 relative error in float at x = -12.
template <typename T>
PG_DEVICE T erfc_neg_scaled(T x) {
  const T hi = T(0.70710678118654752440);
  const T u = -x * hi;
  const T e = erfc_(u);
  if (!m::is_finite(u)) return e;
  const T du = fma_(-x, hi, -u) + (-x) * inv_sqrt2_lo(T());
  return fma_(-du * T(1.12837916709551257390), m::exp(-u * u), e);
}

// Constants, rounded once to T.
template <typename T> PG_DEVICE T selu_l() { return T(1.0507009873554805); }
template <typename T> PG_DEVICE T selu_a() { return T(1.6732632423543772); }
template <typename T> PG_DEVICE T inv_sqrt2pi() { return T(0.39894228040143267794); }
template <typename T> PG_DEVICE T two_over_sqrtpi() { return T(1.12837916709551257390); }

template <typename T>
PG_DEVICE T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + m::exp(-x));
  const T e = m::exp(x);
  return e / (T(1) + e);
}
// s(1-s) = e/(1+e)^2 with e = exp(-|x|).
template <typename T>
PG_DEVICE T sigmoid_deriv(T x) {
  const T e = m::exp(-m::abs(x));
  return e / ((T(1) + e) * (T(1) + e));
}
// tanh(softplus(x)) = n/(n+2), n = e^x (e^x + 2); 1 beyond x = 40.
template <typename T>
PG_DEVICE T mish_t(T x) {
  if (x > T(40)) return T(1);
  const T e = m::exp(x), n = e * (e + T(2));
  return n / (n + T(2));
}

template <UnaryFn F, typename T>
PG_DEVICE T forward_of(T x) {
  if constexpr (F == UnaryFn::Ramp) return x < T(0) ? T(0) : x;
  else if constexpr (F == UnaryFn::LogisticSigmoid) return sigmoid(x);
  else if constexpr (F == UnaryFn::Tanh) return m::tanh(x);
  else if constexpr (F == UnaryFn::SoftPlus) return (x < T(0) ? T(0) : x) + m::log1p(m::exp(-m::abs(x)));
  else if constexpr (F == UnaryFn::ELU) return x >= T(0) ? x : m::expm1(x);
  else if constexpr (F == UnaryFn::SELU) return selu_l<T>() * (x >= T(0) ? x : selu_a<T>() * m::expm1(x));
  else if constexpr (F == UnaryFn::GELU) return x == -inf_<T>() ? T(0) : T(0.5) * x * erfc_neg_scaled(x);
  else if constexpr (F == UnaryFn::Swish) return x == -inf_<T>() ? T(0) : x * sigmoid(x);
  else if constexpr (F == UnaryFn::Mish) return x == -inf_<T>() ? T(0) : x * mish_t(x);
  else if constexpr (F == UnaryFn::SoftSign) return is_inf(x) ? (x > T(0) ? T(1) : T(-1)) : x / (T(1) + m::abs(x));
  else if constexpr (F == UnaryFn::HardTanh) return x < T(-1) ? T(-1) : x > T(1) ? T(1) : x;
  else if constexpr (F == UnaryFn::HardSigmoid) return x < T(-1) ? T(0) : x > T(1) ? T(1) : T(0.5) * (x + T(1));
  else if constexpr (F == UnaryFn::HardSwish) return x <= T(-3) ? T(0) : x >= T(3) ? x : x * (x + T(3)) / T(6);
  else if constexpr (F == UnaryFn::Sin) return m::sin(x);
  else if constexpr (F == UnaryFn::Cos) return m::cos(x);
  else if constexpr (F == UnaryFn::Exp) return m::exp(x);
  else if constexpr (F == UnaryFn::Log) return m::log(x);
  else if constexpr (F == UnaryFn::Sqrt) return m::sqrt(x);
  else if constexpr (F == UnaryFn::Abs) return m::abs(x);
  else if constexpr (F == UnaryFn::Erf) return m::erf(x);
  else if constexpr (F == UnaryFn::Square) return x * x;
  else return qnan_<T>();
}

// f'(x), with the reference's one-sided choices at kinks (kernels/unary.h).
template <UnaryFn F, typename T>
PG_DEVICE T derivative_of(T x) {
  if constexpr (F == UnaryFn::Ramp) return x > T(0) ? T(1) : T(0);
  else if constexpr (F == UnaryFn::LogisticSigmoid) return sigmoid_deriv(x);
  else if constexpr (F == UnaryFn::Tanh) {  // 4e/(1+e)^2, e = exp(-2|x|)
    const T e = m::exp(T(-2) * m::abs(x));
    return T(4) * e / ((T(1) + e) * (T(1) + e));
  } else if constexpr (F == UnaryFn::SoftPlus) return sigmoid(x);
  else if constexpr (F == UnaryFn::ELU) return x >= T(0) ? T(1) : m::exp(x);
  else if constexpr (F == UnaryFn::SELU) return x >= T(0) ? selu_l<T>() : selu_l<T>() * selu_a<T>() * m::exp(x);
  else if constexpr (F == UnaryFn::GELU) {  // Phi(x) + x phi(x)
    if (is_inf(x)) return x > T(0) ? T(1) : T(0);
    return T(0.5) * erfc_neg_scaled(x) + x * inv_sqrt2pi<T>() * exp_neg_product(T(0.5) * x, x);
  } else if constexpr (F == UnaryFn::Swish) {  // s + x s (1 - s)
    if (is_inf(x)) return x > T(0) ? T(1) : T(0);
    return sigmoid(x) + x * sigmoid_deriv(x);
  } else if constexpr (F == UnaryFn::Mish) {  // t + x sigmoid(x) (1 - t^2), 1 - t^2 = 4(n+1)/(n+2)^2
    if (x > T(40)) return T(1);
    if (is_inf(x)) return T(0);
    const T e = m::exp(x), n = e * (e + T(2)), t = n / (n + T(2));
    // Divided twice rather than by (n+2)^2, which overflows float well before x = 40.
    return t + x * sigmoid(x) * (T(4) * (n + T(1)) / (n + T(2)) / (n + T(2)));
  } else if constexpr (F == UnaryFn::SoftSign) {
    const T d = T(1) + m::abs(x);
    return T(1) / (d * d);
  } else if constexpr (F == UnaryFn::HardTanh) return (x > T(-1) && x < T(1)) ? T(1) : T(0);
  else if constexpr (F == UnaryFn::HardSigmoid) return (x > T(-1) && x < T(1)) ? T(0.5) : T(0);
  else if constexpr (F == UnaryFn::HardSwish) return x <= T(-3) ? T(0) : x >= T(3) ? T(1) : (T(2) * x + T(3)) / T(6);
  else if constexpr (F == UnaryFn::Sin) return m::cos(x);
  else if constexpr (F == UnaryFn::Cos) return -m::sin(x);
  else if constexpr (F == UnaryFn::Exp) return m::exp(x);
  else if constexpr (F == UnaryFn::Log) return x < T(0) ? qnan_<T>() : T(1) / x;
  else if constexpr (F == UnaryFn::Sqrt) return T(0.5) / m::sqrt(x);
  else if constexpr (F == UnaryFn::Abs) return x > T(0) ? T(1) : x < T(0) ? T(-1) : T(0);
  else if constexpr (F == UnaryFn::Erf) return two_over_sqrtpi<T>() * exp_neg_product(x, x);
  else if constexpr (F == UnaryFn::Square) return T(2) * x;
  else return qnan_<T>();
}

// dx = dy f'(x). A few functions reorder the product so that dx overflows only where the exact
// product does (the reference takes it in double): dy e^x, dy / x, 2 (dy x).
template <UnaryFn F, typename T>
PG_DEVICE T backward_of(T x, T dy) {
  if constexpr (F == UnaryFn::Exp) {
    const T e = m::exp(x);
    if (e == inf_<T>() && x < inf_<T>()) {  // e^x overflows but dy e^x may not: dy e^(x/2) e^(x/2)
      const T h = m::exp(T(0.5) * x);
      return (dy * h) * h;
    }
    return dy * e;
  } else if constexpr (F == UnaryFn::Log) {
    if constexpr (sizeof(T) == sizeof(float)) {
      // 1/x overflows float for denormal x where the reference's double 1/x does not.
      return x < T(0) ? dy * qnan_<T>() : dy / x;
    } else {
      return dy * derivative_of<F>(x);  // as the reference: dy (1/x), inf when 1/x overflows
    }
  } else if constexpr (F == UnaryFn::Square) {
    return T(2) * (dy * x);
  } else {
    return dy * derivative_of<F>(x);
  }
}

// dy f'(x) for a function chosen at run time (a GEMM operand prologue).
template <typename T>
PG_DEVICE T backward(UnaryFn f, T x, T dy) {
  switch (f) {
#define X(name, str) \
  case UnaryFn::name: return backward_of<UnaryFn::name>(x, dy);
#include "kernels/unary.def"
#undef X
    case UnaryFn::Count: break;
  }
  return qnan_<T>();  // unreachable for a valid f
}

// f(x) for a function chosen at run time (an epilogue's activation).
template <typename T>
PG_DEVICE T forward(UnaryFn f, T x) {
  switch (f) {
#define X(name, str) \
  case UnaryFn::name: return forward_of<UnaryFn::name>(x);
#include "kernels/unary.def"
#undef X
    case UnaryFn::Count: break;
  }
  return qnan_<T>();  // unreachable for a valid f
}

}  // namespace portgrad::kernels::unary_math
