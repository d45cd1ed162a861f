/// @brief FlattenLayer and ReshapeLayer: the same elements under a new shape.
#include <cstring>

#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

class ReshapeLayer final : public Layer {
 public:
  // An empty `target` with `flatten` set means "one vector of every element".
  ReshapeLayer(bool flatten, Shape target, std::string where)
      : flatten_(flatten), target_(std::move(target)), where_(std::move(where)) {}
  const char* type() const override { return flatten_ ? "FlattenLayer" : "ReshapeLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=..."));
    n_ = shape_numel(*in[0]);
    if (flatten_) {
      out = {Shape{n_}};
      return;
    }
    Shape s = target_;
    int64_t known = 1, autos = -1;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == -1) autos = static_cast<int64_t>(i);
      else known *= s[i];
    }
    if (autos >= 0) {
      if (known == 0 || n_ % known != 0)
        throw ValueError(cat(where_, ": cannot reshape ", n_, " elements (input shape ", shape_str(*in[0]),
                             ") to ", shape_str(target_), " (-1 = automatic)"));
      s[autos] = n_ / known;
    } else if (known != n_) {
      throw ValueError(cat(where_, ": cannot reshape input of shape ", shape_str(*in[0]), " (", n_,
                           " elements) to shape ", shape_str(s), " (", known, " elements)"));
    }
    out = {s};
  }

  void forward(const LayerArgs& a) const override {
    ops::copy_bytes(a.device, a.out[0], a.in[0], size_t(a.batch * n_) * dtype_size(a.dtype));
  }
  void backward(const LayerArgs& a) const override {
    if (a.din[0]) ops::copy_bytes(a.device, a.din[0], a.dout[0], size_t(a.batch * n_) * dtype_size(a.dtype));
  }

  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // Linear in its inputs: the tangents map as the values do.
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override { forward(on_tangents(a)); }

 private:
  bool flatten_;
  Shape target_;
  std::string where_;
  int64_t n_ = 0;
};

}  // namespace

std::unique_ptr<Layer> make_reshape_layer(const json::Value& s, const std::string& where) {
  if (spec::string(s, "type", where) == "FlattenLayer") return std::make_unique<ReshapeLayer>(true, Shape{}, where);
  const json::Value* shape = spec::get(s, "shape");
  if (!shape) throw ValueError(cat(where, ": ReshapeLayer needs a shape"));
  return std::make_unique<ReshapeLayer>(false, spec::shape(*shape, where + ": shape", true), where);
}

}  // namespace portgrad
