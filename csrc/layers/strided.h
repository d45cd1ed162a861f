/// @brief Strided views for the shape kernels (kernels/shape_ops.h): dims with one stride list per
/// operand, coalesced (size-1 dims dropped, adjacent dims merged where every operand allows it).
#pragma once
#include <cstdint>

#include "core/errors.h"
#include "core/tensor.h"
#include "kernels/shape_ops.h"

namespace portgrad {

template <int N>
struct StridedView {
  int rank = 0;
  int64_t dims[kernels::kMaxShapeRank] = {};
  int64_t strides[N][kernels::kMaxShapeRank] = {};

  // Appends an axis (outermost first); size-1 axes are dropped, and an axis merges into the
  // previous one when, for every operand, the previous stride equals this stride times this dim.
  void push(int64_t dim, const int64_t (&s)[N]) {
    if (dim == 1) return;
    if (rank > 0) {
      bool merge = true;
      for (int n = 0; n < N; ++n) merge &= strides[n][rank - 1] == s[n] * dim;
      if (merge) {
        dims[rank - 1] *= dim;
        for (int n = 0; n < N; ++n) strides[n][rank - 1] = s[n];
        return;
      }
    }
    if (rank == kernels::kMaxShapeRank) throw ValueError("array of too high rank for the shape kernels");
    dims[rank] = dim;
    for (int n = 0; n < N; ++n) strides[n][rank] = s[n];
    ++rank;
  }
};

// Element strides of a C-contiguous array of this shape.
inline Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t k = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = k;
    k *= s[i];
  }
  return st;
}

}  // namespace portgrad
