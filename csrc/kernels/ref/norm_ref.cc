/// @brief Reference normalisation and dropout kernels: templated on the float type, computed in
/// double, rounded once; the oracle of the kernel tests.
#include <cmath>

#include "kernels/norm.h"

namespace portgrad::kernels {
namespace {

inline double D(float v) { return v; }
inline double D(double v) { return v; }

template <typename T>
void channel_moments(int64_t B, int64_t C, int64_t S, const T* x, T* mean, T* var) {
  const double m = double(B) * double(S);
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < S; ++k) s += D(x[(b * C + c) * S + k]);
    const double mu = s / m;
    double q = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < S; ++k) {
        const double d = D(x[(b * C + c) * S + k]) - mu;
        q += d * d;
      }
    mean[c] = static_cast<T>(mu);
    var[c] = static_cast<T>(q / m);
  }
}

template <typename T>
void inv_std(int64_t n, const T* var, double eps, T* invstd) {
  for (int64_t i = 0; i < n; ++i) invstd[i] = static_cast<T>(1.0 / std::sqrt(D(var[i]) + eps));
}

template <typename T>
void channel_forward(int64_t B, int64_t C, int64_t S, const T* x, const T* mean, const T* invstd, const T* gamma,
                     const T* beta, T* y) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const double mu = D(mean[c]), is = D(invstd[c]), g = D(gamma[c]), be = D(beta[c]);
      const T* xr = x + (b * C + c) * S;
      T* yr = y + (b * C + c) * S;
      for (int64_t k = 0; k < S; ++k) yr[k] = static_cast<T>(g * ((D(xr[k]) - mu) * is) + be);
    }
}

template <typename T>
void channel_backward(int64_t B, int64_t C, int64_t S, const T* x, const T* dy, const T* mean, const T* invstd,
                      const T* gamma, bool batch_stats, T* dx, T* dgamma, T* dbeta) {
  const double m = double(B) * double(S);
  for (int64_t c = 0; c < C; ++c) {
    const double mu = D(mean[c]), is = D(invstd[c]), g = D(gamma[c]);
    double sdy = 0, sdyx = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < S; ++k) {
        const int64_t i = (b * C + c) * S + k;
        sdy += D(dy[i]);
        sdyx += D(dy[i]) * ((D(x[i]) - mu) * is);
      }
    if (dgamma) dgamma[c] = static_cast<T>(sdyx);
    if (dbeta) dbeta[c] = static_cast<T>(sdy);
    if (!dx) continue;
    const double a = batch_stats ? sdy / m : 0.0, q = batch_stats ? sdyx / m : 0.0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < S; ++k) {
        const int64_t i = (b * C + c) * S + k;
        dx[i] = static_cast<T>(g * is * (D(dy[i]) - a - (D(x[i]) - mu) * is * q));
      }
  }
}

template <typename T>
void running_update(int64_t C, double momentum, int64_t m, const T* mean, const T* var, T* rmean, T* rvar) {
  const double unbias = m > 1 ? double(m) / double(m - 1) : 1.0;
  for (int64_t c = 0; c < C; ++c) {
    rmean[c] = static_cast<T>(momentum * D(rmean[c]) + (1.0 - momentum) * D(mean[c]));
    rvar[c] = static_cast<T>(momentum * D(rvar[c]) + (1.0 - momentum) * D(var[c]) * unbias);
  }
}

template <typename T>
void row_forward(int64_t B, int64_t R, int64_t N, bool per_element, double eps, const T* x, const T* gamma,
                 const T* beta, T* y, T* mean, T* invstd) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r) {
      const T* xr = x + (b * R + r) * N;
      T* yr = y + (b * R + r) * N;
      double s = 0;
      for (int64_t k = 0; k < N; ++k) s += D(xr[k]);
      const double mu = s / double(N);
      double q = 0;
      for (int64_t k = 0; k < N; ++k) q += (D(xr[k]) - mu) * (D(xr[k]) - mu);
      const double is = 1.0 / std::sqrt(q / double(N) + eps);
      mean[b * R + r] = static_cast<T>(mu);
      invstd[b * R + r] = static_cast<T>(is);
      for (int64_t k = 0; k < N; ++k) {
        const int64_t p = per_element ? r * N + k : r;
        yr[k] = static_cast<T>(D(gamma[p]) * ((D(xr[k]) - mu) * is) + D(beta[p]));
      }
    }
}

template <typename T>
void row_backward(int64_t B, int64_t R, int64_t N, bool per_element, const T* x, const T* dy, const T* mean,
                  const T* invstd, const T* gamma, T* dx, T* dgamma, T* dbeta) {
  // Parameter gradients: element (or row) p summed over the batch, examples in order.
  const int64_t P = per_element ? R * N : R;
  for (int64_t p = 0; p < P; ++p) {
    const int64_t r = per_element ? p / N : p;
    const int64_t k0 = per_element ? p % N : 0, k1 = per_element ? k0 + 1 : N;
    double sg = 0, sb = 0;
    for (int64_t b = 0; b < B; ++b) {
      const double mu = D(mean[b * R + r]), is = D(invstd[b * R + r]);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t i = (b * R + r) * N + k;
        sg += D(dy[i]) * ((D(x[i]) - mu) * is);
        sb += D(dy[i]);
      }
    }
    if (dgamma) dgamma[p] = static_cast<T>(sg);
    if (dbeta) dbeta[p] = static_cast<T>(sb);
  }
  if (!dx) return;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r) {
      const double mu = D(mean[b * R + r]), is = D(invstd[b * R + r]);
      const int64_t base = (b * R + r) * N;
      double sg = 0, sgx = 0;
      for (int64_t k = 0; k < N; ++k) {
        const double g = D(dy[base + k]) * D(gamma[per_element ? r * N + k : r]);
        sg += g;
        sgx += g * ((D(x[base + k]) - mu) * is);
      }
      sg /= double(N);
      sgx /= double(N);
      for (int64_t k = 0; k < N; ++k) {
        const double g = D(dy[base + k]) * D(gamma[per_element ? r * N + k : r]);
        dx[base + k] = static_cast<T>(is * (g - sg - (D(x[base + k]) - mu) * is * sgx));
      }
    }
}

template <typename T>
void dropout(int64_t n, double p, uint64_t key, const T* x, T* y) {
  const uint32_t thr = dropout_rng::threshold(p);
  const double scale = 1.0 / (1.0 - p);
  for (int64_t i = 0; i < n; ++i)
    y[i] = dropout_rng::bits(key, uint64_t(i)) >= thr ? static_cast<T>(D(x[i]) * scale) : T(0);
}

template <typename T>
constexpr NormKernels<T> table() {
  return {&channel_moments<T>, &inv_std<T>,     &channel_forward<T>, &channel_backward<T>, &running_update<T>,
          &row_forward<T>,     &row_backward<T>, &dropout<T>};
}

}  // namespace

const NormKernels<float> norm_ref_f32 = table<float>();
const NormKernels<double> norm_ref_f64 = table<double>();

}  // namespace portgrad::kernels
