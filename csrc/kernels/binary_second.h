/// @brief The second partials of the binary functions of ThreadingLayer whose first partials are
/// not locally constant (Times, Divide, Power), in double, for the host (the reference kernel) and
/// the device (the CUDA kernel, one thread an element): one definition, so the two agree.
///
/// Power follows its first partials' conventions (shape_ops.h: df/da = 0 where b == 0; df/db = 0
/// where a == 0 and b >= 0): faa = b (b - 1) a^(b-2), 0 where b is 0 or 1 (df/da is constant in a
/// there); fab = a^(b-1) (1 + b log a), 0 where a == 0 and b > 1 (its limit); fbb = a^b log(a)^2,
/// 0 where a == 0 and b >= 0; elsewhere the formulas, NaN for a < 0 (log), as PyTorch's.
#pragma once
#include <math.h>

#include "kernels/host_device.h"
#include "kernels/shape_ops.h"

namespace portgrad::kernels {

// (d2f/da2, d2f/da db, d2f/db2) at (a, b); zeros for the other functions.
PG_HOST_DEVICE void binary_second_partials(BinaryFn f, double a, double b, double* aa, double* ab, double* bb) {
  *aa = *ab = *bb = 0.0;
  switch (f) {
    case BinaryFn::Times: *ab = 1.0; return;
    case BinaryFn::Divide: {  // a / b: fab = -1/b^2, fbb = 2 a / b^3
      const double r = 1.0 / b;
      *ab = -r * r;
      *bb = 2.0 * a * r * r * r;
      return;
    }
    case BinaryFn::Power: {
      const double l = ::log(a);
      if (b != 0.0 && b != 1.0) *aa = b * (b - 1.0) * ::pow(a, b - 2.0);
      if (!(a == 0.0 && b > 1.0)) *ab = ::pow(a, b - 1.0) * (1.0 + b * l);
      if (!(a == 0.0 && b >= 0.0)) *bb = ::pow(a, b) * l * l;
      return;
    }
    default: return;
  }
}

// Element i of ShapeKernels::binary_second, in double, rounded once.
template <typename T>
PG_HOST_DEVICE void binary_second_at(BinaryFn f, int64_t i, const T* a, const T* b, const T* dy, const T* ta,
                                     const T* tb, T* ga, T* gb) {
  double aa, ab, bb;
  binary_second_partials(f, static_cast<double>(a[i]), static_cast<double>(b[i]), &aa, &ab, &bb);
  const double g = static_cast<double>(dy[i]), u = static_cast<double>(ta[i]), v = static_cast<double>(tb[i]);
  if (ga) ga[i] = static_cast<T>(g * (aa * u + ab * v));
  if (gb) gb[i] = static_cast<T>(g * (ab * u + bb * v));
}

}  // namespace portgrad::kernels
