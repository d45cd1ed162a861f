/// @brief AVX2+FMA softmax over the last axis, fp32 and fp64 from one template; tails by masked
/// loads/stores. exp(x - max) carries the rounding error of the subtraction (TwoSum), so large
/// spreads of logits lose no accuracy. Many rows are shared out to the GEMM's threads in blocks
/// (each row's math is its own: the same bits on any count).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/threadpool.h"
#include "kernels/cpu/vecmath_avx2.h"
#include "kernels/gemm.h"
#include "kernels/softmax.h"

namespace portgrad::kernels {
namespace {

// exp(d) for d = x - max <= 0. float: the fast exp (one exponent scaling), 0 below -87 (where the
// true value is below 1.6e-38, beside a largest term of 1) and for -inf (a masked logit); double:
// vexp.
inline __m256 exp_nonpositive(__m256 d) { return vexp_nonpositive(d); }
inline __m256d exp_nonpositive(__m256d d) { return vexp(d); }

// exp(a - b) with the error of the rounded difference folded back in: exp(d) (1 + err).
template <typename V> inline V exp_diff(V a, V b) {
  const V d = sub(a, b);
  const V bb = sub(a, d);  // TwoSum of a + (-b)
  const V e = exp_nonpositive(d);
  // Where e is 0 (a = -inf: a masked logit) the error term is NaN; it must not reach the result.
  const V err = vand(add(sub(a, add(d, bb)), sub(bb, b)), gt(e, C<V>(0.0)));
  return fma(e, err, e);
}

template <typename V>
void forward(int64_t rows, int64_t cols, const typename VT<V>::S* x, typename VT<V>::S* y) {
  using S = typename VT<V>::S;
  constexpr int W = VT<V>::W;
  const int64_t full = cols / W * W;
  const __m256i tail = VT<V>::mask(cols - full);
  for (int64_t r = 0; r < rows; ++r) {
    const S* xr = x + r * cols;
    S* yr = y + r * cols;
    V vm = C<V>(-INFINITY);
    for (int64_t c = 0; c < full; c += W) vm = vmax(vm, VT<V>::load(xr + c));
    if (full < cols) vm = vmax(vm, blend(C<V>(-INFINITY), VT<V>::mload(xr + full, tail), as_mask<V>(tail)));
    const V m = C<V>(VT<V>::hmax(vm));
    V vs = C<V>(0.0);
    for (int64_t c = 0; c < full; c += W) {
      const V e = exp_diff(VT<V>::load(xr + c), m);
      VT<V>::store(yr + c, e);
      vs = add(vs, e);
    }
    if (full < cols) {
      const V e = vand(exp_diff(VT<V>::mload(xr + full, tail), m), as_mask<V>(tail));
      VT<V>::mstore(yr + full, tail, e);
      vs = add(vs, e);
    }
    const V inv = C<V>(1.0 / static_cast<double>(VT<V>::hsum(vs)));
    for (int64_t c = 0; c < full; c += W) VT<V>::store(yr + c, mul(VT<V>::load(yr + c), inv));
    if (full < cols) VT<V>::mstore(yr + full, tail, mul(VT<V>::mload(yr + full, tail), inv));
  }
}

template <typename V>
void backward(int64_t rows, int64_t cols, const typename VT<V>::S* y, const typename VT<V>::S* dy,
              typename VT<V>::S* dx) {
  using S = typename VT<V>::S;
  constexpr int W = VT<V>::W;
  const int64_t full = cols / W * W;
  const __m256i tail = VT<V>::mask(cols - full);
  for (int64_t r = 0; r < rows; ++r) {
    const S* yr = y + r * cols;
    const S* dyr = dy + r * cols;
    S* dxr = dx + r * cols;
    V vs = C<V>(0.0);
    for (int64_t c = 0; c < full; c += W) vs = fma(VT<V>::load(dyr + c), VT<V>::load(yr + c), vs);
    if (full < cols) vs = fma(VT<V>::mload(dyr + full, tail), VT<V>::mload(yr + full, tail), vs);
    const V s = C<V>(VT<V>::hsum(vs));
    for (int64_t c = 0; c < full; c += W)
      VT<V>::store(dxr + c, mul(VT<V>::load(yr + c), sub(VT<V>::load(dyr + c), s)));
    if (full < cols)
      VT<V>::mstore(dxr + full, tail, mul(VT<V>::mload(yr + full, tail), sub(VT<V>::mload(dyr + full, tail), s)));
  }
}

// Log-softmax: (x - max) - log(sum exp(x - max)); the difference x - max is exact for
// |x - max| below 2^(mantissa bits) ulps, so only log's and the final subtraction's roundings remain.
template <typename V>
void log_forward(int64_t rows, int64_t cols, const typename VT<V>::S* x, typename VT<V>::S* y) {
  using S = typename VT<V>::S;
  constexpr int W = VT<V>::W;
  const int64_t full = cols / W * W;
  const __m256i tail = VT<V>::mask(cols - full);
  for (int64_t r = 0; r < rows; ++r) {
    const S* xr = x + r * cols;
    S* yr = y + r * cols;
    V vm = C<V>(-INFINITY);
    for (int64_t c = 0; c < full; c += W) vm = vmax(vm, VT<V>::load(xr + c));
    if (full < cols) vm = vmax(vm, blend(C<V>(-INFINITY), VT<V>::mload(xr + full, tail), as_mask<V>(tail)));
    const V m = C<V>(VT<V>::hmax(vm));
    V vs = C<V>(0.0);
    for (int64_t c = 0; c < full; c += W) vs = add(vs, exp_diff(VT<V>::load(xr + c), m));
    if (full < cols) vs = add(vs, vand(exp_diff(VT<V>::mload(xr + full, tail), m), as_mask<V>(tail)));
    const V ls = C<V>(std::log(static_cast<double>(VT<V>::hsum(vs))));
    for (int64_t c = 0; c < full; c += W) VT<V>::store(yr + c, sub(sub(VT<V>::load(xr + c), m), ls));
    if (full < cols) VT<V>::mstore(yr + full, tail, sub(sub(VT<V>::mload(xr + full, tail), m), ls));
  }
}

template <typename V>
void log_backward(int64_t rows, int64_t cols, const typename VT<V>::S* y, const typename VT<V>::S* dy,
                  typename VT<V>::S* dx) {
  using S = typename VT<V>::S;
  constexpr int W = VT<V>::W;
  const int64_t full = cols / W * W;
  const __m256i tail = VT<V>::mask(cols - full);
  for (int64_t r = 0; r < rows; ++r) {
    const S* yr = y + r * cols;
    const S* dyr = dy + r * cols;
    S* dxr = dx + r * cols;
    V vs = C<V>(0.0);
    for (int64_t c = 0; c < full; c += W) vs = add(vs, VT<V>::load(dyr + c));
    if (full < cols) vs = add(vs, VT<V>::mload(dyr + full, tail));
    const V s = C<V>(VT<V>::hsum(vs));
    for (int64_t c = 0; c < full; c += W)
      VT<V>::store(dxr + c, fnma(vexp(VT<V>::load(yr + c)), s, VT<V>::load(dyr + c)));
    if (full < cols)
      VT<V>::mstore(dxr + full, tail, fnma(vexp(VT<V>::mload(yr + full, tail)), s, VT<V>::mload(dyr + full, tail)));
  }
}

// f(lo, hi) over rows [0, rows): blocks of about 8192 elements claimed by the GEMM's threads once
// there are 32768 (attention's weights: 16 x 4 x 128 rows of 128), else at once.
template <typename F>
void in_row_blocks(int64_t rows, int64_t cols, F f) {
  const int64_t c = std::max<int64_t>(cols, 1);
  cpu::for_blocks(gemm_num_threads(), rows, std::max<int64_t>(1, 8192 / c), std::max<int64_t>(2, 32768 / c), f);
}

// A kernel of (x -> y) or (y, dy -> dx) on row blocks.
template <typename S, void (*F)(int64_t, int64_t, const S*, S*)>
void on_rows(int64_t rows, int64_t cols, const S* x, S* y) {
  in_row_blocks(rows, cols, [&](int64_t lo, int64_t hi) { F(hi - lo, cols, x + lo * cols, y + lo * cols); });
}
template <typename S, void (*F)(int64_t, int64_t, const S*, const S*, S*)>
void on_rows(int64_t rows, int64_t cols, const S* y, const S* dy, S* dx) {
  in_row_blocks(rows, cols, [&](int64_t lo, int64_t hi) { F(hi - lo, cols, y + lo * cols, dy + lo * cols, dx + lo * cols); });
}

template <typename V>
void backward_tangent(int64_t rows, int64_t cols, const typename VT<V>::S* y, const typename VT<V>::S* ty,
                      const typename VT<V>::S* dy, const typename VT<V>::S* tdy, typename VT<V>::S* tdx) {
  using S = typename VT<V>::S;
  constexpr int W = VT<V>::W;
  const int64_t full = cols / W * W;
  const __m256i tail = VT<V>::mask(cols - full);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * cols;
    V vs = C<V>(0.0), vu = C<V>(0.0);
    for (int64_t c = 0; c < full; c += W) {
      const V d = VT<V>::load(dy + o + c), yy = VT<V>::load(y + o + c);
      vs = fma(d, yy, vs);
      vu = fma(VT<V>::load(ty + o + c), d, fma(yy, VT<V>::load(tdy + o + c), vu));
    }
    if (full < cols) {
      const V d = VT<V>::mload(dy + o + full, tail), yy = VT<V>::mload(y + o + full, tail);
      vs = fma(d, yy, vs);
      vu = fma(VT<V>::mload(ty + o + full, tail), d, fma(yy, VT<V>::mload(tdy + o + full, tail), vu));
    }
    const V s = C<V>(VT<V>::hsum(vs)), u = C<V>(VT<V>::hsum(vu));
    auto value = [&](V t, V d, V yy, V td) { return fma(t, sub(d, s), mul(yy, sub(td, u))); };
    for (int64_t c = 0; c < full; c += W)
      VT<V>::store(tdx + o + c, value(VT<V>::load(ty + o + c), VT<V>::load(dy + o + c), VT<V>::load(y + o + c),
                                      VT<V>::load(tdy + o + c)));
    if (full < cols)
      VT<V>::mstore(tdx + o + full, tail,
                    value(VT<V>::mload(ty + o + full, tail), VT<V>::mload(dy + o + full, tail),
                          VT<V>::mload(y + o + full, tail), VT<V>::mload(tdy + o + full, tail)));
  }
}

template <typename S, void (*F)(int64_t, int64_t, const S*, const S*, const S*, const S*, S*)>
void on_rows4(int64_t rows, int64_t cols, const S* y, const S* ty, const S* dy, const S* tdy, S* tdx) {
  in_row_blocks(rows, cols, [&](int64_t lo, int64_t hi) {
    const int64_t o = lo * cols;
    F(hi - lo, cols, y + o, ty + o, dy + o, tdy + o, tdx + o);
  });
}

// Masked rows: the hidden logits become -inf in y (exp_diff makes their weights exactly 0), then
// each row is the plain forward in place; a row that hides every logit is zeros.
template <typename V, typename S = typename VT<V>::S>
void masked_forward(int64_t batch, int64_t heads, int64_t m, int64_t n, const S* x, const S* mask, S* y) {
  in_row_blocks(batch * heads * m, n, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const S* mr = mask + ((r / (heads * m)) * m + r % m) * n;
      const S* xr = x + r * n;
      S* yr = y + r * n;
      int64_t seen = 0;
      for (int64_t j = 0; j < n; ++j) {
        const bool keep = mr[j] != S(0);
        yr[j] = keep ? xr[j] : S(-INFINITY);
        seen += keep;
      }
      if (seen) forward<V>(1, n, yr, yr);
      else std::fill(yr, yr + n, S(0));
    }
  });
}

template <typename V, typename S = typename VT<V>::S>
constexpr SoftmaxKernels<S> table() {
  return {&on_rows<S, &forward<V>>, &on_rows<S, &backward<V>>, &on_rows<S, &log_forward<V>>,
          &on_rows<S, &log_backward<V>>, &masked_forward<V>, &on_rows4<S, &backward_tangent<V>>};
}

}  // namespace

const SoftmaxKernels<float> softmax_avx2_f32 = table<__m256>();
const SoftmaxKernels<double> softmax_avx2_f64 = table<__m256d>();

}  // namespace portgrad::kernels
