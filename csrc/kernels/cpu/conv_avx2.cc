/// @brief AVX2+FMA convolution: vol2col (im2col for 1 to 3 spatial dimensions) into the workspace and
/// a GEMM per (example, group); col2im for backward-data. Two direct paths skip the column matrix:
/// pointwise convolutions (1x1, stride 1, no padding: x is already the column matrix) and depthwise
/// ones (one input and one output channel per group: a GEMM of one row would waste the packing).
/// The copies and the direct loops are plain loops the compiler vectorises for AVX2 (this file is
/// built with -mavx2 -mfma); every helper is in an anonymous namespace (STYLE.md 4).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "kernels/conv.h"
#include "kernels/cpu/threadpool.h"
#include "kernels/gemm.h"

namespace portgrad::kernels {
namespace {

struct Dims {
  int64_t in_sp, out_sp, k_sp, cig, cog, K;
  explicit Dims(const ConvShape& s)
      : in_sp(s.in[0] * s.in[1] * s.in[2]), out_sp(s.out[0] * s.out[1] * s.out[2]),
        k_sp(s.k[0] * s.k[1] * s.k[2]), cig(s.c_in / s.groups), cog(s.c_out / s.groups), K(cig * k_sp) {}
};

bool pointwise(const ConvShape& s) {
  for (int d = 0; d < 3; ++d)
    if (s.k[d] != 1 || s.stride[d] != 1 || s.pad[d] != 0 || s.in[d] != s.out[d]) return false;
  return true;
}

bool depthwise(const ConvShape& s) { return s.c_in == s.groups && s.c_out == s.groups; }

// For tap t = (t0, t1, t2), walks the output rows (p0, p1): `seg(out_off, in_base, lo, hi)` for the
// outputs out_off + ow, ow in [lo, hi), which read input in_base + ow*stride2 (in range), and
// `pad(out_off, a, b)` for outputs out_off + [a, b) whose tap lies in the padding.
template <typename Seg, typename Pad>
inline void tap_rows(const ConvShape& s, int64_t t0, int64_t t1, int64_t t2, Seg&& seg, Pad&& pad) {
  const int64_t off = t2 * s.dilation[2] - s.pad[2], st = s.stride[2];
  const int64_t lo = off >= 0 ? 0 : std::min(s.out[2], (-off + st - 1) / st);
  int64_t hi = (s.in[2] - 1 - off) < 0 ? 0 : std::min(s.out[2], (s.in[2] - 1 - off) / st + 1);
  if (hi < lo) hi = lo;
  for (int64_t p0 = 0; p0 < s.out[0]; ++p0) {
    const int64_t q0 = p0 * s.stride[0] + t0 * s.dilation[0] - s.pad[0];
    const bool ok0 = q0 >= 0 && q0 < s.in[0];
    for (int64_t p1 = 0; p1 < s.out[1]; ++p1) {
      const int64_t q1 = p1 * s.stride[1] + t1 * s.dilation[1] - s.pad[1];
      const int64_t out_off = (p0 * s.out[1] + p1) * s.out[2];
      if (!ok0 || q1 < 0 || q1 >= s.in[1]) {
        pad(out_off, 0, s.out[2]);
        continue;
      }
      pad(out_off, 0, lo);
      seg(out_off, (q0 * s.in[1] + q1) * s.in[2] + off, lo, hi);
      pad(out_off, hi, s.out[2]);
    }
  }
}

template <typename F>
inline void for_taps(const ConvShape& s, F&& f) {
  int64_t tf = 0;
  for (int64_t t0 = 0; t0 < s.k[0]; ++t0)
    for (int64_t t1 = 0; t1 < s.k[1]; ++t1)
      for (int64_t t2 = 0; t2 < s.k[2]; ++t2) f(tf++, t0, t1, t2);
}

// col (cig*k_sp x out_sp) from the cig channels at x.
template <typename T>
void vol2col(const ConvShape& s, const Dims& d, const T* __restrict x, T* __restrict col) {
  const int64_t st = s.stride[2];
  for (int64_t i = 0; i < d.cig; ++i) {
    const T* xc = x + i * d.in_sp;
    for_taps(s, [&](int64_t tf, int64_t t0, int64_t t1, int64_t t2) {
      T* row = col + (i * d.k_sp + tf) * d.out_sp;
      tap_rows(
          s, t0, t1, t2,
          [&](int64_t o, int64_t base, int64_t lo, int64_t hi) {
            T* __restrict r = row + o;
            const T* __restrict src = xc + base;
            if (st == 1) std::memcpy(r + lo, src + lo, size_t(hi - lo) * sizeof(T));
            else
              for (int64_t w = lo; w < hi; ++w) r[w] = src[w * st];
          },
          [&](int64_t o, int64_t a, int64_t b) {
            for (int64_t w = a; w < b; ++w) row[o + w] = T(0);
          });
    });
  }
}

// dx (cig channels, zeroed first) = col2im(dcol).
template <typename T>
void col2vol(const ConvShape& s, const Dims& d, const T* __restrict dcol, T* __restrict dx) {
  const int64_t st = s.stride[2];
  std::memset(dx, 0, size_t(d.cig * d.in_sp) * sizeof(T));
  for (int64_t i = 0; i < d.cig; ++i) {
    T* dxc = dx + i * d.in_sp;
    for_taps(s, [&](int64_t tf, int64_t t0, int64_t t1, int64_t t2) {
      const T* row = dcol + (i * d.k_sp + tf) * d.out_sp;
      tap_rows(
          s, t0, t1, t2,
          [&](int64_t o, int64_t base, int64_t lo, int64_t hi) {
            const T* __restrict r = row + o;
            T* __restrict dst = dxc + base;
            if (st == 1)
              for (int64_t w = lo; w < hi; ++w) dst[w] += r[w];
            else
              for (int64_t w = lo; w < hi; ++w) dst[w * st] += r[w];
          },
          [](int64_t, int64_t, int64_t) {});
    });
  }
}

// sum_i a[i] * b[i] in a fixed order (two vector accumulators, then the tail): deterministic.
inline float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  s0 = _mm256_add_ps(s0, s1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float r = _mm_cvtss_f32(h);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

inline double dot(const double* a, const double* b, int64_t n) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + i), _mm256_loadu_pd(b + i), s0);
    s1 = _mm256_fmadd_pd(_mm256_loadu_pd(a + i + 4), _mm256_loadu_pd(b + i + 4), s1);
  }
  for (; i + 4 <= n; i += 4) s0 = _mm256_fmadd_pd(_mm256_loadu_pd(a + i), _mm256_loadu_pd(b + i), s0);
  s0 = _mm256_add_pd(s0, s1);
  __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s0), _mm256_extractf128_pd(s0, 1));
  h = _mm_add_sd(h, _mm_unpackhi_pd(h, h));
  double r = _mm_cvtsd_f64(h);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// ---- depthwise: one input and one output channel per group, direct loops per channel --------------
template <typename T>
void dw_forward(const ConvShape& s, const Dims& d, const T* x, const T* w, T* y) {
  const int64_t st = s.stride[2];
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t c = 0; c < s.c_in; ++c) {
      const T* xc = x + (b * s.c_in + c) * d.in_sp;
      T* yc = y + (b * s.c_out + c) * d.out_sp;
      const T* wc = w + c * d.k_sp;
      std::fill(yc, yc + d.out_sp, T(0));
      for_taps(s, [&](int64_t tf, int64_t t0, int64_t t1, int64_t t2) {
        const T wt = wc[tf];
        tap_rows(
            s, t0, t1, t2,
            [&](int64_t o, int64_t base, int64_t lo, int64_t hi) {
              T* __restrict r = yc + o;
              const T* __restrict src = xc + base;
              if (st == 1)
                for (int64_t q = lo; q < hi; ++q) r[q] += wt * src[q];
              else
                for (int64_t q = lo; q < hi; ++q) r[q] += wt * src[q * st];
            },
            [](int64_t, int64_t, int64_t) {});
      });
    }
}

template <typename T>
void dw_backward_data(const ConvShape& s, const Dims& d, const T* dy, const T* w, T* dx) {
  const int64_t st = s.stride[2];
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t c = 0; c < s.c_in; ++c) {
      T* dxc = dx + (b * s.c_in + c) * d.in_sp;
      const T* dyc = dy + (b * s.c_out + c) * d.out_sp;
      const T* wc = w + c * d.k_sp;
      std::fill(dxc, dxc + d.in_sp, T(0));
      for_taps(s, [&](int64_t tf, int64_t t0, int64_t t1, int64_t t2) {
        const T wt = wc[tf];
        tap_rows(
            s, t0, t1, t2,
            [&](int64_t o, int64_t base, int64_t lo, int64_t hi) {
              const T* __restrict r = dyc + o;
              T* __restrict dst = dxc + base;
              if (st == 1)
                for (int64_t q = lo; q < hi; ++q) dst[q] += wt * r[q];
              else
                for (int64_t q = lo; q < hi; ++q) dst[q * st] += wt * r[q];
            },
            [](int64_t, int64_t, int64_t) {});
      });
    }
}

template <typename T>
void dw_backward_weights(const ConvShape& s, const Dims& d, const T* x, const T* dy, T* dw) {
  const int64_t st = s.stride[2];
  for (int64_t c = 0; c < s.c_in; ++c)
    for_taps(s, [&](int64_t tf, int64_t t0, int64_t t1, int64_t t2) {
      T acc = T(0);
      for (int64_t b = 0; b < s.batch; ++b) {
        const T* xc = x + (b * s.c_in + c) * d.in_sp;
        const T* dyc = dy + (b * s.c_out + c) * d.out_sp;
        tap_rows(
            s, t0, t1, t2,
            [&](int64_t o, int64_t base, int64_t lo, int64_t hi) {
              const T* __restrict r = dyc + o;
              const T* __restrict src = xc + base;
              T a = T(0);
              if (st == 1) {
                a = dot(r + lo, src + lo, hi - lo);
              } else {
                for (int64_t q = lo; q < hi; ++q) a += r[q] * src[q * st];
              }
              acc += a;
            },
            [](int64_t, int64_t, int64_t) {});
      }
      dw[c * d.k_sp + tf] = acc;
    });
}

// ---- threads over examples -----------------------------------------------------------------------
// Forward and backward-data treat examples independently: threads take whole examples, each with
// its own column buffer, so every output element is computed by one thread in one fixed order
// (results do not depend on the thread count). The buffer count depends on the shape alone (the
// CPU count, capped at 8 and at 64 MiB of buffers), so a plan sizes its workspace once; the GEMMs
// inside run on their thread alone (the pool is busy with this job).
size_t column_buffers(const ConvShape& s, size_t col_bytes) {
  static const size_t cpus = std::max(1u, std::thread::hardware_concurrency());
  const size_t by_memory = col_bytes ? std::max<size_t>(1, (size_t(64) << 20) / col_bytes) : 8;
  return std::min({cpus, size_t(8), by_memory, size_t(std::max<int64_t>(s.batch, 1))});
}

template <typename T>
struct ExampleJob {
  const ConvShape* s;
  const Dims* d;
  const T* in;     // x (forward) or dy (backward-data)
  const T* w;
  T* out;          // y or dx
  T* cols;         // one column buffer per thread
  int64_t col_elems;
  void (*one)(const ExampleJob&, int64_t b, T* col);
};

template <typename T>
void run_examples(ExampleJob<T>& job) {
  const ConvShape& s = *job.s;
  const double work = double(s.batch) * double(s.c_out) * double(job.d->K) * double(job.d->out_sp);
  const int nt = int(std::min<int64_t>({int64_t(column_buffers(s, size_t(job.col_elems) * sizeof(T))),
                                        int64_t(gemm_num_threads()), s.batch}));
  auto body = [](void* ctx, int tid, int, cpu::Team* team) {
    auto& j = *static_cast<ExampleJob<T>*>(ctx);
    T* col = j.cols + tid * j.col_elems;
    int64_t local = 0;
    for (int64_t b = cpu::team_claim(team, &local); b < j.s->batch; b = cpu::team_claim(team, &local)) j.one(j, b, col);
  };
  if (nt > 1 && work >= double(1 << 20)) cpu::parallel_run(nt, body, &job);
  else body(&job, 0, 1, nullptr);
}

template <typename T>
void forward_example(const ExampleJob<T>& j, int64_t b, T* col) {
  const ConvShape& s = *j.s;
  const Dims& d = *j.d;
  for (int64_t q = 0; q < s.groups; ++q) {
    const T* xg = j.in + (b * s.c_in + q * d.cig) * d.in_sp;
    const T* B = xg;
    if (!pointwise(s)) {
      vol2col(s, d, xg, col);
      B = col;
    }
    // y_q (cog x out_sp) = W_q (cog x K) . col (K x out_sp)
    gemm_kernels<T>().gemm(d.cog, d.out_sp, d.K, T(1), j.w + q * d.cog * d.K, d.K, 1, B, d.out_sp, 1, T(0),
                           j.out + (b * s.c_out + q * d.cog) * d.out_sp, d.out_sp);
  }
}

template <typename T>
void backward_data_example(const ExampleJob<T>& j, int64_t b, T* dcol) {
  const ConvShape& s = *j.s;
  const Dims& d = *j.d;
  const bool pw = pointwise(s);
  for (int64_t q = 0; q < s.groups; ++q) {
    T* dxg = j.out + (b * s.c_in + q * d.cig) * d.in_sp;
    // dcol (K x out_sp) = W_q^T (K x cog) . dy_q (cog x out_sp)
    gemm_kernels<T>().gemm(d.K, d.out_sp, d.cog, T(1), j.w + q * d.cog * d.K, 1, d.K,
                           j.in + (b * s.c_out + q * d.cog) * d.out_sp, d.out_sp, 1, T(0), pw ? dxg : dcol, d.out_sp);
    if (!pw) col2vol(s, d, dcol, dxg);
  }
}

// ---- the table entries --------------------------------------------------------------------------
template <typename T>
size_t workspace_bytes(const ConvShape& s) {
  if (pointwise(s) || depthwise(s)) return 0;
  const Dims d(s);
  const size_t col = size_t(d.K * d.out_sp) * sizeof(T);
  return col * column_buffers(s, col);
}

template <typename T>
void forward(const ConvShape& s, const T* x, const T* w, T* y, void* workspace) {
  const Dims d(s);
  if (depthwise(s) && !pointwise(s)) return dw_forward(s, d, x, w, y);
  ExampleJob<T> job{&s, &d, x, w, y, static_cast<T*>(workspace), pointwise(s) ? 0 : d.K * d.out_sp,
                    &forward_example<T>};
  run_examples(job);
}

template <typename T>
void backward_data(const ConvShape& s, const T* dy, const T* w, T* dx, void* workspace) {
  const Dims d(s);
  if (depthwise(s) && !pointwise(s)) return dw_backward_data(s, d, dy, w, dx);
  ExampleJob<T> job{&s, &d, dy, w, dx, static_cast<T*>(workspace), pointwise(s) ? 0 : d.K * d.out_sp,
                    &backward_data_example<T>};
  run_examples(job);
}

template <typename T>
void backward_weights(const ConvShape& s, const T* x, const T* dy, T* dw, void* workspace) {
  const Dims d(s);
  if (depthwise(s) && !pointwise(s)) return dw_backward_weights(s, d, x, dy, dw);
  const auto& g = gemm_kernels<T>();
  T* col = static_cast<T*>(workspace);
  if (s.batch == 0) std::fill(dw, dw + s.c_out * d.K, T(0));
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t q = 0; q < s.groups; ++q) {
      const T* xg = x + (b * s.c_in + q * d.cig) * d.in_sp;
      const T* B = xg;
      if (!pointwise(s)) {
        vol2col(s, d, xg, col);
        B = col;
      }
      // dW_q (cog x K) (+)= dy_q (cog x out_sp) . col^T (out_sp x K)
      g.gemm(d.cog, d.K, d.out_sp, T(1), dy + (b * s.c_out + q * d.cog) * d.out_sp, d.out_sp, 1, B, 1, d.out_sp,
             b == 0 ? T(0) : T(1), dw + q * d.cog * d.K, d.K);
    }
}

template <typename T>
void bias_forward(int64_t batch, int64_t channels, int64_t spatial, const T* bias, T* y) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t c = 0; c < channels; ++c) {
      T* __restrict yr = y + (b * channels + c) * spatial;
      const T v = bias[c];
      for (int64_t p = 0; p < spatial; ++p) yr[p] += v;
    }
}

template <typename T>
void bias_backward(int64_t batch, int64_t channels, int64_t spatial, const T* dy, T* db) {
  for (int64_t c = 0; c < channels; ++c) {
    T acc = T(0);
    for (int64_t b = 0; b < batch; ++b) {
      const T* __restrict r = dy + (b * channels + c) * spatial;
      // Eight partial sums: vectorised, and fixed order (deterministic).
      T part[8] = {};
      int64_t p = 0;
      for (; p + 8 <= spatial; p += 8)
        for (int j = 0; j < 8; ++j) part[j] += r[p + j];
      T rest = T(0);
      for (; p < spatial; ++p) rest += r[p];
      acc += ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7])) + rest;
    }
    db[c] = acc;
  }
}

}  // namespace

const ConvKernels<float> conv_avx2_f32{&workspace_bytes<float>, &forward<float>, &backward_data<float>,
                                       &backward_weights<float>, &bias_forward<float>, &bias_backward<float>};
const ConvKernels<double> conv_avx2_f64{&workspace_bytes<double>, &forward<double>, &backward_data<double>,
                                        &backward_weights<double>, &bias_forward<double>, &bias_backward<double>};

}  // namespace portgrad::kernels
