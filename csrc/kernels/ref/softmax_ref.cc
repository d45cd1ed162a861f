/// @brief Reference softmax over the last axis: templated on the float type, computed in double.
#include <cmath>

#include "kernels/softmax.h"

namespace portgrad::kernels {
namespace {

// Three passes per row (max, sum, write) so that nothing is allocated and y may alias x.
template <typename T>
void softmax_forward(int64_t rows, int64_t cols, const T* x, T* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    double m = -INFINITY;
    for (int64_t c = 0; c < cols; ++c) m = std::fmax(m, static_cast<double>(xr[c]));
    double s = 0.0;
    for (int64_t c = 0; c < cols; ++c) s += std::exp(static_cast<double>(xr[c]) - m);
    const double inv = 1.0 / s;
    for (int64_t c = 0; c < cols; ++c) yr[c] = static_cast<T>(std::exp(static_cast<double>(xr[c]) - m) * inv);
  }
}

template <typename T>
void softmax_backward(int64_t rows, int64_t cols, const T* y, const T* dy, T* dx) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * cols;
    const T* dyr = dy + r * cols;
    T* dxr = dx + r * cols;
    double s = 0.0;
    for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(dyr[c]) * static_cast<double>(yr[c]);
    for (int64_t c = 0; c < cols; ++c)
      dxr[c] = static_cast<T>(static_cast<double>(yr[c]) * (static_cast<double>(dyr[c]) - s));
  }
}

template <typename T>
void log_softmax_forward(int64_t rows, int64_t cols, const T* x, T* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    double m = -INFINITY;
    for (int64_t c = 0; c < cols; ++c) m = std::fmax(m, static_cast<double>(xr[c]));
    double s = 0.0;
    for (int64_t c = 0; c < cols; ++c) s += std::exp(static_cast<double>(xr[c]) - m);
    const double ls = std::log(s);
    for (int64_t c = 0; c < cols; ++c) yr[c] = static_cast<T>((static_cast<double>(xr[c]) - m) - ls);
  }
}

template <typename T>
void log_softmax_backward(int64_t rows, int64_t cols, const T* y, const T* dy, T* dx) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * cols;
    const T* dyr = dy + r * cols;
    T* dxr = dx + r * cols;
    double s = 0.0;
    for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(dyr[c]);
    for (int64_t c = 0; c < cols; ++c)
      dxr[c] = static_cast<T>(static_cast<double>(dyr[c]) - std::exp(static_cast<double>(yr[c])) * s);
  }
}

template <typename T>
void masked_softmax_forward(int64_t batch, int64_t heads, int64_t m, int64_t n, const T* x, const T* mask, T* y) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < m; ++i) {
        const int64_t row = ((b * heads + h) * m + i) * n;
        const T* mr = mask + (b * m + i) * n;
        double mx = -INFINITY;
        for (int64_t j = 0; j < n; ++j)
          if (mr[j] != T(0)) mx = std::fmax(mx, static_cast<double>(x[row + j]));
        double s = 0.0;
        for (int64_t j = 0; j < n; ++j)
          if (mr[j] != T(0)) s += std::exp(static_cast<double>(x[row + j]) - mx);
        const double inv = 1.0 / s;  // (as the plain forward rounds: a row that hides nothing is the same)
        for (int64_t j = 0; j < n; ++j)
          y[row + j] = mr[j] != T(0) ? static_cast<T>(std::exp(static_cast<double>(x[row + j]) - mx) * inv) : T(0);
      }
}

template <typename T>
void softmax_backward_tangent(int64_t rows, int64_t cols, const T* y, const T* ty, const T* dy, const T* tdy, T* tdx) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * cols;
    double s = 0.0, u = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      s += double(dy[o + c]) * double(y[o + c]);
      u += double(ty[o + c]) * double(dy[o + c]) + double(y[o + c]) * double(tdy[o + c]);
    }
    for (int64_t c = 0; c < cols; ++c)
      tdx[o + c] = static_cast<T>(double(ty[o + c]) * (double(dy[o + c]) - s) + double(y[o + c]) * (double(tdy[o + c]) - u));
  }
}

}  // namespace

const SoftmaxKernels<float> softmax_ref_f32{&softmax_forward<float>, &softmax_backward<float>,
                                            &log_softmax_forward<float>, &log_softmax_backward<float>,
                                            &masked_softmax_forward<float>, &softmax_backward_tangent<float>};
const SoftmaxKernels<double> softmax_ref_f64{&softmax_forward<double>, &softmax_backward<double>,
                                             &log_softmax_forward<double>, &log_softmax_backward<double>,
                                             &masked_softmax_forward<double>, &softmax_backward_tangent<double>};

}  // namespace portgrad::kernels
