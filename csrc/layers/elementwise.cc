/// @brief ElementwiseLayer (a unary function applied to every element) and SoftmaxLayer (softmax or,
/// with the option "log", log-softmax over the last axis).
#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

class ElementwiseLayer final : public Layer {
 public:
  ElementwiseLayer(kernels::UnaryFn f, std::string where) : f_(f), where_(std::move(where)) {}
  const char* type() const override { return "ElementwiseLayer"; }
  kernels::UnaryFn unary_function() const override { return f_; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=..."));
    n_ = shape_numel(*in[0]);
    out = {*in[0]};
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      ops::unary<T>(a.device).forward(f_, a.batch * n_, a.input<T>(0),
                                      a.output<T>(0));
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      ops::unary<T>(a.device).backward(f_, a.batch * n_, a.input<T>(0),
                                       a.output<T>(0), a.output_grad<T>(0),
                                       a.input_grad<T>(0));
    });
  }

  // Second order: d(dy f'(x)) = tdy f'(x) + dy f''(x) tx.
  std::string no_jvp_backward(bool) const override { return ""; }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override {
    return size_t(q.batch * n_) * dtype_size(q.dtype);
  }
  void jvp_backward(const LayerArgs& a) const override {
    if (!a.din[0]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::unary<T>(a.device);
      const int64_t n = a.batch * n_;
      T* dx = a.input_grad<T>(0);
      T* second = a.workspace_as<T>();
      k.backward(f_, n, a.input<T>(0), a.output<T>(0), a.output_grad_tangent<T>(0), dx);
      k.second(f_, n, a.input<T>(0), a.output<T>(0), a.input_tangent<T>(0), a.output_grad<T>(0), second);
      const int64_t flat[1] = {n}, unit[1] = {1};
      ops::shape<T>(a.device).binary_forward(kernels::BinaryFn::Plus, 1, flat, dx, unit, second, unit, dx);
    });
  }

  // The Jacobian is diagonal, f'(x): the tangent is the backward's product f'(x) v. With several
  // directions f'(x) is made once (the backward of ones) and multiplies every direction's block,
  // where the backward is that product (kernels::derivative_scales), else a backward per direction.
  std::string no_jvp(bool) const override { return ""; }
  bool jvp_takes_directions() const override { return true; }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override {
    return q.directions > 1 ? 2 * ((size_t(q.batch * n_) * dtype_size(q.dtype) + 63) / 64 * 64) : 0;
  }
  void jvp(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::unary<T>(a.device);
      const int64_t n = a.batch * n_;
      const T *x = a.input<T>(0), *y = a.output<T>(0), *tx = a.input_tangent<T>(0);
      T* ty = a.output_tangent<T>(0);
      if (a.directions == 1 || !kernels::derivative_scales(f_)) {
        for (int64_t d = 0; d < a.directions; ++d) k.backward(f_, n, x, y, tx + d * n, ty + d * n);
        return;
      }
      T* derivative = a.workspace_as<T>();
      T* ones = derivative + (size_t(n) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      ops::fill<T>(a.device, n, T(1), ones);
      k.backward(f_, n, x, y, ones, derivative);
      ops::vector<T>(a.device).multiply_rows(a.directions, n, derivative, tx, ty);
    });
  }

 private:
  kernels::UnaryFn f_;
  std::string where_;
  int64_t n_ = 0;
};

class SoftmaxLayer final : public Layer {
 public:
  SoftmaxLayer(bool log, std::string where) : log_(log), where_(std::move(where)) {}
  const char* type() const override { return "SoftmaxLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=..."));
    if (in[0]->empty())
      throw ValueError(cat(where_, ": port \"Input\" must be a vector or higher-rank array (softmax is over "
                                   "the last axis); given shape ()"));
    cols_ = in[0]->back();
    rows_ = shape_numel(Shape(in[0]->begin(), in[0]->end() - 1));  // not numel / cols_: cols_ may be 0
    out = {*in[0]};
  }

  void forward(const LayerArgs& a) const override {
    if (cols_ == 0) return;  // an empty axis: nothing to normalise, nothing to write
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::softmax<T>(a.device);
      (log_ ? k.log_forward : k.forward)(a.batch * rows_, cols_, a.input<T>(0),
                                         a.output<T>(0));
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0] || cols_ == 0) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::softmax<T>(a.device);
      (log_ ? k.log_backward : k.backward)(a.batch * rows_, cols_, a.output<T>(0),
                                           a.output_grad<T>(0), a.input_grad<T>(0));
    });
  }

  // Second order. Softmax, dx = s (dy - <dy, s>): t(dx) = s (tdy - <tdy, s>) + ts (dy - <dy, s>)
  // - s <dy, ts>, ts the output's tangent. Log-softmax, dx = dy - s sum(dy): t(dx) = tdy - s
  // sum(tdy) - s ty sum(dy), ty the output's tangent (ts = s ty). Per row, with the shape kernels.
  std::string no_jvp_backward(bool) const override { return ""; }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override {
    const size_t rows = size_t(q.batch) * size_t(rows_);
    return 2 * ((rows * size_t(cols_) * dtype_size(q.dtype) + 63) / 64 * 64) + 2 * ((rows * dtype_size(q.dtype) + 63) / 64 * 64);
  }
  void jvp_backward(const LayerArgs& a) const override {
    if (!a.din[0] || cols_ == 0) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::softmax<T>(a.device);
      const auto& s = ops::shape<T>(a.device);
      const int64_t rows = a.batch * rows_, n = rows * cols_;
      auto round = [](int64_t c) { return (size_t(c) * sizeof(T) + 63) / 64 * 64 / sizeof(T); };
      T* w1 = a.workspace_as<T>();
      T* w2 = w1 + round(n);
      T* r1 = w2 + round(n);
      T* r2 = r1 + round(rows);
      T* dx = a.input_grad<T>(0);
      const T *y = a.output<T>(0), *ty = a.output_tangent<T>(0), *dy = a.output_grad<T>(0);
      const int64_t dims[2] = {rows, cols_}, full[2] = {cols_, 1}, row[2] = {1, 0}, flat[1] = {n}, unit[1] = {1};
      const int64_t kept[1] = {rows}, kept_st[1] = {cols_}, red[1] = {cols_}, red_st[1] = {1};
      auto rowsum = [&](const T* x, T* out) {  // out[r] = sum of row r
        s.reduce(kernels::ReduceOp::Sum, 1, kept, kept_st, 1, red, red_st, x, out);
      };
      (log_ ? k.log_backward : k.backward)(rows, cols_, y, a.output_grad_tangent<T>(0), dx);  // the tdy terms
      if (!log_) {
        // ts (dy - <dy, s>) - s <dy, ts>
        s.binary_forward(kernels::BinaryFn::Times, 1, flat, dy, unit, y, unit, w1);
        rowsum(w1, r1);                                                                   // <dy, s>
        s.binary_forward(kernels::BinaryFn::Times, 1, flat, dy, unit, ty, unit, w1);
        rowsum(w1, r2);                                                                   // <dy, ts>
        s.binary_forward(kernels::BinaryFn::Subtract, 2, dims, dy, full, r1, row, w1);   // dy - <dy, s>
        s.binary_forward(kernels::BinaryFn::Times, 1, flat, ty, unit, w1, unit, w1);     // ts (...)
        s.binary_forward(kernels::BinaryFn::Times, 2, dims, y, full, r2, row, w2);       // s <dy, ts>
        s.binary_forward(kernels::BinaryFn::Subtract, 1, flat, w1, unit, w2, unit, w1);
      } else {
        // - exp(y) ty sum(dy)
        rowsum(dy, r1);
        ops::unary<T>(a.device).forward(kernels::UnaryFn::Exp, n, y, w1);
        s.binary_forward(kernels::BinaryFn::Times, 1, flat, w1, unit, ty, unit, w1);
        s.binary_forward(kernels::BinaryFn::Times, 2, dims, w1, full, r1, row, w1);
        s.binary_forward(kernels::BinaryFn::Subtract, 1, flat, dx, unit, w1, unit, dx);
        return;
      }
      s.binary_forward(kernels::BinaryFn::Plus, 1, flat, dx, unit, w1, unit, dx);
    });
  }

  // Softmax's Jacobian diag(s) - s s^T is symmetric: its tangent is its backward's product.
  // Log-softmax's is I - 1 s^T: v - (s . v) per row, with s = exp(y).
  std::string no_jvp(bool) const override { return ""; }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override {
    if (!log_) return 0;
    const size_t rows = size_t(q.batch) * size_t(rows_);
    return ((rows * size_t(cols_) * dtype_size(q.dtype) + 63) / 64 * 64) + rows * dtype_size(q.dtype);
  }
  void jvp(const LayerArgs& a) const override {
    if (cols_ == 0) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const int64_t rows = a.batch * rows_;
      if (!log_) {
        ops::softmax<T>(a.device).backward(rows, cols_, a.output<T>(0), a.input_tangent<T>(0), a.output_tangent<T>(0));
        return;
      }
      const auto& k = ops::shape<T>(a.device);
      T* sv = a.workspace_as<T>();
      T* dot = sv + (size_t(rows * cols_) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      const int64_t dims[2] = {rows, cols_}, full[2] = {cols_, 1}, row[2] = {1, 0};
      ops::unary<T>(a.device).forward(kernels::UnaryFn::Exp, rows * cols_, a.output<T>(0), sv);
      k.binary_forward(kernels::BinaryFn::Times, 2, dims, sv, full, a.input_tangent<T>(0), full, sv);
      const int64_t kept[1] = {rows}, kept_st[1] = {cols_}, red[1] = {cols_}, red_st[1] = {1};
      k.reduce(kernels::ReduceOp::Sum, 1, kept, kept_st, 1, red, red_st, sv, dot);
      k.binary_forward(kernels::BinaryFn::Subtract, 2, dims, a.input_tangent<T>(0), full, dot, row,
                       a.output_tangent<T>(0));
    });
  }

 private:
  bool log_;
  std::string where_;
  int64_t rows_ = 0, cols_ = 0;
};

}  // namespace

std::unique_ptr<Layer> make_elementwise_layer(const json::Value& s, const std::string& where) {
  const std::string name = spec::string(s, "function", where);
  kernels::UnaryFn f;
  if (!kernels::unary_from_name(name, &f)) {
    std::string known;
    for (int i = 0; i < static_cast<int>(kernels::UnaryFn::Count); ++i)
      known += cat(i ? ", " : "", kernels::unary_name(static_cast<kernels::UnaryFn>(i)));
    throw ValueError(cat(where, ": unknown elementwise function \"", name, "\"; known: ", known,
                         " (aliases ReLU, Sigmoid)"));
  }
  return std::make_unique<ElementwiseLayer>(f, where);
}

std::unique_ptr<Layer> make_softmax_layer(const json::Value& s, const std::string& where) {
  return std::make_unique<SoftmaxLayer>(spec::boolean(s, "log", where, false), where);
}

}  // namespace portgrad
