/// @brief N-D (1 to 3 spatial dimensions) grouped convolution, channels-first: forward,
/// backward-data, backward-weights, and the per-channel bias add and bias gradient.
///
/// Every problem is described as 3-D: lower ranks set the leading unused dimensions to
/// in = out = k = stride = dilation = 1 and pad = 0. With x (batch, c_in, in...), W (c_out,
/// c_in/g, k...), y (batch, c_out, out...), and group q = o / (c_out/g):
///
///   y[b, o, p] = sum_{i < c_in/g, t < k} W[o, i, t] * x[b, q*c_in/g + i, p*stride + t*dilation - pad]
///
/// where positions outside [0, in) read zero (pad is the padding before; the padding after is
/// implied by `out`). A transposed convolution (DeconvolutionLayer) is backward_data forward and
/// forward backward, with the same weights layout (PyTorch's ConvTranspose layout).
///
/// Kernels allocate nothing: scratch comes from `workspace`, at least workspace_bytes(shape) bytes,
/// 64-byte aligned. Outputs are overwritten (never accumulated) and may hold NaN on entry.
/// Results are deterministic (independent of thread count).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

struct ConvShape {
  int64_t batch = 1, c_in = 1, c_out = 1, groups = 1;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1}, k[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1}, dilation[3] = {1, 1, 1}, pad[3] = {0, 0, 0};
};

template <typename T>
struct ConvKernels {
  size_t (*workspace_bytes)(const ConvShape& s);
  // y = conv(x, W) (no bias).
  void (*forward)(const ConvShape& s, const T* x, const T* w, T* y, void* workspace);
  // dx = conv^T(dy, W): the gradient with respect to x of sum(dy * y).
  void (*backward_data)(const ConvShape& s, const T* dy, const T* w, T* dx, void* workspace);
  // dW = the gradient with respect to W of sum(dy * y), summed over the batch.
  void (*backward_weights)(const ConvShape& s, const T* x, const T* dy, T* dw, void* workspace);
  // y[b, c, p] += bias[c] for y (batch, channels, spatial).
  void (*bias_forward)(int64_t batch, int64_t channels, int64_t spatial, const T* bias, T* y);
  // db[c] = sum_{b, p} dy[b, c, p].
  void (*bias_backward)(int64_t batch, int64_t channels, int64_t spatial, const T* dy, T* db);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(ConvKernels, conv)

}  // namespace portgrad::kernels
