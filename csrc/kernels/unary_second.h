/// @brief The second derivative f''(x) of every elementwise function of kernels/unary.def, in
/// double, for the host (the reference kernel) and the device (the CUDA kernel, one thread an
/// element): one definition, so the two agree. Kinks follow the first derivatives' one-sided
/// choices (unary.h): f'' is 0 wherever f' is piecewise constant (Ramp, Abs, HardTanh,
/// HardSigmoid, the outer pieces of HardSwish, ELU and SELU for x >= 0), and SoftSign''(0) = 0.
#pragma once
#include <math.h>

#include "kernels/host_device.h"
#include "kernels/unary.h"

namespace portgrad::kernels {

PG_HOST_DEVICE double unary_sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + ::exp(-x));
  const double e = ::exp(x);
  return e / (1.0 + e);
}

// y = f(x) as the forward computed it: the functions whose f'' is a polynomial in f (tanh, the
// logistic sigmoid, exp, sin, cos) take it from y, with no transcendental call.
PG_HOST_DEVICE double unary_second_derivative(UnaryFn f, double x, double y) {
  constexpr double kSeluL = 1.0507009873554805, kSeluA = 1.6732632423543772;
  constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
  constexpr double kTwoOverSqrtPi = 1.12837916709551257390;
  switch (f) {
    case UnaryFn::Ramp:
    case UnaryFn::Abs:
    case UnaryFn::HardTanh:
    case UnaryFn::HardSigmoid: return 0.0;
    case UnaryFn::LogisticSigmoid: return y * (1.0 - y) * (1.0 - 2.0 * y);  // s (1 - s) (1 - 2 s)
    case UnaryFn::Tanh: return -2.0 * y * (1.0 - y * y);                      // -2 t (1 - t^2)
    case UnaryFn::SoftPlus: {  // sigmoid'
      const double s = unary_sigmoid(x);
      return s * (1.0 - s);
    }
    case UnaryFn::ELU: return x >= 0 ? 0.0 : ::exp(x);
    case UnaryFn::SELU: return x >= 0 ? 0.0 : kSeluL * kSeluA * ::exp(x);
    case UnaryFn::GELU:  // phi(x) (2 - x^2)
      if (x == INFINITY || x == -INFINITY) return 0.0;
      return kInvSqrt2Pi * ::exp(-0.5 * x * x) * (2.0 - x * x);
    case UnaryFn::Swish: {  // s (1 - s) (2 + x (1 - 2 s))
      if (x == INFINITY || x == -INFINITY) return 0.0;
      const double s = unary_sigmoid(x);
      return s * (1.0 - s) * (2.0 + x * (1.0 - 2.0 * s));
    }
    case UnaryFn::Mish: {  // 2 t' + x t'', t = tanh(softplus(x)), t' = (1 - t^2) s
      if (x == INFINITY || x == -INFINITY || x > 40) return 0.0;
      const double e = ::exp(x), n = e * (e + 2.0), t = n / (n + 2.0), s = unary_sigmoid(x);
      const double u = 1.0 - t * t;
      return 2.0 * u * s + x * u * s * (1.0 - s - 2.0 * t * s);
    }
    case UnaryFn::SoftSign: {  // -2 sign(x) / (1 + |x|)^3
      const double d = 1.0 + fabs(x);
      return x > 0 ? -2.0 / (d * d * d) : x < 0 ? 2.0 / (d * d * d) : 0.0;
    }
    case UnaryFn::HardSwish: return (x > -3 && x < 3) ? 1.0 / 3.0 : 0.0;
    case UnaryFn::Sin:
    case UnaryFn::Cos: return -y;
    case UnaryFn::Exp: return y;
    case UnaryFn::Log: return x < 0 ? NAN : -1.0 / (x * x);
    case UnaryFn::Sqrt: return -0.25 / (x * ::sqrt(x));
    case UnaryFn::Erf: return -2.0 * x * kTwoOverSqrtPi * ::exp(-x * x);
    case UnaryFn::Square: return 2.0;
    case UnaryFn::Count: break;
  }
  (void)kInvSqrt2;
  return NAN;
}

}  // namespace portgrad::kernels
