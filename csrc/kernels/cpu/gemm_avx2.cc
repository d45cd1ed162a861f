/// @brief AVX2+FMA GEMM over strided operands: register-blocked broadcast and dot-product microkernels.
///
/// Paths, chosen by the operands' strides (see gemm.h for the contract):
///   - csa == 1 and rsb == 1 (both contiguous along k: A * W^T of a Linear forward, GEMV):
///     dot-product tiles of 4 rows of A x 2 rows of B (1x4 / 2x4 for the last rows), vectorised
///     along k with a masked k tail and one horizontal sum per output at the end.
///   - csb == 1 (rows of B contiguous along n: A*B and A^T*B): broadcast-A tiles of 6 rows x
///     2 vectors (fp32 6x16, fp64 6x8) with FMA, A read as strided scalars, over a zero-padded
///     stack panel of B (k blocks of 256, m blocks of 120); masked stores for the n edge. A single
///     row of A (x * W) instead streams B row by row into a stack accumulator chunk.
///   - anything else (e.g. A^T * B^T): scalar loops.
/// Every output element is summed in a fixed order that depends only on (m, n, k) and the
/// strides, so results are bit-identical from run to run. No heap allocation; the only buffers
/// are bounded stack arrays (16 KiB panel, 4 KiB accumulator chunk).
#include <immintrin.h>

#include "kernels/gemm.h"

namespace portgrad::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// Vector traits: one AVX2 register of T.

template <typename T> struct Vec;

template <> struct Vec<float> {
  using R = __m256;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  // Lanes [0, count) enabled, count in [0, W].
  static __m256i mask(int64_t count) {
    static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + W - count));
  }
  static R maskload(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  static void maskstore(float* p, __m256i m, R v) { _mm256_maskstore_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
};

template <> struct Vec<double> {
  using R = __m256d;
  static constexpr int W = 4;
  static R zero() { return _mm256_setzero_pd(); }
  static R set1(double x) { return _mm256_set1_pd(x); }
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, R v) { _mm256_storeu_pd(p, v); }
  static __m256i mask(int64_t count) {
    static const int64_t table[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + W - count));
  }
  static R maskload(const double* p, __m256i m) { return _mm256_maskload_pd(p, m); }
  static void maskstore(double* p, __m256i m, R v) { _mm256_maskstore_pd(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static double hsum(R v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
  }
};

// ---------------------------------------------------------------------------------------------
// Path 2: broadcast-A microkernel. C[0:MR, 0:NV*W] (the last vector masked when MASKED) from
// A[r*rsa + p*csa] and contiguous rows B[p*rsb + 0..]. beta == 0 never reads C.

constexpr int kBcastMR = 6;  // rows of the broadcast tile
constexpr int kBcastNV = 2;  // vectors of the broadcast tile (16 fp32 or 8 fp64 columns)
// Fewer rows use wider tiles (1x8 and 2x4 vectors) so enough accumulators hide FMA latency.

template <typename T, int MR, int NV, bool MASKED>
static inline void bcast_tile(int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                              const T* B, int64_t rsb, T beta, T* C, int64_t ldc, __m256i tail) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  R acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();

  for (int64_t p = 0; p < k; ++p) {
    R b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      b[v] = (MASKED && v == NV - 1) ? V::maskload(B + v * W, tail) : V::load(B + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const R a = V::set1(A[r * rsa]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(a, b[v], acc[r][v]);
    }
    A += csa;
    B += rsb;
  }

  const R va = V::set1(alpha), vb = V::set1(beta);
  const bool read_c = beta != T(0);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    T* c = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      R res = V::mul(va, acc[r][v]);
      if (MASKED && v == NV - 1) {
        if (read_c) res = V::fma(vb, V::maskload(c + v * W, tail), res);
        V::maskstore(c + v * W, tail, res);
      } else {
        if (read_c) res = V::fma(vb, V::load(c + v * W), res);
        V::store(c + v * W, res);
      }
    }
  }
}

// One row of A times B with contiguous rows (csb == 1): x * W. Streams B row by row, four rows
// at a time, into an accumulator chunk of kRowChunk columns on the stack, so B is read along its
// rows (prefetch friendly) rather than down strided columns.
constexpr int kRowChunk = 512;  // columns per accumulator chunk (2 KiB fp32, 4 KiB fp64)

template <typename T>
static void bcast_one_row(int64_t n, int64_t k, T alpha, const T* A, int64_t csa, const T* B,
                          int64_t rsb, T beta, T* C) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  alignas(32) T acc[kRowChunk];
  const bool read_c = beta != T(0);
  for (int64_t j0 = 0; j0 < n; j0 += kRowChunk) {
    const int64_t nb = n - j0 < kRowChunk ? n - j0 : kRowChunk;
    const int64_t full = nb - nb % W;
    const __m256i tail = V::mask(nb - full);
    const int64_t nvec = full + (full < nb ? W : 0);  // accumulator lanes in use, whole vectors
    for (int64_t j = 0; j < nvec; j += W) V::store(acc + j, V::zero());
    const T* b = B + j0;
    int64_t p = 0;
    for (; p + 4 <= k; p += 4) {
      const R a0 = V::set1(A[p * csa]), a1 = V::set1(A[(p + 1) * csa]);
      const R a2 = V::set1(A[(p + 2) * csa]), a3 = V::set1(A[(p + 3) * csa]);
      const T *b0 = b + p * rsb, *b1 = b0 + rsb, *b2 = b1 + rsb, *b3 = b2 + rsb;
      int64_t j = 0;
      for (; j < full; j += W) {
        R x = V::load(acc + j);
        x = V::fma(a0, V::load(b0 + j), x);
        x = V::fma(a1, V::load(b1 + j), x);
        x = V::fma(a2, V::load(b2 + j), x);
        x = V::fma(a3, V::load(b3 + j), x);
        V::store(acc + j, x);
      }
      if (j < nb) {
        R x = V::load(acc + j);
        x = V::fma(a0, V::maskload(b0 + j, tail), x);
        x = V::fma(a1, V::maskload(b1 + j, tail), x);
        x = V::fma(a2, V::maskload(b2 + j, tail), x);
        x = V::fma(a3, V::maskload(b3 + j, tail), x);
        V::store(acc + j, x);
      }
    }
    for (; p < k; ++p) {
      const R a0 = V::set1(A[p * csa]);
      const T* b0 = b + p * rsb;
      int64_t j = 0;
      for (; j < full; j += W) V::store(acc + j, V::fma(a0, V::load(b0 + j), V::load(acc + j)));
      if (j < nb) V::store(acc + j, V::fma(a0, V::maskload(b0 + j, tail), V::load(acc + j)));
    }
    const R va = V::set1(alpha), vb = V::set1(beta);
    T* c = C + j0;
    int64_t j = 0;
    for (; j < full; j += W) {
      R res = V::mul(va, V::load(acc + j));
      if (read_c) res = V::fma(vb, V::load(c + j), res);
      V::store(c + j, res);
    }
    if (j < nb) {
      R res = V::mul(va, V::load(acc + j));
      if (read_c) res = V::fma(vb, V::maskload(c + j, tail), res);
      V::maskstore(c + j, tail, res);
    }
  }
}

// Rows [0, rows) of a broadcast tile over one packed panel; rows in [1, kBcastMR].
template <typename T, int NV, bool MASKED>
static void bcast_tile_rows(int64_t rows, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                            const T* panel, int64_t ldp, T beta, T* C, int64_t ldc, __m256i tail) {
  switch (rows) {
    case 6: bcast_tile<T, 6, NV, MASKED>(k, alpha, A, rsa, csa, panel, ldp, beta, C, ldc, tail); break;
    case 5: bcast_tile<T, 5, NV, MASKED>(k, alpha, A, rsa, csa, panel, ldp, beta, C, ldc, tail); break;
    case 4: bcast_tile<T, 4, NV, MASKED>(k, alpha, A, rsa, csa, panel, ldp, beta, C, ldc, tail); break;
    case 3: bcast_tile<T, 3, NV, MASKED>(k, alpha, A, rsa, csa, panel, ldp, beta, C, ldc, tail); break;
    case 2: bcast_tile<T, 2, NV, MASKED>(k, alpha, A, rsa, csa, panel, ldp, beta, C, ldc, tail); break;
    case 1: bcast_tile<T, 1, NV, MASKED>(k, alpha, A, rsa, csa, panel, ldp, beta, C, ldc, tail); break;
    default: break;
  }
}

// Cache blocking of the broadcast path: k in blocks of kBcastKC (the first block applies beta,
// later ones accumulate with beta = 1), m in blocks of kBcastMC rows, and for each block a
// kBcastKC x (kBcastNV*W) panel of B copied to a contiguous, zero-padded stack buffer (16 KiB),
// which stays in L1 across the block's row tiles and avoids the cache-set conflicts of walking
// down B's columns at a power-of-two row stride.
constexpr int64_t kBcastKC = 256;
constexpr int64_t kBcastMC = 120;  // a multiple of kBcastMR

// Assumes csb == 1.
template <typename T>
static void gemm_bcast(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                       int64_t csa, const T* B, int64_t rsb, T beta, T* C, int64_t ldc) {
  if (m == 1) return bcast_one_row(n, k, alpha, A, csa, B, rsb, beta, C);
  using V = Vec<T>;
  constexpr int W = V::W;
  constexpr int NB = kBcastNV * W;
  alignas(32) T panel[kBcastKC * NB];
  for (int64_t pc = 0; pc < k; pc += kBcastKC) {
    const int64_t kb = k - pc < kBcastKC ? k - pc : kBcastKC;
    const T beta_p = pc == 0 ? beta : T(1);
    for (int64_t ic = 0; ic < m; ic += kBcastMC) {
      const int64_t mb = m - ic < kBcastMC ? m - ic : kBcastMC;
      for (int64_t jc = 0; jc < n; jc += NB) {
        const int64_t nb = n - jc < NB ? n - jc : NB;
        const T* b = B + pc * rsb + jc;
        if (nb == NB) {
          for (int64_t p = 0; p < kb; ++p)
#pragma GCC unroll 4
            for (int v = 0; v < kBcastNV; ++v) V::store(panel + p * NB + v * W, V::load(b + p * rsb + v * W));
        } else {
          for (int64_t p = 0; p < kb; ++p) {
            for (int64_t j = 0; j < nb; ++j) panel[p * NB + j] = b[p * rsb + j];
            for (int64_t j = nb; j < NB; ++j) panel[p * NB + j] = T(0);
          }
        }
        const T* a = A + ic * rsa + pc * csa;
        T* c = C + ic * ldc + jc;
        for (int64_t ir = 0; ir < mb; ir += kBcastMR) {
          const int64_t rows = mb - ir < kBcastMR ? mb - ir : kBcastMR;
          const T* ai = a + ir * rsa;
          T* ci = c + ir * ldc;
          if (nb == NB)
            bcast_tile_rows<T, kBcastNV, false>(rows, kb, alpha, ai, rsa, csa, panel, NB, beta_p, ci, ldc, V::mask(W));
          else if (nb > W)
            bcast_tile_rows<T, 2, true>(rows, kb, alpha, ai, rsa, csa, panel, NB, beta_p, ci, ldc, V::mask(nb - W));
          else
            bcast_tile_rows<T, 1, true>(rows, kb, alpha, ai, rsa, csa, panel, NB, beta_p, ci, ldc, V::mask(nb));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Path 1: dot-product microkernel. C[r, c] for r < MR, c < NR from rows A[r*rsa + 0..k) and
// B[c*csb + 0..k), both contiguous along k. The k tail is one masked load (masked lanes are 0).

template <typename T, int MR, int NR>
static inline void dot_tile(int64_t k, T alpha, const T* A, int64_t rsa, const T* B, int64_t csb,
                            T beta, T* C, int64_t ldc) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  R acc[MR][NR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) acc[r][c] = V::zero();

  int64_t p = 0;
  for (; p + W <= k; p += W) {
    R b[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) b[c] = V::load(B + c * csb + p);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const R a = V::load(A + r * rsa + p);
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r][c] = V::fma(a, b[c], acc[r][c]);
    }
  }
  if (p < k) {
    const __m256i tail = V::mask(k - p);
    R b[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) b[c] = V::maskload(B + c * csb + p, tail);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const R a = V::maskload(A + r * rsa + p, tail);
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r][c] = V::fma(a, b[c], acc[r][c]);
    }
  }

  const bool read_c = beta != T(0);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) {
      T res = alpha * V::hsum(acc[r][c]);
      if (read_c) res += beta * C[r * ldc + c];
      C[r * ldc + c] = res;
    }
}

// MR rows of A against all n rows of B: NR rows of B at a time, then the n tail.
template <typename T, int MR, int NR>
static void dot_rows(int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, const T* B,
                     int64_t csb, T beta, T* C, int64_t ldc) {
  int64_t j = 0;
  for (; j + NR <= n; j += NR) dot_tile<T, MR, NR>(k, alpha, A, rsa, B + j * csb, csb, beta, C + j, ldc);
  for (; j < n; ++j) dot_tile<T, MR, 1>(k, alpha, A, rsa, B + j * csb, csb, beta, C + j, ldc);
}

// Assumes csa == 1 and rsb == 1.
template <typename T>
static void gemm_dot(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                     const T* B, int64_t csb, T beta, T* C, int64_t ldc) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) dot_rows<T, 4, 2>(n, k, alpha, A + i * rsa, rsa, B, csb, beta, C + i * ldc, ldc);
  const T* a = A + i * rsa;
  T* c = C + i * ldc;
  switch (m - i) {
    case 3: dot_rows<T, 3, 2>(n, k, alpha, a, rsa, B, csb, beta, c, ldc); break;
    case 2: dot_rows<T, 2, 4>(n, k, alpha, a, rsa, B, csb, beta, c, ldc); break;
    case 1: dot_rows<T, 1, 4>(n, k, alpha, a, rsa, B, csb, beta, c, ldc); break;
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------
// Path 3: any strides, scalar.

template <typename T>
static void gemm_generic(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                         int64_t csa, const T* B, int64_t rsb, int64_t csb, T beta, T* C,
                         int64_t ldc) {
  const bool read_c = beta != T(0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T acc = T(0);
      for (int64_t p = 0; p < k; ++p) acc += A[i * rsa + p * csa] * B[p * rsb + j * csb];
      T res = alpha * acc;
      if (read_c) res += beta * C[i * ldc + j];
      C[i * ldc + j] = res;
    }
}

template <typename T>
static void gemm_avx2(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                      int64_t csa, const T* B, int64_t rsb, int64_t csb, T beta, T* C,
                      int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // C = beta * C; beta == 0 writes zeros without reading C.
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = beta != T(0) ? beta * C[i * ldc + j] : T(0);
    return;
  }
  // The column stride of a single-column B is never used: normalise it so a matrix-vector
  // product with contiguous rows also takes a vectorised path.
  if (n == 1) csb = 1;
  if (csa == 1 && rsb == 1) {
    gemm_dot(m, n, k, alpha, A, rsa, B, csb, beta, C, ldc);
  } else if (csb == 1) {
    gemm_bcast(m, n, k, alpha, A, rsa, csa, B, rsb, beta, C, ldc);
  } else {
    gemm_generic(m, n, k, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc);
  }
}

}  // namespace

const GemmKernels<float> gemm_avx2_f32{&gemm_avx2<float>};
const GemmKernels<double> gemm_avx2_f64{&gemm_avx2<double>};

}  // namespace portgrad::kernels
