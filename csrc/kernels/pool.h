/// @brief N-D (1 to 3 spatial dimensions) pooling over independent planes: Max, Mean, Total,
/// forward and backward.
///
/// Every problem is described as 3-D (lower ranks set leading dimensions to in = out = k = stride
/// = 1, pad = 0). x is (planes, in...), y is (planes, out...); a plane is one (example, channel).
/// The window of output p covers input positions p*stride + t - pad for t < k; positions outside
/// [0, in) are padding:
///   Max:   the maximum over the in-range positions (padding never wins); a window with no
///          in-range position gives 0. Backward sends dy to the first maximum (lowest flat index
///          in the window, in d, h, w order): deterministic on ties.
///   Total: the sum over the in-range positions (padding adds zeros).
///   Mean:  Total / (k0*k1*k2): padded zeros count in the divisor (PyTorch's count_include_pad=True).
/// Outputs are overwritten (never accumulated) and may hold NaN on entry.
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

enum class PoolFn : int { Max = 0, Mean = 1, Total = 2 };

struct PoolShape {
  int64_t planes = 1;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, k[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0};
};

template <typename T>
struct PoolKernels {
  void (*forward)(PoolFn f, const PoolShape& s, const T* x, T* y);
  // dx from dy; Max reads x (to find each window's first maximum), Mean and Total ignore it.
  void (*backward)(PoolFn f, const PoolShape& s, const T* x, const T* dy, T* dx);
  // Forward mode of Max: ty = tx at each window's first maximum of x (the element the backward
  // sends dy to); 0 for a window with no in-range position.
  void (*max_tangent)(const PoolShape& s, const T* x, const T* tx, T* ty);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(PoolKernels, pool)

}  // namespace portgrad::kernels
