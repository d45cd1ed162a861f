/// @brief The x86 SIMD GEMM over strided operands, written once for every vector width: packed,
/// cache-blocked MR x NR micro-kernel with epilogues and pre-packed B; unpacked paths for GEMV and
/// tiny products. Included once by each ISA's file (gemm_avx2.cc, gemm_avx512.cc), which first
/// defines, in portgrad::kernels' anonymous namespace, its register traits Vec<T> (R, Mask, W and
/// the load/store/mask/fma operations below use) and its tile Tile<T> (MR rows, NR = 2W columns).
/// Everything here has internal linkage, so the two ISAs' copies never merge at link time (an
/// AVX-512 body picked for an AVX2 caller would fault).
///
/// Paths (see gemm.h for the contract):
///   - m == 1 or n == 1 (GEMV), or m*n*k <= 16^3, when the strides suit them: the unpacked
///     kernels: dot-product tiles (4 rows of A x 2 rows of B, vectorised along k) when both
///     operands are contiguous along k (A * W^T), else broadcast-A tiles over a stack panel of B
///     (csb == 1), or a row streamed over B for a single row.
///   - everything else, every stride combination: BLIS loops. B in kc x nc blocks packed into
///     NR-wide micro-panels, A in mc x kc blocks packed into MR-tall micro-panels (transposed
///     with 8x8 / 4x4 AVX2 register transposes when stored along k), row sums taken while packing
///     A, the micro-kernel streaming both; kc, mc, nc from the L1/L2/L3 sizes. An operand prologue
///     (gemm.h) turns each packed panel of A into dz with the AVX2 unary backward; products with
///     one always take this path. The first kc slice applies beta, later ones accumulate; the last
///     adds the bias and runs the unary kernel on each finished 64-column group of an mc block.
///     gemm_packed_b skips packing B.
///   - threads (products of 128^3 multiply-adds or more): the product is cut into row or column
///     chunks that the pool's threads claim one by one; each chunk packs for itself.
/// Every output element is summed in a fixed order that depends only on (m, n, k), the strides
/// and the cache-derived kc, never on the thread count or the chunk that computes it, so results
/// are bit-identical from run to run and for any number of threads. No heap allocation on the
/// call path: packing goes to per-thread arenas allocated once (threadpool.h).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/threadpool.h"
#include "kernels/gemm.h"

namespace portgrad::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// Path 2: broadcast-A microkernel. C[0:MR, 0:NV*W] (the last vector masked when MASKED) from
// A[r*rsa + p*csa] and contiguous rows B[p*rsb + 0..]. beta == 0 never reads C.

constexpr int kBcastMR = 6;  // rows of the broadcast tile
constexpr int kBcastNV = 2;  // vectors of the broadcast tile (2W columns)
// Fewer rows use wider tiles (1x8 and 2x4 vectors) so enough accumulators hide FMA latency.

template <typename T, int MR, int NV, bool MASKED>
static inline void bcast_tile(int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                              const T* B, int64_t rsb, T beta, T* C, int64_t ldc, typename Vec<T>::Mask tail) {
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
  alignas(64) T acc[kRowChunk];
  const bool read_c = beta != T(0);
  for (int64_t j0 = 0; j0 < n; j0 += kRowChunk) {
    const int64_t nb = n - j0 < kRowChunk ? n - j0 : kRowChunk;
    const int64_t full = nb - nb % W;
    const auto tail = V::mask(nb - full);
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
                            const T* panel, int64_t ldp, T beta, T* C, int64_t ldc, typename Vec<T>::Mask tail) {
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
// kBcastKC x (kBcastNV*W) panel of B copied to a contiguous, zero-padded stack buffer (16 / 32 KiB),
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
  alignas(64) T panel[kBcastKC * NB];
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
    const auto tail = V::mask(k - p);
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
// Path 3: packed, cache-blocked GEMM (BLIS loop order). For each NC-column block of B and each
// KC-deep slice, B is packed into NR-wide micro-panels (kb x NR, zero-padded) shared by all
// threads; each thread packs MC x KC blocks of A into MR-tall micro-panels (kb x MR) in its own
// arena, and the MR x NR micro-kernel streams both. Packing absorbs every stride combination.
// The first KC slice applies beta, later ones accumulate (beta = 1); the last adds the bias and,
// per 64-column group of a finished MC block, runs the unary on each row chunk.

// Columns per epilogue group and per unit of the column split between threads: fixed in
// global coordinates, so the unary sees the same chunks whatever the thread count.
constexpr int64_t kGroup = 64;

struct Blocking {
  int64_t mc, kc, nc;
};

// From the caches: a kc x NR panel of B fills half of L1, an mc x kc block of A half of L2, and a
// kc x nc panel of B half of L3.
template <typename T>
const Blocking& blocking() {
  static const Blocking b = [] {
    constexpr int64_t MR = Tile<T>::MR, NR = Tile<T>::NR, S = sizeof(T);
    const cpu::CacheSizes& c = cpu::cache_sizes();
    Blocking r;
    r.kc = std::clamp<int64_t>(static_cast<int64_t>(c.l1d) / (2 * NR * S) / 8 * 8, 64, 1024);
    r.mc = std::clamp<int64_t>(static_cast<int64_t>(c.l2) / (2 * r.kc * S) / MR * MR, 4 * MR, 1020);
    // (Capped at a 4 MiB panel: some VMs report the whole socket's L3 to every core.)
    const int64_t l3 = std::min<int64_t>(static_cast<int64_t>(c.l3), 8 << 20);
    r.nc = std::max<int64_t>(l3 / (2 * r.kc * S) / kGroup * kGroup, 4 * kGroup);
    return r;
  }();
  return b;
}

template <typename T> const UnaryKernels<T>& unary_avx2();
template <> const UnaryKernels<float>& unary_avx2<float>() { return unary_avx2_f32; }
template <> const UnaryKernels<double>& unary_avx2<double>() { return unary_avx2_f64; }

constexpr int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// The epilogue's activation on columns [j, j + len) of row i of C (c) into D (d): the unary, or
// the scale (gemm.h).
template <typename T>
static void activate_row(const GemmEpilogue<T>& epi, int64_t i, int64_t j, int64_t len, const T* c, T* d) {
  using V = Vec<T>;
  if (epi.unary != UnaryFn::Count) return unary_avx2<T>().forward(epi.unary, len, c, d);
  const T* s = epi.scale + i % epi.scale_period * epi.lds + j;
  int64_t q = 0;
  for (; q + V::W <= len; q += V::W) V::store(d + q, V::mul(V::load(c + q), V::load(s + q)));
  if (q < len) {
    const typename V::Mask m = V::mask(len - q);
    V::maskstore(d + q, m, V::mul(V::maskload(c + q, m), V::maskload(s + q, m)));
  }
}

// C[0:ROWS, 0:NR] = alpha * Ap^T Bp + beta * C (+ bias): Ap is kb x MR (rows past ROWS are
// ignored), Bp kb x NR (64-byte aligned). beta == 0 never reads C. Each element's arithmetic is
// the same for any ROWS.
template <typename T, int ROWS = Tile<T>::MR>
static inline void ukernel(int64_t kb, T alpha, const T* __restrict Ap, const T* __restrict Bp, T beta,
                           T* __restrict C, int64_t ldc, const T* bias) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int MR = ROWS, AS = Tile<T>::MR, NR = Tile<T>::NR, W = V::W, NV = NR / W;
  static_assert(NV == 2, "two vectors per row");
  R acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + NR - 1), _MM_HINT_T0);
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  }
#pragma GCC unroll 4
  for (int64_t p = 0; p < kb; ++p) {
    const R b0 = V::load(Bp), b1 = V::load(Bp + W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const R a = V::set1(Ap[r]);
      acc[r][0] = V::fma(a, b0, acc[r][0]);
      acc[r][1] = V::fma(a, b1, acc[r][1]);
    }
    Ap += AS;
    Bp += NR;
  }
  const R va = V::set1(alpha), vb = V::set1(beta);
  R bias_v[NV] = {V::zero(), V::zero()};
  if (bias)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) bias_v[v] = V::load(bias + v * W);
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      R res = V::mul(va, acc[r][v]);
      if (beta != T(0)) res = V::fma(vb, V::load(C + r * ldc + v * W), res);
      if (bias) res = V::add(res, bias_v[v]);
      V::store(C + r * ldc + v * W, res);
    }
  }
}

// ukernel<T, ROWS> for a run-time number of rows in [ROWS, MR).
template <typename T, int ROWS = 1>
static void ukernel_rows(int64_t rows, int64_t kb, T alpha, const T* Ap, const T* Bp, T beta, T* C, int64_t ldc,
                         const T* bias) {
  if constexpr (ROWS < Tile<T>::MR) {
    if (rows == ROWS) return ukernel<T, ROWS>(kb, alpha, Ap, Bp, beta, C, ldc, bias);
    ukernel_rows<T, ROWS + 1>(rows, kb, alpha, Ap, Bp, beta, C, ldc, bias);
  }
}

// A tile of at most W columns (a narrow product: a 10- or 16-wide output layer): ROWS rows of A
// against the first vector of each Bp row, C's columns [0, cols) read and written under a mask.
// A is packed (row r of step p at Ap[r + p * MR]) or read in place (A[r * rsa + p]). Each
// element's arithmetic is ukernel's, so a narrow tile gives the bits a full one would.
template <typename T, int ROWS, bool PACKED>
static inline void ukernel_half(int64_t cols, int64_t kb, T alpha, const T* __restrict A, int64_t rsa,
                                const T* __restrict Bp, T beta, T* __restrict C, int64_t ldc, const T* bias) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int AS = Tile<T>::MR, NR = Tile<T>::NR;
  R acc[ROWS];
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) acc[r] = V::zero();
#pragma GCC unroll 4
  for (int64_t p = 0; p < kb; ++p) {
    const R b0 = V::load(Bp);
#pragma GCC unroll 16
    for (int r = 0; r < ROWS; ++r) acc[r] = V::fma(V::set1(PACKED ? A[r] : A[r * rsa]), b0, acc[r]);
    A += PACKED ? AS : 1;
    Bp += NR;
  }
  const auto m = V::mask(cols);
  const R va = V::set1(alpha), vb = V::set1(beta);
  const R bias_v = bias ? V::maskload(bias, m) : V::zero();
#pragma GCC unroll 16
  for (int r = 0; r < ROWS; ++r) {
    R res = V::mul(va, acc[r]);
    if (beta != T(0)) res = V::fma(vb, V::maskload(C + r * ldc, m), res);
    if (bias) res = V::add(res, bias_v);
    V::maskstore(C + r * ldc, m, res);
  }
}

// ukernel_half<T, ROWS, PACKED> for a run-time number of rows in [ROWS, MR].
template <typename T, bool PACKED, int ROWS = 1>
static void ukernel_half_rows(int64_t rows, int64_t cols, int64_t kb, T alpha, const T* A, int64_t rsa, const T* Bp,
                              T beta, T* C, int64_t ldc, const T* bias) {
  if constexpr (ROWS <= Tile<T>::MR) {
    if (rows == ROWS) return ukernel_half<T, ROWS, PACKED>(cols, kb, alpha, A, rsa, Bp, beta, C, ldc, bias);
    ukernel_half_rows<T, PACKED, ROWS + 1>(rows, cols, kb, alpha, A, rsa, Bp, beta, C, ldc, bias);
  }
}

// A partial tile (rows < MR or cols < NR) through the same micro-kernel on a padded copy, so
// its elements get exactly the arithmetic of a full tile.
template <typename T>
static void ukernel_edge(int64_t rows, int64_t cols, int64_t kb, T alpha, const T* Ap, const T* Bp,
                         T beta, T* C, int64_t ldc, const T* bias) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  // Fewer rows only (e.g. one row of A against a pre-packed B): no copies.
  if (cols == NR) return ukernel_rows<T>(rows, kb, alpha, Ap, Bp, beta, C, ldc, bias);
  // At most one vector of columns: half the work, and masked stores instead of copies.
  if (cols <= Vec<T>::W) return ukernel_half_rows<T, true>(rows, cols, kb, alpha, Ap, 0, Bp, beta, C, ldc, bias);
  alignas(64) T tmp[MR * NR];
  alignas(64) T tb[NR];
  if (beta != T(0)) {
    std::memset(tmp, 0, sizeof tmp);
    for (int64_t r = 0; r < rows; ++r) std::memcpy(tmp + r * NR, C + r * ldc, cols * sizeof(T));
  }
  if (bias) {
    std::memset(tb, 0, sizeof tb);
    std::memcpy(tb, bias, cols * sizeof(T));
  }
  ukernel<T>(kb, alpha, Ap, Bp, beta, tmp, NR, bias ? tb : nullptr);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(C + r * ldc, tmp + r * NR, cols * sizeof(T));
}

// In-register transposes: on return, r[q] holds element q of every input row.
static inline void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

static inline void transpose4x4(__m256d r[4]) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

// The first n lanes of v to d (n in [1, W]; the rest of d untouched).
static inline void store_lanes(float* d, __m256 v, int n) {
  if (n == 8) return _mm256_storeu_ps(d, v);
  __m128 x = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(d, x);
    x = _mm256_extractf128_ps(v, 1), d += 4, n -= 4;
  }
  if (n >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(d), x);
    x = _mm_movehl_ps(x, x), d += 2, n -= 2;
  }
  if (n == 1) _mm_store_ss(d, x);
}

static inline void store_lanes(double* d, __m256d v, int n) {
  if (n == 4) return _mm256_storeu_pd(d, v);
  __m128d x = _mm256_castpd256_pd128(v);
  if (n >= 2) {
    _mm_storeu_pd(d, x);
    x = _mm256_extractf128_pd(v, 1), d += 2, n -= 2;
  }
  if (n == 1) _mm_store_sd(d, x);
}

// Full panels of A stored along k (csa == 1): MR rows in groups of 8 (fp32) or 4 (fp64), a short
// last group padded with zero rows, transposed 8 / 4 columns at a time. Returns the columns done;
// the caller finishes the rest. Sums are added column by column, in the same order as the scalar
// loop.
static int64_t pack_a_rows_t(int64_t kb, const float* A, int64_t rsa, float* Ap, float* sums) {
  constexpr int MR = Tile<float>::MR, G = (MR + 7) / 8;
  __m256 s[G];
  for (int g = 0; g < G; ++g) s[g] = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + 8 <= kb; p += 8)
    for (int g = 0; g < G; ++g) {
      const int r0 = 8 * g, n = std::min(8, MR - r0);
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = i < n ? _mm256_loadu_ps(A + (r0 + i) * rsa + p) : _mm256_setzero_ps();
      transpose8x8(r);
      for (int q = 0; q < 8; ++q) {
        store_lanes(Ap + (p + q) * MR + r0, r[q], n);
        s[g] = _mm256_add_ps(s[g], r[q]);
      }
    }
  alignas(32) float t[8 * G];
  for (int g = 0; g < G; ++g) _mm256_store_ps(t + 8 * g, s[g]);
  for (int i = 0; i < MR; ++i) sums[i] = t[i];
  return p;
}

static int64_t pack_a_rows_t(int64_t kb, const double* A, int64_t rsa, double* Ap, double* sums) {
  constexpr int MR = Tile<double>::MR, G = (MR + 3) / 4;
  __m256d s[G];
  for (int g = 0; g < G; ++g) s[g] = _mm256_setzero_pd();
  int64_t p = 0;
  for (; p + 4 <= kb; p += 4)
    for (int g = 0; g < G; ++g) {
      const int r0 = 4 * g, n = std::min(4, MR - r0);
      __m256d r[4];
      for (int i = 0; i < 4; ++i) r[i] = i < n ? _mm256_loadu_pd(A + (r0 + i) * rsa + p) : _mm256_setzero_pd();
      transpose4x4(r);
      for (int q = 0; q < 4; ++q) {
        store_lanes(Ap + (p + q) * MR + r0, r[q], n);
        s[g] = _mm256_add_pd(s[g], r[q]);
      }
    }
  alignas(32) double t[4 * G];
  for (int g = 0; g < G; ++g) _mm256_store_pd(t + 4 * g, s[g]);
  for (int i = 0; i < MR; ++i) sums[i] = t[i];
  return p;
}

// Full panels of B stored along k (rsb == 1): 8x8 / 4x4 transposes into the NR-wide panel.
static int64_t pack_b_cols_t(int64_t kb, const float* B, int64_t csb, float* Bp) {
  constexpr int NR = Tile<float>::NR;
  int64_t p = 0;
  for (; p + 8 <= kb; p += 8)
    for (int jj = 0; jj < NR; jj += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(B + (jj + i) * csb + p);
      transpose8x8(r);
      for (int q = 0; q < 8; ++q) _mm256_store_ps(Bp + (p + q) * NR + jj, r[q]);
    }
  return p;
}

static int64_t pack_b_cols_t(int64_t kb, const double* B, int64_t csb, double* Bp) {
  constexpr int NR = Tile<double>::NR;
  int64_t p = 0;
  for (; p + 4 <= kb; p += 4)
    for (int jj = 0; jj < NR; jj += 4) {
      __m256d r[4];
      for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(B + (jj + i) * csb + p);
      transpose4x4(r);
      for (int q = 0; q < 4; ++q) _mm256_store_pd(Bp + (p + q) * NR + jj, r[q]);
    }
  return p;
}

// One MR-tall micro-panel of A: Ap[p*MR + r] = A[r*rsa + p*csa] for r < rows (zero rows after).
// With `sums`, sums[r] (+)= the row's sum over these kb columns (= when `first`).
template <typename T>
static void pack_a_panel(int64_t rows, int64_t kb, const T* A, int64_t rsa, int64_t csa, T* Ap,
                         T* sums, bool first) {
  constexpr int MR = Tile<T>::MR;
  T s[MR] = {};
  if (rows == MR && rsa == 1) {
    for (int64_t p = 0; p < kb; ++p) {
      const T* a = A + p * csa;
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        Ap[p * MR + r] = a[r];
        s[r] += a[r];
      }
    }
  } else if (rows == MR && csa == 1) {
    for (int64_t p = pack_a_rows_t(kb, A, rsa, Ap, s); p < kb; ++p) {
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const T v = A[r * rsa + p];
        Ap[p * MR + r] = v;
        s[r] += v;
      }
    }
  } else {
    for (int64_t p = 0; p < kb; ++p) {
      for (int64_t r = 0; r < rows; ++r) {
        const T v = A[r * rsa + p * csa];
        Ap[p * MR + r] = v;
        s[r] += v;
      }
      for (int64_t r = rows; r < MR; ++r) Ap[p * MR + r] = T(0);
    }
  }
  if (sums)
    for (int64_t r = 0; r < rows; ++r) sums[r] = first ? s[r] : sums[r] + s[r];
}

// pack_a_panel with the operand prologue of gemm.h. Rows stored along k (dz . W): the AVX2 unary
// backward turns each row's kb elements into dz on the stack, which is then packed. Otherwise
// (dz^T . x, or a partial panel): the panel of da is packed, z and f(z) are packed in the same
// layout kPrologueCols columns at a time, and the unary backward turns each chunk of the panel
// into dz in place. The AVX2 unary kernels give an element the same bits wherever it falls in a
// call (masked tails run the same math), and panels start at multiples of MR in every split of
// the product, so every dz element and row sum is the same whoever computes it.
constexpr int64_t kPrologueCols = 64;
constexpr int64_t kPrologueRowMax = 1024;  // the largest kc (blocking())

template <typename T>
static void pack_a_panel_prologue(int64_t rows, int64_t kb, const T* A, const T* X, const T* Y, int64_t rsa,
                                  int64_t csa, UnaryFn f, T* Ap, T* sums, bool first) {
  constexpr int MR = Tile<T>::MR;
  const UnaryKernels<T>& un = unary_avx2<T>();
  if (rows == MR && csa == 1 && kb <= kPrologueRowMax) {
    alignas(64) T dz[MR * kPrologueRowMax];
    for (int r = 0; r < MR; ++r) un.backward(f, kb, X + r * rsa, Y + r * rsa, A + r * rsa, dz + r * kb);
    return pack_a_panel<T>(rows, kb, dz, kb, 1, Ap, sums, first);
  }
  alignas(64) T xp[kPrologueCols * MR], yp[kPrologueCols * MR];
  pack_a_panel<T>(rows, kb, A, rsa, csa, Ap, nullptr, false);
  for (int64_t p0 = 0; p0 < kb; p0 += kPrologueCols) {
    const int64_t pb = std::min(kPrologueCols, kb - p0);
    pack_a_panel<T>(rows, pb, X + p0 * csa, rsa, csa, xp, nullptr, false);
    pack_a_panel<T>(rows, pb, Y + p0 * csa, rsa, csa, yp, nullptr, false);
    un.backward(f, pb * MR, xp, yp, Ap + p0 * MR, Ap + p0 * MR);
  }
  T s[MR] = {};
  for (int64_t p = 0; p < kb; ++p) {
    for (int64_t r = rows; r < MR; ++r) Ap[p * MR + r] = T(0);  // f'(0) may be inf (Log, Sqrt)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) s[r] += Ap[p * MR + r];
  }
  if (sums)
    for (int64_t r = 0; r < rows; ++r) sums[r] = first ? s[r] : sums[r] + s[r];
}

// The prologue for a whole mb-row block of A stored along m (rsa == 1: dz^T . x): dz for
// kPrologueP columns at a time, one unary call over the block's mb contiguous elements per column,
// into the stack; then those columns of every panel are packed from it (row sums accumulated per
// chunk). The AVX2 unary kernels give each element the same bits wherever it falls in a call
// (masked tails run the same math), so the block split between threads changes nothing.
constexpr int64_t kPrologueP = 8;
constexpr int64_t kPrologueRowsMax = 1024;  // the largest mc (blocking())

template <typename T>
static void pack_a_block_prologue_m(int64_t mb, int64_t kb, const T* A, const T* X, const T* Y, int64_t csa,
                                    UnaryFn f, T* Ap, T* sums, bool first) {
  constexpr int64_t MR = Tile<T>::MR;
  alignas(64) T dz[kPrologueP * kPrologueRowsMax];
  const UnaryKernels<T>& un = unary_avx2<T>();
  for (int64_t p0 = 0; p0 < kb; p0 += kPrologueP) {
    const int64_t pb = std::min(kPrologueP, kb - p0);
    for (int64_t p = 0; p < pb; ++p) {
      const int64_t o = (p0 + p) * csa;
      un.backward(f, mb, X + o, Y + o, A + o, dz + p * mb);
    }
    for (int64_t ir = 0; ir < mb; ir += MR)
      pack_a_panel<T>(std::min(MR, mb - ir), pb, dz + ir, 1, mb, Ap + ir * kb + p0 * MR, sums ? sums + ir : nullptr,
                      first && p0 == 0);
  }
}

// One NR-wide micro-panel of B: Bp[p*NR + j] = B[p*rsb + j*csb] for j < cols (zero after).
template <typename T>
static void pack_b_panel(int64_t cols, int64_t kb, const T* B, int64_t rsb, int64_t csb, T* Bp) {
  using V = Vec<T>;
  constexpr int NR = Tile<T>::NR, W = V::W;
  if (csb == 1 && cols == NR) {
    for (int64_t p = 0; p < kb; ++p) {
      V::store(Bp + p * NR, V::load(B + p * rsb));
      V::store(Bp + p * NR + W, V::load(B + p * rsb + W));
    }
  } else if (rsb == 1 && cols == NR) {
    for (int64_t p = pack_b_cols_t(kb, B, csb, Bp); p < kb; ++p)
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) Bp[p * NR + j] = B[j * csb + p];
  } else if (rsb == 1) {
    for (int64_t j = 0; j < cols; ++j) {
      const T* b = B + j * csb;
      for (int64_t p = 0; p < kb; ++p) Bp[p * NR + j] = b[p];
    }
    for (int64_t p = 0; p < kb; ++p)
      for (int64_t j = cols; j < NR; ++j) Bp[p * NR + j] = T(0);
  } else {
    for (int64_t p = 0; p < kb; ++p) {
      for (int64_t j = 0; j < cols; ++j) Bp[p * NR + j] = B[p * rsb + j * csb];
      for (int64_t j = cols; j < NR; ++j) Bp[p * NR + j] = T(0);
    }
  }
}

// Panels [j0, j1) (in units of NR columns) of the kb x nc block of B at B, into Bp.
template <typename T>
static void pack_b_block(int64_t nc, int64_t kb, const T* B, int64_t rsb, int64_t csb, T* Bp,
                         int64_t panel0, int64_t panel1) {
  constexpr int NR = Tile<T>::NR;
  for (int64_t q = panel0; q < panel1; ++q) {
    const int64_t j = q * NR;
    pack_b_panel<T>(std::min<int64_t>(NR, nc - j), kb, B + j * csb, rsb, csb, Bp + j * kb);
  }
}

template <typename T>
struct PackedJob {
  int64_t m, n, k;
  T alpha, beta;
  const T* A;
  int64_t rsa, csa;
  const T* B;  // unpacked B, or null with `prepacked`
  int64_t rsb, csb;
  const T* prepacked;  // a whole B packed by pack_b (layout: see packed_b_bytes_x86)
  T* C;
  int64_t ldc;
  GemmEpilogue<T> epi;
  // The product is cut into independent chunks (row ranges, or column ranges) that threads
  // claim one at a time; a chunk's elements get the same arithmetic whoever computes it, so the
  // cut and the thread count never change a bit of the result.
  bool split_rows;
  int64_t chunk, nchunks;  // rows or columns per chunk (whole tiles / groups), and how many
  bool narrow = false;     // narrow_block's product (always split by rows)
};

// A product at most one vector wide (a 10- or 16-wide output layer) with A contiguous along k
// and no prologue or row sums: packing A would cost about as much as the product, so A is read in
// place, MR rows at a time against the first vector of B's packed panel, over the same kc slices
// as packed_block (the same bits).
template <typename T>
static void narrow_block(const PackedJob<T>& J, int64_t m0, int64_t m1) {
  constexpr int64_t MR = Tile<T>::MR, NR = Tile<T>::NR;
  const Blocking& blk = blocking<T>();
  T* Bbuf = J.prepacked ? nullptr : static_cast<T*>(cpu::thread_arena(1, blk.kc * blk.nc * sizeof(T)));
  for (int64_t pc = 0; pc < J.k; pc += blk.kc) {
    const int64_t kb = std::min(blk.kc, J.k - pc);
    const T* Bp = J.prepacked ? J.prepacked + pc * NR : Bbuf;  // one panel: round_up(n, NR) == NR
    if (!J.prepacked) pack_b_block<T>(J.n, kb, J.B + pc * J.rsb, J.rsb, J.csb, Bbuf, 0, 1);
    const T beta = pc == 0 ? J.beta : T(1);
    const T* bias = pc + kb == J.k ? J.epi.bias : nullptr;
    for (int64_t i = m0; i < m1; i += MR)
      ukernel_half_rows<T, false>(std::min(MR, m1 - i), J.n, kb, J.alpha, J.A + i * J.rsa + pc, J.rsa, Bp, beta,
                                  J.C + i * J.ldc, J.ldc, bias);
  }
  if (J.epi.has_activation()) {
    T* D = J.epi.D ? J.epi.D : J.C;
    const int64_t ldd = J.epi.D ? J.epi.ldd : J.ldc;
    for (int64_t i = m0; i < m1; ++i) activate_row(J.epi, i, 0, J.n, J.C + i * J.ldc, D + i * ldd);
  }
}

// The BLIS loops for rows [m0, m1) x columns [n0, n1) of C, packing into this thread's arenas.
template <typename T>
static void packed_block(const PackedJob<T>& J, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr int64_t MR = Tile<T>::MR, NR = Tile<T>::NR;
  const Blocking& blk = blocking<T>();
  // Row blocks of equal size (whole tiles, at most blk.mc rows), so no thin block is left over.
  const int64_t my_tiles = (m1 - m0 + MR - 1) / MR, max_tiles = blk.mc / MR;
  const int64_t nblocks = (my_tiles + max_tiles - 1) / max_tiles;
  const int64_t mc = (my_tiles + nblocks - 1) / nblocks * MR;
  T* Ap = static_cast<T*>(cpu::thread_arena(0, blk.mc * blk.kc * sizeof(T)));
  T* Bbuf = J.prepacked ? nullptr : static_cast<T*>(cpu::thread_arena(1, blk.kc * blk.nc * sizeof(T)));
  const bool unary = J.epi.has_activation();
  T* D = J.epi.D ? J.epi.D : J.C;
  const int64_t ldd = J.epi.D ? J.epi.ldd : J.ldc;
  const int64_t np = round_up(J.n, NR);

  for (int64_t jc = n0; jc < n1; jc += blk.nc) {
    const int64_t nc = std::min(blk.nc, n1 - jc);
    for (int64_t pc = 0; pc < J.k; pc += blk.kc) {
      const int64_t kb = std::min(blk.kc, J.k - pc);
      const T* Bp;
      if (J.prepacked) {
        Bp = J.prepacked + pc * np + jc * kb;
      } else {
        pack_b_block<T>(nc, kb, J.B + pc * J.rsb + jc * J.csb, J.rsb, J.csb, Bbuf, 0, (nc + NR - 1) / NR);
        Bp = Bbuf;
      }
      const T beta = pc == 0 ? J.beta : T(1);
      const bool last = pc + kb == J.k;
      const T* bias = last && J.epi.bias ? J.epi.bias + jc : nullptr;
      T* sums = jc == 0 ? J.epi.row_sums : nullptr;  // once per row: in the chunk holding column 0
      for (int64_t ic = m0; ic < m1; ic += mc) {
        const int64_t mb = std::min(mc, m1 - ic);
        if (J.epi.has_prologue() && J.rsa == 1 && mb <= kPrologueRowsMax) {
          const int64_t off = ic + pc * J.csa;
          pack_a_block_prologue_m<T>(mb, kb, J.A + off, J.epi.a_x + off, J.epi.a_y + off, J.csa, J.epi.a_derivative,
                                     Ap, sums ? sums + ic : nullptr, pc == 0);
        } else {
          for (int64_t ir = 0; ir < mb; ir += MR) {
            const int64_t off = (ic + ir) * J.rsa + pc * J.csa;
            if (J.epi.has_prologue())
              pack_a_panel_prologue<T>(std::min(MR, mb - ir), kb, J.A + off, J.epi.a_x + off, J.epi.a_y + off, J.rsa,
                                       J.csa, J.epi.a_derivative, Ap + ir * kb, sums ? sums + ic + ir : nullptr,
                                       pc == 0);
            else
              pack_a_panel<T>(std::min(MR, mb - ir), kb, J.A + off, J.rsa, J.csa, Ap + ir * kb,
                              sums ? sums + ic + ir : nullptr, pc == 0);
          }
        }
        // Columns in groups of kGroup: the unary runs on each group's rows while they are in cache.
        for (int64_t j0 = 0; j0 < nc; j0 += kGroup) {
          const int64_t j1 = std::min(nc, j0 + kGroup);
          for (int64_t jr = j0; jr < j1; jr += NR) {
            const int64_t cols = std::min(NR, nc - jr);
            const T* bp = Bp + jr * kb;
            const T* bi = bias ? bias + jr : nullptr;
            T* c = J.C + ic * J.ldc + jc + jr;
            for (int64_t ir = 0; ir < mb; ir += MR) {
              const int64_t rows = std::min(MR, mb - ir);
              if (rows == MR && cols == NR)
                ukernel<T>(kb, J.alpha, Ap + ir * kb, bp, beta, c + ir * J.ldc, J.ldc, bi);
              else
                ukernel_edge<T>(rows, cols, kb, J.alpha, Ap + ir * kb, bp, beta, c + ir * J.ldc, J.ldc, bi);
            }
          }
          if (last && unary)
            for (int64_t r = 0; r < mb; ++r)
              activate_row(J.epi, ic + r, jc + j0, j1 - j0, J.C + (ic + r) * J.ldc + jc + j0,
                           D + (ic + r) * ldd + jc + j0);
        }
      }
    }
  }
}

template <typename T>
static void packed_worker(void* ctx, int tid, int nt, cpu::Team* team) {
  const PackedJob<T>& J = *static_cast<const PackedJob<T>*>(ctx);
  int64_t local = 0;
  for (int64_t c; (c = cpu::team_claim(team, &local)) < J.nchunks;) {
    const int64_t lo = c * J.chunk;
    if (J.narrow) narrow_block(J, lo, std::min(J.m, lo + J.chunk));
    else if (J.split_rows) packed_block(J, lo, std::min(J.m, lo + J.chunk), 0, J.n);
    else packed_block(J, 0, J.m, lo, std::min(J.n, lo + J.chunk));
  }
}

// Products below this many multiply-adds (128^3: ~40 us on one core) run on one thread: waking
// a sleeping worker costs tens of microseconds.
constexpr int64_t kParallelMinWork = int64_t(1) << 21;
// The unary kernels share arrays at least this long out to threads (unary_avx2.cc).
constexpr int64_t kUnaryParallelMin = 32768;

template <typename T>
static void gemm_packed(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                        const T* B, int64_t rsb, int64_t csb, const T* prepacked, T beta, T* C,
                        int64_t ldc, const GemmEpilogue<T>& epi) {
  constexpr int64_t MR = Tile<T>::MR;
  int nt = m * n * k < kParallelMinWork ? 1 : gemm_num_threads();
  // A product too small for threads may feed a unary long enough for them (256 x 8 x 128 then
  // tanh of 256 x 128): the unary then runs after the product, over all of C at once, where the
  // unary kernel shares it out (each element's bits are the same in any call).
  T* D = epi.D ? epi.D : C;
  const int64_t ldd = epi.D ? epi.ldd : ldc;
  if (nt == 1 && epi.unary != UnaryFn::Count && m * n >= kUnaryParallelMin && gemm_num_threads() > 1 && ldc == n &&
      ldd == n) {
    GemmEpilogue<T> product = epi;
    product.unary = UnaryFn::Count;
    gemm_packed<T>(m, n, k, alpha, A, rsa, csa, B, rsb, csb, prepacked, beta, C, ldc, product);
    return unary_avx2<T>().forward(epi.unary, m * n, C, D);
  }
  PackedJob<T> job{m, n, k, alpha, beta, A, rsa, csa, B, rsb, csb, prepacked, C, ldc, epi, true, m, 1};
  job.narrow = n <= Vec<T>::W && csa == 1 && !epi.has_prologue() && !epi.row_sums;
  if (nt > 1) {
    // About 3 chunks per thread (late or preempted threads leave theirs to the others), but
    // chunks no thinner than 16 row tiles (each packs all of B) or 128 columns (each packs all of
    // A) -- unless that leaves fewer chunks than threads: then one chunk per thread (a 128^3
    // product: two 64-column chunks, where one 128-column chunk ran on one thread).
    // Split the longer side, or the other one where its chunks share out clearly better (192^3 on
    // two threads: two 96-row chunks rather than three 64-column ones); a near tie keeps the longer
    // side, whose chunks each pack the smaller operand.
    struct Split {
      int64_t chunk, nchunks;
      double balance;  // a thread's fair share over the busiest thread's share
    };
    auto split = [&](bool rows) {
      const int64_t len = rows ? m : n, unit = rows ? MR : kGroup, min_units = rows ? 16 : 2;
      const int64_t units = (len + unit - 1) / unit;
      const int64_t per = std::min(std::max(min_units, (units + 3 * nt - 1) / (3 * nt)),
                                   std::max<int64_t>(1, units / nt));
      const int64_t nchunks = (units + per - 1) / per, busiest = (nchunks + nt - 1) / nt * per * unit;
      return Split{per * unit, nchunks, double(len) / nt / double(std::min(len, busiest))};
    };
    const Split by_rows = split(true), by_cols = split(false);
    job.split_rows = job.narrow || (m > n ? by_cols.balance <= 1.15 * by_rows.balance
                                          : by_rows.balance > 1.15 * by_cols.balance);
    const Split& s = job.split_rows ? by_rows : by_cols;
    job.chunk = s.chunk;
    job.nchunks = s.nchunks;
    if (job.nchunks < 2) {
      nt = 1;
      job.split_rows = true, job.chunk = m, job.nchunks = 1;
    }
    nt = static_cast<int>(std::min<int64_t>(nt, job.nchunks));
  }
  cpu::parallel_run(nt, &packed_worker<T>, &job);
}

// The packed layout of a (k x n) B: KC-deep slices one after another; each slice holds the
// ceil(n/NR) NR-wide micro-panels of all n columns (zero-padded), panel j0 at j0 * kb.
template <typename T>
size_t packed_b_bytes_x86(int64_t k, int64_t n) {
  if (k <= 0 || n <= 0) return 0;
  return static_cast<size_t>(k * round_up(n, Tile<T>::NR)) * sizeof(T);
}

template <typename T>
void pack_b_x86(int64_t k, int64_t n, const T* B, int64_t rsb, int64_t csb, void* packed) {
  if (k <= 0 || n <= 0) return;
  const Blocking& blk = blocking<T>();
  const int64_t np = round_up(n, Tile<T>::NR);
  T* out = static_cast<T*>(packed);
  for (int64_t pc = 0; pc < k; pc += blk.kc) {
    const int64_t kb = std::min(blk.kc, k - pc);
    pack_b_block<T>(n, kb, B + pc * rsb, rsb, csb, out + pc * np, 0, np / Tile<T>::NR);
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points.

// The epilogue after one of the unpacked paths (small products): bias, unary, row sums.
template <typename T>
static void epilogue_after(int64_t m, int64_t n, int64_t k, const T* A, int64_t rsa, int64_t csa, T* C,
                           int64_t ldc, const GemmEpilogue<T>& epi) {
  using V = Vec<T>;
  constexpr int W = V::W;
  for (int64_t i = 0; i < m; ++i) {
    T* c = C + i * ldc;
    if (epi.bias) {
      int64_t j = 0;
      for (; j + W <= n; j += W) V::store(c + j, V::add(V::load(c + j), V::load(epi.bias + j)));
      for (; j < n; ++j) c[j] += epi.bias[j];
    }
    if (epi.has_activation() && n > 0) activate_row(epi, i, 0, n, c, epi.D ? epi.D + i * epi.ldd : c);
    if (epi.row_sums) {
      T s = T(0);
      for (int64_t p = 0; p < k; ++p) {
        const int64_t o = i * rsa + p * csa;
        T a = A[o];
        if (epi.has_prologue()) unary_avx2<T>().backward(epi.a_derivative, 1, epi.a_x + o, epi.a_y + o, A + o, &a);
        s += a;
      }
      epi.row_sums[i] = s;
    }
  }
}

// Products this small (m*n*k multiply-adds) with friendly strides skip packing.
constexpr int64_t kSmallWork = 16 * 16 * 16;
// A small product's prologue: at most this many elements of dz on the stack (16 / 32 KiB).
constexpr int64_t kSmallDz = 4096;

template <typename T>
static void gemm_ex_x86(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                         int64_t csa, const T* B, int64_t rsb, int64_t csb, T beta, T* C,
                         int64_t ldc, const GemmEpilogue<T>& epi) {
  if (m <= 0) return;
  if (n <= 0 || k <= 0) {
    // C = beta * C; beta == 0 writes zeros without reading C. Then the epilogue (row sums of an
    // empty k are 0).
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = beta != T(0) ? beta * C[i * ldc + j] : T(0);
    return epilogue_after(m, n, k, A, rsa, csa, C, ldc, epi);
  }
  // The column stride of a single-column B is never used: normalise it so a matrix-vector
  // product with contiguous rows also takes a vectorised path.
  if (n == 1) csb = 1;
  const bool dot_ok = csa == 1 && rsb == 1, bcast_ok = csb == 1;
  const bool gemv = m == 1 || n == 1;
  // A prologue is applied while packing A; a small product with one instead takes dz = op(A) into
  // a stack buffer (stored like A when A is contiguous along k or m) and runs without it.
  if (epi.has_prologue()) {
    if ((gemv || m * n * k <= kSmallWork) && m * k <= kSmallDz && (csa == 1 || rsa == 1) && (rsb == 1 || csb == 1)) {
      alignas(64) T dz[kSmallDz];
      const UnaryKernels<T>& un = unary_avx2<T>();
      const int64_t lines = csa == 1 ? m : k, len = csa == 1 ? k : m, ld = csa == 1 ? rsa : csa;
      for (int64_t l = 0; l < lines; ++l)
        un.backward(epi.a_derivative, len, epi.a_x + l * ld, epi.a_y + l * ld, A + l * ld, dz + l * len);
      GemmEpilogue<T> rest = epi;
      rest.a_derivative = UnaryFn::Count;
      return gemm_ex_x86<T>(m, n, k, alpha, dz, csa == 1 ? k : 1, csa == 1 ? 1 : m, B, rsb, csb, beta, C, ldc, rest);
    }
    return gemm_packed<T>(m, n, k, alpha, A, rsa, csa, B, rsb, csb, nullptr, beta, C, ldc, epi);
  }
  if ((gemv || m * n * k <= kSmallWork) && (dot_ok || bcast_ok)) {
    if (dot_ok) gemm_dot(m, n, k, alpha, A, rsa, B, csb, beta, C, ldc);
    else gemm_bcast(m, n, k, alpha, A, rsa, csa, B, rsb, beta, C, ldc);
    return epilogue_after(m, n, k, A, rsa, csa, C, ldc, epi);
  }
  gemm_packed<T>(m, n, k, alpha, A, rsa, csa, B, rsb, csb, nullptr, beta, C, ldc, epi);
}

template <typename T>
static void gemm_x86(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                      int64_t csa, const T* B, int64_t rsb, int64_t csb, T beta, T* C,
                      int64_t ldc) {
  gemm_ex_x86<T>(m, n, k, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc, GemmEpilogue<T>{});
}

template <typename T>
static void gemm_packed_b_x86(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                               int64_t csa, const void* packed_b, T beta, T* C, int64_t ldc,
                               const GemmEpilogue<T>& epi) {
  if (m <= 0) return;
  if (n <= 0 || k <= 0) return gemm_ex_x86<T>(m, n, k, alpha, A, rsa, csa, nullptr, 0, 0, beta, C, ldc, epi);
  gemm_packed<T>(m, n, k, alpha, A, rsa, csa, nullptr, 0, 0, static_cast<const T*>(packed_b), beta, C, ldc, epi);
}

// A batch of products: each one whole on one thread when they are small (a product below the
// threads' threshold runs on one thread anyway, so each has gemm's bits); large ones one after
// another, each shared out as gemm shares it.
template <typename T>
struct BatchedJob {
  const GemmBatch* bt;
  int64_t m, n, k;
  T alpha, beta;
  const T* A;
  int64_t rsa, csa;
  const T* B;
  int64_t rsb, csb;
  T* C;
  int64_t ldc;
  void run(int64_t i) const {
    gemm_ex_x86<T>(m, n, k, alpha, A + bt->a(i), rsa, csa, B + bt->b(i), rsb, csb, beta, C + bt->c(i), ldc,
                   GemmEpilogue<T>{});
  }
};

template <typename T>
static void batched_worker(void* ctx, int, int, cpu::Team* team) {
  const BatchedJob<T>& J = *static_cast<const BatchedJob<T>*>(ctx);
  int64_t local = 0;
  for (int64_t i; (i = cpu::team_claim(team, &local)) < J.bt->count;) J.run(i);
}

template <typename T>
static void gemm_batched_x86(const GemmBatch& bt, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                             int64_t csa, const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc) {
  const BatchedJob<T> job{&bt, m, n, k, alpha, beta, A, rsa, csa, B, rsb, csb, C, ldc};
  const int64_t work = m * n * k;
  if (bt.count <= 1 || work >= kParallelMinWork || work * bt.count < kParallelMinWork || gemm_num_threads() <= 1) {
    for (int64_t i = 0; i < bt.count; ++i) job.run(i);
    return;
  }
  cpu::parallel_run(static_cast<int>(std::min<int64_t>(gemm_num_threads(), bt.count)), &batched_worker<T>,
                    const_cast<BatchedJob<T>*>(&job));
}

template <typename T>
constexpr GemmKernels<T> gemm_table() {
  return {&gemm_x86<T>, &gemm_ex_x86<T>, &packed_b_bytes_x86<T>, &pack_b_x86<T>, &gemm_packed_b_x86<T>,
          &gemm_batched_x86<T>};
}

}  // namespace
}  // namespace portgrad::kernels
