/// @brief ConvolutionLayer, DeconvolutionLayer (transposed convolution) and PoolingLayer, with 1 to
/// 3 spatial dimensions, channels first: option parsing, shape inference, forward and backward.
#include <algorithm>

#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

// ---- options ----------------------------------------------------------------------------------
// One integer per spatial dimension from an int or a list of nd ints (null gives `fallback`).
std::vector<int64_t> per_dim(const json::Value* v, int nd, int64_t fallback, int64_t min, const std::string& what) {
  std::vector<int64_t> out(nd, fallback);
  if (!v) return out;
  auto check = [&](int64_t n) {
    if (n < min) throw ValueError(cat(what, " must be ", min == 0 ? "non-negative" : "positive", ", given ", n));
    return n;
  };
  if (v->kind == json::Value::Kind::Number) {
    std::fill(out.begin(), out.end(), check(spec::integer(*v, what)));
    return out;
  }
  if (v->kind != json::Value::Kind::Array || static_cast<int>(v->array.size()) != nd)
    throw ValueError(cat(what, " must be an integer or a list of ", nd, " integers (one per spatial dimension)"));
  for (int d = 0; d < nd; ++d) out[d] = check(spec::integer(v->array[d], what));
  return out;
}

// Padding: n, [n1, ...], [[before1, after1], ...] or "Same" (resolved by the caller).
bool padding(const json::Value* v, int nd, std::vector<int64_t>& lo, std::vector<int64_t>& hi, const std::string& where) {
  lo.assign(nd, 0);
  hi.assign(nd, 0);
  if (!v) return false;
  const std::string what = where + ": padding";
  const std::string form = cat(what, " must be an integer, a list of ", nd, " integers, a list of ", nd,
                               " (before, after) pairs, or \"Same\"");
  if (v->kind == json::Value::Kind::String) {
    if (v->string != "Same") throw ValueError(cat(form, "; given \"", v->string, "\""));
    return true;
  }
  auto nonneg = [&](const json::Value& e) {
    if (e.kind != json::Value::Kind::Number) throw ValueError(form);
    const int64_t n = spec::integer(e, what);
    if (n < 0) throw ValueError(cat(what, " must be non-negative, given ", n));
    return n;
  };
  if (v->kind == json::Value::Kind::Number) {
    lo.assign(nd, nonneg(*v));
    hi = lo;
    return false;
  }
  if (v->kind != json::Value::Kind::Array || static_cast<int>(v->array.size()) != nd) throw ValueError(form);
  for (int d = 0; d < nd; ++d) {
    const json::Value& e = v->array[d];
    if (e.kind == json::Value::Kind::Array) {
      if (e.array.size() != 2) throw ValueError(form);
      lo[d] = nonneg(e.array[0]);
      hi[d] = nonneg(e.array[1]);
    } else {
      lo[d] = hi[d] = nonneg(e);
    }
  }
  return false;
}

// The spatial rank: fixed by a list kernel, else from the input's rank (channels + 1..3 dims).
int spatial_rank(const json::Value& kernel, const Shape& in, const char* type, const std::string& where) {
  const int given = static_cast<int>(in.size()) - 1;
  if (kernel.kind == json::Value::Kind::Array) {
    const int nd = static_cast<int>(kernel.array.size());
    if (given != nd)
      throw ValueError(cat(where, ": port \"Input\" must have rank ", nd + 1, " (channels and ", nd,
                           " spatial dimensions, for a ", nd, "-D kernel); given shape ", shape_str(in)));
    return nd;
  }
  if (given < 1 || given > 3)
    throw ValueError(cat(where, ": port \"Input\" must have rank 2, 3 or 4 (channels, then 1 to 3 spatial "
                                "dimensions); given shape ", shape_str(in)));
  return given;
}

std::vector<int64_t> kernel_size(const json::Value& kernel, int nd, const std::string& where) {
  return per_dim(&kernel, nd, 1, 1, where + ": kernel size");
}

template <typename S>
void put(int nd, const std::vector<int64_t>& v, S* dst) {  // last nd of 3 slots
  for (int d = 0; d < nd; ++d) dst[3 - nd + d] = v[d];
}

const json::Value& need_kernel(const json::Value& s, const std::string& where) {
  const json::Value* k = spec::get(s, "kernel");
  if (!k) throw ValueError(cat(where, ": missing the kernel size"));
  if (k->kind != json::Value::Kind::Number && k->kind != json::Value::Kind::Array)
    throw ValueError(cat(where, ": kernel size must be an integer or a list of 1 to 3 integers"));
  if (k->kind == json::Value::Kind::Array && (k->array.empty() || k->array.size() > 3))
    throw ValueError(cat(where, ": kernel size must have 1 to 3 dimensions, given ", k->array.size()));
  return *k;
}

json::Value opt(const json::Value& s, const char* key) {
  const json::Value* v = spec::get(s, key);
  return v ? *v : json::Value{};
}
const json::Value* ptr(const json::Value& v) { return v.is_null() ? nullptr : &v; }

std::string dims_str(const std::vector<int64_t>& v) {
  std::string r = "(";
  for (size_t i = 0; i < v.size(); ++i) r += cat(i ? ", " : "", v[i]);
  return r + (v.size() == 1 ? ",)" : ")");
}

// ---- convolution and deconvolution ------------------------------------------------------------
class ConvLayer final : public Layer {
 public:
  ConvLayer(bool transposed, const json::Value& s, std::string where)
      : transposed_(transposed), where_(std::move(where)) {
    const json::Value* n = spec::get(s, "channels");
    if (!n) throw ValueError(cat(where_, ": missing the number of output channels"));
    n_ = spec::integer(*n, where_ + ": number of output channels");
    if (n_ < 1) throw ValueError(cat(where_, ": number of output channels must be positive, given ", n_));
    kernel_ = need_kernel(s, where_);
    stride_ = opt(s, "stride");
    dilation_ = opt(s, "dilation");
    padding_ = opt(s, "padding");
    output_padding_ = opt(s, "output_padding");
    if (!transposed_ && !output_padding_.is_null())
      throw ValueError(cat(where_, ": output_padding is an option of DeconvolutionLayer, not of ConvolutionLayer"));
    biases_ = spec::boolean(s, "biases", where_, true);
    const json::Value* g = spec::get(s, "channel_groups");
    groups_ = g ? spec::integer(*g, where_ + ": channel_groups") : 1;
    if (groups_ < 1) throw ValueError(cat(where_, ": channel_groups must be positive, given ", groups_));
    if (n_ % groups_)
      throw ValueError(cat(where_, ": the number of output channels (", n_, ") must be divisible by channel_groups (",
                           groups_, ")"));
    if (kernel_.kind == json::Value::Kind::Array) resolve_options(static_cast<int>(kernel_.array.size()));
  }

  const char* type() const override { return transposed_ ? "DeconvolutionLayer" : "ConvolutionLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=..."));
    const Shape& x = *in[0];
    nd_ = spatial_rank(kernel_, x, type(), where_);
    resolve_options(nd_);
    c_ = x[0];
    if (c_ % groups_)
      throw ValueError(cat(where_, ": the number of input channels (", c_, ", from input shape ", shape_str(x),
                           ") must be divisible by channel_groups (", groups_, ")"));
    std::vector<int64_t> sp(x.begin() + 1, x.end()), o(nd_), lo = pad_lo_, hi = pad_hi_;
    for (int d = 0; d < nd_; ++d) {
      const int64_t extent = dil_[d] * (k_[d] - 1) + 1;
      if (!transposed_) {
        if (same_) {
          const int64_t want = (sp[d] + stride_v_[d] - 1) / stride_v_[d];
          const int64_t total = std::max<int64_t>((want - 1) * stride_v_[d] + extent - sp[d], 0);
          lo[d] = total / 2;
          hi[d] = total - lo[d];
        }
        const int64_t span = sp[d] + lo[d] + hi[d];
        if (span < extent)
          throw ValueError(cat(where_, ": the kernel (size ", dims_str(k_), ", dilation ", dims_str(dil_),
                               ") spans ", extent, " in spatial dimension ", d, ", more than the padded input (",
                               sp[d], " + padding ", lo[d], " + ", hi[d], " = ", span, "); input shape ",
                               shape_str(x)));
        o[d] = (span - extent) / stride_v_[d] + 1;
      } else {
        const int64_t full = (sp[d] - 1) * stride_v_[d] + extent;
        if (same_) {
          const int64_t crop = full - sp[d] * stride_v_[d];
          if (crop < 0)
            throw ValueError(cat(where_, ": padding \"Same\" needs stride <= dilation*(kernel-1)+1 in every "
                                 "dimension (output size = input size * stride by cropping); in spatial dimension ",
                                 d, " the stride is ", stride_v_[d], " and the kernel spans ", extent));
          lo[d] = crop / 2;
          hi[d] = crop - lo[d];
        }
        // Output padding extends the end; rows past the full output get only the bias. The kernels
        // see the convolution of that larger image, which does not read its last rows.
        o[d] = full - lo[d] - hi[d] + out_pad_[d];
        if (o[d] < 1)
          throw ValueError(cat(where_, ": cropping ", lo[d], " + ", hi[d], " from the full output size ", full,
                               " leaves nothing in spatial dimension ", d, "; input shape ", shape_str(x)));
      }
    }
    // The kernel problem: for a transposed convolution, the convolution whose adjoint it is.
    cs_ = kernels::ConvShape{};
    cs_.groups = groups_;
    cs_.c_in = transposed_ ? n_ : c_;
    cs_.c_out = transposed_ ? c_ : n_;
    put(nd_, transposed_ ? o : sp, cs_.in);
    put(nd_, transposed_ ? sp : o, cs_.out);
    put(nd_, k_, cs_.k);
    put(nd_, stride_v_, cs_.stride);
    put(nd_, dil_, cs_.dilation);
    put(nd_, lo, cs_.pad);
    y_sp_ = shape_numel(Shape(o.begin(), o.end()));
    Shape y{n_};
    y.insert(y.end(), o.begin(), o.end());
    out = {y};
  }

  Shape weights_shape() const {
    Shape w = transposed_ ? Shape{c_, n_ / groups_} : Shape{n_, c_ / groups_};
    w.insert(w.end(), k_.begin(), k_.end());
    return w;
  }

  std::vector<ParamDecl> params() const override {
    // Weights (n, c/g, k...) for a convolution, (c, n/g, k...) for a transposed one (PyTorch's
    // layouts); fans as PyTorch computes them: dims 1 and 0 times the kernel volume.
    Shape w = weights_shape();
    int64_t kv = 1;
    for (int64_t k : k_) kv *= k;
    ParamDecl W{"Weights", w};
    W.init = ParamDecl::Init::Weights;
    W.fan_in = w[1] * kv;
    W.fan_out = w[0] * kv;
    std::vector<ParamDecl> p{W};
    if (biases_) p.push_back({"Biases", Shape{n_}});
    return p;
  }

  size_t workspace_bytes(const MemoryQuery& q) const override {
    kernels::ConvShape s = cs_;
    s.batch = q.batch;
    size_t bytes = 0;  // the device's own kernels' need (a GPU plan reserves no CPU im2col buffer)
    with_float_type(q.dtype, [&](auto t) { bytes = ops::conv<decltype(t)>(q.device).workspace_bytes(s); });
    return bytes;
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::conv<T>(a.device);
      kernels::ConvShape s = cs_;
      s.batch = a.batch;
      const T* x = a.input<T>(0);
      const T* W = a.array<T>(0);
      T* y = a.output<T>(0);
      if (transposed_) k.backward_data(s, x, W, y, a.workspace);
      else k.forward(s, x, W, y, a.workspace);
      if (biases_) k.bias_forward(a.batch, n_, y_sp_, a.array<T>(1), y);
    });
  }

  // Per-example array gradients (a.per_example): the weights' and biases' kernels example by
  // example, each writing its own slice of [batch, ...].
  void backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::conv<T>(a.device);
      kernels::ConvShape s = cs_;
      s.batch = a.batch;
      const T* x = a.input<T>(0);
      const T* W = a.array<T>(0);
      const T* dy = a.output_grad<T>(0);
      if (a.din[0]) {
        T* dx = a.input_grad<T>(0);
        if (transposed_) k.forward(s, dy, W, dx, a.workspace);
        else k.backward_data(s, dy, W, dx, a.workspace);
      }
      // One example: the layer's input is the kernels' x (a convolution) or dy (a transposed one).
      const int64_t* x_sp = transposed_ ? cs_.out : cs_.in;
      const int64_t n_x = c_ * x_sp[0] * x_sp[1] * x_sp[2];
      const int64_t n_y = n_ * y_sp_, n_w = shape_numel(weights_shape());
      auto weights = [&](kernels::ConvShape& sh, const T* xb, const T* dyb, T* dW) {
        if (transposed_) k.backward_weights(sh, dyb, xb, dW, a.workspace);
        else k.backward_weights(sh, xb, dyb, dW, a.workspace);
      };
      if (a.dparam[0] && a.array_per_example(0)) {
        kernels::ConvShape one = cs_;
        one.batch = 1;
        for (int64_t b = 0; b < a.batch; ++b) weights(one, x + b * n_x, dy + b * n_y, a.array_grad<T>(0) + b * n_w);
      } else if (a.dparam[0]) {
        weights(s, x, dy, a.array_grad<T>(0));
      }
      if (biases_ && a.dparam[1]) {
        if (a.array_per_example(1))
          for (int64_t b = 0; b < a.batch; ++b) k.bias_backward(1, n_, y_sp_, dy + b * n_y, a.array_grad<T>(1) + b * n_);
        else
          k.bias_backward(a.batch, n_, y_sp_, dy, a.array_grad<T>(1));
      }
    });
  }
  std::string no_per_example(bool) const override { return ""; }

  // Second order, bilinear in (x, W): the backward of the tangents, plus dx from (dy, tW) and dW
  // from (tx, dy) into scratch, added (the biases' gradient does not depend on x or W).
  std::string no_jvp_backward(bool) const override { return ""; }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override {
    const size_t esz = dtype_size(q.dtype);
    const int64_t* x_sp = transposed_ ? cs_.out : cs_.in;
    const size_t nx = size_t(q.batch * c_ * x_sp[0] * x_sp[1] * x_sp[2]), nw = size_t(shape_numel(weights_shape()));
    return workspace_bytes(q) + (nx * esz + 63) / 64 * 64 + (nw * esz + 63) / 64 * 64;
  }
  void jvp_backward(const LayerArgs& a) const override {
    backward(on_gradient_tangents(a));
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::conv<T>(a.device);
      kernels::ConvShape s = cs_;
      s.batch = a.batch;
      const int64_t* x_sp = transposed_ ? cs_.out : cs_.in;
      const int64_t nx = a.batch * c_ * x_sp[0] * x_sp[1] * x_sp[2], nw = shape_numel(weights_shape());
      char* base = static_cast<char*>(a.workspace) + workspace_bytes(MemoryQuery{a.batch, a.dtype, a.device, a.train});
      T* sx = reinterpret_cast<T*>(base);
      T* sw = sx + (size_t(nx) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      const T* dy = a.output_grad<T>(0);
      const auto& v = ops::shape<T>(a.device);
      const int64_t unit[1] = {1};
      if (a.din[0] && a.tparam[0]) {
        if (transposed_) k.forward(s, dy, a.array_tangent<T>(0), sx, a.workspace);
        else k.backward_data(s, dy, a.array_tangent<T>(0), sx, a.workspace);
        const int64_t flat[1] = {nx};
        v.binary_forward(kernels::BinaryFn::Plus, 1, flat, a.input_grad<T>(0), unit, sx, unit, a.input_grad<T>(0));
      }
      if (a.dparam[0]) {
        if (transposed_) k.backward_weights(s, dy, a.input_tangent<T>(0), sw, a.workspace);
        else k.backward_weights(s, a.input_tangent<T>(0), dy, sw, a.workspace);
        const int64_t flat[1] = {nw};
        v.binary_forward(kernels::BinaryFn::Plus, 1, flat, a.array_grad<T>(0), unit, sw, unit, a.array_grad<T>(0));
      }
    });
  }

  // Bilinear in (x, W), plus the biases: ty = conv(tx, W) + conv(x, tW) + tb (the transposed
  // convolution likewise), the second product through the workspace.
  std::string no_jvp(bool) const override { return ""; }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override {
    return workspace_bytes(q) + (size_t(q.batch * n_ * y_sp_) * dtype_size(q.dtype) + 63) / 64 * 64;
  }
  void jvp(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::conv<T>(a.device);
      kernels::ConvShape s = cs_;
      s.batch = a.batch;
      const int64_t n = a.batch * n_ * y_sp_;
      T* term = a.workspace_as<T>();
      void* scratch = term + (size_t(n) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      auto product = [&](const T* x, const T* W, T* y) {
        if (transposed_) k.backward_data(s, x, W, y, scratch);
        else k.forward(s, x, W, y, scratch);
      };
      T* ty = a.output_tangent<T>(0);
      product(a.input_tangent<T>(0), a.array<T>(0), ty);
      if (const T* tW = a.array_tangent<T>(0)) {
        product(a.input<T>(0), tW, term);
        const int64_t flat[1] = {n}, unit[1] = {1};
        ops::shape<T>(a.device).binary_forward(kernels::BinaryFn::Plus, 1, flat, ty, unit, term, unit, ty);
      }
      if (biases_ && a.tparam[1]) k.bias_forward(a.batch, n_, y_sp_, a.array_tangent<T>(1), ty);
    });
  }

 private:
  void resolve_options(int nd) {
    k_ = kernel_size(kernel_, nd, where_);
    stride_v_ = per_dim(ptr(stride_), nd, 1, 1, where_ + ": stride");
    dil_ = per_dim(ptr(dilation_), nd, 1, 1, where_ + ": dilation");
    same_ = padding(ptr(padding_), nd, pad_lo_, pad_hi_, where_);
    out_pad_ = per_dim(ptr(output_padding_), nd, 0, 0, where_ + ": output_padding");
    for (int d = 0; d < nd; ++d) {
      if (out_pad_[d] == 0) continue;
      if (same_)
        throw ValueError(cat(where_, ": output_padding ", dims_str(out_pad_), " cannot be combined with padding "
                             "\"Same\" (which fixes the output size); give the padding explicitly"));
      // PyTorch's and ONNX's rule: anything larger is an output size no input size would need.
      if (out_pad_[d] >= std::max(stride_v_[d], dil_[d]))
        throw ValueError(cat(where_, ": output_padding must be smaller than the stride or the dilation in each "
                             "dimension; given ", dims_str(out_pad_), " with stride ", dims_str(stride_v_),
                             " and dilation ", dims_str(dil_)));
    }
  }

  bool transposed_;
  std::string where_;
  int64_t n_ = 0, groups_ = 1, c_ = 0;
  json::Value kernel_, stride_, dilation_, padding_, output_padding_;
  bool biases_ = true, same_ = false;
  int nd_ = 0;
  std::vector<int64_t> k_, stride_v_, dil_, pad_lo_, pad_hi_, out_pad_;
  kernels::ConvShape cs_;
  int64_t y_sp_ = 0;
};

// ---- pooling ----------------------------------------------------------------------------------
class PoolingLayer final : public Layer {
 public:
  PoolingLayer(const json::Value& s, std::string where) : where_(std::move(where)) {
    kernel_ = need_kernel(s, where_);
    stride_ = opt(s, "stride");
    padding_ = opt(s, "padding");
    const std::string f = spec::string(s, "function", where_, "Max");
    if (f == "Max") fn_ = kernels::PoolFn::Max;
    else if (f == "Mean") fn_ = kernels::PoolFn::Mean;
    else if (f == "Total") fn_ = kernels::PoolFn::Total;
    else throw ValueError(cat(where_, ": unknown pooling function \"", f, "\"; known: Max, Mean, Total"));
    if (kernel_.kind == json::Value::Kind::Array) resolve_options(static_cast<int>(kernel_.array.size()));
  }

  const char* type() const override { return "PoolingLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=..."));
    const Shape& x = *in[0];
    const int nd = spatial_rank(kernel_, x, type(), where_);
    resolve_options(nd);
    c_ = x[0];
    std::vector<int64_t> sp(x.begin() + 1, x.end()), o(nd), lo = pad_lo_, hi = pad_hi_;
    for (int d = 0; d < nd; ++d) {
      if (same_) {
        const int64_t want = (sp[d] + stride_v_[d] - 1) / stride_v_[d];
        const int64_t total = std::max<int64_t>((want - 1) * stride_v_[d] + k_[d] - sp[d], 0);
        lo[d] = total / 2;
        hi[d] = total - lo[d];
      }
      const int64_t span = sp[d] + lo[d] + hi[d];
      if (span < k_[d])
        throw ValueError(cat(where_, ": the pooling kernel (size ", dims_str(k_), ") is larger than the padded input (",
                             sp[d], " + padding ", lo[d], " + ", hi[d], " = ", span, ") in spatial dimension ", d,
                             "; input shape ", shape_str(x)));
      o[d] = (span - k_[d]) / stride_v_[d] + 1;
    }
    ps_ = kernels::PoolShape{};
    put(nd, sp, ps_.in);
    put(nd, o, ps_.out);
    put(nd, k_, ps_.k);
    put(nd, stride_v_, ps_.stride);
    put(nd, lo, ps_.pad);
    Shape y{c_};
    y.insert(y.end(), o.begin(), o.end());
    out = {y};
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      kernels::PoolShape s = ps_;
      s.planes = a.batch * c_;
      ops::pool<T>(a.device).forward(fn_, s, a.input<T>(0), a.output<T>(0));
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      kernels::PoolShape s = ps_;
      s.planes = a.batch * c_;
      ops::pool<T>(a.device).backward(fn_, s, a.input<T>(0), a.output_grad<T>(0),
                                       a.input_grad<T>(0));
    });
  }

  // Second order: linear, or (Max) a selection that does not move with an infinitesimal change of
  // x: the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }

  // Means and totals are linear: the tangents pool as the values do. A maximum's tangent is the
  // input's tangent at the window's first maximum (where the backward sends the gradient).
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override {
    if (fn_ != kernels::PoolFn::Max) return forward(on_tangents(a));
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      kernels::PoolShape s = ps_;
      s.planes = a.batch * c_;
      ops::pool<T>(a.device).max_tangent(s, a.input<T>(0), a.input_tangent<T>(0), a.output_tangent<T>(0));
    });
  }

 private:
  void resolve_options(int nd) {
    k_ = kernel_size(kernel_, nd, where_);
    stride_v_ = per_dim(ptr(stride_), nd, 1, 1, where_ + ": stride");
    same_ = padding(ptr(padding_), nd, pad_lo_, pad_hi_, where_);
  }

  std::string where_;
  json::Value kernel_, stride_, padding_;
  kernels::PoolFn fn_ = kernels::PoolFn::Max;
  bool same_ = false;
  int64_t c_ = 0;
  std::vector<int64_t> k_, stride_v_, pad_lo_, pad_hi_;
  kernels::PoolShape ps_;
};

}  // namespace

std::unique_ptr<Layer> make_conv_layer(const json::Value& s, const std::string& where) {
  const std::string type = spec::string(s, "type", where);
  if (type == "PoolingLayer") return std::make_unique<PoolingLayer>(s, where);
  return std::make_unique<ConvLayer>(type == "DeconvolutionLayer", s, where);
}

}  // namespace portgrad
