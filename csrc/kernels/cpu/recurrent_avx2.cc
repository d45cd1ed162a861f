/// @brief AVX2+FMA recurrent cells (kernels/recurrent.h): the arithmetic of kernels/recurrent_cell.h
/// on vectors of one row's n elements (masked tails run the same math), with vecmath_avx2.h's fast
/// sigmoid and tanh (float: within 4 ulp at about half the work of the accurate ones). A step of a large
/// batch shares its rows out to the GEMM's threads (each element's math is its own: the same bits
/// on any count).
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/threadpool.h"
#include "kernels/cpu/vecmath_avx2.h"
#include "kernels/gemm.h"
#include "kernels/recurrent.h"

namespace portgrad::kernels {
namespace {

// f(j, mask) over the vectors of [0, n): a full mask except on the tail.
template <typename V, typename F>
inline void row_vectors(int64_t n, F f) {
  constexpr int W = VT<V>::W;
  const __m256i all = VT<V>::mask(W);
  int64_t j = 0;
  for (; j + W <= n; j += W) f(j, all);
  if (j < n) f(j, VT<V>::mask(n - j));
}

template <typename V> inline V one() { return C<V>(1.0); }

// f(b) for every row b < batch: in blocks of about 1024 elements claimed by the GEMM's threads once
// a step has 4096 elements (a 32 x 128 LSTM step takes ~15 us of sigmoid and tanh on one core).
template <typename F>
inline void rows(int64_t batch, int64_t n, F f) {
  const int64_t block = std::max<int64_t>(1, 1024 / std::max<int64_t>(n, 1));
  const int64_t min_rows = std::max<int64_t>(2, 4096 / std::max<int64_t>(n, 1));
  cpu::for_blocks(gemm_num_threads(), batch, block, min_rows, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) f(b);
  });
}

template <typename V>
void lstm_forward(int64_t batch, int64_t n, typename VT<V>::S* g, int64_t ldg, const typename VT<V>::S* c_prev,
                  typename VT<V>::S* c, typename VT<V>::S* s, int64_t lds) {
  using T = VT<V>;
  rows(batch, n, [&](int64_t b) {
    auto* row = g + b * ldg;
    row_vectors<V>(n, [&](int64_t j, __m256i k) {
      const V i = sigmoid_fast(T::mload(row + j, k)), o = sigmoid_fast(T::mload(row + n + j, k));
      const V f = sigmoid_fast(T::mload(row + 2 * n + j, k)), m = tanh_fast(T::mload(row + 3 * n + j, k));
      const V cv = fma(f, T::mload(c_prev + b * n + j, k), mul(i, m));
      T::mstore(row + j, k, i), T::mstore(row + n + j, k, o), T::mstore(row + 2 * n + j, k, f);
      T::mstore(row + 3 * n + j, k, m);
      T::mstore(c + b * n + j, k, cv);
      T::mstore(s + b * lds + j, k, mul(o, tanh_fast(cv)));
    });
  });
}

template <typename V>
void lstm_backward(int64_t batch, int64_t n, const typename VT<V>::S* a, int64_t lda, const typename VT<V>::S* c_prev,
                   const typename VT<V>::S* c, const typename VT<V>::S* ds, int64_t ldds,
                   const typename VT<V>::S* ds2, typename VT<V>::S* dc, typename VT<V>::S* dg, int64_t lddg) {
  using T = VT<V>;
  rows(batch, n, [&](int64_t b) {
    const auto* row = a + b * lda;
    auto* out = dg + b * lddg;
    row_vectors<V>(n, [&](int64_t j, __m256i k) {
      const int64_t e = b * n + j;
      const V i = T::mload(row + j, k), o = T::mload(row + n + j, k), f = T::mload(row + 2 * n + j, k);
      const V m = T::mload(row + 3 * n + j, k);
      V d = T::mload(ds + b * ldds + j, k);
      if (ds2) d = add(d, T::mload(ds2 + e, k));
      const V th = tanh_fast(T::mload(c + e, k));
      const V dct = add(T::mload(dc + e, k), mul(mul(d, o), sub(one<V>(), mul(th, th))));
      T::mstore(out + n + j, k, mul(mul(mul(d, th), o), sub(one<V>(), o)));
      T::mstore(out + j, k, mul(mul(mul(dct, m), i), sub(one<V>(), i)));
      T::mstore(out + 2 * n + j, k, mul(mul(mul(dct, T::mload(c_prev + e, k)), f), sub(one<V>(), f)));
      T::mstore(out + 3 * n + j, k, mul(mul(dct, i), sub(one<V>(), mul(m, m))));
      T::mstore(dc + e, k, mul(dct, f));
    });
  });
}

template <typename V>
void gru_forward(int64_t batch, int64_t n, typename VT<V>::S* g, int64_t ldg, const typename VT<V>::S* h,
                 const typename VT<V>::S* s_prev, int64_t ldp, typename VT<V>::S* s, int64_t lds) {
  using T = VT<V>;
  rows(batch, n, [&](int64_t b) {
    auto* row = g + b * ldg;
    row_vectors<V>(n, [&](int64_t j, __m256i k) {
      const V i = sigmoid_fast(T::mload(row + j, k)), r = sigmoid_fast(T::mload(row + n + j, k));
      const V m = tanh_fast(add(T::mload(row + 2 * n + j, k), mul(r, T::mload(h + b * n + j, k))));
      T::mstore(row + j, k, i), T::mstore(row + n + j, k, r), T::mstore(row + 2 * n + j, k, m);
      T::mstore(s + b * lds + j, k, add(mul(sub(one<V>(), i), m), mul(i, T::mload(s_prev + b * ldp + j, k))));
    });
  });
}

template <typename V>
void gru_backward(int64_t batch, int64_t n, const typename VT<V>::S* a, int64_t lda, const typename VT<V>::S* h,
                  const typename VT<V>::S* s_prev, int64_t ldp, const typename VT<V>::S* ds, int64_t ldds,
                  const typename VT<V>::S* ds2, typename VT<V>::S* dg, int64_t lddg, typename VT<V>::S* dh,
                  typename VT<V>::S* ds_prev) {
  using T = VT<V>;
  rows(batch, n, [&](int64_t b) {
    const auto* row = a + b * lda;
    auto* out = dg + b * lddg;
    row_vectors<V>(n, [&](int64_t j, __m256i k) {
      const int64_t e = b * n + j;
      const V i = T::mload(row + j, k), r = T::mload(row + n + j, k), m = T::mload(row + 2 * n + j, k);
      V d = T::mload(ds + b * ldds + j, k);
      if (ds2) d = add(d, T::mload(ds2 + e, k));
      const V dz = mul(mul(d, sub(one<V>(), i)), sub(one<V>(), mul(m, m)));
      T::mstore(out + j, k, mul(mul(mul(d, sub(T::mload(s_prev + b * ldp + j, k), m)), i), sub(one<V>(), i)));
      T::mstore(out + n + j, k, mul(mul(mul(dz, T::mload(h + e, k)), r), sub(one<V>(), r)));
      T::mstore(out + 2 * n + j, k, dz);
      T::mstore(dh + e, k, mul(dz, r));
      T::mstore(ds_prev + e, k, mul(d, i));
    });
  });
}

template <typename V>
void lstm_jvp(int64_t batch, int64_t n, const typename VT<V>::S* a, int64_t lda, const typename VT<V>::S* c_prev,
              const typename VT<V>::S* c, const typename VT<V>::S* tg, int64_t ldtg, typename VT<V>::S* tc,
              typename VT<V>::S* ts, int64_t ldts) {
  using T = VT<V>;
  rows(batch, n, [&](int64_t b) {
    const auto *row = a + b * lda, *t = tg + b * ldtg;
    row_vectors<V>(n, [&](int64_t j, __m256i k) {
      const int64_t e = b * n + j;
      const V i = T::mload(row + j, k), o = T::mload(row + n + j, k), f = T::mload(row + 2 * n + j, k);
      const V m = T::mload(row + 3 * n + j, k);
      const V ti = mul(mul(i, sub(one<V>(), i)), T::mload(t + j, k));
      const V to = mul(mul(o, sub(one<V>(), o)), T::mload(t + n + j, k));
      const V tf = mul(mul(f, sub(one<V>(), f)), T::mload(t + 2 * n + j, k));
      const V tm = mul(sub(one<V>(), mul(m, m)), T::mload(t + 3 * n + j, k));
      const V tcv = add(add(add(mul(tf, T::mload(c_prev + e, k)), mul(f, T::mload(tc + e, k))), mul(ti, m)), mul(i, tm));
      const V th = tanh_fast(T::mload(c + e, k));
      T::mstore(tc + e, k, tcv);
      T::mstore(ts + b * ldts + j, k, add(mul(to, th), mul(mul(o, sub(one<V>(), mul(th, th))), tcv)));
    });
  });
}

template <typename V>
void gru_jvp(int64_t batch, int64_t n, const typename VT<V>::S* a, int64_t lda, const typename VT<V>::S* h,
             const typename VT<V>::S* th, const typename VT<V>::S* s_prev, const typename VT<V>::S* ts_prev,
             int64_t ldp, const typename VT<V>::S* tg, int64_t ldtg, typename VT<V>::S* ts, int64_t ldts) {
  using T = VT<V>;
  rows(batch, n, [&](int64_t b) {
    const auto *row = a + b * lda, *t = tg + b * ldtg;
    row_vectors<V>(n, [&](int64_t j, __m256i k) {
      const int64_t e = b * n + j;
      const V i = T::mload(row + j, k), r = T::mload(row + n + j, k), m = T::mload(row + 2 * n + j, k);
      const V ti = mul(mul(i, sub(one<V>(), i)), T::mload(t + j, k));
      const V tr = mul(mul(r, sub(one<V>(), r)), T::mload(t + n + j, k));
      const V tm = mul(sub(one<V>(), mul(m, m)),
                       add(add(T::mload(t + 2 * n + j, k), mul(tr, T::mload(h + e, k))), mul(r, T::mload(th + e, k))));
      const V sp = T::mload(s_prev + b * ldp + j, k);
      T::mstore(ts + b * ldts + j, k,
                add(add(mul(sub(one<V>(), i), tm), mul(ti, sub(sp, m))), mul(i, T::mload(ts_prev + b * ldp + j, k))));
    });
  });
}

// Blocks of 16 examples, each through every step on one thread: a step is then one product and
// one cell on the thread's own rows, with no barrier between steps (a 32 x 128 LSTM step is ~40 us,
// two barriers a step cost ~10 % of it). The blocks do not depend on the thread count, so
// neither do the results; products and cells inside a block run on the thread that owns it.
template <typename V, typename S = typename VT<V>::S>
void lstm_sequence(const GemmKernels<S>& gemm, int64_t batch, int64_t time, int64_t n, const S* w,
                   const void* packed_w, const S* s0, const S* c0, S* z, S* c, S* s) {
  constexpr int64_t kBlock = 16;
  cpu::for_blocks(gemm_num_threads(), batch, kBlock, 2 * kBlock, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; b += kBlock)
      lstm_sequence_rows<S>(&lstm_forward<V>, gemm, batch, b, std::min(hi, b + kBlock), time, n, w, packed_w, s0, c0, z,
                            c, s);
  });
}

template <typename V, typename S>
constexpr RecurrentKernels<S> table() {
  return {&lstm_forward<V>, &lstm_backward<V>, &gru_forward<V>, &gru_backward<V>, &lstm_jvp<V>, &gru_jvp<V>,
          &lstm_sequence<V>};
}

}  // namespace

const RecurrentKernels<float> recurrent_avx2_f32 = table<__m256, float>();
const RecurrentKernels<double> recurrent_avx2_f64 = table<__m256d, double>();

}  // namespace portgrad::kernels
