/// @brief AVX2+FMA vector kernels around GEMMs: bias add, column sums, axpy, batched outer product,
/// rows scaled by a vector.
///
/// Straight vector loops with masked tails. Column sums add the rows of each column in order
/// (i = 0, 1, ...), so results do not depend on how columns are grouped into registers.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/threadpool.h"
#include "kernels/gemm.h"
#include "kernels/vector.h"

namespace portgrad::kernels {
namespace {

template <typename T> struct Vec;

template <> struct Vec<float> {
  using R = __m256;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static __m256i mask(int64_t count) {  // lanes [0, count) on, count in [0, W]
    static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + W - count));
  }
  static R maskload(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  static void maskstore(float* p, __m256i m, R v) { _mm256_maskstore_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
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
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
};

template <typename T>
static void add_row_vector_avx2(int64_t rows, int64_t cols, const T* b, T* y) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const int64_t full = cols - cols % W;
  const __m256i tail = V::mask(cols - full);
  for (int64_t i = 0; i < rows; ++i) {
    T* row = y + i * cols;
    for (int64_t j = 0; j < full; j += W) V::store(row + j, V::add(V::load(row + j), V::load(b + j)));
    if (full < cols)
      V::maskstore(row + full, tail, V::add(V::maskload(row + full, tail), V::maskload(b + full, tail)));
  }
}

// Columns [j, j + NV*W) (the last vector masked when MASKED): sum all rows in order.
template <typename T, int NV, bool MASKED>
static inline void sum_rows_block(int64_t rows, int64_t cols, const T* x, T beta, T* out,
                                  __m256i tail) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  R acc[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) acc[v] = V::zero();
  for (int64_t i = 0; i < rows; ++i) {
    const T* row = x + i * cols;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      acc[v] = V::add(acc[v], (MASKED && v == NV - 1) ? V::maskload(row + v * W, tail)
                                                      : V::load(row + v * W));
  }
  const bool read_out = beta != T(0);
  const R vb = V::set1(beta);
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    if (MASKED && v == NV - 1) {
      R res = read_out ? V::fma(vb, V::maskload(out + v * W, tail), acc[v]) : acc[v];
      V::maskstore(out + v * W, tail, res);
    } else {
      R res = read_out ? V::fma(vb, V::load(out + v * W), acc[v]) : acc[v];
      V::store(out + v * W, res);
    }
  }
}

template <typename T>
static void sum_rows_avx2(int64_t rows, int64_t cols, const T* x, T beta, T* out) {
  using V = Vec<T>;
  constexpr int W = V::W;
  constexpr int NB = 4 * W;  // 4 accumulators per pass hide the add latency
  const __m256i all = V::mask(W);
  int64_t j = 0;
  for (; j + NB <= cols; j += NB) sum_rows_block<T, 4, false>(rows, cols, x + j, beta, out + j, all);
  for (; j + W <= cols; j += W) sum_rows_block<T, 1, false>(rows, cols, x + j, beta, out + j, all);
  if (j < cols) sum_rows_block<T, 1, true>(rows, cols, x + j, beta, out + j, V::mask(cols - j));
}

template <typename T>
static void axpy_avx2(int64_t n, T alpha, const T* x, T* y) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const auto va = V::set1(alpha);
  int64_t i = 0;
  for (; i + W <= n; i += W) V::store(y + i, V::fma(va, V::load(x + i), V::load(y + i)));
  if (i < n) {
    const __m256i tail = V::mask(n - i);
    V::maskstore(y + i, tail, V::fma(va, V::maskload(x + i, tail), V::maskload(y + i, tail)));
  }
}

// Example by example, row by row: u[b, i] broadcast times v[b, :]. The output is large (a weight
// matrix per example) and written once: examples are shared out to the GEMM's threads when there is
// enough of it for the write bandwidth of a second core to pay.
template <typename T>
static void outer_avx2(int64_t batch, int64_t m, int64_t n, const T* u, const T* v, T* out) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const int64_t full = n - n % W;
  const __m256i tail = V::mask(n - full);
  const int64_t per_example = std::max<int64_t>(1, m * n);
  cpu::for_blocks(gemm_num_threads(), batch, 1, ((int64_t(1) << 18) + per_example - 1) / per_example,
                  [&](int64_t lo, int64_t hi) {
                    for (int64_t b = lo; b < hi; ++b)
                      for (int64_t i = 0; i < m; ++i) {
                        const auto s = V::set1(u[b * m + i]);
                        const T* vb = v + b * n;
                        T* row = out + (b * m + i) * n;
                        for (int64_t k = 0; k < full; k += W) V::store(row + k, V::mul(s, V::load(vb + k)));
                        if (full < n) V::maskstore(row + full, tail, V::mul(s, V::maskload(vb + full, tail)));
                      }
                  });
}

// Pieces of work are (row, block of kRowBlock columns), so a few long rows share out as well as many
// short ones.
constexpr int64_t kRowBlock = 4096;

template <typename T>
static void multiply_rows_avx2(int64_t rows, int64_t cols, const T* d, const T* x, T* y) {
  if (rows <= 0 || cols <= 0) return;
  using V = Vec<T>;
  constexpr int W = V::W;
  const int64_t blocks_per_row = (cols + kRowBlock - 1) / kRowBlock;
  const int nt = double(rows) * double(cols) >= double(1 << 16) ? gemm_num_threads() : 1;
  cpu::for_blocks(nt, rows * blocks_per_row, 1, 0, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t i = p / blocks_per_row, c0 = p % blocks_per_row * kRowBlock;
      const int64_t c1 = std::min(cols, c0 + kRowBlock);
      const T* xr = x + i * cols;
      T* yr = y + i * cols;
      int64_t c = c0;
      for (; c + W <= c1; c += W) V::store(yr + c, V::mul(V::load(xr + c), V::load(d + c)));
      if (c < c1) {
        const __m256i tail = V::mask(c1 - c);
        V::maskstore(yr + c, tail, V::mul(V::maskload(xr + c, tail), V::maskload(d + c, tail)));
      }
    }
  });
}

}  // namespace

const VectorKernels<float> vector_avx2_f32{&add_row_vector_avx2<float>, &sum_rows_avx2<float>,
                                           &axpy_avx2<float>, &outer_avx2<float>, &multiply_rows_avx2<float>};
const VectorKernels<double> vector_avx2_f64{&add_row_vector_avx2<double>, &sum_rows_avx2<double>,
                                            &axpy_avx2<double>, &outer_avx2<double>, &multiply_rows_avx2<double>};

}  // namespace portgrad::kernels
