/// @brief The layer interface: shape inference, parameter declarations, forward, backward (VJP) and
/// forward mode (JVP).
///
/// A layer is configured once from its spec, then `infer` fixes its shapes. Forward and backward
/// see C-contiguous arrays with a leading batch axis; they allocate nothing (scratch comes from
/// `workspace`) and call ops, never kernels or intrinsics directly.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/errors.h"
#include "core/tensor.h"
#include "core/json.h"
#include "kernels/unary.h"

namespace portgrad {

using MaybeShape = std::optional<Shape>;

struct ParamDecl {
  std::string name;  // "Weights", "Biases"
  Shape shape;
  // Learned: listed by NetPortGradient(All) and changed by training. False for constants (an
  // imported model's attention scale) and for state such as batch-norm moving statistics.
  bool learnable = true;
  // Has a gradient when asked for by name. False for state (asking is an error; evaluation never
  // changes it: Train mode uses the batch's own statistics).
  bool differentiable = true;
  bool nonnegative = false;  // values below 0 are refused when set (a variance)
  // How NetInitialize fills it: random weights scaled by fan_in/fan_out (Kaiming, Xavier, ...),
  // or constant zeros / ones (biases, scalings, variances).
  enum class Init { Weights, Zeros, Ones } init = Init::Zeros;
  int64_t fan_in = 0, fan_out = 0;  // for Init::Weights
};

// Pointers for one call; each array is [batch, ...port or parameter shape].
// Backward: dout[o] is the cotangent of output o (always valid); din[i] / dparam[p] are null when
// that gradient is not wanted, and are overwritten (never accumulated) when given.
struct LayerArgs {
  int64_t batch = 0;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  const void* const* in = nullptr;
  void* const* out = nullptr;
  const void* const* param = nullptr;
  const void* const* dout = nullptr;
  void* const* din = nullptr;
  void* const* dparam = nullptr;
  void* workspace = nullptr;      // scratch, shared by all layers, valid during one call only
  void* saved = nullptr;          // this node's own saved_bytes(), kept from forward to backward
  const void* prepared = nullptr; // what prepare() made from the arrays (packed weights), or null
  bool train = false;             // NetEvaluationMode "Train" (dropout on, batch statistics)
  uint64_t seed = 0;              // per-evaluation random seed (Train mode)
  // Forward mode (jvp): the tangents of the inputs (every real input has one, zeros where nothing
  // flows; null for an index input), of the arrays (null: zero; [...array shape], shared by the
  // batch) and of the outputs (written, never accumulated).
  const void* const* tin = nullptr;
  const void* const* tparam = nullptr;
  void* const* tout = nullptr;
  // jvp of a layer whose jvp_takes_directions(): tin and tout hold this many blocks of [batch, ...],
  // one per direction, against the one batch of inputs (and no array tangents).
  int64_t directions = 1;
  // Backward: per array, whether its gradient dparam[p] is wanted per example ([batch, ...array
  // shape], not summed); null: none is. Only where no_per_example() is empty.
  const char* per_example = nullptr;
  bool array_per_example(size_t p) const { return per_example && per_example[p]; }
  // Second order (jvp_backward): the tangents of the outputs' gradients (zeros where none flows).
  const void* const* tdout = nullptr;

  // Typed views of the pointers above, T the element type of the call (or int64_t for an index
  // input), so layers never cast: a.input<T>(0), a.array_grad<T>(1), a.workspace_as<T>().
  template <typename T> const T* input(size_t i) const { return static_cast<const T*>(in[i]); }
  template <typename T> T* output(size_t o) const { return static_cast<T*>(out[o]); }
  template <typename T> const T* array(size_t p) const { return static_cast<const T*>(param[p]); }
  template <typename T> const T* output_grad(size_t o) const { return static_cast<const T*>(dout[o]); }
  template <typename T> T* input_grad(size_t i) const { return static_cast<T*>(din[i]); }
  template <typename T> T* array_grad(size_t p) const { return static_cast<T*>(dparam[p]); }
  template <typename T> T* workspace_as() const { return static_cast<T*>(workspace); }
  template <typename T> T* saved_as() const { return static_cast<T*>(saved); }
  template <typename T> const T* input_tangent(size_t i) const { return static_cast<const T*>(tin[i]); }
  template <typename T> const T* array_tangent(size_t p) const { return static_cast<const T*>(tparam[p]); }
  template <typename T> T* output_tangent(size_t o) const { return static_cast<T*>(tout[o]); }
  template <typename T> const T* output_grad_tangent(size_t o) const { return static_cast<const T*>(tdout[o]); }
};

// What a plan is built for, as the layers' memory queries see it.
struct MemoryQuery {
  int64_t batch = 0;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  bool train = false;
  int64_t directions = 1;  // tangent directions per example (Request::directions)
  bool backward = false;   // the plan runs backward steps
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual const char* type() const = 0;
  virtual std::vector<std::string> inputs() const { return {"Input"}; }
  virtual std::vector<std::string> outputs() const { return {"Output"}; }

  // Fixes the output shapes from the input shapes. May fill in an input shape it can deduce
  // (a loss's "Target" from its "Input"); throws ValueError naming the port on a mismatch.
  virtual void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) = 0;
  virtual std::vector<ParamDecl> params() const { return {}; }
  // > 0 when input port i takes integer class indices in [0, bound) (set by infer).
  virtual int64_t index_bound(int i) const { return 0; }
  // The memory a plan reserves for this node, asked with the plan's one MemoryQuery:
  // scratch one step may use (shared by all steps of a plan, on the plan's device)...
  virtual size_t workspace_bytes(const MemoryQuery& q) const { return 0; }
  // ... and what it keeps from its forward to its backward (batch statistics, masks).
  virtual size_t saved_bytes(const MemoryQuery& q) const { return 0; }

  virtual void forward(const LayerArgs& a) const = 0;
  virtual void backward(const LayerArgs& a) const = 0;

  // Forward mode: the outputs' tangents (the JVP) at the point whose forward step already ran (its
  // outputs, saved and prepared buffers are there). A layer without one says why not (in the
  // request's mode: BatchNormalizationLayer has one in Test mode only); a plan that would need it
  // refuses the request with that reason, naming the layer. Scratch: jvp_workspace_bytes.
  virtual std::string no_jvp(bool train) const { return "it has no forward-mode derivative yet"; }
  // Second order, forward over reverse: the tangents of the gradients its backward computes, from
  // the tangents of its inputs and arrays (a.tin, a.tparam) and of its outputs' gradients
  // (a.tdout), written where the backward would write the gradients (a.din, a.dparam; null: not
  // wanted). Why not, or empty when the layer has them. Scratch: jvp_backward_workspace_bytes.
  virtual std::string no_jvp_backward(bool train) const { return "it has no second derivatives yet"; }
  virtual void jvp_backward(const LayerArgs& a) const {}
  virtual size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const { return workspace_bytes(q); }

  // Per-example array gradients (a.per_example in backward): why not, or empty when the layer has them.
  virtual std::string no_per_example(bool train) const {
    return params().empty() ? "" : "it has no per-example array gradients yet";
  }
  // Whether its backward mixes the examples' gradients (batch statistics): per-example gradients of
  // any array upstream of it are then refused with no_per_example's reason.
  virtual bool couples_examples(bool train) const { return false; }
  virtual void jvp(const LayerArgs& a) const {}
  // Training only: after a Train-mode forward, moves the layer's running statistics (state arrays,
  // such as BatchNormalizationLayer's moving mean and variance) toward this batch's, from what that
  // forward saved. `param` are the layer's arrays in the call's precision, writable.
  virtual void update_moving_statistics(const void* saved, void* const* param, int64_t batch, DType dtype,
                                        Device device) const {}
  // Whether jvp handles a.directions > 1 itself; otherwise the plan calls it once per direction.
  virtual bool jvp_takes_directions() const { return false; }
  virtual size_t jvp_workspace_bytes(const MemoryQuery& q) const { return workspace_bytes(q); }

  // Work done once per plan on the (fixed) arrays, such as packing weights for the GEMM; the plan
  // owns the memory and passes it back as LayerArgs::prepared. Plans are rebuilt when arrays change.
  virtual size_t prepared_bytes(const MemoryQuery& q) const { return 0; }
  virtual void prepare(const void* const* param, DType dtype, Device device, void* prepared) const {}

  // Fusion of an elementwise function into the layer that feeds it: a layer that is such a
  // function names it; a layer that can apply one in its forward epilogue says so, and its
  // forward_activated also writes f(output) to `activated` (which may be its own output).
  virtual kernels::UnaryFn unary_function() const { return kernels::UnaryFn::Count; }
  virtual bool can_apply_activation() const { return false; }
  virtual void forward_activated(const LayerArgs& a, kernels::UnaryFn f, void* activated) const { forward(a); }
  // The backward of the same pair in one step: a.dout[0] is the gradient of the activated value,
  // `pre` the layer's output z (the pre-activation) and `post` f(z); the layer folds dz = da f'(z)
  // into its own backward without writing dz. Only called where can_backward_activated().
  virtual bool can_backward_activated() const { return false; }
  // A LinearLayer with (n_out, n_in) weights: what the GPU's fused MLP kernel computes.
  virtual bool is_mlp_linear() const { return false; }
  virtual void backward_activated(const LayerArgs& a, kernels::UnaryFn f, const void* pre, const void* post) const {}
  // The tangent of the same pair in one step (all directions at once): a.tout[0] is the tangent of
  // the activated value, t(f(z)) = f'(z) t(z) with t(z) never written; `pre` is z and `post` f(z).
  // Only called where can_jvp_activated().
  virtual bool can_jvp_activated() const { return false; }
  virtual void jvp_activated(const LayerArgs& a, kernels::UnaryFn f, const void* pre, const void* post) const {}
};

// The arguments of a forward step on the tangents: a layer linear in its inputs, without arrays
// (a reshape, a concatenation, a sum), maps tangents as it maps values (its jvp is its forward).
inline LayerArgs on_tangents(const LayerArgs& a) {
  LayerArgs b = a;
  b.in = a.tin;
  b.out = a.tout;
  return b;
}

// The second order of a layer whose backward reads neither its inputs nor its arrays (a reshape, a
// sum, a linear map of fixed coefficients): the gradients' tangents are the backward of the
// outputs' gradients' tangents.
inline LayerArgs on_gradient_tangents(const LayerArgs& a) {
  LayerArgs b = a;
  b.dout = a.tdout;
  return b;
}

// Builds a layer from its spec ({"type": "LinearLayer", ...}); `where` names it in errors.
std::unique_ptr<Layer> make_layer(const json::Value& spec, const std::string& where);
// Every layer type make_layer knows (layers/layers.def), in its order.
std::vector<std::string> layer_types();

// Calls f(T{}) with T = float or double, matching dtype.
template <typename F>
void with_float_type(DType dtype, F&& f) {
  if (dtype == DType::F64) f(double{});
  else f(float{});
}

// --- Reading layer options from a spec, with errors that name the layer and the option.
namespace spec {
const json::Value* get(const json::Value& s, const char* key);  // nullptr if absent or null
// While one lives, get() records the keys it is asked for (so that make_layer can reject the keys
// of a spec that its layer never read); nests.
class Reads {
 public:
  explicit Reads(std::vector<std::string>* into);
  ~Reads();
  Reads(const Reads&) = delete;
  Reads& operator=(const Reads&) = delete;

 private:
  std::vector<std::string>* saved_;
};
std::string string(const json::Value& s, const char* key, const std::string& where,
                   const char* fallback = nullptr);
bool boolean(const json::Value& s, const char* key, const std::string& where, bool fallback);
int64_t integer(const json::Value& v, const std::string& what);
// A shape: a list of non-negative integers (-1 allowed where `allow_auto`).
Shape shape(const json::Value& v, const std::string& what, bool allow_auto = false);
}  // namespace spec

}  // namespace portgrad
