/// @brief Reference convolution: direct loops, templated on the float type, every sum in double
/// and rounded once (the oracle for the fast variants).
#include "kernels/conv.h"

namespace portgrad::kernels {
namespace {

// Flat index of input position (c, z, y, x) of example b, or -1 when it lies in the padding.
struct Geometry {
  const ConvShape& s;
  int64_t in_sp, out_sp, k_sp;
  explicit Geometry(const ConvShape& sh)
      : s(sh), in_sp(sh.in[0] * sh.in[1] * sh.in[2]), out_sp(sh.out[0] * sh.out[1] * sh.out[2]),
        k_sp(sh.k[0] * sh.k[1] * sh.k[2]) {}
  // Input spatial offset read by output position (p0, p1, p2) and tap (t0, t1, t2), or -1.
  int64_t tap(const int64_t p[3], const int64_t t[3]) const {
    int64_t off = 0;
    for (int d = 0; d < 3; ++d) {
      const int64_t q = p[d] * s.stride[d] + t[d] * s.dilation[d] - s.pad[d];
      if (q < 0 || q >= s.in[d]) return -1;
      off = off * s.in[d] + q;
    }
    return off;
  }
};

inline void unflat(int64_t f, const int64_t n[3], int64_t p[3]) {
  p[2] = f % n[2];
  f /= n[2];
  p[1] = f % n[1];
  p[0] = f / n[1];
}

template <typename T>
void forward(const ConvShape& s, const T* x, const T* w, T* y, void*) {
  const Geometry g(s);
  const int64_t cig = s.c_in / s.groups, cog = s.c_out / s.groups;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t o = 0; o < s.c_out; ++o) {
      const int64_t c0 = (o / cog) * cig;
      for (int64_t pf = 0; pf < g.out_sp; ++pf) {
        int64_t p[3];
        unflat(pf, s.out, p);
        double acc = 0.0;
        for (int64_t i = 0; i < cig; ++i)
          for (int64_t tf = 0; tf < g.k_sp; ++tf) {
            int64_t t[3];
            unflat(tf, s.k, t);
            const int64_t q = g.tap(p, t);
            if (q < 0) continue;
            acc += static_cast<double>(w[(o * cig + i) * g.k_sp + tf]) *
                   static_cast<double>(x[(b * s.c_in + c0 + i) * g.in_sp + q]);
          }
        y[(b * s.c_out + o) * g.out_sp + pf] = static_cast<T>(acc);
      }
    }
}

template <typename T>
void backward_data(const ConvShape& s, const T* dy, const T* w, T* dx, void*) {
  const Geometry g(s);
  const int64_t cig = s.c_in / s.groups, cog = s.c_out / s.groups;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t c = 0; c < s.c_in; ++c) {
      const int64_t grp = c / cig, i = c % cig;
      for (int64_t qf = 0; qf < g.in_sp; ++qf) {
        int64_t q[3];
        unflat(qf, s.in, q);
        double acc = 0.0;
        for (int64_t tf = 0; tf < g.k_sp; ++tf) {
          int64_t t[3];
          unflat(tf, s.k, t);
          // Output position p with p*stride + t*dilation - pad == q in every dimension.
          int64_t pflat = 0;
          bool hit = true;
          for (int d = 0; d < 3 && hit; ++d) {
            const int64_t num = q[d] + s.pad[d] - t[d] * s.dilation[d];
            if (num < 0 || num % s.stride[d] != 0 || num / s.stride[d] >= s.out[d]) hit = false;
            else pflat = pflat * s.out[d] + num / s.stride[d];
          }
          if (!hit) continue;
          for (int64_t oo = 0; oo < cog; ++oo) {
            const int64_t o = grp * cog + oo;
            acc += static_cast<double>(w[(o * cig + i) * g.k_sp + tf]) *
                   static_cast<double>(dy[(b * s.c_out + o) * g.out_sp + pflat]);
          }
        }
        dx[(b * s.c_in + c) * g.in_sp + qf] = static_cast<T>(acc);
      }
    }
}

template <typename T>
void backward_weights(const ConvShape& s, const T* x, const T* dy, T* dw, void*) {
  const Geometry g(s);
  const int64_t cig = s.c_in / s.groups, cog = s.c_out / s.groups;
  for (int64_t o = 0; o < s.c_out; ++o) {
    const int64_t c0 = (o / cog) * cig;
    for (int64_t i = 0; i < cig; ++i)
      for (int64_t tf = 0; tf < g.k_sp; ++tf) {
        int64_t t[3];
        unflat(tf, s.k, t);
        double acc = 0.0;
        for (int64_t b = 0; b < s.batch; ++b)
          for (int64_t pf = 0; pf < g.out_sp; ++pf) {
            int64_t p[3];
            unflat(pf, s.out, p);
            const int64_t q = g.tap(p, t);
            if (q < 0) continue;
            acc += static_cast<double>(dy[(b * s.c_out + o) * g.out_sp + pf]) *
                   static_cast<double>(x[(b * s.c_in + c0 + i) * g.in_sp + q]);
          }
        dw[(o * cig + i) * g.k_sp + tf] = static_cast<T>(acc);
      }
  }
}

template <typename T>
void bias_forward(int64_t batch, int64_t channels, int64_t spatial, const T* bias, T* y) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t c = 0; c < channels; ++c) {
      T* yr = y + (b * channels + c) * spatial;
      for (int64_t p = 0; p < spatial; ++p)
        yr[p] = static_cast<T>(static_cast<double>(yr[p]) + static_cast<double>(bias[c]));
    }
}

template <typename T>
void bias_backward(int64_t batch, int64_t channels, int64_t spatial, const T* dy, T* db) {
  for (int64_t c = 0; c < channels; ++c) {
    double acc = 0.0;
    for (int64_t b = 0; b < batch; ++b) {
      const T* r = dy + (b * channels + c) * spatial;
      for (int64_t p = 0; p < spatial; ++p) acc += static_cast<double>(r[p]);
    }
    db[c] = static_cast<T>(acc);
  }
}

size_t no_workspace(const ConvShape&) { return 0; }

}  // namespace

const ConvKernels<float> conv_ref_f32{&no_workspace, &forward<float>, &backward_data<float>,
                                      &backward_weights<float>, &bias_forward<float>, &bias_backward<float>};
const ConvKernels<double> conv_ref_f64{&no_workspace, &forward<double>, &backward_data<double>,
                                       &backward_weights<double>, &bias_forward<double>, &bias_backward<double>};

}  // namespace portgrad::kernels
