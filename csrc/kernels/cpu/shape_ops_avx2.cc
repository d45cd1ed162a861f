/// @brief AVX2 tensor-op kernels: broadcast binary operations (forward and backward) vectorised
/// along the innermost axis when each operand is contiguous or broadcast there; reductions
/// vectorised along a contiguous reduced axis (row reductions) or across a contiguous kept axis
/// (column reductions), float32 sums accumulated in double. Other geometries, Power, and the
/// arg-extremum backward run scalar loops identical to the reference.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/vecmath_avx2.h"
#include "kernels/shape_ops.h"
#include "kernels/shape_ops_common.h"

namespace portgrad::kernels {
namespace {

// Geometries and functions this file does not vectorise run the reference kernels themselves.
template <typename T> const ShapeKernels<T>& reference();
template <> const ShapeKernels<float>& reference<float>() { return shape_ref_f32; }
template <> const ShapeKernels<double>& reference<double>() { return shape_ref_f64; }

template <typename T> struct VOf;
template <> struct VOf<float> { using V = __m256; };
template <> struct VOf<double> { using V = __m256d; };

// ---- copy --------------------------------------------------------------------------------------
template <typename T>
void copy(int rank, const int64_t* dims, const T* src, const int64_t* ss, T* dst, const int64_t* ds) {
  if (rank == 0) {
    *dst = *src;
    return;
  }
  const int64_t n = dims[rank - 1], s = ss[rank - 1], d = ds[rank - 1];
  const int64_t* const st[2] = {ss, ds};
  for_each_index<2>(rank - 1, dims, st, [&](const int64_t* o) {
    const T* a = src + o[0];
    T* b = dst + o[1];
    if (s == 1 && d == 1) std::memcpy(b, a, size_t(n) * sizeof(T));
    else if (s == 0 && d == 1) std::fill_n(b, n, *a);
    else for (int64_t j = 0; j < n; ++j) b[j * d] = a[j * s];
  });
}

// ---- binary operations -------------------------------------------------------------------------
template <typename V> V unord(V a, V b) { return cmp<_CMP_UNORD_Q>(a, b); }

template <int F, typename V> V vapply(V a, V b) {
  constexpr BinaryFn f = static_cast<BinaryFn>(F);
  if constexpr (f == BinaryFn::Plus) return add(a, b);
  else if constexpr (f == BinaryFn::Subtract) return sub(a, b);
  else if constexpr (f == BinaryFn::Times) return mul(a, b);
  else if constexpr (f == BinaryFn::Divide) return div(a, b);
  else if constexpr (f == BinaryFn::Max) return blend(blend(b, a, ge(a, b)), add(a, b), unord(a, b));
  else return blend(blend(b, a, le(a, b)), add(a, b), unord(a, b));  // Min
}

// (ga, gb) = dy * (df/da, df/db).
template <int F, typename V> void vpartials(V a, V b, V dy, V* ga, V* gb) {
  constexpr BinaryFn f = static_cast<BinaryFn>(F);
  if constexpr (f == BinaryFn::Plus) {
    *ga = dy;
    *gb = dy;
  } else if constexpr (f == BinaryFn::Subtract) {
    *ga = dy;
    *gb = vxor(dy, C<V>(-0.0));
  } else if constexpr (f == BinaryFn::Times) {
    *ga = mul(dy, b);
    *gb = mul(dy, a);
  } else if constexpr (f == BinaryFn::Divide) {
    *ga = mul(dy, div(C<V>(1.0), b));
    *gb = mul(dy, vxor(div(a, mul(b, b)), C<V>(-0.0)));
  } else {
    const V m = f == BinaryFn::Max ? ge(a, b) : le(a, b);
    *ga = vand(dy, m);
    *gb = vandnot(m, dy);
  }
}

// One operand's values along the innermost axis: contiguous (stride 1) or one value (stride 0).
template <typename V>
V operand(const typename VT<V>::S* p, int64_t stride, int64_t j) {
  return stride ? VT<V>::load(p + j) : C<V>(*p);
}
template <typename V>
V operand_tail(const typename VT<V>::S* p, int64_t stride, int64_t j, __m256i m) {
  return stride ? VT<V>::mload(p + j, m) : C<V>(*p);
}

template <typename T, int F>
void forward_rows(int rank, const int64_t* dims, const T* a, const int64_t* as, const T* b, const int64_t* bs,
                  T* y) {
  using V = typename VOf<T>::V;
  constexpr int W = VT<V>::W;
  const int64_t n = dims[rank - 1], sa = as[rank - 1], sb = bs[rank - 1];
  const int64_t full = n / W * W;
  const __m256i tail = VT<V>::mask(n - full);
  const int64_t* const st[2] = {as, bs};
  int64_t row = 0;
  for_each_index<2>(rank - 1, dims, st, [&](const int64_t* o) {
    const T* pa = a + o[0];
    const T* pb = b + o[1];
    T* py = y + row;
    row += n;
    for (int64_t j = 0; j < full; j += W)
      VT<V>::store(py + j, vapply<F>(operand<V>(pa, sa, j), operand<V>(pb, sb, j)));
    if (full < n)
      VT<V>::mstore(py + full, tail, vapply<F>(operand_tail<V>(pa, sa, full, tail), operand_tail<V>(pb, sb, full, tail)));
  });
}

template <typename T, int F>
void backward_rows(int rank, const int64_t* dims, const T* a, const int64_t* as, const T* b, const int64_t* bs,
                   const T* dy, T* ga, T* gb) {
  using V = typename VOf<T>::V;
  constexpr int W = VT<V>::W;
  const int64_t n = dims[rank - 1], sa = as[rank - 1], sb = bs[rank - 1];
  const int64_t full = n / W * W;
  const __m256i tail = VT<V>::mask(n - full);
  const int64_t* const st[2] = {as, bs};
  int64_t row = 0;
  for_each_index<2>(rank - 1, dims, st, [&](const int64_t* o) {
    const T* pa = a + o[0];
    const T* pb = b + o[1];
    const int64_t r = row;
    row += n;
    V va, vb;
    for (int64_t j = 0; j < full; j += W) {
      vpartials<F>(operand<V>(pa, sa, j), operand<V>(pb, sb, j), VT<V>::load(dy + r + j), &va, &vb);
      if (ga) VT<V>::store(ga + r + j, va);
      if (gb) VT<V>::store(gb + r + j, vb);
    }
    if (full < n) {
      vpartials<F>(operand_tail<V>(pa, sa, full, tail), operand_tail<V>(pb, sb, full, tail),
                   VT<V>::mload(dy + r + full, tail), &va, &vb);
      if (ga) VT<V>::mstore(ga + r + full, tail, va);
      if (gb) VT<V>::mstore(gb + r + full, tail, vb);
    }
  });
}

bool vector_rows(BinaryFn f, int rank, const int64_t* as, const int64_t* bs) {
  return f != BinaryFn::Power && rank > 0 && (as[rank - 1] == 0 || as[rank - 1] == 1) &&
         (bs[rank - 1] == 0 || bs[rank - 1] == 1);
}

template <typename T>
void binary_forward(BinaryFn f, int rank, const int64_t* dims, const T* a, const int64_t* as, const T* b,
                    const int64_t* bs, T* y) {
  if (vector_rows(f, rank, as, bs)) {
    switch (f) {
      case BinaryFn::Plus: return forward_rows<T, int(BinaryFn::Plus)>(rank, dims, a, as, b, bs, y);
      case BinaryFn::Subtract: return forward_rows<T, int(BinaryFn::Subtract)>(rank, dims, a, as, b, bs, y);
      case BinaryFn::Times: return forward_rows<T, int(BinaryFn::Times)>(rank, dims, a, as, b, bs, y);
      case BinaryFn::Divide: return forward_rows<T, int(BinaryFn::Divide)>(rank, dims, a, as, b, bs, y);
      case BinaryFn::Max: return forward_rows<T, int(BinaryFn::Max)>(rank, dims, a, as, b, bs, y);
      case BinaryFn::Min: return forward_rows<T, int(BinaryFn::Min)>(rank, dims, a, as, b, bs, y);
      default: break;
    }
  }
  reference<T>().binary_forward(f, rank, dims, a, as, b, bs, y);
}

template <typename T>
void binary_backward(BinaryFn f, int rank, const int64_t* dims, const T* a, const int64_t* as, const T* b,
                     const int64_t* bs, const T* dy, T* ga, T* gb) {
  if (vector_rows(f, rank, as, bs)) {
    switch (f) {
      case BinaryFn::Plus: return backward_rows<T, int(BinaryFn::Plus)>(rank, dims, a, as, b, bs, dy, ga, gb);
      case BinaryFn::Subtract: return backward_rows<T, int(BinaryFn::Subtract)>(rank, dims, a, as, b, bs, dy, ga, gb);
      case BinaryFn::Times: return backward_rows<T, int(BinaryFn::Times)>(rank, dims, a, as, b, bs, dy, ga, gb);
      case BinaryFn::Divide: return backward_rows<T, int(BinaryFn::Divide)>(rank, dims, a, as, b, bs, dy, ga, gb);
      case BinaryFn::Max: return backward_rows<T, int(BinaryFn::Max)>(rank, dims, a, as, b, bs, dy, ga, gb);
      case BinaryFn::Min: return backward_rows<T, int(BinaryFn::Min)>(rank, dims, a, as, b, bs, dy, ga, gb);
      default: break;
    }
  }
  reference<T>().binary_backward(f, rank, dims, a, as, b, bs, dy, ga, gb);
}

// Second order is rare and elementwise with transcendental calls: the reference's loop.
template <typename T>
void binary_second(BinaryFn f, int64_t n, const T* a, const T* b, const T* dy, const T* ta, const T* tb, T* ga,
                   T* gb) {
  reference<T>().binary_second(f, n, a, b, dy, ta, tb, ga, gb);
}

// ---- reductions ----------------------------------------------------------------------------------
// A running sum in double lanes: float32 inputs are widened, so sums carry double accuracy.
template <typename T> struct DSum;
template <> struct DSum<float> {
  static constexpr int W = 8;
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  void add(__m256 v) {
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  double total() const { return VT<__m256d>::hsum(_mm256_add_pd(lo, hi)); }
  // The W lane sums divided by `div`, rounded to float.
  __m256 lanes(double div) const {
    const __m256d d = _mm256_set1_pd(div);
    return _mm256_set_m128(_mm256_cvtpd_ps(_mm256_div_pd(hi, d)), _mm256_cvtpd_ps(_mm256_div_pd(lo, d)));
  }
};
template <> struct DSum<double> {
  static constexpr int W = 4;
  __m256d v = _mm256_setzero_pd();
  void add(__m256d x) { v = _mm256_add_pd(v, x); }
  double total() const { return VT<__m256d>::hsum(v); }
  __m256d lanes(double div) const { return _mm256_div_pd(v, _mm256_set1_pd(div)); }
};

template <typename V> typename VT<V>::S hreduce(V v, bool max) {
  typename VT<V>::S lanes[VT<V>::W];
  VT<V>::store(lanes, v);
  typename VT<V>::S r = lanes[0];
  for (int i = 1; i < VT<V>::W; ++i) r = max ? std::max(r, lanes[i]) : std::min(r, lanes[i]);
  return r;
}

// Row reductions: the innermost reduced axis is contiguous.
template <typename T>
void reduce_rows(ReduceOp op, int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd,
                 const int64_t* rs, const T* x, T* y) {
  using V = typename VOf<T>::V;
  constexpr int W = VT<V>::W;
  const int64_t m = rd[rr - 1];
  const int64_t full = m / W * W;
  const __m256i tail = VT<V>::mask(m - full);
  const V tail_f = as_mask<V>(tail);
  const int64_t* const kst[1] = {ks};
  const int64_t* const rst[1] = {rs};
  const double count = static_cast<double>(count_of(rr, rd));
  const bool is_max = op == ReduceOp::Max;
  int64_t i = 0;
  for_each_index<1>(kr, kd, kst, [&](const int64_t* ko) {
    const T* xk = x + ko[0];
    if (op == ReduceOp::Sum || op == ReduceOp::Mean) {
      DSum<T> acc;
      for_each_index<1>(rr - 1, rd, rst, [&](const int64_t* ro) {
        const T* p = xk + ro[0];
        for (int64_t j = 0; j < full; j += W) acc.add(VT<V>::load(p + j));
        if (full < m) acc.add(VT<V>::mload(p + full, tail));
      });
      const double s = acc.total();
      y[i++] = static_cast<T>(op == ReduceOp::Mean ? s / count : s);
      return;
    }
    const V init = C<V>(is_max ? -INFINITY : INFINITY);
    V acc = init, bad = C<V>(0.0);
    for_each_index<1>(rr - 1, rd, rst, [&](const int64_t* ro) {
      const T* p = xk + ro[0];
      for (int64_t j = 0; j < full; j += W) {
        const V v = VT<V>::load(p + j);
        acc = is_max ? vmax(acc, v) : vmin(acc, v);
        bad = vor(bad, unord(v, v));
      }
      if (full < m) {
        const V v = blend(init, VT<V>::mload(p + full, tail), tail_f);
        acc = is_max ? vmax(acc, v) : vmin(acc, v);
        bad = vor(bad, unord(v, v));
      }
    });
    y[i++] = any(bad) ? static_cast<T>(NAN) : hreduce(acc, is_max);
  });
}

// Column reductions: the innermost kept axis is contiguous; W outputs are reduced at once.
template <typename T>
void reduce_columns(ReduceOp op, int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd,
                    const int64_t* rs, const T* x, T* y) {
  using V = typename VOf<T>::V;
  constexpr int W = VT<V>::W;
  const int64_t m = kd[kr - 1];
  const int64_t* const kst[1] = {ks};
  const int64_t* const rst[1] = {rs};
  const double count = static_cast<double>(count_of(rr, rd));
  const bool is_max = op == ReduceOp::Max;
  int64_t row = 0;
  for_each_index<1>(kr - 1, kd, kst, [&](const int64_t* ko) {
    const T* xk = x + ko[0];
    T* yk = y + row;
    row += m;
    for (int64_t j = 0; j < m; j += W) {
      const int64_t n = std::min<int64_t>(W, m - j);
      const __m256i mk = VT<V>::mask(n);
      const bool whole = n == W;
      auto lanes = [&](const T* p) { return whole ? VT<V>::load(p) : VT<V>::mload(p, mk); };
      V out;
      if (op == ReduceOp::Sum || op == ReduceOp::Mean) {
        DSum<T> acc;
        for_each_index<1>(rr, rd, rst, [&](const int64_t* ro) { acc.add(lanes(xk + ro[0] + j)); });
        out = acc.lanes(op == ReduceOp::Mean ? count : 1.0);
      } else {
        V acc = C<V>(is_max ? -INFINITY : INFINITY), bad = C<V>(0.0);
        for_each_index<1>(rr, rd, rst, [&](const int64_t* ro) {
          const V v = lanes(xk + ro[0] + j);
          acc = is_max ? vmax(acc, v) : vmin(acc, v);
          bad = vor(bad, unord(v, v));
        });
        out = blend(acc, C<V>(NAN), bad);
      }
      if (whole) VT<V>::store(yk + j, out);
      else VT<V>::mstore(yk + j, mk, out);
    }
  });
}

template <typename T>
void reduce(ReduceOp op, int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd,
            const int64_t* rs, const T* x, T* y) {
  if (rr > 0 && rs[rr - 1] == 1 && rd[rr - 1] >= 4) return reduce_rows(op, kr, kd, ks, rr, rd, rs, x, y);
  if (rr > 0 && kr > 0 && ks[kr - 1] == 1) return reduce_columns(op, kr, kd, ks, rr, rd, rs, x, y);
  reference<T>().reduce(op, kr, kd, ks, rr, rd, rs, x, y);
}

template <typename T>
void reduce_backward(ReduceOp op, int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd,
                     const int64_t* rs, const T* x, const T* y, const T* dy, T* dx) {
  // Only Sum/Mean over a contiguous innermost axis has a faster form here (filled rows); the
  // arg-extremum routing and other geometries are the reference's.
  const bool arg = op == ReduceOp::Max || op == ReduceOp::Min;
  if (arg || rr == 0 || rs[rr - 1] != 1) return reference<T>().reduce_backward(op, kr, kd, ks, rr, rd, rs, x, y, dy, dx);
  const int64_t* const kst[1] = {ks};
  const int64_t* const rst[1] = {rs};
  const double count = static_cast<double>(count_of(rr, rd));
  int64_t i = 0;
  for_each_index<1>(kr, kd, kst, [&](const int64_t* ko) {
    const T g = op == ReduceOp::Mean ? static_cast<T>(static_cast<double>(dy[i]) / count) : dy[i];
    T* dxk = dx + ko[0];
    for_each_index<1>(rr - 1, rd, rst, [&](const int64_t* ro) { std::fill_n(dxk + ro[0], rd[rr - 1], g); });
    ++i;
  });
}

}  // namespace

const ShapeKernels<float> shape_avx2_f32{&copy<float>, &binary_forward<float>, &binary_backward<float>,
                                         &binary_second<float>, &reduce<float>, &reduce_backward<float>};
const ShapeKernels<double> shape_avx2_f64{&copy<double>, &binary_forward<double>, &binary_backward<double>,
                                          &binary_second<double>, &reduce<double>, &reduce_backward<double>};

}  // namespace portgrad::kernels
