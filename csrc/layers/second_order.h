/// @brief A helper of the layers' second order (Layer::jvp_backward).
#pragma once
#include <cstdint>

#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {

// For a layer whose backward is bilinear in (its inputs, the output's gradient) — a product, a
// matrix product, the mean squared loss — the gradients' tangents are the backward of the tangents
// (the caller runs it first) plus the backward of the gradient with the inputs' tangents in place
// of the inputs: this runs the latter into `scratch` (count[i] elements for input i, each buffer
// 64-byte aligned; `scratch` must not overlap the layer's own workspace) and adds it to a.din.
inline size_t second_pass_scratch_bytes(const int64_t* count, int inputs, DType dtype) {
  size_t bytes = 0;
  for (int i = 0; i < inputs; ++i) bytes += (size_t(count[i]) * dtype_size(dtype) + 63) / 64 * 64;
  return bytes;
}

template <typename L>
void add_backward_on_input_tangents(const L& layer, const LayerArgs& a, const int64_t* count, int inputs,
                                    void* scratch) {
  with_float_type(a.dtype, [&](auto t) {
    using T = decltype(t);
    void* din[8] = {};
    char* at = static_cast<char*>(scratch);
    for (int i = 0; i < inputs; ++i)
      if (a.din[i]) {
        din[i] = at;
        at += (size_t(count[i]) * sizeof(T) + 63) / 64 * 64;
      }
    LayerArgs b = a;
    b.in = a.tin;
    b.din = din;
    layer.backward(b);
    for (int i = 0; i < inputs; ++i)
      if (din[i]) ops::vector<T>(a.device).axpy(count[i], T(1), static_cast<const T*>(din[i]), a.input_grad<T>(i));
  });
}

}  // namespace portgrad
