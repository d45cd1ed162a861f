/// @brief Tensor-op kernels over strided N-D views: copies (transpose, part, catenate, replicate),
/// broadcast binary operations forward and backward (threading), and reductions over axes
/// (aggregation, summation).
///
/// Geometry: a view is a list of dims with one element stride per operand (strides may be negative
/// or 0; a stride of 0 reads one element again and again — broadcasting). Callers should pass the
/// coalesced geometry (no size-1 dims, adjacent dims merged where possible: see
/// layers/strided.h); every kernel is correct for any geometry of rank <= kMaxShapeRank.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

constexpr int kMaxShapeRank = 20;

// The functions of ThreadingLayer. The comparisons give 1 where they hold and 0 elsewhere (a
// comparison with NaN does not hold), and their gradient is 0: a step's. Mod is Wolfram's (and
// numpy's mod): a - b floor(a / b), the sign of b; FMod is C's fmod: a - b trunc(a / b), the sign
// of a. Their partials are 1 and -floor(a / b) (-trunc(a / b)), as PyTorch's remainder and fmod.
enum class BinaryFn : int { Plus, Subtract, Times, Divide, Power, Max, Min, Greater, GreaterEqual, Less, LessEqual,
                            Equal, Mod, FMod, Count };
// Their names (Wolfram's, for the comparisons Wolfram's Greater, GreaterEqual, ...), in enum order.
inline constexpr const char* kBinaryFnNames[] = {"Plus",    "Subtract",     "Times", "Divide",    "Power", "Max",
                                                 "Min",     "Greater",      "GreaterEqual", "Less", "LessEqual",
                                                 "Equal",   "Mod",          "FMod"};
static_assert(sizeof(kBinaryFnNames) / sizeof(kBinaryFnNames[0]) == size_t(BinaryFn::Count));
// The reductions of AggregationLayer / SummationLayer.
enum class ReduceOp : int { Sum, Mean, Max, Min };

template <typename T>
struct ShapeKernels {
  // dst[i . dst_strides] = src[i . src_strides] for every multi-index i < dims (rank 0: one
  // element). Destination positions must be distinct; a source stride may be 0 (replication).
  void (*copy)(int rank, const int64_t* dims, const T* src, const int64_t* src_strides, T* dst,
               const int64_t* dst_strides);

  // y[i] = f(a[i . as], b[i . bs]) for every multi-index i < dims, y C-contiguous over dims.
  // y may alias a (or b) when that operand is C-contiguous over dims.
  void (*binary_forward)(BinaryFn f, int rank, const int64_t* dims, const T* a, const int64_t* as,
                         const T* b, const int64_t* bs, T* y);
  // The partials times dy, over the full (C-contiguous) output: ga[i] = dy[i] df/da(a, b) and
  // gb[i] = dy[i] df/db(a, b) at (a[i . as], b[i . bs]). Either output may be null; ga may alias dy.
  // Max/Min: a tie goes to a (ga = dy, gb = 0). Power: df/da = b a^(b-1), taken as 0 where b == 0;
  // df/db = a^b log(a), taken as 0 where a == 0 and b >= 0 (NaN for a < 0), as PyTorch does.
  void (*binary_backward)(BinaryFn f, int rank, const int64_t* dims, const T* a, const int64_t* as,
                          const T* b, const int64_t* bs, const T* dy, T* ga, T* gb);
  // Second order over flat operands of n elements (already spread over the output's shape): the
  // second partials (kernels/binary_second.h) times the tangents ta, tb, times dy:
  // ga[i] = dy[i] (faa ta[i] + fab tb[i]) and gb[i] = dy[i] (fab ta[i] + fbb tb[i]). Either output
  // may be null; none aliases an input.
  void (*binary_second)(BinaryFn f, int64_t n, const T* a, const T* b, const T* dy, const T* ta, const T* tb,
                        T* ga, T* gb);

  // y[k] = op over r of x[k . kept_strides + r . red_strides], with k over kept_dims (y
  // C-contiguous over them) and r over red_dims (red_rank 0: one element; Mean divides by the
  // element count of red_dims).
  void (*reduce)(ReduceOp op, int kept_rank, const int64_t* kept_dims, const int64_t* kept_strides,
                 int red_rank, const int64_t* red_dims, const int64_t* red_strides, const T* x, T* y);
  // The backward of reduce: dx at the same positions as x (same strides). Sum: dx = dy[k]; Mean:
  // dy[k] / count; Max/Min: dy[k] at the first r (row-major over red_dims) where x equals y[k], 0
  // at every other r.
  void (*reduce_backward)(ReduceOp op, int kept_rank, const int64_t* kept_dims, const int64_t* kept_strides,
                          int red_rank, const int64_t* red_dims, const int64_t* red_strides, const T* x,
                          const T* y, const T* dy, T* dx);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(ShapeKernels, shape)

}  // namespace portgrad::kernels
