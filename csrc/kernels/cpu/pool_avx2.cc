/// @brief AVX2 pooling (Max, Mean, Total), forward and backward, vectorised along the innermost
/// spatial dimension: for the outputs of a row whose whole window lies inside the input, each
/// window tap is one pass over the row (contiguous for stride 1); the few border outputs and the
/// Max backward (a scatter to each window's first maximum) run scalar. Plain loops that the
/// compiler vectorises (this file is built with -mavx2 -mfma); helpers are file-local (STYLE.md 4).
#include <algorithm>
#include <cmath>
#include <cstring>

#include <type_traits>

#include "kernels/pool.h"

namespace portgrad::kernels {
namespace {

struct Rows {
  int64_t in_sp, out_sp, lo, hi;  // [lo, hi): outputs of a row whose w-window is all in range
  explicit Rows(const PoolShape& s) {
    in_sp = s.in[0] * s.in[1] * s.in[2];
    out_sp = s.out[0] * s.out[1] * s.out[2];
    const int64_t st = s.stride[2];
    lo = std::min(s.out[2], (s.pad[2] + st - 1) / st);
    const int64_t last = s.in[2] - s.k[2] + s.pad[2];
    hi = last < 0 ? 0 : std::min(s.out[2], last / st + 1);
    if (hi < lo) hi = lo;
  }
};

// Calls f(input row offset) for each in-range (t0, t1) window row of output row (p0, p1), in order;
// the offset is of input position (q0, q1, 0).
template <typename F>
inline int64_t window_rows(const PoolShape& s, int64_t p0, int64_t p1, F&& f) {
  int64_t n = 0;
  for (int64_t t0 = 0; t0 < s.k[0]; ++t0) {
    const int64_t q0 = p0 * s.stride[0] + t0 - s.pad[0];
    if (q0 < 0 || q0 >= s.in[0]) continue;
    for (int64_t t1 = 0; t1 < s.k[1]; ++t1) {
      const int64_t q1 = p1 * s.stride[1] + t1 - s.pad[1];
      if (q1 < 0 || q1 >= s.in[1]) continue;
      f((q0 * s.in[1] + q1) * s.in[2]);
      ++n;
    }
  }
  return n;
}

// One output (p0, p1, ow) in full generality; returns the value and the first argmax (or -1).
template <typename T>
inline T one(PoolFn fn, const PoolShape& s, const T* xc, int64_t p0, int64_t p1, int64_t ow, int64_t* arg) {
  T acc = T(0);
  int64_t best = -1;
  window_rows(s, p0, p1, [&](int64_t row) {
    for (int64_t t2 = 0; t2 < s.k[2]; ++t2) {
      const int64_t q2 = ow * s.stride[2] + t2 - s.pad[2];
      if (q2 < 0 || q2 >= s.in[2]) continue;
      const T v = xc[row + q2];
      if (fn == PoolFn::Max) {
        if (best < 0 || v > acc) { acc = v; best = row + q2; }
      } else {
        acc += v;
      }
    }
  });
  if (arg) *arg = best;
  return acc;
}

template <typename T>
void forward(PoolFn fn, const PoolShape& s, const T* x, T* y) {
  const Rows r(s);
  const int64_t st = s.stride[2], pad = s.pad[2];
  const T inv = fn == PoolFn::Mean ? T(1.0 / static_cast<double>(s.k[0] * s.k[1] * s.k[2])) : T(1);
  for (int64_t c = 0; c < s.planes; ++c) {
    const T* xc = x + c * r.in_sp;
    T* yc = y + c * r.out_sp;
    for (int64_t p0 = 0; p0 < s.out[0]; ++p0)
      for (int64_t p1 = 0; p1 < s.out[1]; ++p1) {
        T* __restrict yr = yc + (p0 * s.out[1] + p1) * s.out[2];
        for (int64_t ow = 0; ow < r.lo; ++ow) yr[ow] = one(fn, s, xc, p0, p1, ow, nullptr) * inv;
        for (int64_t ow = r.hi; ow < s.out[2]; ++ow) yr[ow] = one(fn, s, xc, p0, p1, ow, nullptr) * inv;
        if (r.hi <= r.lo) continue;
        const T init = fn == PoolFn::Max ? T(-INFINITY) : T(0);
        for (int64_t ow = r.lo; ow < r.hi; ++ow) yr[ow] = init;
        const int64_t n = window_rows(s, p0, p1, [&](int64_t row) {
          for (int64_t t2 = 0; t2 < s.k[2]; ++t2) {
            const T* __restrict src = xc + row + t2 - pad;
            if (fn == PoolFn::Max) {
              if (st == 1)
                for (int64_t ow = r.lo; ow < r.hi; ++ow) yr[ow] = std::max(yr[ow], src[ow]);
              else
                for (int64_t ow = r.lo; ow < r.hi; ++ow) yr[ow] = std::max(yr[ow], src[ow * st]);
            } else {
              if (st == 1)
                for (int64_t ow = r.lo; ow < r.hi; ++ow) yr[ow] += src[ow];
              else
                for (int64_t ow = r.lo; ow < r.hi; ++ow) yr[ow] += src[ow * st];
            }
          }
        });
        if (n == 0)
          for (int64_t ow = r.lo; ow < r.hi; ++ow) yr[ow] = T(0);
        else if (fn == PoolFn::Mean)
          for (int64_t ow = r.lo; ow < r.hi; ++ow) yr[ow] *= inv;
      }
  }
}

template <typename T>
void backward(PoolFn fn, const PoolShape& s, const T* x, const T* dy, T* dx) {
  const Rows r(s);
  const int64_t st = s.stride[2], pad = s.pad[2];
  const T scale = fn == PoolFn::Mean ? T(1.0 / static_cast<double>(s.k[0] * s.k[1] * s.k[2])) : T(1);
  std::memset(dx, 0, size_t(s.planes * r.in_sp) * sizeof(T));
  for (int64_t c = 0; c < s.planes; ++c) {
    const T* xc = x + c * r.in_sp;
    const T* dyc = dy + c * r.out_sp;
    T* dxc = dx + c * r.in_sp;
    for (int64_t p0 = 0; p0 < s.out[0]; ++p0)
      for (int64_t p1 = 0; p1 < s.out[1]; ++p1) {
        const int64_t orow = (p0 * s.out[1] + p1) * s.out[2];
        const T* __restrict g = dyc + orow;
        if (fn == PoolFn::Max) {
          auto generic = [&](int64_t ow) {
            int64_t arg;
            one(fn, s, xc, p0, p1, ow, &arg);
            if (arg >= 0) dxc[arg] += g[ow];
          };
          for (int64_t ow = 0; ow < r.lo; ++ow) generic(ow);
          // Interior: the window's rows are found once per output row; each window is a tight scan
          // for its first maximum (rows in order, then w).
          int64_t rows[64];
          int64_t nrows = 0;
          bool fits = s.k[0] * s.k[1] <= 64;
          if (fits) window_rows(s, p0, p1, [&](int64_t row) { rows[nrows++] = row; });
          for (int64_t ow = r.lo; ow < r.hi; ++ow) {
            if (!fits || nrows == 0) {
              generic(ow);
              continue;
            }
            const int64_t base = ow * st - pad;
            int64_t arg = rows[0] + base;
            T best = xc[arg];
            for (int64_t j = 0; j < nrows; ++j) {
              const T* xr = xc + rows[j] + base;
              for (int64_t t2 = 0; t2 < s.k[2]; ++t2)
                if (xr[t2] > best) {
                  best = xr[t2];
                  arg = rows[j] + base + t2;
                }
            }
            dxc[arg] += g[ow];
          }
          for (int64_t ow = std::max(r.hi, r.lo); ow < s.out[2]; ++ow) generic(ow);
          continue;
        }
        // Mean / Total: every in-range tap of the window receives scale * dy.
        auto border = [&](int64_t ow) {
          const T v = g[ow] * scale;
          window_rows(s, p0, p1, [&](int64_t row) {
            for (int64_t t2 = 0; t2 < s.k[2]; ++t2) {
              const int64_t q2 = ow * st + t2 - pad;
              if (q2 >= 0 && q2 < s.in[2]) dxc[row + q2] += v;
            }
          });
        };
        for (int64_t ow = 0; ow < r.lo; ++ow) border(ow);
        window_rows(s, p0, p1, [&](int64_t row) {
          for (int64_t t2 = 0; t2 < s.k[2]; ++t2) {
            T* __restrict dst = dxc + row + t2 - pad;
            if (st == 1)
              for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow] += g[ow] * scale;
            else
              for (int64_t ow = r.lo; ow < r.hi; ++ow) dst[ow * st] += g[ow] * scale;
          }
        });
        for (int64_t ow = r.hi; ow < s.out[2]; ++ow) border(ow);
      }
  }
}

// The forward-mode gather of max pooling is memory-bound and rare: the reference's (called at run
// time, so no table is initialised from another file's).
template <typename T>
void max_tangent(const PoolShape& s, const T* x, const T* tx, T* ty) {
  if constexpr (std::is_same_v<T, float>) pool_ref_f32.max_tangent(s, x, tx, ty);
  else pool_ref_f64.max_tangent(s, x, tx, ty);
}

}  // namespace

const PoolKernels<float> pool_avx2_f32{&forward<float>, &backward<float>, &max_tangent<float>};
const PoolKernels<double> pool_avx2_f64{&forward<double>, &backward<double>, &max_tangent<double>};

}  // namespace portgrad::kernels
