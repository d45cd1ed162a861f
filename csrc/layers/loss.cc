/// @brief Loss layers: CrossEntropyLossLayer ("Binary", "Probabilities", "Index"),
/// MeanSquaredLossLayer and MeanAbsoluteLossLayer. Ports "Input" and "Target"; output "Loss",
/// one scalar per example.
#include "layers/layer.h"
#include "layers/second_order.h"
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

  // Second order of the mean squared loss, bilinear in ((x, t), dL): the backward of the
  // tangents plus the backward with (tx, tt) in place of (x, t), into scratch, added.
  // (The mean absolute loss's gradient, sign(x - t) / n, is locally constant: its second order is
  // the backward of the tangents alone.)
  // Cross-entropy, with m the elements (Binary) or distributions (the others) a loss averages:
  //   Index:          dp = -dL / (m p) at the target;      t(dp) += dL m q^2 tp, q = dp at dL = 1
  //   Probabilities:  dp = -dL t / (m p), dt = -dL log p / m;
  //                   t(dp) += dL (t tp / p^2 - tt / p) / m,  t(dt) += -dL tp / (m p)
  //   Binary:         dp = -dL (t / p - (1-t) / (1-p)) / m, dt = -dL (log p - log(1-p)) / m;
  //                   t(dp) += dL ((t / p^2 + (1-t) / (1-p)^2) tp - (1/p + 1/(1-p)) tt) / m,
  //                   t(dt) += -dL (1/p + 1/(1-p)) tp / m
  // (each beside the backward of the tangents), with the shape kernels.
  std::string no_jvp_backward(bool) const override { return ""; }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override {
    return 5 * ((size_t(q.batch * n_) * dtype_size(q.dtype) + 63) / 64 * 64) +
           (size_t(q.batch) * dtype_size(q.dtype) + 63) / 64 * 64;
  }
  void jvp_backward(const LayerArgs& a) const override {
    backward(on_gradient_tangents(a));
    if (kind_ == LossKind::MeanAbsolute) return;
    if (kind_ != LossKind::MeanSquared) return cross_entropy_second(a);
    const int64_t count[2] = {a.batch * n_, a.batch * n_};
    add_backward_on_input_tangents(*this, a, count, 2, a.workspace);
  }

  void cross_entropy_second(const LayerArgs& a) const {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& s = ops::shape<T>(a.device);
      const int64_t N = a.batch * n_;
      const size_t one = (size_t(N) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      T* w = a.workspace_as<T>();
      T *u = w, *v = w + one, *r1 = w + 2 * one, *r2 = w + 3 * one, *ones = w + 4 * one, *dl = w + 5 * one;
      const int64_t flat[1] = {N}, unit[1] = {1}, dims[2] = {a.batch, n_}, full[2] = {n_, 1}, per_example[2] = {1, 0};
      auto op = [&](kernels::BinaryFn f, const T* x, const T* y, T* out) {
        s.binary_forward(f, 1, flat, x, unit, y, unit, out);
      };
      const double m = kind_ == LossKind::Binary ? double(n_) : double(groups_);
      const T* p = a.input<T>(0);
      const T* tp = a.input_tangent<T>(0);
      T* dp = a.input_grad<T>(0);
      // dl[b] = dL[b] / m, then spread over the example's elements (times `x`, into `out`)
      ops::fill<T>(a.device, a.batch, T(1.0 / m), dl);
      s.binary_forward(kernels::BinaryFn::Times, 1, &a.batch, dl, unit, a.output_grad<T>(0), unit, dl);
      auto scaled = [&](const T* x, T* out) {
        s.binary_forward(kernels::BinaryFn::Times, 2, dims, x, full, dl, per_example, out);
      };
      if (kind_ == LossKind::Index) {
        if (!dp) return;
        // q = the backward at dL = 1: -1/(m p) at the target; dL m q^2 tp = (dL/m) (m q)^2 tp
        ops::fill<T>(a.device, a.batch, T(1), ones);
        ops::loss<T>(a.device).ce_index_backward(a.batch, groups_, classes_, p, a.input<int64_t>(1), ones, u);
        ops::fill<T>(a.device, N, T(m), v);
        op(kernels::BinaryFn::Times, u, v, u);
        op(kernels::BinaryFn::Times, u, u, u);
        op(kernels::BinaryFn::Times, u, tp, u);
        scaled(u, u);
        op(kernels::BinaryFn::Plus, dp, u, dp);
        return;
      }
      const T* tg = a.input<T>(1);
      const T* tt = a.input_tangent<T>(1);
      T* dt = a.input_grad<T>(1);
      ops::fill<T>(a.device, N, T(1), ones);
      op(kernels::BinaryFn::Divide, ones, p, r1);  // 1/p
      if (kind_ == LossKind::Probabilities) {
        if (dp) {  // (t tp / p - tt) / p
          op(kernels::BinaryFn::Times, tg, tp, u);
          op(kernels::BinaryFn::Times, u, r1, u);
          op(kernels::BinaryFn::Subtract, u, tt, u);
          op(kernels::BinaryFn::Times, u, r1, u);
          scaled(u, u);
          op(kernels::BinaryFn::Plus, dp, u, dp);
        }
        if (dt) {  // -tp / p
          op(kernels::BinaryFn::Times, tp, r1, u);
          scaled(u, u);
          op(kernels::BinaryFn::Subtract, dt, u, dt);
        }
        return;
      }
      op(kernels::BinaryFn::Subtract, ones, p, r2);  // 1 - p, then 1/(1 - p)
      op(kernels::BinaryFn::Divide, ones, r2, r2);
      op(kernels::BinaryFn::Plus, r1, r2, v);        // 1/p + 1/(1-p)
      if (dp) {  // (t/p^2 + (1-t)/(1-p)^2) tp - v tt
        op(kernels::BinaryFn::Times, r1, r1, u);
        op(kernels::BinaryFn::Times, u, tg, u);       // t/p^2
        op(kernels::BinaryFn::Subtract, ones, tg, w + 4 * one);  // (ones no longer needed) 1 - t
        T* omt = w + 4 * one;
        op(kernels::BinaryFn::Times, omt, r2, omt);
        op(kernels::BinaryFn::Times, omt, r2, omt);   // (1-t)/(1-p)^2
        op(kernels::BinaryFn::Plus, u, omt, u);
        op(kernels::BinaryFn::Times, u, tp, u);
        op(kernels::BinaryFn::Times, v, tt, omt);
        op(kernels::BinaryFn::Subtract, u, omt, u);
        scaled(u, u);
        op(kernels::BinaryFn::Plus, dp, u, dp);
      }
      if (dt) {  // -v tp
        op(kernels::BinaryFn::Times, v, tp, u);
        scaled(u, u);
        op(kernels::BinaryFn::Subtract, dt, u, dt);
      }
    });
  }

  // One scalar per example: its tangent is <dL/dx, tx> + <dL/dt, tt>, the gradients from the
  // backward of a unit loss gradient, summed per example.
  std::string no_jvp(bool) const override { return ""; }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override {
    const size_t one = (size_t(q.batch * n_) * dtype_size(q.dtype) + 63) / 64 * 64;
    return 2 * one + (size_t(q.batch) * dtype_size(q.dtype) + 63) / 64 * 64;
  }
  void jvp(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::shape<T>(a.device);
      const size_t one = (size_t(a.batch * n_) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      T* gx = a.workspace_as<T>();
      T* gt = gx + one;
      T* ones = gt + one;
      const bool index = kind_ == LossKind::Index;
      ops::fill<T>(a.device, a.batch, T(1), ones);
      const void* dout[1] = {ones};
      void* din[2] = {gx, index ? nullptr : gt};
      LayerArgs b = a;
      b.dout = dout;
      b.din = din;
      backward(b);
      const int64_t flat[1] = {a.batch * n_}, unit[1] = {1};
      k.binary_forward(kernels::BinaryFn::Times, 1, flat, gx, unit, a.input_tangent<T>(0), unit, gx);
      if (!index) {
        k.binary_forward(kernels::BinaryFn::Times, 1, flat, gt, unit, a.input_tangent<T>(1), unit, gt);
        k.binary_forward(kernels::BinaryFn::Plus, 1, flat, gx, unit, gt, unit, gx);
      }
      const int64_t kept[1] = {a.batch}, kept_st[1] = {n_}, red[1] = {n_}, red_st[1] = {1};
      k.reduce(kernels::ReduceOp::Sum, 1, kept, kept_st, n_ > 1 ? 1 : 0, red, red_st, gx, a.output_tangent<T>(0));
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
