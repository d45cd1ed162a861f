/// @brief The fully fused MLP: every layer of a small multilayer perceptron, forward and backward,
/// in one kernel (tiny-cuda-nn's regime), for GPU plans whose net is a chain of LinearLayers and
/// elementwise functions with at most kMlpMaxWidth units a layer.
///
/// Each block keeps all the weights in shared memory and walks over tiles of rows: a tile's
/// activations never leave the block, so a whole forward pass, and the backward pass after it,
/// costs one read of the inputs and one write of each result. Parameter gradients are summed per
/// block into the workspace and then over the blocks in a fixed order, so results are
/// deterministic (for a given device and batch size).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/unary.h"

namespace portgrad::kernels {

constexpr int kMlpMaxLayers = 8;
constexpr int kMlpMaxWidth = 128;

// y = f_L(W_L ... f_1(W_1 x + b_1) ... + b_L): layer l maps dims[l] to dims[l + 1] units, with
// weights W_l (dims[l + 1] x dims[l], row-major: LinearLayer's "Weights"), optional biases b_l
// and an optional elementwise function act[l] (UnaryFn::Count for none).
struct MlpShape {
  int layers = 0;
  int dims[kMlpMaxLayers + 1] = {};
  UnaryFn act[kMlpMaxLayers] = {};
  bool backward = false;     // a gradient is wanted (input gradient and/or parameter gradients)
  bool param_grads = false;  // parameter gradients are wanted
};

// The limits above hold (1 to kMlpMaxLayers layers, 1 to kMlpMaxWidth units each, known functions).
inline bool mlp_shape_valid(const MlpShape& s) {
  if (s.layers < 1 || s.layers > kMlpMaxLayers) return false;
  for (int l = 0; l <= s.layers; ++l)
    if (s.dims[l] < 1 || s.dims[l] > kMlpMaxWidth) return false;
  for (int l = 0; l < s.layers; ++l)
    if (int(s.act[l]) < 0 || int(s.act[l]) > int(UnaryFn::Count)) return false;
  return true;
}

template <typename T>
struct MlpArgs {
  MlpShape shape;
  int64_t batch = 0;
  const T* x = nullptr;                      // batch x dims[0]
  const T* weight[kMlpMaxLayers] = {};
  const T* bias[kMlpMaxLayers] = {};         // null: the layer has no biases
  T* y = nullptr;                            // batch x dims[L], or null
  const T* dy = nullptr;                     // gradient of y, batch x dims[L]; null: all ones (of the sum)
  T* dx = nullptr;                           // batch x dims[0], or null
  T* dweight[kMlpMaxLayers] = {};            // summed over the batch; null where not wanted
  T* dbias[kMlpMaxLayers] = {};
  void* workspace = nullptr;                 // workspace_bytes(shape, batch) bytes
};

template <typename T>
struct MlpKernels {
  // Bytes of workspace that run() needs for this shape and batch, or SIZE_MAX where one block cannot
  // hold the shape (the caller then runs the layers one by one).
  size_t (*workspace_bytes)(const MlpShape& s, int64_t batch);
  // The forward pass, and with shape.backward the backward pass from dy (every output requested
  // in the arguments is written; nothing else is).
  void (*run)(const MlpArgs<T>& a);
};

// The reference twin: the same function in double precision, row by row, plainly.
extern const MlpKernels<float> mlp_ref_f32;
extern const MlpKernels<double> mlp_ref_f64;

}  // namespace portgrad::kernels
