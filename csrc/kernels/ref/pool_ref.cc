/// @brief Reference pooling (Max, Mean, Total): direct loops, templated on the float type, sums in
/// double and rounded once (the oracle for the fast variants).
#include <algorithm>
#include <cmath>

#include "kernels/pool.h"

namespace portgrad::kernels {
namespace {

// Calls f(input flat offset) for every in-range position of output (p0, p1, p2)'s window, in
// d, h, w order.
template <typename F>
void window(const PoolShape& s, int64_t p0, int64_t p1, int64_t p2, F&& f) {
  for (int64_t t0 = 0; t0 < s.k[0]; ++t0) {
    const int64_t q0 = p0 * s.stride[0] + t0 - s.pad[0];
    if (q0 < 0 || q0 >= s.in[0]) continue;
    for (int64_t t1 = 0; t1 < s.k[1]; ++t1) {
      const int64_t q1 = p1 * s.stride[1] + t1 - s.pad[1];
      if (q1 < 0 || q1 >= s.in[1]) continue;
      for (int64_t t2 = 0; t2 < s.k[2]; ++t2) {
        const int64_t q2 = p2 * s.stride[2] + t2 - s.pad[2];
        if (q2 < 0 || q2 >= s.in[2]) continue;
        f((q0 * s.in[1] + q1) * s.in[2] + q2);
      }
    }
  }
}

template <typename T>
void forward(PoolFn fn, const PoolShape& s, const T* x, T* y) {
  const int64_t in_sp = s.in[0] * s.in[1] * s.in[2], out_sp = s.out[0] * s.out[1] * s.out[2];
  const double inv = 1.0 / static_cast<double>(s.k[0] * s.k[1] * s.k[2]);
  for (int64_t c = 0; c < s.planes; ++c) {
    const T* xc = x + c * in_sp;
    T* yc = y + c * out_sp;
    for (int64_t p0 = 0; p0 < s.out[0]; ++p0)
      for (int64_t p1 = 0; p1 < s.out[1]; ++p1)
        for (int64_t p2 = 0; p2 < s.out[2]; ++p2) {
          double acc = fn == PoolFn::Max ? -INFINITY : 0.0;
          bool any = false;
          window(s, p0, p1, p2, [&](int64_t q) {
            const double v = static_cast<double>(xc[q]);
            if (fn == PoolFn::Max) {
              if (!any || v > acc) acc = v;
            } else {
              acc += v;
            }
            any = true;
          });
          if (!any) acc = 0.0;
          if (fn == PoolFn::Mean) acc *= inv;
          yc[(p0 * s.out[1] + p1) * s.out[2] + p2] = static_cast<T>(acc);
        }
  }
}

template <typename T>
void backward(PoolFn fn, const PoolShape& s, const T* x, const T* dy, T* dx) {
  const int64_t in_sp = s.in[0] * s.in[1] * s.in[2], out_sp = s.out[0] * s.out[1] * s.out[2];
  const double inv = fn == PoolFn::Mean ? 1.0 / static_cast<double>(s.k[0] * s.k[1] * s.k[2]) : 1.0;
  // Sums in double per plane would need scratch; instead each dx element gathers its own terms in
  // a fixed order (outputs in increasing flat order), so it is rounded once.
  for (int64_t c = 0; c < s.planes; ++c) {
    const T* xc = x + c * in_sp;
    const T* dyc = dy + c * out_sp;
    T* dxc = dx + c * in_sp;
    for (int64_t q = 0; q < in_sp; ++q) {
      const int64_t q2 = q % s.in[2], q1 = (q / s.in[2]) % s.in[1], q0 = q / (s.in[2] * s.in[1]);
      const int64_t qq[3] = {q0, q1, q2};
      // Outputs whose window covers q: p*stride + t - pad == q with 0 <= t < k.
      int64_t lo[3], hi[3];
      for (int d = 0; d < 3; ++d) {
        const int64_t a = qq[d] + s.pad[d] - (s.k[d] - 1);  // p*stride >= a
        lo[d] = a <= 0 ? 0 : (a + s.stride[d] - 1) / s.stride[d];
        hi[d] = std::min((qq[d] + s.pad[d]) / s.stride[d], s.out[d] - 1);
      }
      double acc = 0.0;
      for (int64_t p0 = lo[0]; p0 <= hi[0]; ++p0)
        for (int64_t p1 = lo[1]; p1 <= hi[1]; ++p1)
          for (int64_t p2 = lo[2]; p2 <= hi[2]; ++p2) {
            const int64_t pf = (p0 * s.out[1] + p1) * s.out[2] + p2;
            if (fn == PoolFn::Max) {
              int64_t arg = -1;
              double best = 0.0;
              window(s, p0, p1, p2, [&](int64_t r) {
                const double v = static_cast<double>(xc[r]);
                if (arg < 0 || v > best) { best = v; arg = r; }
              });
              if (arg != q) continue;
            }
            acc += static_cast<double>(dyc[pf]);
          }
      dxc[q] = static_cast<T>(acc * inv);
    }
  }
}

template <typename T>
void max_tangent(const PoolShape& s, const T* x, const T* tx, T* ty) {
  const int64_t in_sp = s.in[0] * s.in[1] * s.in[2], out_sp = s.out[0] * s.out[1] * s.out[2];
  for (int64_t c = 0; c < s.planes; ++c)
    for (int64_t p0 = 0; p0 < s.out[0]; ++p0)
      for (int64_t p1 = 0; p1 < s.out[1]; ++p1)
        for (int64_t p2 = 0; p2 < s.out[2]; ++p2) {
          int64_t arg = -1;
          double best = 0.0;
          window(s, p0, p1, p2, [&](int64_t r) {
            const double v = static_cast<double>(x[c * in_sp + r]);
            if (arg < 0 || v > best) { best = v; arg = r; }
          });
          ty[c * out_sp + (p0 * s.out[1] + p1) * s.out[2] + p2] = arg < 0 ? T(0) : tx[c * in_sp + arg];
        }
}

}  // namespace

const PoolKernels<float> pool_ref_f32{&forward<float>, &backward<float>, &max_tangent<float>};
const PoolKernels<double> pool_ref_f64{&forward<double>, &backward<double>, &max_tangent<double>};

}  // namespace portgrad::kernels
