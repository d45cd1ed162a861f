/// @brief Elementwise activation kernels: forward y = f(x) and backward dx = dy * f'(x).
///
/// Definitions (Wolfram's ElementwiseLayer names):
///   Ramp max(x,0) | LogisticSigmoid 1/(1+e^-x) | Tanh | SoftPlus log(1+e^x) | ELU x>=0 ? x : e^x-1
///   SELU l*(x>=0 ? x : a*(e^x-1)), l=1.0507009873554805, a=1.6732632423543772
///   GELU 0.5x(1+erf(x/sqrt2)) (exact) | Swish x*sigmoid(x) | Mish x*tanh(softplus(x))
///   SoftSign x/(1+|x|) | HardTanh clip(x,-1,1) | HardSigmoid clip((x+1)/2,0,1)
///   HardSwish x*min(max(x+3,0),6)/6 | Sin | Cos | Exp | Log | Sqrt | Abs | Erf | Square x^2
/// Derivatives at kinks (one-sided choices, all documented in the README):
///   Ramp'(0)=0, Abs'(0)=0, ELU'(0)=1, SELU'(0)=l, HardTanh'(+-1)=0, HardSigmoid'(+-1)=0,
///   HardSwish'(-3)=0, HardSwish'(3)=1. Outside a function's domain (Log of x<0, Sqrt of x<0)
///   the result is NaN, and at its edge (Log 0, Sqrt 0) +-inf, as in IEEE arithmetic; Log'(x<0) is NaN.
/// At +-inf the kernels return the limits where the formula would give inf*0: Swish, Mish, GELU
///   are 0 at -inf (derivative 0) and x at +inf (derivative 1); SoftSign(+-inf) = +-1;
///   HardSwish(-inf) = 0. NaN propagates through every function.
#pragma once
#include <cstdint>
#include <string>

#include "kernels/isa.h"

namespace portgrad::kernels {

enum class UnaryFn : int {
#define X(name, str) name,
#include "kernels/unary.def"
#undef X
  Count
};

const char* unary_name(UnaryFn f);
// Accepts the Wolfram names of unary.def plus the aliases ReLU, Sigmoid (and a few long forms).
bool unary_from_name(const std::string& name, UnaryFn* out);
// Whether backward(f, ..., dy) is dy times backward(f, ..., 1), so that f'(x) made once can scale
// many tangents: all but Exp, whose backward forms exp(x) dy without overflowing where exp(x) would.
inline bool derivative_scales(UnaryFn f) { return f != UnaryFn::Exp; }

template <typename T>
struct UnaryKernels {
  // y[i] = f(x[i]) for i < n. y may alias x.
  void (*forward)(UnaryFn f, int64_t n, const T* x, T* y);
  // dx[i] = dy[i] * f'(x[i]). y = f(x) is passed as well because some derivatives are cheaper
  // from it. dx may alias dy (not x or y).
  void (*backward)(UnaryFn f, int64_t n, const T* x, const T* y, const T* dy, T* dx);
  // Second order (the tangent of the backward): out[i] = a[i] * b[i] * f''(x[i]), f'' as
  // kernels/unary_second.h defines it (computed in double, rounded once); y = f(x).
  void (*second)(UnaryFn f, int64_t n, const T* x, const T* y, const T* a, const T* b, T* out);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(UnaryKernels, unary)

}  // namespace portgrad::kernels
