/// @brief Normalisation kernels (batch statistics per channel, layer statistics per row) and the
/// dropout mask, forward and backward.
///
/// Layouts are dense and row-major. Batch normalisation sees x as (batch, channels, spatial): the
/// statistics of channel c run over every batch element and spatial position (m = batch*spatial
/// values). Layer normalisation sees x as (batch, rows, cols): every row of every example is
/// normalised over its `cols` values. Gradients are overwritten, never accumulated; a null output
/// pointer means "do not compute it". Statistics are kept as the mean and the inverse standard
/// deviation invstd = 1/sqrt(var + eps), with var the biased variance (divided by m).
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

template <typename T>
struct NormKernels {
  // --- Batch normalisation: per-channel statistics over batch and spatial positions.
  // mean[c] = mean of x[:, c, :]; var[c] = its biased variance (two passes; m >= 1).
  void (*channel_moments)(int64_t batch, int64_t channels, int64_t spatial, const T* x, T* mean, T* var);
  // invstd[i] = 1 / sqrt(var[i] + eps), i < n.
  void (*inv_std)(int64_t n, const T* var, double eps, T* invstd);
  // y[b, c, s] = gamma[c] * (x[b, c, s] - mean[c]) * invstd[c] + beta[c]. y may alias x.
  void (*channel_forward)(int64_t batch, int64_t channels, int64_t spatial, const T* x, const T* mean,
                          const T* invstd, const T* gamma, const T* beta, T* y);
  // The backward of channel_forward, xhat = (x - mean) invstd:
  //   dgamma[c] = sum dy xhat, dbeta[c] = sum dy (over batch and spatial);
  //   batch_stats false (mean and invstd are constants): dx = gamma invstd dy;
  //   batch_stats true (they are x's own statistics, as channel_moments and inv_std made them):
  //   dx = gamma invstd (dy - sum(dy)/m - xhat sum(dy xhat)/m).
  void (*channel_backward)(int64_t batch, int64_t channels, int64_t spatial, const T* x, const T* dy,
                           const T* mean, const T* invstd, const T* gamma, bool batch_stats, T* dx, T* dgamma,
                           T* dbeta);
  // Moving statistics: running_mean = momentum running_mean + (1 - momentum) mean and
  // running_var = momentum running_var + (1 - momentum) var m / (m - 1) (the unbiased variance;
  // m >= 2 values per channel).
  void (*running_update)(int64_t channels, double momentum, int64_t m, const T* mean, const T* var, T* running_mean,
                         T* running_var);

  // --- Layer normalisation: every row of (batch, rows, cols) over its cols values.
  // y = gamma * (x - mean_row) * invstd_row + beta, where gamma and beta are indexed by row (length
  // rows) or, with per_element, by element of the example (length rows*cols). mean and invstd
  // (batch*rows values each) are written for the backward. y must not alias x.
  void (*row_forward)(int64_t batch, int64_t rows, int64_t cols, bool per_element, double eps, const T* x,
                      const T* gamma, const T* beta, T* y, T* mean, T* invstd);
  // With g = dy gamma: dx = invstd (g - mean_cols(g) - xhat mean_cols(g xhat)); dgamma and dbeta
  // are summed over the batch (and over cols when per row), examples in order (deterministic).
  void (*row_backward)(int64_t batch, int64_t rows, int64_t cols, bool per_element, const T* x, const T* dy,
                       const T* mean, const T* invstd, const T* gamma, T* dx, T* dgamma, T* dbeta);

  // --- Dropout: y[i] = x[i] / (1 - p) where dropout_keep(key, i, p), else 0; 0 <= p < 1. y may
  // alias x. The map is linear and diagonal, so the backward is the same call on dy.
  void (*dropout)(int64_t n, double p, uint64_t key, const T* x, T* y);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(NormKernels, norm)

// --- The dropout mask: a counter-based hash of (key, element index), so any variant, any thread
// and the backward reproduce it without storing it. `static` (one copy per translation unit), so
// an AVX2-compiled copy can never serve scalar code (STYLE.md 4).
// Under nvcc the helpers are also device functions, so the CUDA dropout kernel draws the same
// mask from this one definition; a C++ compiler sees plain `static inline` functions.
#ifndef PG_DROPOUT_RNG_HD
#if defined(__CUDACC__)
#define PG_DROPOUT_RNG_HD __host__ __device__
#else
#define PG_DROPOUT_RNG_HD
#endif
#endif
namespace dropout_rng {
// A 32-bit integer hash (a bijection; "lowbias32" constants).
PG_DROPOUT_RNG_HD static inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}
PG_DROPOUT_RNG_HD static inline uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
// The per-call key from the evaluation's seed and a per-layer salt.
PG_DROPOUT_RNG_HD static inline uint64_t key(uint64_t seed, uint64_t salt) { return splitmix64(seed ^ splitmix64(salt)); }
// 32 random bits for element i: two rounds of mix32, each keyed by one half of the key.
PG_DROPOUT_RNG_HD static inline uint32_t bits(uint64_t key, uint64_t i) {
  return mix32(mix32(static_cast<uint32_t>(i) ^ static_cast<uint32_t>(key)) ^
               (static_cast<uint32_t>(i >> 32) + static_cast<uint32_t>(key >> 32)));
}
// Elements with bits >= threshold are kept: probability 1 - p (to 2^-32).
PG_DROPOUT_RNG_HD static inline uint32_t threshold(double p) {
  const double t = p * 4294967296.0;
  return t <= 0 ? 0u : t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
}
}  // namespace dropout_rng

}  // namespace portgrad::kernels
