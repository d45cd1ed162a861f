/// @brief Reference tensor-op kernels (strided copy, broadcast binary ops, reductions over axes):
/// templated on the float type, computed in double, rounded once.
#include <cmath>
#include <utility>

#include "kernels/binary_second.h"
#include "kernels/shape_ops.h"
#include "kernels/shape_ops_common.h"

namespace portgrad::kernels {
namespace {

template <typename T>
void copy(int rank, const int64_t* dims, const T* src, const int64_t* ss, T* dst, const int64_t* ds) {
  const int64_t* const st[2] = {ss, ds};
  for_each_index<2>(rank, dims, st, [&](const int64_t* o) { dst[o[1]] = src[o[0]]; });
}

// (remainder, quotient) of a / b, truncated (C's fmod, exact) or floored (the remainder takes b's sign).
std::pair<double, double> remainder_quotient(double a, double b, bool floored) {
  double r = std::fmod(a, b), q = std::nearbyint((a - r) / b);
  if (floored && r != 0 && (r < 0) != (b < 0)) {
    r += b;
    q -= 1;
  }
  return {r, q};
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
    case BinaryFn::Greater: return a > b ? 1 : 0;
    case BinaryFn::GreaterEqual: return a >= b ? 1 : 0;
    case BinaryFn::Less: return a < b ? 1 : 0;
    case BinaryFn::LessEqual: return a <= b ? 1 : 0;
    case BinaryFn::Equal: return a == b ? 1 : 0;
    case BinaryFn::Mod:
    case BinaryFn::FMod: return remainder_quotient(a, b, f == BinaryFn::Mod).first;
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
    case BinaryFn::Greater:
    case BinaryFn::GreaterEqual:
    case BinaryFn::Less:
    case BinaryFn::LessEqual:
    case BinaryFn::Equal: *da = *db = 0; return;
    case BinaryFn::Mod:
    case BinaryFn::FMod: *da = 1; *db = -remainder_quotient(a, b, f == BinaryFn::Mod).second; return;
    default: *da = *db = NAN;
  }
}

template <typename T>
void binary_forward(BinaryFn f, int rank, const int64_t* dims, const T* a, const int64_t* as, const T* b,
                    const int64_t* bs, T* y) {
  const int64_t* const st[2] = {as, bs};
  int64_t i = 0;
  for_each_index<2>(rank, dims, st, [&](const int64_t* o) {
    y[i++] = static_cast<T>(apply(f, static_cast<double>(a[o[0]]), static_cast<double>(b[o[1]])));
  });
}

template <typename T>
void binary_backward(BinaryFn f, int rank, const int64_t* dims, const T* a, const int64_t* as, const T* b,
                     const int64_t* bs, const T* dy, T* ga, T* gb) {
  const int64_t* const st[2] = {as, bs};
  int64_t i = 0;
  for_each_index<2>(rank, dims, st, [&](const int64_t* o) {
    double da, db;
    partials(f, static_cast<double>(a[o[0]]), static_cast<double>(b[o[1]]), &da, &db);
    const double g = static_cast<double>(dy[i]);
    if (ga) ga[i] = static_cast<T>(g * da);
    if (gb) gb[i] = static_cast<T>(g * db);
    ++i;
  });
}

template <typename T>
void binary_second(BinaryFn f, int64_t n, const T* a, const T* b, const T* dy, const T* ta, const T* tb, T* ga,
                   T* gb) {
  for (int64_t i = 0; i < n; ++i) binary_second_at(f, i, a, b, dy, ta, tb, ga, gb);
}

template <typename T>
void reduce(ReduceOp op, int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd,
            const int64_t* rs, const T* x, T* y) {
  const int64_t* const kst[1] = {ks};
  const int64_t* const rst[1] = {rs};
  const double count = static_cast<double>(count_of(rr, rd));
  int64_t i = 0;
  for_each_index<1>(kr, kd, kst, [&](const int64_t* ko) {
    const T* xk = x + ko[0];
    double acc = op == ReduceOp::Max ? -INFINITY : op == ReduceOp::Min ? INFINITY : 0.0;
    for_each_index<1>(rr, rd, rst, [&](const int64_t* ro) {
      const double v = static_cast<double>(xk[ro[0]]);
      switch (op) {
        case ReduceOp::Sum:
        case ReduceOp::Mean: acc += v; break;
        case ReduceOp::Max: acc = (v > acc || std::isnan(v)) ? v : acc; break;
        case ReduceOp::Min: acc = (v < acc || std::isnan(v)) ? v : acc; break;
      }
    });
    y[i++] = static_cast<T>(op == ReduceOp::Mean ? acc / count : acc);
  });
}

template <typename T>
void reduce_backward(ReduceOp op, int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd,
                     const int64_t* rs, const T* x, const T* y, const T* dy, T* dx) {
  const int64_t* const kst[1] = {ks};
  const int64_t* const rst[1] = {rs};
  const double count = static_cast<double>(count_of(rr, rd));
  int64_t i = 0;
  for_each_index<1>(kr, kd, kst, [&](const int64_t* ko) {
    const T* xk = x + ko[0];
    T* dxk = dx + ko[0];
    const T g = op == ReduceOp::Mean ? static_cast<T>(static_cast<double>(dy[i]) / count) : dy[i];
    const bool arg = op == ReduceOp::Max || op == ReduceOp::Min;
    bool found = false;
    for_each_index<1>(rr, rd, rst, [&](const int64_t* ro) {
      if (!arg) {
        dxk[ro[0]] = g;
      } else if (!found && (xk[ro[0]] == y[i] || (std::isnan(xk[ro[0]]) && std::isnan(y[i])))) {
        dxk[ro[0]] = g;
        found = true;
      } else {
        dxk[ro[0]] = T(0);
      }
    });
    ++i;
  });
}

}  // namespace

const ShapeKernels<float> shape_ref_f32{&copy<float>, &binary_forward<float>, &binary_backward<float>,
                                        &binary_second<float>, &reduce<float>, &reduce_backward<float>};
const ShapeKernels<double> shape_ref_f64{&copy<double>, &binary_forward<double>, &binary_backward<double>,
                                         &binary_second<double>, &reduce<double>, &reduce_backward<double>};

}  // namespace portgrad::kernels
