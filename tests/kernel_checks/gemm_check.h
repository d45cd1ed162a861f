// What the GEMM table drivers (tests/cuda_kernels/gemm.cc, tests/avx512_emulated/gemm.cc) share:
// the reference tables they compare against, and one set of tolerances and comparisons.
#pragma once
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "kernels/gemm.h"
#include "kernels/unary.h"

namespace portgrad::kernels::gemm_check {

template <typename T> const GemmKernels<T>& ref_tab();
template <> inline const GemmKernels<float>& ref_tab<float>() { return gemm_ref_f32; }
template <> inline const GemmKernels<double>& ref_tab<double>() { return gemm_ref_f64; }
template <typename T> const UnaryKernels<T>& uref();
template <> inline const UnaryKernels<float>& uref<float>() { return unary_ref_f32; }
template <> inline const UnaryKernels<double>& uref<double>() { return unary_ref_f64; }

// Relative tolerances of a product element and of an activation's value.
template <typename T> constexpr double tol() { return sizeof(T) == 4 ? 1e-5 : 1e-12; }
template <typename T> constexpr double act_tol() { return sizeof(T) == 4 ? 1e-6 : 1e-14; }
// absolute floor as tests/test_kernels_unary.py: 4 eps for functions crossing zero, 1e-6 Sin/Cos f32
template <typename T> double act_atol(int f) {
  const std::string nm = unary_name(static_cast<UnaryFn>(f));
  if (sizeof(T) == 4 && (nm == "Sin" || nm == "Cos")) return 1e-6;
  if (nm == "Sin" || nm == "Cos" || nm == "Mish" || nm == "GELU" || nm == "Swish") return 4 * std::numeric_limits<T>::epsilon();
  return sizeof(T) == 4 ? 2e-38 : 3e-308;
}
template <typename T> T sentinel() { return T(-12345.25); }

template <typename T>
bool same_bits(T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }

// got within bound of want; NaN only where NaN is wanted, infinities exactly.
template <typename T>
bool close_num(double got, double want, double bound) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  if (std::isnan(got) || std::isinf(got)) return false;
  return std::fabs(got - want) <= bound;
}

}  // namespace portgrad::kernels::gemm_check
