/// @brief Reference elementwise kernels: templated on the float type, computed in double with
/// <cmath>, rounded once. They are the test oracle for every faster variant.
#include <cmath>
#include <limits>

#include "kernels/unary.h"
#include "kernels/unary_second.h"

namespace portgrad::kernels {
namespace {

constexpr double kSeluL = 1.0507009873554805;
constexpr double kSeluA = 1.6732632423543772;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1/sqrt(2 pi)
constexpr double kTwoOverSqrtPi = 1.12837916709551257390;
constexpr double kInf = std::numeric_limits<double>::infinity();

double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}
// sigmoid'(x) = s(1-s) = e/(1+e)^2 with e = exp(-|x|): no cancellation for large |x|.
double sigmoid_deriv(double x) {
  const double e = std::exp(-std::fabs(x));
  return e / ((1.0 + e) * (1.0 + e));
}
// tanh(softplus(x)) = n/(n+2) with n = e^x (e^x + 2); 1 in double beyond x = 40.
double mish_t(double x) {
  if (x > 40) return 1.0;
  const double e = std::exp(x), n = e * (e + 2.0);
  return n / (n + 2.0);
}

double forward(UnaryFn f, double x) {
  switch (f) {
    case UnaryFn::Ramp: return x < 0 ? 0.0 : x;
    case UnaryFn::LogisticSigmoid: return sigmoid(x);
    case UnaryFn::Tanh: return std::tanh(x);
    case UnaryFn::SoftPlus: return (x < 0 ? 0.0 : x) + std::log1p(std::exp(-std::fabs(x)));
    case UnaryFn::ELU: return x >= 0 ? x : std::expm1(x);
    case UnaryFn::SELU: return kSeluL * (x >= 0 ? x : kSeluA * std::expm1(x));
    case UnaryFn::GELU:  // 0.5 x erfc(-x/sqrt2): no cancellation for negative x; limit 0 at -inf
      return x == -kInf ? 0.0 : 0.5 * x * std::erfc(-x * kInvSqrt2);
    case UnaryFn::Swish: return x == -kInf ? 0.0 : x * sigmoid(x);
    case UnaryFn::Mish: return x == -kInf ? 0.0 : x * mish_t(x);
    case UnaryFn::SoftSign: return std::isinf(x) ? std::copysign(1.0, x) : x / (1.0 + std::fabs(x));
    case UnaryFn::HardTanh: return x < -1 ? -1.0 : x > 1 ? 1.0 : x;
    case UnaryFn::HardSigmoid: return x < -1 ? 0.0 : x > 1 ? 1.0 : 0.5 * (x + 1.0);
    case UnaryFn::HardSwish: return x <= -3 ? 0.0 : x >= 3 ? x : x * (x + 3.0) / 6.0;
    case UnaryFn::Sin: return std::sin(x);
    case UnaryFn::Cos: return std::cos(x);
    case UnaryFn::Exp: return std::exp(x);
    case UnaryFn::Log: return std::log(x);
    case UnaryFn::Sqrt: return std::sqrt(x);
    case UnaryFn::Abs: return std::fabs(x);
    case UnaryFn::Erf: return std::erf(x);
    case UnaryFn::Square: return x * x;
    case UnaryFn::Count: break;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// f'(x), with the one-sided choices at kinks documented in unary.h.
double derivative(UnaryFn f, double x) {
  switch (f) {
    case UnaryFn::Ramp: return x > 0 ? 1.0 : 0.0;
    case UnaryFn::LogisticSigmoid: return sigmoid_deriv(x);
    case UnaryFn::Tanh: {  // 1 - tanh^2 = 4e/(1+e)^2, e = exp(-2|x|)
      const double e = std::exp(-2.0 * std::fabs(x));
      return 4.0 * e / ((1.0 + e) * (1.0 + e));
    }
    case UnaryFn::SoftPlus: return sigmoid(x);
    case UnaryFn::ELU: return x >= 0 ? 1.0 : std::exp(x);
    case UnaryFn::SELU: return x >= 0 ? kSeluL : kSeluL * kSeluA * std::exp(x);
    case UnaryFn::GELU:  // Phi(x) + x phi(x)
      if (std::isinf(x)) return x > 0 ? 1.0 : 0.0;
      return 0.5 * std::erfc(-x * kInvSqrt2) + x * kInvSqrt2Pi * std::exp(-0.5 * x * x);
    case UnaryFn::Swish:  // s + x s (1 - s)
      if (std::isinf(x)) return x > 0 ? 1.0 : 0.0;
      return sigmoid(x) + x * sigmoid_deriv(x);
    case UnaryFn::Mish: {  // t + x sigmoid(x) (1 - t^2), 1 - t^2 = 4(n+1)/(n+2)^2
      if (x > 40) return 1.0;
      if (std::isinf(x)) return 0.0;
      const double e = std::exp(x), n = e * (e + 2.0), t = n / (n + 2.0);
      return t + x * sigmoid(x) * 4.0 * (n + 1.0) / ((n + 2.0) * (n + 2.0));
    }
    case UnaryFn::SoftSign: {
      const double d = 1.0 + std::fabs(x);
      return 1.0 / (d * d);
    }
    case UnaryFn::HardTanh: return (x > -1 && x < 1) ? 1.0 : 0.0;
    case UnaryFn::HardSigmoid: return (x > -1 && x < 1) ? 0.5 : 0.0;
    case UnaryFn::HardSwish: return x <= -3 ? 0.0 : x >= 3 ? 1.0 : (2.0 * x + 3.0) / 6.0;
    case UnaryFn::Sin: return std::cos(x);
    case UnaryFn::Cos: return -std::sin(x);
    case UnaryFn::Exp: return std::exp(x);
    case UnaryFn::Log: return x < 0 ? std::numeric_limits<double>::quiet_NaN() : 1.0 / x;
    case UnaryFn::Sqrt: return 0.5 / std::sqrt(x);
    case UnaryFn::Abs: return x > 0 ? 1.0 : x < 0 ? -1.0 : 0.0;
    case UnaryFn::Erf: return kTwoOverSqrtPi * std::exp(-x * x);
    case UnaryFn::Square: return 2.0 * x;
    case UnaryFn::Count: break;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

template <typename T>
void unary_forward(UnaryFn f, int64_t n, const T* x, T* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(forward(f, static_cast<double>(x[i])));
}

template <typename T>
void unary_backward(UnaryFn f, int64_t n, const T* x, const T* /*y*/, const T* dy, T* dx) {
  for (int64_t i = 0; i < n; ++i)
    dx[i] = static_cast<T>(static_cast<double>(dy[i]) * derivative(f, static_cast<double>(x[i])));
}

template <typename T>
void unary_second(UnaryFn f, int64_t n, const T* x, const T* y, const T* a, const T* b, T* out) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<T>(static_cast<double>(a[i]) * static_cast<double>(b[i]) *
                            unary_second_derivative(f, static_cast<double>(x[i]), static_cast<double>(y[i])));
}

}  // namespace

const UnaryKernels<float> unary_ref_f32{&unary_forward<float>, &unary_backward<float>, &unary_second<float>};
const UnaryKernels<double> unary_ref_f64{&unary_forward<double>, &unary_backward<double>, &unary_second<double>};

}  // namespace portgrad::kernels
