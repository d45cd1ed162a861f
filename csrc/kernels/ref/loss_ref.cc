/// @brief Reference loss kernels: templated on the float type, computed in double, rounded once.
/// The log clamp eps = (machine epsilon of T)^2 is that of T, as loss.h documents.
/// A mean over zero elements (n == 0 or groups == 0) is taken as 0.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/loss.h"

namespace portgrad::kernels {
namespace {

template <typename T>
constexpr double eps() {
  return static_cast<double>(std::numeric_limits<T>::epsilon()) *
         static_cast<double>(std::numeric_limits<T>::epsilon());
}
double mean(double s, int64_t n) { return n > 0 ? s / static_cast<double>(n) : 0.0; }
double sign(double v) { return v > 0 ? 1.0 : v < 0 ? -1.0 : 0.0; }

template <typename T>
void mse_forward(int64_t batch, int64_t n, const T* x, const T* t, T* loss) {
  for (int64_t b = 0; b < batch; ++b) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = static_cast<double>(x[b * n + i]) - static_cast<double>(t[b * n + i]);
      s += d * d;
    }
    loss[b] = static_cast<T>(mean(s, n));
  }
}

template <typename T>
void mse_backward(int64_t batch, int64_t n, const T* x, const T* t, const T* dloss, T* dx, T* dt) {
  for (int64_t b = 0; b < batch; ++b) {
    const double k = 2.0 * static_cast<double>(dloss[b]) / static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = b * n + i;
      const double g = k * (static_cast<double>(x[j]) - static_cast<double>(t[j]));
      if (dx) dx[j] = static_cast<T>(g);
      if (dt) dt[j] = static_cast<T>(-g);
    }
  }
}

template <typename T>
void mae_forward(int64_t batch, int64_t n, const T* x, const T* t, T* loss) {
  for (int64_t b = 0; b < batch; ++b) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i)
      s += std::fabs(static_cast<double>(x[b * n + i]) - static_cast<double>(t[b * n + i]));
    loss[b] = static_cast<T>(mean(s, n));
  }
}

template <typename T>
void mae_backward(int64_t batch, int64_t n, const T* x, const T* t, const T* dloss, T* dx, T* dt) {
  for (int64_t b = 0; b < batch; ++b) {
    const double k = static_cast<double>(dloss[b]) / static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = b * n + i;
      const double g = k * sign(static_cast<double>(x[j]) - static_cast<double>(t[j]));
      if (dx) dx[j] = static_cast<T>(g);
      if (dt) dt[j] = static_cast<T>(-g);
    }
  }
}

template <typename T>
void bce_forward(int64_t batch, int64_t n, const T* p, const T* t, T* loss) {
  for (int64_t b = 0; b < batch; ++b) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double pi = p[b * n + i], ti = t[b * n + i];
      s -= ti * std::log(std::max(pi, eps<T>())) + (1.0 - ti) * std::log(std::max(1.0 - pi, eps<T>()));
    }
    loss[b] = static_cast<T>(mean(s, n));
  }
}

template <typename T>
void bce_backward(int64_t batch, int64_t n, const T* p, const T* t, const T* dloss, T* dp, T* dt) {
  for (int64_t b = 0; b < batch; ++b) {
    const double k = static_cast<double>(dloss[b]) / static_cast<double>(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = b * n + i;
      const double pj = p[j], tj = t[j];
      const double a = std::max(pj, eps<T>()), c = std::max(1.0 - pj, eps<T>());
      if (dp) dp[j] = static_cast<T>(k * (-tj / a + (1.0 - tj) / c));
      if (dt) dt[j] = static_cast<T>(-k * (std::log(a) - std::log(c)));
    }
  }
}

template <typename T>
void ce_prob_forward(int64_t batch, int64_t groups, int64_t classes, const T* p, const T* t, T* loss) {
  const int64_t m = groups * classes;
  for (int64_t b = 0; b < batch; ++b) {
    double s = 0.0;
    for (int64_t j = b * m; j < (b + 1) * m; ++j)
      s -= static_cast<double>(t[j]) * std::log(std::max(static_cast<double>(p[j]), eps<T>()));
    loss[b] = static_cast<T>(mean(s, groups));
  }
}

template <typename T>
void ce_prob_backward(int64_t batch, int64_t groups, int64_t classes, const T* p, const T* t,
                      const T* dloss, T* dp, T* dt) {
  const int64_t m = groups * classes;
  for (int64_t b = 0; b < batch; ++b) {
    const double k = static_cast<double>(dloss[b]) / static_cast<double>(groups);
    for (int64_t j = b * m; j < (b + 1) * m; ++j) {
      const double a = std::max(static_cast<double>(p[j]), eps<T>());
      if (dp) dp[j] = static_cast<T>(-k * static_cast<double>(t[j]) / a);
      if (dt) dt[j] = static_cast<T>(-k * std::log(a));
    }
  }
}

template <typename T>
void ce_index_forward(int64_t batch, int64_t groups, int64_t classes, const T* p, const int64_t* idx,
                      T* loss) {
  for (int64_t b = 0; b < batch; ++b) {
    double s = 0.0;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t row = b * groups + g;
      s -= std::log(std::max(static_cast<double>(p[row * classes + idx[row]]), eps<T>()));
    }
    loss[b] = static_cast<T>(mean(s, groups));
  }
}

template <typename T>
void ce_index_backward(int64_t batch, int64_t groups, int64_t classes, const T* p, const int64_t* idx,
                       const T* dloss, T* dp) {
  if (!dp) return;
  for (int64_t b = 0; b < batch; ++b) {
    const double k = static_cast<double>(dloss[b]) / static_cast<double>(groups);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t row = b * groups + g;
      T* d = dp + row * classes;
      for (int64_t c = 0; c < classes; ++c) d[c] = T(0);
      d[idx[row]] = static_cast<T>(-k / std::max(static_cast<double>(p[row * classes + idx[row]]), eps<T>()));
    }
  }
}

template <typename T>
constexpr LossKernels<T> make() {
  return {&mse_forward<T>,     &mse_backward<T>,     &mae_forward<T>,      &mae_backward<T>,
          &bce_forward<T>,     &bce_backward<T>,     &ce_prob_forward<T>,  &ce_prob_backward<T>,
          &ce_index_forward<T>, &ce_index_backward<T>};
}

}  // namespace

const LossKernels<float> loss_ref_f32 = make<float>();
const LossKernels<double> loss_ref_f64 = make<double>();

}  // namespace portgrad::kernels
