/// @brief AVX2+FMA normalisation and dropout kernels, fp32 and fp64 from one template. Loops run
/// along the contiguous axis with masked tails; batch normalisation of (batch, channels) data
/// (spatial == 1) runs along the channels instead. Sums accumulate in the working precision.
#include <immintrin.h>

#include <cmath>

#include "kernels/cpu/vecmath_avx2.h"
#include "kernels/norm.h"

namespace portgrad::kernels {
namespace {

// Up to W elements at p, for a loop over n elements whose current remainder is `rem`.
template <typename V>
struct Chunk {
  using S = typename VT<V>::S;
  static constexpr int W = VT<V>::W;
  __m256i tail;
  explicit Chunk(int64_t n) : tail(VT<V>::mask(n % W)) {}
  V load(const S* p, int64_t rem) const { return rem >= W ? VT<V>::load(p) : VT<V>::mload(p, tail); }
  void store(S* p, int64_t rem, V v) const {
    if (rem >= W) VT<V>::store(p, v);
    else VT<V>::mstore(p, tail, v);
  }
  V keep(int64_t rem, V v) const { return rem >= W ? v : vand(v, as_mask<V>(tail)); }
};

template <typename V> using Sc = typename VT<V>::S;

template <typename V>
void channel_moments(int64_t B, int64_t NC, int64_t S, const Sc<V>* x, Sc<V>* mean, Sc<V>* var) {
  constexpr int W = VT<V>::W;
  const double m = double(B) * double(S);
  if (S == 1) {  // (batch, channels): lanes are channels
    const Chunk<V> ch(NC);
    for (int64_t c = 0; c < NC; c += W) {
      const int64_t rem = NC - c;
      V s = C<V>(0.0);
      for (int64_t b = 0; b < B; ++b) s = add(s, ch.load(x + b * NC + c, rem));
      const V mu = div(s, C<V>(m));
      V q = C<V>(0.0);
      for (int64_t b = 0; b < B; ++b) {
        const V d = sub(ch.load(x + b * NC + c, rem), mu);  // masked lanes: 0 - 0
        q = fma(d, d, q);
      }
      ch.store(mean + c, rem, mu);
      ch.store(var + c, rem, div(q, C<V>(m)));
    }
    return;
  }
  const Chunk<V> ch(S);
  for (int64_t c = 0; c < NC; ++c) {
    V s = C<V>(0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < S; k += W) s = add(s, ch.load(x + (b * NC + c) * S + k, S - k));
    const double mu = double(VT<V>::hsum(s)) / m;
    const V vmu = C<V>(mu);
    V q = C<V>(0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < S; k += W) {
        const V d = ch.keep(S - k, sub(ch.load(x + (b * NC + c) * S + k, S - k), vmu));
        q = fma(d, d, q);
      }
    mean[c] = static_cast<Sc<V>>(mu);
    var[c] = static_cast<Sc<V>>(double(VT<V>::hsum(q)) / m);
  }
}

template <typename V>
void inv_std(int64_t n, const Sc<V>* var, double eps, Sc<V>* invstd) {
  constexpr int W = VT<V>::W;
  const Chunk<V> ch(n);
  for (int64_t i = 0; i < n; i += W)
    ch.store(invstd + i, n - i, div(C<V>(1.0), vsqrt(add(ch.load(var + i, n - i), C<V>(eps)))));
}

template <typename V>
void channel_forward(int64_t B, int64_t NC, int64_t S, const Sc<V>* x, const Sc<V>* mean, const Sc<V>* invstd,
                     const Sc<V>* gamma, const Sc<V>* beta, Sc<V>* y) {
  constexpr int W = VT<V>::W;
  if (S == 1) {
    const Chunk<V> ch(NC);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < NC; c += W) {
        const int64_t rem = NC - c;
        const V xh = mul(sub(ch.load(x + b * NC + c, rem), ch.load(mean + c, rem)), ch.load(invstd + c, rem));
        ch.store(y + b * NC + c, rem, fma(ch.load(gamma + c, rem), xh, ch.load(beta + c, rem)));
      }
    return;
  }
  const Chunk<V> ch(S);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < NC; ++c) {
      const V mu = C<V>(mean[c]), is = C<V>(invstd[c]), g = C<V>(gamma[c]), be = C<V>(beta[c]);
      const Sc<V>* xr = x + (b * NC + c) * S;
      Sc<V>* yr = y + (b * NC + c) * S;
      for (int64_t k = 0; k < S; k += W) ch.store(yr + k, S - k, fma(g, mul(sub(ch.load(xr + k, S - k), mu), is), be));
    }
}

template <typename V>
void channel_backward(int64_t B, int64_t NC, int64_t S, const Sc<V>* x, const Sc<V>* dy, const Sc<V>* mean,
                      const Sc<V>* invstd, const Sc<V>* gamma, bool batch_stats, Sc<V>* dx, Sc<V>* dgamma,
                      Sc<V>* dbeta) {
  constexpr int W = VT<V>::W;
  const double m = double(B) * double(S);
  if (S == 1) {
    const Chunk<V> ch(NC);
    for (int64_t c = 0; c < NC; c += W) {
      const int64_t rem = NC - c;
      const V mu = ch.load(mean + c, rem), is = ch.load(invstd + c, rem), g = ch.load(gamma + c, rem);
      V sdy = C<V>(0.0), sdyx = C<V>(0.0);
      for (int64_t b = 0; b < B; ++b) {
        const V d = ch.load(dy + b * NC + c, rem);
        sdy = add(sdy, d);
        sdyx = fma(d, mul(sub(ch.load(x + b * NC + c, rem), mu), is), sdyx);
      }
      if (dgamma) ch.store(dgamma + c, rem, sdyx);
      if (dbeta) ch.store(dbeta + c, rem, sdy);
      if (!dx) continue;
      const V a = batch_stats ? div(sdy, C<V>(m)) : C<V>(0.0), q = batch_stats ? div(sdyx, C<V>(m)) : C<V>(0.0);
      const V gis = mul(g, is);
      for (int64_t b = 0; b < B; ++b) {
        const V xh = mul(sub(ch.load(x + b * NC + c, rem), mu), is);
        ch.store(dx + b * NC + c, rem, mul(gis, fnma(xh, q, sub(ch.load(dy + b * NC + c, rem), a))));
      }
    }
    return;
  }
  const Chunk<V> ch(S);
  for (int64_t c = 0; c < NC; ++c) {
    const V mu = C<V>(mean[c]), is = C<V>(invstd[c]);
    V sdy = C<V>(0.0), sdyx = C<V>(0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < S; k += W) {
        const int64_t i = (b * NC + c) * S + k;
        const V d = ch.load(dy + i, S - k);  // masked lanes are 0, so their products are too
        sdy = add(sdy, d);
        sdyx = fma(d, mul(sub(ch.load(x + i, S - k), mu), is), sdyx);
      }
    const double s1 = VT<V>::hsum(sdy), s2 = VT<V>::hsum(sdyx);
    if (dgamma) dgamma[c] = static_cast<Sc<V>>(s2);
    if (dbeta) dbeta[c] = static_cast<Sc<V>>(s1);
    if (!dx) continue;
    const V a = C<V>(batch_stats ? s1 / m : 0.0), q = C<V>(batch_stats ? s2 / m : 0.0);
    const V gis = C<V>(double(gamma[c]) * double(invstd[c]));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < S; k += W) {
        const int64_t i = (b * NC + c) * S + k;
        const V xh = mul(sub(ch.load(x + i, S - k), mu), is);
        ch.store(dx + i, S - k, mul(gis, fnma(xh, q, sub(ch.load(dy + i, S - k), a))));
      }
  }
}

// A handful of values per call: plain code.
template <typename V>
void running_update(int64_t NC, double momentum, int64_t m, const Sc<V>* mean, const Sc<V>* var, Sc<V>* rmean,
                    Sc<V>* rvar) {
  const double unbias = m > 1 ? double(m) / double(m - 1) : 1.0;
  for (int64_t c = 0; c < NC; ++c) {
    rmean[c] = static_cast<Sc<V>>(momentum * double(rmean[c]) + (1.0 - momentum) * double(mean[c]));
    rvar[c] = static_cast<Sc<V>>(momentum * double(rvar[c]) + (1.0 - momentum) * double(var[c]) * unbias);
  }
}

template <typename V>
void row_forward(int64_t B, int64_t R, int64_t N, bool per_element, double eps, const Sc<V>* x,
                 const Sc<V>* gamma, const Sc<V>* beta, Sc<V>* y, Sc<V>* mean, Sc<V>* invstd) {
  constexpr int W = VT<V>::W;
  const Chunk<V> ch(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r) {
      const Sc<V>* xr = x + (b * R + r) * N;
      Sc<V>* yr = y + (b * R + r) * N;
      V s = C<V>(0.0);
      for (int64_t k = 0; k < N; k += W) s = add(s, ch.load(xr + k, N - k));
      const double mu = double(VT<V>::hsum(s)) / double(N);
      const V vmu = C<V>(mu);
      V q = C<V>(0.0);
      for (int64_t k = 0; k < N; k += W) {
        const V d = ch.keep(N - k, sub(ch.load(xr + k, N - k), vmu));
        q = fma(d, d, q);
      }
      const double is = 1.0 / std::sqrt(double(VT<V>::hsum(q)) / double(N) + eps);
      mean[b * R + r] = static_cast<Sc<V>>(mu);
      invstd[b * R + r] = static_cast<Sc<V>>(is);
      const V vis = C<V>(is);
      if (per_element) {
        const Sc<V>* g = gamma + r * N;
        const Sc<V>* be = beta + r * N;
        for (int64_t k = 0; k < N; k += W)
          ch.store(yr + k, N - k,
                   fma(ch.load(g + k, N - k), mul(sub(ch.load(xr + k, N - k), vmu), vis), ch.load(be + k, N - k)));
      } else {
        const V g = C<V>(gamma[r]), be = C<V>(beta[r]);
        for (int64_t k = 0; k < N; k += W) ch.store(yr + k, N - k, fma(g, mul(sub(ch.load(xr + k, N - k), vmu), vis), be));
      }
    }
}

template <typename V>
void row_backward(int64_t B, int64_t R, int64_t N, bool per_element, const Sc<V>* x, const Sc<V>* dy,
                  const Sc<V>* mean, const Sc<V>* invstd, const Sc<V>* gamma, Sc<V>* dx, Sc<V>* dgamma,
                  Sc<V>* dbeta) {
  constexpr int W = VT<V>::W;
  const Chunk<V> ch(N);
  // Parameter gradients, examples in order.
  if (dgamma || dbeta) {
    for (int64_t r = 0; r < R; ++r) {
      if (per_element) {
        for (int64_t k = 0; k < N; k += W) {
          V sg = C<V>(0.0), sb = C<V>(0.0);
          for (int64_t b = 0; b < B; ++b) {
            const int64_t i = (b * R + r) * N + k;
            const V d = ch.load(dy + i, N - k);
            sg = fma(d, mul(sub(ch.load(x + i, N - k), C<V>(mean[b * R + r])), C<V>(invstd[b * R + r])), sg);
            sb = add(sb, d);
          }
          if (dgamma) ch.store(dgamma + r * N + k, N - k, sg);
          if (dbeta) ch.store(dbeta + r * N + k, N - k, sb);
        }
      } else {
        V sg = C<V>(0.0), sb = C<V>(0.0);
        for (int64_t b = 0; b < B; ++b) {
          const V mu = C<V>(mean[b * R + r]), is = C<V>(invstd[b * R + r]);
          for (int64_t k = 0; k < N; k += W) {
            const int64_t i = (b * R + r) * N + k;
            const V d = ch.load(dy + i, N - k);
            sg = fma(d, mul(sub(ch.load(x + i, N - k), mu), is), sg);
            sb = add(sb, d);
          }
        }
        if (dgamma) dgamma[r] = VT<V>::hsum(sg);
        if (dbeta) dbeta[r] = VT<V>::hsum(sb);
      }
    }
  }
  if (!dx) return;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r) {
      const V mu = C<V>(mean[b * R + r]), is = C<V>(invstd[b * R + r]);
      const int64_t base = (b * R + r) * N;
      const Sc<V>* gp = per_element ? gamma + r * N : nullptr;
      const V gr = C<V>(per_element ? 0.0 : double(gamma[r]));
      auto g_at = [&](int64_t k) { return mul(ch.load(dy + base + k, N - k), gp ? ch.load(gp + k, N - k) : gr); };
      V sg = C<V>(0.0), sgx = C<V>(0.0);
      for (int64_t k = 0; k < N; k += W) {
        const V g = g_at(k);  // masked lanes: dy = 0
        sg = add(sg, g);
        sgx = fma(g, mul(sub(ch.load(x + base + k, N - k), mu), is), sgx);
      }
      const V a = C<V>(double(VT<V>::hsum(sg)) / double(N)), q = C<V>(double(VT<V>::hsum(sgx)) / double(N));
      for (int64_t k = 0; k < N; k += W) {
        const V xh = mul(sub(ch.load(x + base + k, N - k), mu), is);
        ch.store(dx + base + k, N - k, mul(is, fnma(xh, q, sub(g_at(k), a))));
      }
    }
}

// ---- dropout: the hash of dropout_rng::bits on 4 or 8 lanes -----------------------------------
static inline __m256i mix32(__m256i x) {
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7feb352d));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(static_cast<int>(0x846ca68bU)));
  return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}
static inline __m128i mix32(__m128i x) {
  x = _mm_xor_si128(x, _mm_srli_epi32(x, 16));
  x = _mm_mullo_epi32(x, _mm_set1_epi32(0x7feb352d));
  x = _mm_xor_si128(x, _mm_srli_epi32(x, 15));
  x = _mm_mullo_epi32(x, _mm_set1_epi32(static_cast<int>(0x846ca68bU)));
  return _mm_xor_si128(x, _mm_srli_epi32(x, 16));
}
// All-ones lanes where the element at index i + lane is kept.
static inline __m256 keep_mask(__m256, uint64_t key, uint64_t i, uint32_t thr) {
  const __m256i lo = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(i))),
                                      _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(i >> 32) + static_cast<uint32_t>(key >> 32)));
  const __m256i h =
      mix32(_mm256_xor_si256(mix32(_mm256_xor_si256(lo, _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(key))))), hi));
  const __m256i t = _mm256_set1_epi32(static_cast<int>(thr));
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_max_epu32(h, t), h));
}
static inline __m256d keep_mask(__m256d, uint64_t key, uint64_t i, uint32_t thr) {
  const __m128i lo = _mm_add_epi32(_mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(i))), _mm_setr_epi32(0, 1, 2, 3));
  const __m128i hi = _mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(i >> 32) + static_cast<uint32_t>(key >> 32)));
  const __m128i h = mix32(_mm_xor_si128(mix32(_mm_xor_si128(lo, _mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(key))))), hi));
  const __m128i t = _mm_set1_epi32(static_cast<int>(thr));
  return _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_cmpeq_epi32(_mm_max_epu32(h, t), h)));
}

template <typename V>
void dropout(int64_t n, double p, uint64_t key, const Sc<V>* x, Sc<V>* y) {
  constexpr int W = VT<V>::W;
  const uint32_t thr = dropout_rng::threshold(p);
  const double scale = 1.0 / (1.0 - p);
  const V vs = C<V>(scale);
  int64_t i = 0;
  while (i < n) {
    // Whole vectors whose low index halves do not wrap; the rest element by element.
    if (n - i >= W && static_cast<uint32_t>(i) <= 0xFFFFFFFFu - W) {
      VT<V>::store(y + i, vand(keep_mask(V{}, key, uint64_t(i), thr), mul(VT<V>::load(x + i), vs)));
      i += W;
    } else {
      y[i] = dropout_rng::bits(key, uint64_t(i)) >= thr ? static_cast<Sc<V>>(double(x[i]) * scale) : Sc<V>(0);
      ++i;
    }
  }
}

template <typename V>
constexpr NormKernels<Sc<V>> table() {
  return {&channel_moments<V>, &inv_std<V>,      &channel_forward<V>, &channel_backward<V>, &running_update<V>,
          &row_forward<V>,     &row_backward<V>, &dropout<V>};
}

}  // namespace

const NormKernels<float> norm_avx2_f32 = table<__m256>();
const NormKernels<double> norm_avx2_f64 = table<__m256d>();

}  // namespace portgrad::kernels
