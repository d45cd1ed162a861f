/// @brief Scalar helpers shared by the tensor-op kernel files (reference and each ISA): N-D index
/// iteration and the binary functions with their partial derivatives, in double. Everything is
/// in an anonymous namespace, so each ISA file compiles its own copy (STYLE.md 4).
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/shape_ops.h"

namespace portgrad::kernels {
namespace {

// Calls f(off) for every multi-index below dims in row-major order, where off[n] is the offset of
// the multi-index under strides[n]. Rank 0 is one call with zero offsets; an empty dim, none.
template <int N, typename F>
void for_each_index(int rank, const int64_t* dims, const int64_t* const (&strides)[N], F&& f) {
  for (int k = 0; k < rank; ++k)
    if (dims[k] <= 0) return;
  int64_t idx[kMaxShapeRank] = {};
  int64_t off[N] = {};
  for (;;) {
    f(static_cast<const int64_t*>(off));
    int k = rank - 1;
    for (; k >= 0; --k) {
      if (++idx[k] < dims[k]) {
        for (int n = 0; n < N; ++n) off[n] += strides[n][k];
        break;
      }
      for (int n = 0; n < N; ++n) off[n] -= strides[n][k] * (dims[k] - 1);
      idx[k] = 0;
    }
    if (k < 0) return;
  }
}

int64_t count_of(int rank, const int64_t* dims) {
  int64_t n = 1;
  for (int k = 0; k < rank; ++k) n *= dims[k];
  return n;
}

double apply(BinaryFn f, double a, double b) {
  switch (f) {
    case BinaryFn::Plus: return a + b;
    case BinaryFn::Subtract: return a - b;
    case BinaryFn::Times: return a * b;
    case BinaryFn::Divide: return a / b;
    case BinaryFn::Power: return std::pow(a, b);
    // NaN in either operand gives NaN (a + b), as PyTorch's maximum/minimum do.
    case BinaryFn::Max: return (std::isnan(a) || std::isnan(b)) ? a + b : a >= b ? a : b;
    case BinaryFn::Min: return (std::isnan(a) || std::isnan(b)) ? a + b : a <= b ? a : b;
    default: return NAN;
  }
}

// (df/da, df/db) at (a, b).
void partials(BinaryFn f, double a, double b, double* da, double* db) {
  switch (f) {
    case BinaryFn::Plus: *da = 1; *db = 1; return;
    case BinaryFn::Subtract: *da = 1; *db = -1; return;
    case BinaryFn::Times: *da = b; *db = a; return;
    case BinaryFn::Divide: *da = 1 / b; *db = -a / (b * b); return;
    case BinaryFn::Power:
      *da = b == 0 ? 0.0 : b * std::pow(a, b - 1);
      *db = (a == 0 && b >= 0) ? 0.0 : std::pow(a, b) * std::log(a);
      return;
    case BinaryFn::Max: *da = a >= b ? 1 : 0; *db = a >= b ? 0 : 1; return;
    case BinaryFn::Min: *da = a <= b ? 1 : 0; *db = a <= b ? 0 : 1; return;
    default: *da = *db = NAN;
  }
}

}  // namespace
}  // namespace portgrad::kernels
