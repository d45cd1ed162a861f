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

// The lanes of a vector: all of them (plain loads and stores), or the first of a row's tail
// (masked: AMD's masked stores are several times slower than plain ones, so only the tail pays).
template <typename V, bool kFull>
struct Lanes {
  using S = typename VT<V>::S;
  __m256i k;
  V load(const S* p) const {
    if constexpr (kFull) return VT<V>::load(p);
    else return VT<V>::mload(p, k);
  }
  void store(S* p, V v) const {
    if constexpr (kFull) VT<V>::store(p, v);
    else VT<V>::mstore(p, k, v);
  }
};

// f(j, lanes) over the vectors of [0, n): full ones, then the tail.
template <typename V, typename F>
inline void row_vectors(int64_t n, F f) {
  constexpr int W = VT<V>::W;
  int64_t j = 0;
  for (; j + W <= n; j += W) f(j, Lanes<V, true>{});
  if (j < n) f(j, Lanes<V, false>{VT<V>::mask(n - j)});
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
    row_vectors<V>(n, [&](int64_t j, auto l) {
      const V i = sigmoid_fast(l.load(row + j)), o = sigmoid_fast(l.load(row + n + j));
      const V f = sigmoid_fast(l.load(row + 2 * n + j)), m = tanh_fast(l.load(row + 3 * n + j));
      const V cv = fma(f, l.load(c_prev + b * n + j), mul(i, m));
      l.store(row + j, i), l.store(row + n + j, o), l.store(row + 2 * n + j, f);
      l.store(row + 3 * n + j, m);
      l.store(c + b * n + j, cv);
      l.store(s + b * lds + j, mul(o, tanh_fast(cv)));
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
    row_vectors<V>(n, [&](int64_t j, auto l) {
      const int64_t e = b * n + j;
      const V i = l.load(row + j), o = l.load(row + n + j), f = l.load(row + 2 * n + j);
      const V m = l.load(row + 3 * n + j);
      V d = l.load(ds + b * ldds + j);
      if (ds2) d = add(d, l.load(ds2 + e));
      const V th = tanh_fast(l.load(c + e));
      const V dct = add(l.load(dc + e), mul(mul(d, o), sub(one<V>(), mul(th, th))));
      l.store(out + n + j, mul(mul(mul(d, th), o), sub(one<V>(), o)));
      l.store(out + j, mul(mul(mul(dct, m), i), sub(one<V>(), i)));
      l.store(out + 2 * n + j, mul(mul(mul(dct, l.load(c_prev + e)), f), sub(one<V>(), f)));
      l.store(out + 3 * n + j, mul(mul(dct, i), sub(one<V>(), mul(m, m))));
      l.store(dc + e, mul(dct, f));
    });
  });
}

template <typename V>
void gru_forward(int64_t batch, int64_t n, typename VT<V>::S* g, int64_t ldg, const typename VT<V>::S* h,
                 const typename VT<V>::S* s_prev, int64_t ldp, typename VT<V>::S* s, int64_t lds) {
  using T = VT<V>;
  rows(batch, n, [&](int64_t b) {
    auto* row = g + b * ldg;
    row_vectors<V>(n, [&](int64_t j, auto l) {
      const V i = sigmoid_fast(l.load(row + j)), r = sigmoid_fast(l.load(row + n + j));
      const V m = tanh_fast(add(l.load(row + 2 * n + j), mul(r, l.load(h + b * n + j))));
      l.store(row + j, i), l.store(row + n + j, r), l.store(row + 2 * n + j, m);
      l.store(s + b * lds + j, add(mul(sub(one<V>(), i), m), mul(i, l.load(s_prev + b * ldp + j))));
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
    row_vectors<V>(n, [&](int64_t j, auto l) {
      const int64_t e = b * n + j;
      const V i = l.load(row + j), r = l.load(row + n + j), m = l.load(row + 2 * n + j);
      V d = l.load(ds + b * ldds + j);
      if (ds2) d = add(d, l.load(ds2 + e));
      const V dz = mul(mul(d, sub(one<V>(), i)), sub(one<V>(), mul(m, m)));
      l.store(out + j, mul(mul(mul(d, sub(l.load(s_prev + b * ldp + j), m)), i), sub(one<V>(), i)));
      l.store(out + n + j, mul(mul(mul(dz, l.load(h + e)), r), sub(one<V>(), r)));
      l.store(out + 2 * n + j, dz);
      l.store(dh + e, mul(dz, r));
      l.store(ds_prev + e, mul(d, i));
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
    row_vectors<V>(n, [&](int64_t j, auto l) {
      const int64_t e = b * n + j;
      const V i = l.load(row + j), o = l.load(row + n + j), f = l.load(row + 2 * n + j);
      const V m = l.load(row + 3 * n + j);
      const V ti = mul(mul(i, sub(one<V>(), i)), l.load(t + j));
      const V to = mul(mul(o, sub(one<V>(), o)), l.load(t + n + j));
      const V tf = mul(mul(f, sub(one<V>(), f)), l.load(t + 2 * n + j));
      const V tm = mul(sub(one<V>(), mul(m, m)), l.load(t + 3 * n + j));
      const V tcv = add(add(add(mul(tf, l.load(c_prev + e)), mul(f, l.load(tc + e))), mul(ti, m)), mul(i, tm));
      const V th = tanh_fast(l.load(c + e));
      l.store(tc + e, tcv);
      l.store(ts + b * ldts + j, add(mul(to, th), mul(mul(o, sub(one<V>(), mul(th, th))), tcv)));
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
    row_vectors<V>(n, [&](int64_t j, auto l) {
      const int64_t e = b * n + j;
      const V i = l.load(row + j), r = l.load(row + n + j), m = l.load(row + 2 * n + j);
      const V ti = mul(mul(i, sub(one<V>(), i)), l.load(t + j));
      const V tr = mul(mul(r, sub(one<V>(), r)), l.load(t + n + j));
      const V tm = mul(sub(one<V>(), mul(m, m)),
                       add(add(l.load(t + 2 * n + j), mul(tr, l.load(h + e))), mul(r, l.load(th + e))));
      const V sp = l.load(s_prev + b * ldp + j);
      l.store(ts + b * ldts + j, add(add(mul(sub(one<V>(), i), tm), mul(ti, sub(sp, m))), mul(i, l.load(ts_prev + b * ldp + j))));
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
