/// @brief Loss layers: CrossEntropyLossLayer ("Binary", "Probabilities", "Index"),
/// MeanSquaredLossLayer and MeanAbsoluteLossLayer. Ports "Input" and "Target"; output "Loss",
/// one scalar per example.
#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

enum class LossKind { MeanSquared, MeanAbsolute, Binary, Probabilities, Index };

class LossLayer final : public Layer {
 public:
  LossLayer(LossKind kind, std::string where) : kind_(kind), where_(std::move(where)) {}

  const char* type() const override {
    switch (kind_) {
      case LossKind::MeanSquared: return "MeanSquaredLossLayer";
      case LossKind::MeanAbsolute: return "MeanAbsoluteLossLayer";
      default: return "CrossEntropyLossLayer";
    }
  }
  std::vector<std::string> inputs() const override { return {"Input", "Target"}; }
  std::vector<std::string> outputs() const override { return {"Loss"}; }
  int64_t index_bound(int i) const override { return (i == 1 && kind_ == LossKind::Index) ? classes_ : 0; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=..."));
    const Shape& x = *in[0];
    Shape target = x;
    if (kind_ == LossKind::Probabilities || kind_ == LossKind::Index) {
      if (x.empty())
        throw ValueError(cat(where_, ": port \"Input\" must hold probabilities along its last axis (a vector "
                                     "or higher rank); given shape ()"));
      classes_ = x.back();
      if (classes_ == 0)
        throw ValueError(cat(where_, ": port \"Input\" has an empty last axis (shape ", shape_str(x),
                             "): cross-entropy needs at least one class"));
      groups_ = shape_numel(x) / classes_;
      if (kind_ == LossKind::Index) target.pop_back();
    }
    if (in[1] && *in[1] != target)
      throw ValueError(cat(where_, ": port \"Target\" has shape ", shape_str(*in[1]), " but port \"Input\" of shape ",
                           shape_str(x), " needs a target of shape ", shape_str(target)));
    in[1] = target;
    n_ = shape_numel(x);
    out = {Shape{}};
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::loss<T>(a.device);
      const T* x = a.input<T>(0);
      T* loss = a.output<T>(0);
      switch (kind_) {
        case LossKind::MeanSquared: k.mse_forward(a.batch, n_, x, a.input<T>(1), loss); break;
        case LossKind::MeanAbsolute: k.mae_forward(a.batch, n_, x, a.input<T>(1), loss); break;
        case LossKind::Binary: k.bce_forward(a.batch, n_, x, a.input<T>(1), loss); break;
        case LossKind::Probabilities:
          k.ce_prob_forward(a.batch, groups_, classes_, x, a.input<T>(1), loss);
          break;
        case LossKind::Index:
          k.ce_index_forward(a.batch, groups_, classes_, x, a.input<int64_t>(1), loss);
          break;
      }
    });
  }

  void backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::loss<T>(a.device);
      const T* x = a.input<T>(0);
      const T* dl = a.output_grad<T>(0);
      T* dx = a.input_grad<T>(0);
      if (kind_ == LossKind::Index) {
        if (dx) k.ce_index_backward(a.batch, groups_, classes_, x, a.input<int64_t>(1), dl, dx);
        return;
      }
      const T* tgt = a.input<T>(1);
      T* dt = a.input_grad<T>(1);
      if (!dx && !dt) return;
      switch (kind_) {
        case LossKind::MeanSquared: k.mse_backward(a.batch, n_, x, tgt, dl, dx, dt); break;
        case LossKind::MeanAbsolute: k.mae_backward(a.batch, n_, x, tgt, dl, dx, dt); break;
        case LossKind::Binary: k.bce_backward(a.batch, n_, x, tgt, dl, dx, dt); break;
        case LossKind::Probabilities: k.ce_prob_backward(a.batch, groups_, classes_, x, tgt, dl, dx, dt); break;
        case LossKind::Index: break;
      }
    });
  }

 private:
  LossKind kind_;
  std::string where_;
  int64_t n_ = 0, groups_ = 0, classes_ = 0;
};

}  // namespace

std::unique_ptr<Layer> make_loss_layer(const json::Value& s, const std::string& where) {
  const std::string type = spec::string(s, "type", where);
  if (type == "MeanSquaredLossLayer") return std::make_unique<LossLayer>(LossKind::MeanSquared, where);
  if (type == "MeanAbsoluteLossLayer") return std::make_unique<LossLayer>(LossKind::MeanAbsolute, where);
  const std::string target = spec::string(s, "target", where, "Probabilities");
  if (target == "Binary") return std::make_unique<LossLayer>(LossKind::Binary, where);
  if (target == "Probabilities") return std::make_unique<LossLayer>(LossKind::Probabilities, where);
  if (target == "Index") return std::make_unique<LossLayer>(LossKind::Index, where);
  throw ValueError(cat(where, ": CrossEntropyLossLayer target form \"", target,
                       "\" is not one of \"Binary\", \"Probabilities\", \"Index\""));
}

}  // namespace portgrad
