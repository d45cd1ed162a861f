/// @brief AVX2 optimiser steps: kernels/optim_step.h's element operations, eight floats (four
/// doubles) at a time, the tail under a mask. Compiled without fused multiply-adds (CMakeLists.txt),
/// so every element gets the reference's bits. Long arrays are shared out to the GEMM's threads in
/// fixed blocks.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/threadpool.h"
#include "kernels/gemm.h"
#include "kernels/optim.h"
#include "kernels/optim_step.h"

namespace portgrad::kernels {
namespace {

template <typename T> struct Vec;

template <> struct Vec<float> {
  using R = __m256;
  static constexpr int W = 8;
  static R set1(float x) { return _mm256_set1_ps(x); }
  static __m256i mask(int64_t count) {  // lanes [0, count) on, count in [0, W]
    static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + W - count));
  }
  static R load(const float* p, __m256i m, bool full) { return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m); }
  static void store(float* p, R v, __m256i m, bool full) {
    if (full) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, m, v);
  }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R sqrt(R a) { return _mm256_sqrt_ps(a); }
  static R gt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static R blend(R a, R b, R m) { return _mm256_blendv_ps(a, b, m); }
};

template <> struct Vec<double> {
  using R = __m256d;
  static constexpr int W = 4;
  static R set1(double x) { return _mm256_set1_pd(x); }
  static __m256i mask(int64_t count) {
    static const int64_t table[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + W - count));
  }
  static R load(const double* p, __m256i m, bool full) { return full ? _mm256_loadu_pd(p) : _mm256_maskload_pd(p, m); }
  static void store(double* p, R v, __m256i m, bool full) {
    if (full) _mm256_storeu_pd(p, v);
    else _mm256_maskstore_pd(p, m, v);
  }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R div(R a, R b) { return _mm256_div_pd(a, b); }
  static R sqrt(R a) { return _mm256_sqrt_pd(a); }
  static R gt(R a, R b) { return _mm256_cmp_pd(a, b, _CMP_GT_OQ); }
  static R blend(R a, R b, R m) { return _mm256_blendv_pd(a, b, m); }
};

// f(i, mask, full) over [0, n) a vector at a time, in blocks shared out to threads when n is long.
template <typename T, typename F>
void for_vectors(int64_t n, F f) {
  constexpr int W = Vec<T>::W;
  constexpr int64_t kBlock = 8192;
  auto range = [&](int64_t lo, int64_t hi) {
    const __m256i all = Vec<T>::mask(W);
    int64_t i = lo;
    for (; i + W <= hi; i += W) f(i, all, true);
    if (i < hi) f(i, Vec<T>::mask(hi - i), false);
  };
  cpu::for_blocks(gemm_num_threads(), n, kBlock, 8 * kBlock, range);
}

// optim_gradient, vectorised.
template <typename T>
struct VecCoefficients {
  using V = Vec<T>;
  using R = typename V::R;
  R scale, clip, neg_clip, l2;
  bool clipped, regularised;
  explicit VecCoefficients(const OptimCoefficients<T>& k)
      : scale(V::set1(k.scale)), clip(V::set1(k.clip)), neg_clip(V::set1(-k.clip)), l2(V::set1(k.l2)),
        clipped(k.clipped), regularised(k.regularised) {}
  R gradient(R grad, R w) const {
    R g = V::mul(scale, grad);
    if (clipped) {
      g = V::blend(g, clip, V::gt(g, clip));
      g = V::blend(g, neg_clip, V::gt(neg_clip, g));
    }
    if (regularised) g = V::add(g, V::mul(l2, w));
    return g;
  }
};

template <typename T>
void sgd_avx2(int64_t n, const OptimStep& s, const T* grad, T* w, T* velocity) {
  using V = Vec<T>;
  const OptimCoefficients<T> k(s);
  const VecCoefficients<T> vk(k);
  const auto momentum = V::set1(k.momentum), lr = V::set1(k.lr);
  for_vectors<T>(n, [&](int64_t i, __m256i m, bool full) {
    const auto w0 = V::load(w + i, m, full);
    const auto g = vk.gradient(V::load(grad + i, m, full), w0);
    const auto v = V::add(V::mul(momentum, V::load(velocity + i, m, full)), g);
    V::store(velocity + i, v, m, full);
    V::store(w + i, V::sub(w0, V::mul(lr, v)), m, full);
  });
}

template <typename T>
void adam_avx2(int64_t n, const OptimStep& s, const T* grad, T* w, T* mom, T* sq) {
  using V = Vec<T>;
  const OptimCoefficients<T> k(s);
  const VecCoefficients<T> vk(k);
  const auto decay = V::set1(k.decay_factor), b1 = V::set1(k.beta1), c1 = V::set1(k.one_minus_beta1),
             b2 = V::set1(k.beta2), c2 = V::set1(k.one_minus_beta2), step = V::set1(k.step),
             sqrt_c2 = V::set1(k.sqrt_c2), eps = V::set1(k.eps);
  for_vectors<T>(n, [&](int64_t i, __m256i m, bool full) {
    const auto w0 = V::load(w + i, m, full);
    const auto g = vk.gradient(V::load(grad + i, m, full), w0);
    const auto w1 = V::mul(w0, decay);
    const auto mv = V::add(V::mul(b1, V::load(mom + i, m, full)), V::mul(c1, g));
    const auto sv = V::add(V::mul(b2, V::load(sq + i, m, full)), V::mul(V::mul(c2, g), g));
    const auto denom = V::add(V::div(V::sqrt(sv), sqrt_c2), eps);
    V::store(mom + i, mv, m, full);
    V::store(sq + i, sv, m, full);
    V::store(w + i, V::add(w1, V::mul(step, V::div(mv, denom))), m, full);
  });
}

template <typename T>
void rmsprop_avx2(int64_t n, const OptimStep& s, const T* grad, T* w, T* sq) {
  using V = Vec<T>;
  const OptimCoefficients<T> k(s);
  const VecCoefficients<T> vk(k);
  const auto rho = V::set1(k.rho), c = V::set1(k.one_minus_rho), neg_lr = V::set1(k.neg_lr), eps = V::set1(k.eps);
  for_vectors<T>(n, [&](int64_t i, __m256i m, bool full) {
    const auto w0 = V::load(w + i, m, full);
    const auto g = vk.gradient(V::load(grad + i, m, full), w0);
    const auto sv = V::add(V::mul(rho, V::load(sq + i, m, full)), V::mul(V::mul(c, g), g));
    V::store(sq + i, sv, m, full);
    V::store(w + i, V::add(w0, V::mul(neg_lr, V::div(g, V::add(V::sqrt(sv), eps)))), m, full);
  });
}

template <typename T>
void moving_average_avx2(int64_t n, double momentum, double scale, const T* x, T* avg) {
  using V = Vec<T>;
  const auto a = V::set1(T(momentum)), b = V::set1(T((1.0 - momentum) * scale));
  for_vectors<T>(n, [&](int64_t i, __m256i m, bool full) {
    V::store(avg + i, V::add(V::mul(a, V::load(avg + i, m, full)), V::mul(b, V::load(x + i, m, full))), m, full);
  });
}

}  // namespace

const OptimKernels<float> optim_avx2_f32{&sgd_avx2<float>, &adam_avx2<float>, &rmsprop_avx2<float>,
                                         &moving_average_avx2<float>};
const OptimKernels<double> optim_avx2_f64{&sgd_avx2<double>, &adam_avx2<double>, &rmsprop_avx2<double>,
                                          &moving_average_avx2<double>};

}  // namespace portgrad::kernels
