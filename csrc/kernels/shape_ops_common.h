/// @brief N-D index iteration shared by the tensor-op kernel files (reference and each ISA). Everything
/// is in an anonymous namespace, so each ISA file compiles its own copy (STYLE.md 4).
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

}  // namespace
}  // namespace portgrad::kernels
