/// @brief Normalisation, dropout and embedding layers: BatchNormalizationLayer,
/// NormalizationLayer, DropoutLayer and EmbeddingLayer (channels first).
#include <cmath>
#include <cstring>

#include "layers/layer.h"
#include "layers/strided.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

double number_option(const json::Value& s, const char* key, const std::string& where, double fallback) {
  const json::Value* v = spec::get(s, key);
  if (!v) return fallback;
  if (v->kind != json::Value::Kind::Number || !std::isfinite(v->number))
    throw ValueError(cat(where, ": option \"", key, "\" must be a finite number"));
  return v->number;
}

void need_known_input(const std::vector<MaybeShape>& in, const std::string& where) {
  if (!in[0]) throw ValueError(cat(where, ": the shape of port \"Input\" is not known; declare it with input=..."));
}

// ------------------------------------------------------------------------------------------------
// BatchNormalizationLayer: channel c = axis 0 of an example. "Test": y = Scaling (x - MovingMean) /
// sqrt(MovingVariance + eps) + Biases. "Train": the batch's own statistics over batch x spatial,
// and the moving statistics move towards them (the variance unbiased, as PyTorch does).
class BatchNormLayer final : public Layer {
 public:
  BatchNormLayer(double momentum, double eps, std::string where)
      : momentum_(momentum), eps_(eps), where_(std::move(where)) {}
  const char* type() const override { return "BatchNormalizationLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    need_known_input(in, where_);
    if (in[0]->empty())
      throw ValueError(cat(where_, ": port \"Input\" must be a vector or higher-rank array (channels first); "
                                   "given shape ()"));
    channels_ = in[0]->front();
    spatial_ = shape_numel(Shape(in[0]->begin() + 1, in[0]->end()));  // not numel / channels_: it may be 0
    out = {*in[0]};
  }

  std::vector<ParamDecl> params() const override {
    ParamDecl scaling{"Scaling", {channels_}}, biases{"Biases", {channels_}};
    ParamDecl mean{"MovingMean", {channels_}}, var{"MovingVariance", {channels_}};
    scaling.init = ParamDecl::Init::Ones;
    var.init = ParamDecl::Init::Ones;
    mean.learnable = var.learnable = false;
    mean.differentiable = var.differentiable = false;
    var.nonnegative = true;
    return {scaling, biases, mean, var};
  }

  // mean, inverse std (and, in Train mode, the batch variance) per channel.
  size_t saved_bytes(const MemoryQuery& q) const override {
    return size_t(q.train ? 3 : 2) * size_t(channels_) * dtype_size(q.dtype);
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::norm<T>(a.device);
      const T* x = a.input<T>(0);
      const T* gamma = a.array<T>(0);
      const T* beta = a.array<T>(1);
      T* y = a.output<T>(0);
      T* mean = a.saved_as<T>();
      T* invstd = mean + channels_;
      if (!a.train) {
        k.inv_std(channels_, a.array<T>(3), eps_, invstd);
        k.channel_forward(a.batch, channels_, spatial_, x, a.array<T>(2), invstd, gamma, beta, y);
        return;
      }
      const int64_t m = a.batch * spatial_;
      if (m < 2)
        throw ValueError(cat(where_, ": NetEvaluationMode \"Train\" needs more than one value per channel to form "
                                     "batch statistics (batch ", a.batch, " x ", spatial_,
                                     " positions); use a larger batch or \"Test\" mode"));
      T* var = invstd + channels_;
      k.channel_moments(a.batch, channels_, spatial_, x, mean, var);
      k.inv_std(channels_, var, eps_, invstd);
      k.channel_forward(a.batch, channels_, spatial_, x, mean, invstd, gamma, beta, y);
    });
  }

  // NetTrain: moving = momentum moving + (1 - momentum) batch statistic, the variance unbiased
  // (m / (m - 1) times the batch's, m values per channel), as PyTorch's running_var.
  void update_moving_statistics(const void* saved, void* const* param, int64_t batch, DType dtype,
                                Device device) const override {
    const int64_t m = batch * spatial_;
    if (m < 2) return;  // (the Train-mode forward refused it)
    with_float_type(dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::optim<T>(device);
      const T* mean = static_cast<const T*>(saved);
      k.moving_average(channels_, momentum_, 1.0, mean, static_cast<T*>(param[2]));
      k.moving_average(channels_, momentum_, double(m) / double(m - 1), mean + 2 * channels_, static_cast<T*>(param[3]));
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0] && !a.dparam[0] && !a.dparam[1]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::norm<T>(a.device);
      const T* saved = a.saved_as<T>();
      const T* mean = a.train ? saved : a.array<T>(2);
      T* dgamma = a.array_per_example(0) ? nullptr : a.array_grad<T>(0);
      T* dbeta = a.array_per_example(1) ? nullptr : a.array_grad<T>(1);
      k.channel_backward(a.batch, channels_, spatial_, a.input<T>(0), a.output_grad<T>(0), mean, saved + channels_,
                         a.array<T>(0), a.train, a.input_grad<T>(0), dgamma, dbeta);
      if (!a.per_example) return;
      // Per example (Test mode: the statistics are constants): the kernel on one example at a time.
      const int64_t n = channels_ * spatial_;
      for (int64_t b = 0; b < a.batch; ++b) {
        T* gb = a.array_per_example(0) && a.dparam[0] ? a.array_grad<T>(0) + b * channels_ : nullptr;
        T* bb = a.array_per_example(1) && a.dparam[1] ? a.array_grad<T>(1) + b * channels_ : nullptr;
        k.channel_backward(1, channels_, spatial_, a.input<T>(0) + b * n, a.output_grad<T>(0) + b * n, mean,
                           saved + channels_, a.array<T>(0), false, nullptr, gb, bb);
      }
    });
  }
  std::string no_per_example(bool train) const override {
    return train ? "in NetEvaluationMode \"Train\" the batch statistics couple the examples: there are no "
                   "per-example gradients; use \"Test\" mode"
                 : "";
  }
  bool couples_examples(bool train) const override { return train; }

  // Second order in Test mode (m, s constants): dx = g s dy, dg = sum dy (x - m) s, db = sum dy, so
  // t(dx) = g s tdy + tg s dy, t(dg) = sum tdy (x - m) s + sum dy tx s, t(db) = sum tdy: the
  // backward of the tangents, plus the kernel with (tx, mean 0, scaling tg) into scratch, added.
  std::string no_jvp_backward(bool train) const override {
    return train ? "in NetEvaluationMode \"Train\" (batch statistics) it has no second derivatives yet; use "
                   "\"Test\" mode"
                 : "";
  }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override {
    const size_t esz = dtype_size(q.dtype), c = (size_t(channels_) * esz + 63) / 64 * 64;
    return 2 * c + (size_t(q.batch * channels_ * spatial_) * esz + 63) / 64 * 64;
  }
  void jvp_backward(const LayerArgs& a) const override {
    backward(on_gradient_tangents(a));
    if (!a.din[0] && !a.dparam[0]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const int64_t n = a.batch * channels_ * spatial_;
      const size_t c = (size_t(channels_) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      T* zeros = a.workspace_as<T>();
      T* sg = zeros + c;
      T* sx = sg + c;
      ops::fill<T>(a.device, channels_, T(0), zeros);
      const T* tg = a.array_tangent<T>(0);
      T* dx = a.din[0] && tg ? sx : nullptr;
      T* dg = a.dparam[0] ? sg : nullptr;
      ops::norm<T>(a.device).channel_backward(a.batch, channels_, spatial_, a.input_tangent<T>(0), a.output_grad<T>(0),
                                              zeros, a.saved_as<T>() + channels_, tg ? tg : zeros, false, dx, dg,
                                              nullptr);
      const auto& s = ops::shape<T>(a.device);
      const int64_t unit[1] = {1};
      if (dx) {
        const int64_t flat[1] = {n};
        s.binary_forward(kernels::BinaryFn::Plus, 1, flat, a.input_grad<T>(0), unit, dx, unit, a.input_grad<T>(0));
      }
      if (dg) {
        const int64_t flat[1] = {channels_};
        s.binary_forward(kernels::BinaryFn::Plus, 1, flat, a.array_grad<T>(0), unit, dg, unit, a.array_grad<T>(0));
      }
    });
  }

  // Test mode is affine per channel: ty = g s tx + (x - m) s tg + tb (s = 1/sqrt(v + eps); the
  // moving statistics are state, without tangents): the forward kernel with (tx, mean 0, bias 0),
  // plus the forward kernel with the arrays' tangents as scaling and biases.
  std::string no_jvp(bool train) const override {
    return train ? "in NetEvaluationMode \"Train\" (batch statistics couple the examples) it has no forward-mode "
                   "derivative yet; use \"Test\" mode"
                 : "";
  }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override {
    return (size_t(q.batch * channels_ * spatial_) * dtype_size(q.dtype) + 63) / 64 * 64 +
           size_t(channels_) * dtype_size(q.dtype);
  }
  void jvp(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::norm<T>(a.device);
      const int64_t n = a.batch * channels_ * spatial_;
      T* term = a.workspace_as<T>();
      T* zeros = term + (size_t(n) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      const T* invstd = a.saved_as<T>() + channels_;
      ops::fill<T>(a.device, channels_, T(0), zeros);
      T* ty = a.output_tangent<T>(0);
      k.channel_forward(a.batch, channels_, spatial_, a.input_tangent<T>(0), zeros, invstd, a.array<T>(0), zeros, ty);
      const T* tg = a.array_tangent<T>(0);
      const T* tb = a.array_tangent<T>(1);
      if (!tg && !tb) return;
      k.channel_forward(a.batch, channels_, spatial_, a.input<T>(0), a.array<T>(2), invstd, tg ? tg : zeros,
                        tb ? tb : zeros, term);
      const int64_t flat[1] = {n}, unit[1] = {1};
      ops::shape<T>(a.device).binary_forward(kernels::BinaryFn::Plus, 1, flat, ty, unit, term, unit, ty);
    });
  }

 private:
  double momentum_;  // how training (NetTrain) moves the moving statistics
  double eps_;
  std::string where_;
  int64_t channels_ = 0, spatial_ = 0;
};

// ------------------------------------------------------------------------------------------------
// NormalizationLayer: statistics of each example. Levels "Default" (Wolfram's 2;;All): for an
// input (c, d...) each channel over its d... values, Scaling and Biases of shape (c); a vector is
// normalised as a whole, Scaling and Biases of its shape. Levels "All": the whole example, Scaling
// and Biases of the example's shape (PyTorch's LayerNorm over the example). Levels -k: each
// position of the leading axes over the last k axes, Scaling and Biases of those axes' shape (ONNX's
// LayerNormalization with axis -k; a transformer's LayerNorm is -1). -k runs the per-element row
// kernel with the leading positions folded into the batch, so one kernel serves all three.
class NormalizationLayer final : public Layer {
 public:
  // last_axes: 0 for "Default", -1 for "All", k > 0 for levels -k.
  NormalizationLayer(int64_t last_axes, double eps, std::string where)
      : last_axes_(last_axes), eps_(eps), where_(std::move(where)) {}
  const char* type() const override { return "NormalizationLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    need_known_input(in, where_);
    const Shape& x = *in[0];
    if (x.empty())
      throw ValueError(cat(where_, ": port \"Input\" must be a vector or higher-rank array; given shape ()"));
    if (last_axes_ > int64_t(x.size()))
      throw ValueError(cat(where_, ": levels -", last_axes_, " needs an input of rank ", last_axes_,
                           " or more; port \"Input\" has shape ", shape_str(x),
                           " (use levels=-1 to normalise over the last axis)"));
    groups_ = 1;
    if (last_axes_ > 0) {
      pshape_ = Shape(x.end() - last_axes_, x.end());
      rows_ = 1;
      cols_ = shape_numel(pshape_);
      groups_ = shape_numel(Shape(x.begin(), x.end() - last_axes_));
      per_element_ = true;
    } else if (last_axes_ < 0 || x.size() == 1) {
      rows_ = 1;
      cols_ = shape_numel(x);
      per_element_ = true;
      pshape_ = x;
    } else {
      rows_ = x.front();
      cols_ = shape_numel(Shape(x.begin() + 1, x.end()));  // not numel / rows_: it may be 0
      per_element_ = false;
      pshape_ = {rows_};
    }
    out = {x};
  }

  std::vector<ParamDecl> params() const override {
    ParamDecl scaling{"Scaling", pshape_}, biases{"Biases", pshape_};
    scaling.init = ParamDecl::Init::Ones;
    return {scaling, biases};
  }

  size_t saved_bytes(const MemoryQuery& q) const override {
    return 2 * size_t(q.batch) * size_t(groups_) * size_t(rows_) * dtype_size(q.dtype);
  }

  void forward(const LayerArgs& a) const override {
    if (cols_ == 0 || groups_ == 0) return;  // rows of no elements: the output is empty
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      T* mean = a.saved_as<T>();
      const int64_t batch = a.batch * groups_;
      ops::norm<T>(a.device).row_forward(batch, rows_, cols_, per_element_, eps_, a.input<T>(0),
                                         a.array<T>(0), a.array<T>(1),
                                         a.output<T>(0), mean, mean + batch * rows_);
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0] && !a.dparam[0] && !a.dparam[1]) return;
    if (cols_ == 0 || groups_ == 0) {  // nothing flows: the arrays' gradients are sums over no elements
      for (int p = 0; p < 2; ++p)
        if (a.dparam[p])
          with_float_type(a.dtype, [&](auto t) {
            using T = decltype(t);
            ops::fill<T>(a.device, shape_numel(pshape_), T(0), a.array_grad<T>(p));
          });
      return;
    }
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::norm<T>(a.device);
      const T* mean = a.saved_as<T>();
      const int64_t batch = a.batch * groups_;
      T* dgamma = a.array_per_example(0) ? nullptr : a.array_grad<T>(0);
      T* dbeta = a.array_per_example(1) ? nullptr : a.array_grad<T>(1);
      k.row_backward(batch, rows_, cols_, per_element_, a.input<T>(0), a.output_grad<T>(0), mean, mean + batch * rows_,
                     a.array<T>(0), a.input_grad<T>(0), dgamma, dbeta);
      if (!a.per_example) return;
      // Per example: the kernel on one example's rows at a time (its statistics are its own).
      const int64_t n = groups_ * rows_ * cols_, st = groups_ * rows_, np = shape_numel(pshape_);
      for (int64_t b = 0; b < a.batch; ++b) {
        T* gb = a.array_per_example(0) && a.dparam[0] ? a.array_grad<T>(0) + b * np : nullptr;
        T* bb = a.array_per_example(1) && a.dparam[1] ? a.array_grad<T>(1) + b * np : nullptr;
        k.row_backward(groups_, rows_, cols_, per_element_, a.input<T>(0) + b * n, a.output_grad<T>(0) + b * n,
                       mean + b * st, mean + batch * rows_ + b * st, a.array<T>(0), nullptr, gb, bb);
      }
    });
  }
  std::string no_per_example(bool) const override { return ""; }

  // Second order. With G = g dy and J = d x^/dx (symmetric), dx = J G: its tangent is
  // J (g tdy) + J (tg dy) + (dJ[tx]) G, and dJ[u] G = -invstd (alpha J G + beta J u + x^ mean(J u G))
  // with alpha = mean(x^ u), beta = mean(x^ G) per row; dg = sum dy x^ gains sum dy J tx. The row
  // kernel gives J v (with scaling v's factor); the rest are shape kernels over (rows, cols).
  std::string no_jvp_backward(bool) const override { return ""; }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override {
    const size_t esz = dtype_size(q.dtype), rows = size_t(q.batch) * size_t(groups_) * size_t(rows_);
    const size_t n = (rows * size_t(cols_) * esz + 63) / 64 * 64, r = (rows * esz + 63) / 64 * 64;
    const size_t np = (size_t(shape_numel(pshape_)) * esz + 63) / 64 * 64;
    return 5 * n + 3 * r + 2 * np;
  }
  void jvp_backward(const LayerArgs& a) const override {
    backward(on_gradient_tangents(a));  // J (g tdy), and the arrays' sum tdy x^, sum tdy
    if (cols_ == 0 || groups_ == 0 || (!a.din[0] && !a.dparam[0])) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::norm<T>(a.device);
      const auto& s = ops::shape<T>(a.device);
      const int64_t B = a.batch * groups_, R = B * rows_, n = R * cols_, np = shape_numel(pshape_);
      auto round = [](int64_t c) { return (size_t(c) * sizeof(T) + 63) / 64 * 64 / sizeof(T); };
      T* xh = a.workspace_as<T>();
      T* Ju = xh + round(n);
      T* G = Ju + round(n);
      T* JG = G + round(n);
      T* w = JG + round(n);
      T* alpha = w + round(n);
      T* beta = alpha + round(R);
      T* m3 = beta + round(R);
      T* ones = m3 + round(R);
      T* zeros = ones + round(np);
      const T* x = a.input<T>(0);
      const T* dy = a.output_grad<T>(0);
      const T* mean = a.saved_as<T>();
      const T* invstd = mean + R;
      const T* g = a.array<T>(0);
      ops::fill<T>(a.device, np, T(1), ones);
      ops::fill<T>(a.device, np, T(0), zeros);
      // (B, rows, cols) views: full, per row (mean, invstd, row scalars), the arrays (per element or per row)
      const int64_t dims[3] = {B, rows_, cols_}, full[3] = {rows_ * cols_, cols_, 1}, row[3] = {rows_, 1, 0};
      const int64_t arr[3] = {0, per_element_ ? 0 : 1, per_element_ ? 1 : 0};
      auto bin = [&](kernels::BinaryFn f, const T* p, const int64_t* ps, const T* q, const int64_t* qs, T* out) {
        s.binary_forward(f, 3, dims, p, ps, q, qs, out);
      };
      const int64_t kept[1] = {R}, kept_st[1] = {cols_}, red[1] = {cols_}, red_st[1] = {1};
      auto row_mean = [&](const T* v, T* out) {
        s.reduce(kernels::ReduceOp::Mean, 1, kept, kept_st, 1, red, red_st, v, out);
      };
      bin(kernels::BinaryFn::Subtract, x, full, mean, row, xh);                       // x^
      bin(kernels::BinaryFn::Times, xh, full, invstd, row, xh);
      k.row_backward(B, rows_, cols_, per_element_, x, a.input_tangent<T>(0), mean, invstd, ones, Ju, nullptr,
                     nullptr);                                                          // J tx
      if (a.din[0]) {
        T* dx = a.input_grad<T>(0);
        bin(kernels::BinaryFn::Times, dy, full, g, arr, G);                            // G = g dy
        k.row_backward(B, rows_, cols_, per_element_, x, dy, mean, invstd, g, JG, nullptr, nullptr);  // J G
        bin(kernels::BinaryFn::Times, xh, full, a.input_tangent<T>(0), full, w);
        row_mean(w, alpha);
        bin(kernels::BinaryFn::Times, xh, full, G, full, w);
        row_mean(w, beta);
        bin(kernels::BinaryFn::Times, Ju, full, G, full, w);
        row_mean(w, m3);
        bin(kernels::BinaryFn::Times, JG, full, alpha, row, JG);                       // alpha J G
        bin(kernels::BinaryFn::Times, Ju, full, beta, row, w);                         // + beta J u
        bin(kernels::BinaryFn::Plus, JG, full, w, full, JG);
        bin(kernels::BinaryFn::Times, xh, full, m3, row, w);                           // + x^ mean(J u G)
        bin(kernels::BinaryFn::Plus, JG, full, w, full, JG);
        bin(kernels::BinaryFn::Times, JG, full, invstd, row, JG);
        bin(kernels::BinaryFn::Subtract, dx, full, JG, full, dx);
        if (const T* tg = a.array_tangent<T>(0)) {                                     // + J (tg dy)
          k.row_backward(B, rows_, cols_, per_element_, x, dy, mean, invstd, tg, w, nullptr, nullptr);
          bin(kernels::BinaryFn::Plus, dx, full, w, full, dx);
        }
      }
      if (a.dparam[0]) {  // + sum over the batch (and the row's values, per row) of dy J tx
        bin(kernels::BinaryFn::Times, dy, full, Ju, full, w);
        StridedView<2> keep;
        StridedView<1> sum;
        sum.push(B, {rows_ * cols_});
        if (per_element_) {
          keep.push(rows_ * cols_, {1, 1});
        } else {
          keep.push(rows_, {cols_, 1});
          sum.push(cols_, {1});
        }
        T* dg = zeros;  // (its zeros are no longer needed)
        s.reduce(kernels::ReduceOp::Sum, keep.rank, keep.dims, keep.strides[0], sum.rank, sum.dims, sum.strides[0], w,
                 dg);
        const int64_t flat[1] = {np}, unit[1] = {1};
        s.binary_forward(kernels::BinaryFn::Plus, 1, flat, a.array_grad<T>(0), unit, dg, unit, a.array_grad<T>(0));
      }
    });
  }

  // y = g x^ + b, x^ = (x - mean) / sqrt(var + eps) per row. The Jacobian of x^ (I - 1 1^T/n -
  // x^ x^^T/n) / sigma is symmetric, so its tangent is the backward's product with unit scaling:
  // ty = g * J tx + x^ tg + tb, the last two terms the forward kernel with (tg, tb) as the arrays.
  std::string no_jvp(bool) const override { return ""; }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override {
    const size_t esz = dtype_size(q.dtype), rows = size_t(q.batch) * size_t(groups_) * size_t(rows_);
    const size_t n = (rows * size_t(cols_) * esz + 63) / 64 * 64;
    return n + 2 * ((size_t(shape_numel(pshape_)) * esz + 63) / 64 * 64) + 2 * ((rows * esz + 63) / 64 * 64);
  }
  void jvp(const LayerArgs& a) const override {
    if (cols_ == 0 || groups_ == 0) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::norm<T>(a.device);
      const auto& s = ops::shape<T>(a.device);
      const int64_t batch = a.batch * groups_, n = batch * rows_ * cols_, np = shape_numel(pshape_);
      auto round = [](int64_t count) { return (size_t(count) * sizeof(T) + 63) / 64 * 64 / sizeof(T); };
      T* term = a.workspace_as<T>();
      T* ones = term + round(n);
      T* zeros = ones + round(np);
      T* stats = zeros + round(np);  // mean, inverse std of the second forward (the same values)
      const T* mean = a.saved_as<T>();
      T* ty = a.output_tangent<T>(0);
      ops::fill<T>(a.device, np, T(1), ones);
      ops::fill<T>(a.device, np, T(0), zeros);
      k.row_backward(batch, rows_, cols_, per_element_, a.input<T>(0), a.input_tangent<T>(0), mean,
                     mean + batch * rows_, ones, ty, nullptr, nullptr);
      // times g: per element of the normalised axes, or per row (channel) over its values
      const int64_t dims[3] = {batch, rows_, cols_};
      const int64_t full[3] = {rows_ * cols_, cols_, 1};
      const int64_t gst[3] = {0, per_element_ ? 0 : 1, per_element_ ? 1 : 0};
      s.binary_forward(kernels::BinaryFn::Times, 3, dims, ty, full, a.array<T>(0), gst, ty);
      const T* tg = a.array_tangent<T>(0);
      const T* tb = a.array_tangent<T>(1);
      if (!tg && !tb) return;
      k.row_forward(batch, rows_, cols_, per_element_, eps_, a.input<T>(0), tg ? tg : zeros, tb ? tb : zeros, term,
                    stats, stats + round(batch * rows_));
      const int64_t flat[1] = {n}, unit[1] = {1};
      s.binary_forward(kernels::BinaryFn::Plus, 1, flat, ty, unit, term, unit, ty);
    });
  }

 private:
  int64_t last_axes_;
  double eps_;
  std::string where_;
  int64_t groups_ = 1, rows_ = 0, cols_ = 0;
  bool per_element_ = false;
  Shape pshape_;
};

// ------------------------------------------------------------------------------------------------
// DropoutLayer: identity in "Test" mode; in "Train" mode each element is kept with probability
// 1 - p and scaled by 1/(1 - p). The mask is a hash of (evaluation seed, this layer's salt, element
// index): the backward regenerates it, and one RandomSeeding gives one mask.
class DropoutLayer final : public Layer {
 public:
  DropoutLayer(double p, std::string where) : p_(p), where_(std::move(where)) {
    uint64_t h = 1469598103934665603ULL;  // FNV-1a of the layer's position in its net
    for (unsigned char ch : where_) h = (h ^ ch) * 1099511628211ULL;
    salt_ = h;
  }
  const char* type() const override { return "DropoutLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    need_known_input(in, where_);
    n_ = shape_numel(*in[0]);
    out = {*in[0]};
  }

  void forward(const LayerArgs& a) const override { apply(a, a.in[0], a.out[0]); }
  void backward(const LayerArgs& a) const override {
    if (a.din[0]) apply(a, a.dout[0], a.din[0]);
  }
  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // Linear: the tangent gets the same mask (one seed, one mask).
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override { apply(a, a.tin[0], a.tout[0]); }

 private:
  void apply(const LayerArgs& a, const void* x, void* y) const {
    if (!a.train || p_ == 0) {
      ops::copy_bytes(a.device, y, x, size_t(a.batch * n_) * dtype_size(a.dtype));
      return;
    }
    const uint64_t key = kernels::dropout_rng::key(a.seed, salt_);
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      ops::norm<T>(a.device).dropout(a.batch * n_, p_, key, static_cast<const T*>(x), static_cast<T*>(y));
    });
  }

  double p_;
  std::string where_;
  uint64_t salt_ = 0;
  int64_t n_ = 0;
};

// ------------------------------------------------------------------------------------------------
// EmbeddingLayer: integer class indices (0-based, any shape) -> rows of "Weights" (n x size).
class EmbeddingLayer final : public Layer {
 public:
  EmbeddingLayer(int64_t size, int64_t n, std::string where) : size_(size), n_(n), where_(std::move(where)) {}
  const char* type() const override { return "EmbeddingLayer"; }
  int64_t index_bound(int i) const override { return i == 0 ? n_ : 0; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    need_known_input(in, where_);
    count_ = shape_numel(*in[0]);
    out = {shape_concat(*in[0], {size_})};
  }

  // Random like the weights of a linear map from a one-hot vector (one active input).
  std::vector<ParamDecl> params() const override {
    ParamDecl w{"Weights", {n_, size_}};
    w.init = ParamDecl::Init::Weights;
    w.fan_in = 1;
    w.fan_out = size_;
    return {w};
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      ops::embed<T>(a.device).gather(a.batch * count_, size_, a.input<int64_t>(0),
                                     a.array<T>(0), a.output<T>(0));
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.dparam[0]) return;  // the input takes indices: it has no gradient
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::embed<T>(a.device);
      if (!a.array_per_example(0))
        return k.scatter_add(a.batch * count_, n_, size_, a.input<int64_t>(0), a.output_grad<T>(0), a.array_grad<T>(0));
      for (int64_t b = 0; b < a.batch; ++b)  // each example's rows into its own table
        k.scatter_add(count_, n_, size_, a.input<int64_t>(0) + b * count_, a.output_grad<T>(0) + b * count_ * size_,
                      a.array_grad<T>(0) + b * n_ * size_);
    });
  }
  std::string no_per_example(bool) const override { return ""; }

  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // The indices have no tangent: the rows of the weights' tangent, or zeros.
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      if (a.tparam[0])
        ops::embed<T>(a.device).gather(a.batch * count_, size_, a.input<int64_t>(0), a.array_tangent<T>(0),
                                       a.output_tangent<T>(0));
      else
        ops::fill<T>(a.device, a.batch * count_ * size_, T(0), a.output_tangent<T>(0));
    });
  }

 private:
  int64_t size_, n_;
  std::string where_;
  int64_t count_ = 0;
};

int64_t positive_option(const json::Value& s, const char* key, const std::string& where, const char* what) {
  const json::Value* v = spec::get(s, key);
  if (!v) throw ValueError(cat(where, ": missing option \"", key, "\" (", what, ")"));
  const int64_t n = spec::integer(*v, cat(where, ": option \"", key, "\" (", what, ")"));
  if (n < 1 || n > (int64_t(1) << 40))
    throw ValueError(cat(where, ": option \"", key, "\" (", what, ") must be a positive integer, given ", n));
  return n;
}

}  // namespace

std::unique_ptr<Layer> make_norm_layer(const json::Value& s, const std::string& where) {
  const std::string type = spec::string(s, "type", where);
  if (type == "BatchNormalizationLayer") {
    const double momentum = number_option(s, "momentum", where, 0.9);
    const double eps = number_option(s, "epsilon", where, 0.001);
    if (!(momentum >= 0 && momentum <= 1))
      throw ValueError(cat(where, ": momentum must be between 0 and 1, given ", momentum));
    if (!(eps > 0)) throw ValueError(cat(where, ": epsilon must be positive, given ", eps));
    return std::make_unique<BatchNormLayer>(momentum, eps, where);
  }
  if (type == "NormalizationLayer") {
    const double eps = number_option(s, "epsilon", where, 0.001);
    if (!(eps > 0)) throw ValueError(cat(where, ": epsilon must be positive, given ", eps));
    const char* expected = ": levels must be \"Default\" (per channel), \"All\" (the whole example) or a negative "
                           "int -k (each position over the last k axes)";
    const json::Value* lv = spec::get(s, "levels");
    if (lv && lv->kind == json::Value::Kind::Number) {
      const int64_t k = spec::integer(*lv, cat(where, ": levels"));
      if (k >= 0 || k < -64) throw ValueError(cat(where, expected, ", given ", k));
      return std::make_unique<NormalizationLayer>(-k, eps, where);
    }
    const std::string levels = spec::string(s, "levels", where, "Default");
    if (levels != "Default" && levels != "All") throw ValueError(cat(where, expected, ", given \"", levels, "\""));
    return std::make_unique<NormalizationLayer>(levels == "All" ? -1 : 0, eps, where);
  }
  if (type == "DropoutLayer") {
    const double p = number_option(s, "p", where, 0.5);
    if (!(p >= 0 && p < 1)) throw ValueError(cat(where, ": the dropout probability must be in [0, 1), given ", p));
    return std::make_unique<DropoutLayer>(p, where);
  }
  if (type == "EmbeddingLayer")
    return std::make_unique<EmbeddingLayer>(positive_option(s, "size", where, "embedding size"),
                                            positive_option(s, "n", where, "number of classes"), where);
  throw ValueError(cat(where, ": not a normalisation-family layer type \"", type, "\""));
}

}  // namespace portgrad
