/// @brief Layers that combine, rearrange and reduce arrays: CatenateLayer, ThreadingLayer,
/// TotalLayer, SummationLayer, AggregationLayer, ReplicateLayer, TransposeLayer, PartLayer and
/// ConstantArrayLayer. All of them are strided copies, broadcast binary operations or reductions
/// (kernels/shape_ops.h). Axes are 0-based and refer to one example (the batch axis is never
/// addressed); negative axes count from the end.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "layers/layer.h"
#include "layers/strided.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

using kernels::BinaryFn;
using kernels::ReduceOp;

constexpr size_t kMaxExampleRank = 16;

std::vector<std::string> numbered_ports(int n) {
  std::vector<std::string> p;
  for (int i = 1; i <= n; ++i) p.push_back(cat("Input", i));
  return p;
}

const Shape& known(const std::vector<MaybeShape>& in, size_t i, const std::string& port, const std::string& where,
                   const char* how) {
  if (!in[i]) throw ValueError(cat(where, ": the shape of port \"", port, "\" is not known; declare it with ", how));
  return *in[i];
}

// An axis of an array of the given rank, negative counting from the end.
int64_t resolve_axis(int64_t axis, int64_t rank, const std::string& where, const char* what) {
  const int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank)
    throw ValueError(cat(where, ": ", what, " ", axis, " is out of range for an input of rank ", rank,
                         rank ? cat(" (valid: 0 to ", rank - 1, ", or -", rank, " to -1)") : std::string(" (a scalar has no axes)")));
  return a;
}

// A Python slice (start, stop, step; absent = None) over `len` elements: Python's slice.indices.
struct Span {
  bool has_start = false, has_stop = false;
  int64_t start = 0, stop = 0, step = 1;
};

void span_indices(const Span& s, int64_t len, int64_t* start, int64_t* count) {
  const int64_t step = s.step;
  const int64_t lower = step > 0 ? 0 : -1, upper = step > 0 ? len : len - 1;
  auto clamp = [&](bool has, int64_t v, int64_t fallback) {
    if (!has) return fallback;
    if (v < 0) return std::max(v + len, lower);
    return std::min(v, upper);
  };
  const int64_t a = clamp(s.has_start, s.start, step > 0 ? lower : upper);
  const int64_t b = clamp(s.has_stop, s.stop, step > 0 ? upper : lower);
  *start = a;
  if (step > 0) *count = b > a ? (b - a - 1) / step + 1 : 0;
  else *count = a > b ? (a - b - 1) / (-step) + 1 : 0;
}

Span parse_span(const json::Value& v, const std::string& what) {
  Span s;
  if (const json::Value* x = spec::get(v, "start")) {
    s.has_start = true;
    s.start = spec::integer(*x, what + ": slice start");
  }
  if (const json::Value* x = spec::get(v, "stop")) {
    s.has_stop = true;
    s.stop = spec::integer(*x, what + ": slice stop");
  }
  if (const json::Value* x = spec::get(v, "step")) s.step = spec::integer(*x, what + ": slice step");
  if (s.step == 0) throw ValueError(cat(what, ": slice step cannot be zero"));
  return s;
}

std::string span_str(const Span& s) {
  return cat("slice(", s.has_start ? std::to_string(s.start) : "None", ", ", s.has_stop ? std::to_string(s.stop) : "None",
             ", ", s.step, ")");
}

template <typename T>
void copy_view(Device d, const StridedView<2>& v, const T* src, T* dst) {
  ops::shape<T>(d).copy(v.rank, v.dims, src, v.strides[0], dst, v.strides[1]);
}

// ================================================================================== CatenateLayer
class CatenateLayer final : public Layer {
 public:
  CatenateLayer(int64_t axis, int n, std::string where) : axis_(axis), n_(n), where_(std::move(where)) {}
  const char* type() const override { return "CatenateLayer"; }
  std::vector<std::string> inputs() const override { return numbered_ports(n_); }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    const auto ports = inputs();
    shapes_.clear();
    for (int i = 0; i < n_; ++i) shapes_.push_back(known(in, i, ports[i], where_, "inputs=[shape, ...]"));
    const int64_t rank = int64_t(shapes_[0].size());
    if (rank == 0)
      throw ValueError(cat(where_, ": port \"Input1\" is a scalar (shape ()); only arrays of rank >= 1 can be catenated"));
    for (int i = 1; i < n_; ++i)
      if (int64_t(shapes_[i].size()) != rank)
        throw ValueError(cat(where_, ": ports \"Input1\" (shape ", shape_str(shapes_[0]), ") and \"", ports[i],
                             "\" (shape ", shape_str(shapes_[i]), ") differ in rank; catenated arrays must have the same rank"));
    a_ = resolve_axis(axis_, rank, where_, "axis");
    Shape o = shapes_[0];
    for (int i = 1; i < n_; ++i) {
      for (int64_t d = 0; d < rank; ++d)
        if (d != a_ && shapes_[i][d] != shapes_[0][d])
          throw ValueError(cat(where_, ": ports \"Input1\" (shape ", shape_str(shapes_[0]), ") and \"", ports[i], "\" (shape ",
                               shape_str(shapes_[i]), ") must agree in every dimension but axis ", a_,
                               " to be catenated along it; they differ in axis ", d));
      o[a_] += shapes_[i][a_];
    }
    out_ = o;
    out = {o};
  }

  void forward(const LayerArgs& a) const override { move(a, false); }
  void backward(const LayerArgs& a) const override { move(a, true); }

  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // Linear in its inputs: the tangents map as the values do.
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override { forward(on_tangents(a)); }

 private:
  // Forward: each input into its block of the output; backward: each block of dout into din.
  void move(const LayerArgs& a, bool back) const {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const Shape os = contiguous_strides(out_);
      const int64_t on = shape_numel(out_);
      int64_t offset = 0;
      for (int i = 0; i < n_; ++i) {
        const Shape& s = shapes_[i];
        const Shape is = contiguous_strides(s);
        const int64_t in_n = shape_numel(s);
        StridedView<2> v;
        v.push(a.batch, {back ? on : in_n, back ? in_n : on});
        for (size_t d = 0; d < s.size(); ++d) v.push(s[d], {back ? os[d] : is[d], back ? is[d] : os[d]});
        if (!back) {
          copy_view<T>(a.device, v, a.input<T>(i), a.output<T>(0) + offset * os[a_]);
        } else if (a.din[i]) {
          copy_view<T>(a.device, v, a.output_grad<T>(0) + offset * os[a_], a.input_grad<T>(i));
        }
        offset += s[a_];
      }
    });
  }

  int64_t axis_;
  int n_;
  std::string where_;
  std::vector<Shape> shapes_;
  Shape out_;
  int64_t a_ = 0;
};

// ================================================================== ThreadingLayer and TotalLayer
class ThreadingLayer final : public Layer {
 public:
  ThreadingLayer(BinaryFn f, int n, bool total, std::string where)
      : f_(f), n_(n), total_(total), where_(std::move(where)) {}
  const char* type() const override { return total_ ? "TotalLayer" : "ThreadingLayer"; }
  std::vector<std::string> inputs() const override { return numbered_ports(n_); }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    const auto ports = inputs();
    shapes_.clear();
    size_t rank = 0;
    for (int i = 0; i < n_; ++i) {
      shapes_.push_back(known(in, i, ports[i], where_, "inputs=[shape, ...]"));
      rank = std::max(rank, shapes_[i].size());
    }
    if (total_) {
      for (int i = 1; i < n_; ++i)
        if (shapes_[i] != shapes_[0])
          throw ValueError(cat(where_, ": ports \"Input1\" (shape ", shape_str(shapes_[0]), ") and \"", ports[i],
                               "\" (shape ", shape_str(shapes_[i]), ") must have the same shape to be added"));
    }
    // numpy's rule: align shapes at the last axis; sizes must match or be 1.
    Shape o(rank, 1);
    std::vector<int> owner(rank, -1);
    for (int i = 0; i < n_; ++i) {
      const Shape& s = shapes_[i];
      for (size_t k = 0; k < s.size(); ++k) {
        const size_t d = rank - s.size() + k;
        if (s[k] == 1) continue;
        if (o[d] != 1 && o[d] != s[k])
          throw ValueError(cat(where_, ": ports \"", ports[owner[d]], "\" (shape ", shape_str(shapes_[owner[d]]), ") and \"",
                               ports[i], "\" (shape ", shape_str(s), ") cannot be broadcast together: size ", o[d],
                               " vs ", s[k], " in axis ", int64_t(d) - int64_t(rank),
                               " (counted from the end; sizes must be equal or 1)"));
        o[d] = s[k];
        owner[d] = i;
      }
    }
    out_ = o;
    n_out_ = shape_numel(o);
    // Each input's strides over the output's axes (0 where it is broadcast).
    const Shape os = contiguous_strides(o);
    bstrides_.assign(n_, Shape(rank, 0));
    for (int i = 0; i < n_; ++i) {
      const Shape& s = shapes_[i];
      const Shape is = contiguous_strides(s);
      for (size_t k = 0; k < s.size(); ++k)
        if (s[k] != 1) bstrides_[i][rank - s.size() + k] = is[k];
    }
    full_ = os;
    out = {o};
  }

  size_t workspace_bytes(const MemoryQuery& q) const override {
    // Backward: n - 2 recomputed partial results, two gradient buffers, one scratch.
    const size_t one = (size_t(q.batch * n_out_) * dtype_size(q.dtype) + 63) / 64 * 64;
    return one * size_t(n_ + 1);
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      T* y = a.output<T>(0);
      binary(a, f_, input<T>(a, 0), input<T>(a, 1), y);
      for (int k = 2; k < n_; ++k) binary(a, f_, full<T>(y), input<T>(a, k), y);
    });
  }

  void backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const int64_t N = a.batch * n_out_;
      const size_t stride = (size_t(N) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      T* ws = a.workspace_as<T>();
      auto buf = [&](int j) { return ws + size_t(j) * stride; };
      // Partial results f(x1, x2), f(f(x1, x2), x3), ... (the last is the output itself).
      for (int j = 0; j + 2 < n_; ++j) binary(a, f_, j == 0 ? input<T>(a, 0) : full<T>(buf(j - 1)), input<T>(a, j + 1), buf(j));
      T* g[2] = {buf(n_ - 2), buf(n_ - 1)};
      T* scratch = buf(n_);
      const T* dy = a.output_grad<T>(0);
      int next = 0;
      for (int k = n_ - 1; k >= 1; --k) {
        const Operand<T> lhs = k == 1 ? input<T>(a, 0) : full<T>(buf(k - 2));
        const Operand<T> rhs = input<T>(a, k);
        T* dk = a.input_grad<T>(k);
        T* gb = dk ? (shapes_[k] == out_ ? dk : scratch) : nullptr;
        T* ga = nullptr;
        T* d0 = a.input_grad<T>(0);
        if (k > 1) ga = g[next];
        else if (d0) ga = shapes_[0] == out_ ? d0 : g[next];
        if (ga || gb) backward_binary(a, lhs, rhs, dy, ga, gb);
        if (dk && gb != dk) reduce_to_input(a, k, gb, dk);
        if (k == 1 && d0 && ga != d0) reduce_to_input(a, 0, ga, d0);
        dy = g[next];
        next ^= 1;
      }
    });
  }

  // Second order: sums, differences, maxima, minima, comparisons and remainders have partials that
  // are locally constant (the backward of the tangents); products, quotients and powers, of any
  // number of inputs, take the fold's second order (fold_second).
  bool locally_constant_partials() const {
    return f_ != BinaryFn::Times && f_ != BinaryFn::Divide && f_ != BinaryFn::Power;
  }
  std::string no_jvp_backward(bool) const override { return ""; }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override {
    if (locally_constant_partials()) return workspace_bytes(q);
    const size_t one = (size_t(q.batch * n_out_) * dtype_size(q.dtype) + 63) / 64 * 64;
    return one * size_t(2 * (n_ - 2) + 11);
  }
  void jvp_backward(const LayerArgs& a) const override {
    if (locally_constant_partials()) return backward(on_gradient_tangents(a));
    fold_second(a);
  }

  // Forward over reverse along the left fold y1 = f(x1, x2), y_j = f(y_(j-1), x_(j+1)): first the
  // partial results and their tangents; then backward from g = dy, tg = tdy, where the step with
  // left operand l (x1 or a partial result) and right operand r = x_(k+1) gives
  //   t(dl) = tg fa + g (faa tl + fab tr),   t(dr) = tg fb + g (fab tl + fbb tr),   dl = g fa,
  // every operand and tangent spread over the output's shape, and t(dr) summed to r's shape.
  void fold_second(const LayerArgs& a) const {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::shape<T>(a.device);
      const int64_t N = a.batch * n_out_;
      const size_t stride = (size_t(N) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      T* ws = a.workspace_as<T>();
      auto y = [&](int j) { return ws + size_t(j) * stride; };              // partial results
      auto ty = [&](int j) { return ws + size_t(n_ - 2 + j) * stride; };    // their tangents
      T* fixed = ws + size_t(2 * (n_ - 2)) * stride;
      T *L = fixed, *R = L + stride, *TL = R + stride, *TR = TL + stride, *s1 = TR + stride, *s2 = s1 + stride,
        *sum = s2 + stride;
      T* g[2] = {sum + stride, sum + 2 * stride};
      T* tg[2] = {sum + 3 * stride, sum + 4 * stride};
      const int64_t flat[1] = {N}, unit[1] = {1};
      auto add = [&](T* x, const T* z) { k.binary_forward(BinaryFn::Plus, 1, flat, x, unit, z, unit, x); };
      auto tangent = [&](int i) { return Operand<T>{a.input_tangent<T>(i), &bstrides_[i], shape_numel(shapes_[i])}; };
      auto lhs_of = [&](int j) { return j == 0 ? input<T>(a, 0) : full<T>(y(j - 1)); };  // step j's left operand

      spread(a, tangent(0), TL);  // x1's tangent: the first step's, forward and backward
      for (int j = 0; j + 2 < n_; ++j) {  // y_j and t(y_j), as the forward mode takes them
        const Operand<T> l = lhs_of(j), r = input<T>(a, j + 1);
        binary(a, f_, l, r, y(j));
        spread(a, tangent(j + 1), TR);
        backward_binary(a, l, r, j == 0 ? TL : ty(j - 1), s1, static_cast<T*>(nullptr));
        backward_binary(a, l, r, TR, static_cast<T*>(nullptr), ty(j));
        add(ty(j), s1);
      }
      const T* gk = a.output_grad<T>(0);
      const T* tgk = a.output_grad_tangent<T>(0);
      for (int s = n_ - 1, next = 0; s >= 1; --s, next ^= 1) {
        const Operand<T> l = lhs_of(s - 1), r = input<T>(a, s);
        if (s == 1) spread(a, l, L);
        const T* Lp = s == 1 ? L : y(s - 2);
        const T* TLp = s == 1 ? TL : ty(s - 2);
        spread(a, r, R);
        spread(a, tangent(s), TR);
        T* dr = a.input_grad<T>(s);
        const bool want_l = s > 1 || a.din[0];
        k.binary_second(f_, N, Lp, R, gk, TLp, TR, want_l ? s1 : nullptr, dr ? s2 : nullptr);
        if (dr) {  // t(dr) = tg fb + g (fab tl + fbb tr), summed to r's shape
          backward_binary(a, l, r, tgk, static_cast<T*>(nullptr), sum);
          add(sum, s2);
          if (shapes_[s] == out_) ops::copy_bytes(a.device, dr, sum, size_t(N) * sizeof(T));
          else reduce_to_input(a, s, sum, dr);
        }
        if (!want_l) break;
        T* tl_out = s == 1 && shapes_[0] == out_ ? a.input_grad<T>(0) : tg[next];
        backward_binary(a, l, r, tgk, tl_out, static_cast<T*>(nullptr));  // t(dl) = tg fa + ...
        add(tl_out, s1);
        if (s == 1) {
          if (tl_out != a.input_grad<T>(0)) reduce_to_input(a, 0, tl_out, a.input_grad<T>(0));
          break;
        }
        backward_binary(a, l, r, gk, g[next], static_cast<T*>(nullptr));  // dl = g fa
        gk = g[next];
        tgk = tg[next];
      }
    });
  }

  // Forward mode, along the left fold y1 = f(x1, x2), y2 = f(y1, x3), ...: t_k = t_lhs df/da +
  // t_rhs df/db, each operand's tangent spread over the output's shape (broadcasting) first; the
  // partials are the backward kernel's (the same conventions at ties and kinks).
  std::string no_jvp(bool) const override { return ""; }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override {
    const size_t one = (size_t(q.batch * n_out_) * dtype_size(q.dtype) + 63) / 64 * 64;
    return one * 7;  // the two spread tangents, a product, two partial tangents, two partial values
  }
  void jvp(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::shape<T>(a.device);
      const int64_t N = a.batch * n_out_;
      const size_t stride = (size_t(N) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      T* ws = a.workspace_as<T>();
      T *ta = ws, *tb = ws + stride, *part = ws + 2 * stride;
      T* tv[2] = {ws + 3 * stride, ws + 4 * stride};
      T* vv[2] = {ws + 5 * stride, ws + 6 * stride};
      auto tangent = [&](int i) { return Operand<T>{a.input_tangent<T>(i), &bstrides_[i], shape_numel(shapes_[i])}; };
      const int64_t flat[1] = {N}, unit[1] = {1};
      Operand<T> lhs = input<T>(a, 0), tl = tangent(0);
      for (int j = 1; j < n_; ++j) {
        const Operand<T> rhs = input<T>(a, j);
        T* out = j == n_ - 1 ? a.output_tangent<T>(0) : tv[j % 2];
        spread(a, tl, ta);
        spread(a, tangent(j), tb);
        backward_binary(a, lhs, rhs, ta, part, static_cast<T*>(nullptr));
        backward_binary(a, lhs, rhs, tb, static_cast<T*>(nullptr), out);
        k.binary_forward(BinaryFn::Plus, 1, flat, out, unit, part, unit, out);
        if (j == n_ - 1) break;
        binary(a, f_, lhs, rhs, vv[j % 2]);
        lhs = full<T>(vv[j % 2]);
        tl = full<T>(out);
      }
    });
  }

 private:
  template <typename T> struct Operand {
    const T* p;
    const Shape* strides;  // per example, over the output's axes
    int64_t batch_stride;
  };
  template <typename T> Operand<T> input(const LayerArgs& a, int i) const {
    return {a.input<T>(i), &bstrides_[i], shape_numel(shapes_[i])};
  }
  template <typename T> Operand<T> full(const T* p) const { return {p, &full_, n_out_}; }

  template <typename T>
  StridedView<3> view(const LayerArgs& a, const Operand<T>& x, const Operand<T>& y) const {
    StridedView<3> v;
    v.push(a.batch, {x.batch_stride, y.batch_stride, n_out_});
    for (size_t d = 0; d < out_.size(); ++d) v.push(out_[d], {(*x.strides)[d], (*y.strides)[d], full_[d]});
    return v;
  }

  template <typename T>
  void binary(const LayerArgs& a, BinaryFn f, const Operand<T>& x, const Operand<T>& y, T* out) const {
    const StridedView<3> v = view(a, x, y);
    ops::shape<T>(a.device).binary_forward(f, v.rank, v.dims, x.p, v.strides[0], y.p, v.strides[1], out);
  }

  template <typename T>
  void backward_binary(const LayerArgs& a, const Operand<T>& x, const Operand<T>& y, const T* dy, T* gx, T* gy) const {
    const StridedView<3> v = view(a, x, y);
    ops::shape<T>(a.device).binary_backward(f_, v.rank, v.dims, x.p, v.strides[0], y.p, v.strides[1], dy, gx, gy);
  }

  // Operand x (or its tangent) written over the output's shape (broadcast axes repeated).
  template <typename T>
  void spread(const LayerArgs& a, const Operand<T>& x, T* dst) const {
    StridedView<2> v;
    v.push(a.batch, {x.batch_stride, n_out_});
    for (size_t d = 0; d < out_.size(); ++d) v.push(out_[d], {(*x.strides)[d], full_[d]});
    ops::shape<T>(a.device).copy(v.rank, v.dims, x.p, v.strides[0], dst, v.strides[1]);
  }
  // Sums a gradient over the output's shape down to input i's shape (over its broadcast axes).
  template <typename T>
  void reduce_to_input(const LayerArgs& a, int i, const T* g, T* din) const {
    StridedView<2> kept;
    StridedView<1> red;
    kept.push(a.batch, {n_out_, shape_numel(shapes_[i])});
    for (size_t d = 0; d < out_.size(); ++d) {
      if (bstrides_[i][d] != 0 || out_[d] == 1) kept.push(out_[d], {full_[d], bstrides_[i][d]});
      else red.push(out_[d], {full_[d]});
    }
    ops::shape<T>(a.device).reduce(ReduceOp::Sum, kept.rank, kept.dims, kept.strides[0], red.rank, red.dims,
                                   red.strides[0], g, din);
  }

  BinaryFn f_;
  int n_;
  bool total_;
  std::string where_;
  std::vector<Shape> shapes_, bstrides_;
  Shape out_, full_;
  int64_t n_out_ = 0;
};

// ======================================================== AggregationLayer and SummationLayer
// Levels: one axis, a list of axes, or a Python slice of axes.
struct Levels {
  enum Kind { One, List, Slice } kind = Slice;
  std::vector<int64_t> list;
  Span span;
};

class AggregationLayer final : public Layer {
 public:
  AggregationLayer(ReduceOp op, Levels levels, bool summation, std::string where)
      : op_(op), levels_(std::move(levels)), summation_(summation), where_(std::move(where)) {}
  const char* type() const override { return summation_ ? "SummationLayer" : "AggregationLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    in_ = known(in, 0, "Input", where_, "input=...");
    const int64_t rank = int64_t(in_.size());
    std::vector<char> chosen(rank, 0);
    if (levels_.kind == Levels::Slice) {
      int64_t start, count;
      span_indices(levels_.span, rank, &start, &count);
      for (int64_t j = 0; j < count; ++j) chosen[start + j * levels_.span.step] = 1;
      if (count == 0 && !summation_)
        throw ValueError(cat(where_, ": levels ", span_str(levels_.span), " select no axis of an input of shape ",
                             shape_str(in_), " (rank ", rank, "); axes are 0-based and the batch axis is not counted"));
    } else {
      for (int64_t l : levels_.list) {
        const int64_t ax = resolve_axis(l, rank, where_, "level");
        if (chosen[ax]) throw ValueError(cat(where_, ": level ", l, " is given twice"));
        chosen[ax] = 1;
      }
    }
    const Shape is = contiguous_strides(in_);
    Shape o;
    for (int64_t d = 0; d < rank; ++d)
      if (!chosen[d]) o.push_back(in_[d]);
    const Shape os = contiguous_strides(o);
    n_in_ = shape_numel(in_);
    n_out_ = shape_numel(o);
    // The batch axis is pushed at run time, in front; here the per-example axes.
    axes_.clear();
    for (int64_t d = 0, j = 0; d < rank; ++d) {
      if (chosen[d]) axes_.push_back({in_[d], is[d], -1});
      else axes_.push_back({in_[d], is[d], os[j++]});
    }
    out = {o};
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      StridedView<2> kept;
      StridedView<1> red;
      geometry(a.batch, &kept, &red);
      ops::shape<T>(a.device).reduce(op_, kept.rank, kept.dims, kept.strides[0], red.rank, red.dims, red.strides[0],
                                     a.input<T>(0), a.output<T>(0));
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      StridedView<2> kept;
      StridedView<1> red;
      geometry(a.batch, &kept, &red);
      ops::shape<T>(a.device).reduce_backward(op_, kept.rank, kept.dims, kept.strides[0], red.rank, red.dims,
                                              red.strides[0], a.input<T>(0),
                                              a.output<T>(0), a.output_grad<T>(0),
                                              a.input_grad<T>(0));
    });
  }

  // Second order: sums and means are linear; a maximum's (minimum's) backward is a selection that
  // does not move with an infinitesimal change of x (the first extremum stays the first): all are
  // the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }

  // Sums and means are linear: the tangents reduce as the values do. A maximum's (minimum's)
  // tangent is the input's tangent where the backward sends the gradient (the first extremum):
  // the sum of mask * t, the mask being the backward of ones.
  std::string no_jvp(bool) const override { return ""; }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override {
    if (op_ == ReduceOp::Sum || op_ == ReduceOp::Mean) return 0;
    return (size_t(q.batch * n_in_) * dtype_size(q.dtype) + 63) / 64 * 64 + size_t(q.batch * n_out_) * dtype_size(q.dtype);
  }
  void jvp(const LayerArgs& a) const override {
    if (op_ == ReduceOp::Sum || op_ == ReduceOp::Mean) return forward(on_tangents(a));
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& k = ops::shape<T>(a.device);
      StridedView<2> kept;
      StridedView<1> red;
      geometry(a.batch, &kept, &red);
      T* mask = a.workspace_as<T>();
      T* ones = mask + (size_t(a.batch * n_in_) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
      ops::fill<T>(a.device, a.batch * n_out_, T(1), ones);
      k.reduce_backward(op_, kept.rank, kept.dims, kept.strides[0], red.rank, red.dims, red.strides[0], a.input<T>(0),
                        a.output<T>(0), ones, mask);
      const int64_t flat[1] = {a.batch * n_in_}, unit[1] = {1};
      k.binary_forward(BinaryFn::Times, 1, flat, mask, unit, a.input_tangent<T>(0), unit, mask);
      k.reduce(ReduceOp::Sum, kept.rank, kept.dims, kept.strides[0], red.rank, red.dims, red.strides[0], mask,
               a.output_tangent<T>(0));
    });
  }

 private:
  struct Axis {
    int64_t dim, in_stride, out_stride;  // out_stride -1: reduced
  };
  void geometry(int64_t batch, StridedView<2>* kept, StridedView<1>* red) const {
    kept->push(batch, {n_in_, n_out_});
    for (const Axis& ax : axes_) {
      if (ax.out_stride < 0) red->push(ax.dim, {ax.in_stride});
      else kept->push(ax.dim, {ax.in_stride, ax.out_stride});
    }
  }

  ReduceOp op_;
  Levels levels_;
  bool summation_;
  std::string where_;
  Shape in_;
  std::vector<Axis> axes_;
  int64_t n_in_ = 0, n_out_ = 0;
};

// ================================================================================= ReplicateLayer
class ReplicateLayer final : public Layer {
 public:
  ReplicateLayer(Shape n, int64_t axis, std::string where) : n_(std::move(n)), axis_(axis), where_(std::move(where)) {}
  const char* type() const override { return "ReplicateLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    in_ = known(in, 0, "Input", where_, "input=...");
    const int64_t rank = int64_t(in_.size());
    const int64_t m = axis_ < 0 ? axis_ + rank + 1 : axis_;
    if (m < 0 || m > rank)
      throw ValueError(cat(where_, ": axis ", axis_, " is out of range for an input of rank ", rank,
                           ": the new axes go before input axis 0 to ", rank, " (or -", rank + 1, " to -1, -1 = at the end)"));
    if (in_.size() + n_.size() > kMaxExampleRank)
      throw ValueError(cat(where_, ": the output would have rank ", in_.size() + n_.size(), "; at most ", kMaxExampleRank));
    m_ = m;
    Shape o(in_.begin(), in_.begin() + m);
    o.insert(o.end(), n_.begin(), n_.end());
    o.insert(o.end(), in_.begin() + m, in_.end());
    out_ = o;
    out = {o};
  }

  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // Linear in its inputs: the tangents map as the values do.
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override { forward(on_tangents(a)); }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const Shape is = contiguous_strides(in_), os = contiguous_strides(out_);
      StridedView<2> v;
      v.push(a.batch, {shape_numel(in_), shape_numel(out_)});
      for (size_t d = 0; d < out_.size(); ++d) v.push(out_[d], {in_stride(is, d), os[d]});
      copy_view<T>(a.device, v, a.input<T>(0), a.output<T>(0));
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const Shape is = contiguous_strides(in_), os = contiguous_strides(out_);
      StridedView<2> kept;
      StridedView<1> red;
      kept.push(a.batch, {shape_numel(out_), shape_numel(in_)});
      for (size_t d = 0; d < out_.size(); ++d) {
        const bool added = int64_t(d) >= m_ && int64_t(d) < m_ + int64_t(n_.size());
        if (added) red.push(out_[d], {os[d]});
        else kept.push(out_[d], {os[d], in_stride(is, d)});
      }
      ops::shape<T>(a.device).reduce(ReduceOp::Sum, kept.rank, kept.dims, kept.strides[0], red.rank, red.dims,
                                     red.strides[0], a.output_grad<T>(0), a.input_grad<T>(0));
    });
  }

 private:
  // The input stride of output axis d (0 for the new axes).
  int64_t in_stride(const Shape& is, size_t d) const {
    const int64_t k = int64_t(d), added = int64_t(n_.size());
    if (k < m_) return is[d];
    if (k < m_ + added) return 0;
    return is[d - added];
  }

  Shape n_;
  int64_t axis_;
  std::string where_;
  Shape in_, out_;
  int64_t m_ = 0;
};

// ================================================================================= TransposeLayer
class TransposeLayer final : public Layer {
 public:
  // `perm`: a permutation (or, when its length is not the rank, a pair of axes to swap); `swaps`:
  // pairs of axes swapped one after another.
  TransposeLayer(std::vector<int64_t> perm, std::vector<std::pair<int64_t, int64_t>> swaps, std::string where)
      : perm_spec_(std::move(perm)), swaps_(std::move(swaps)), where_(std::move(where)) {}
  const char* type() const override { return "TransposeLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    in_ = known(in, 0, "Input", where_, "input=...");
    const int64_t rank = int64_t(in_.size());
    std::vector<std::pair<int64_t, int64_t>> swaps = swaps_;
    perm_.resize(rank);
    for (int64_t d = 0; d < rank; ++d) perm_[d] = d;
    if (!perm_spec_.empty()) {
      if (int64_t(perm_spec_.size()) == rank) {
        std::vector<char> seen(rank, 0);
        for (int64_t d = 0; d < rank; ++d) {
          const int64_t ax = resolve_axis(perm_spec_[d], rank, where_, "axis");
          if (seen[ax])
            throw ValueError(cat(where_, ": ", list_str(perm_spec_), " is not a permutation of the axes 0 to ", rank - 1,
                                 " (axis ", ax, " appears twice)"));
          seen[ax] = 1;
          perm_[d] = ax;
        }
      } else if (perm_spec_.size() == 2) {
        swaps.insert(swaps.begin(), {perm_spec_[0], perm_spec_[1]});
      } else {
        throw ValueError(cat(where_, ": ", list_str(perm_spec_), " is neither a permutation of the ", rank,
                             " axes of an input of shape ", shape_str(in_), " nor a pair of axes to swap"));
      }
    }
    for (const auto& [i, j] : swaps) {
      const int64_t p = resolve_axis(i, rank, where_, "axis"), q = resolve_axis(j, rank, where_, "axis");
      std::swap(perm_[p], perm_[q]);
    }
    Shape o(rank);
    for (int64_t d = 0; d < rank; ++d) o[d] = in_[perm_[d]];
    out_ = o;
    out = {o};
  }

  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // Linear in its inputs: the tangents map as the values do.
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override { forward(on_tangents(a)); }
  void forward(const LayerArgs& a) const override { move(a, false); }
  void backward(const LayerArgs& a) const override {
    if (a.din[0]) move(a, true);
  }

 private:
  static std::string list_str(const std::vector<int64_t>& l) {
    std::string s = "(";
    for (size_t i = 0; i < l.size(); ++i) s += cat(i ? ", " : "", l[i]);
    return s + (l.size() == 1 ? ",)" : ")");
  }
  void move(const LayerArgs& a, bool back) const {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const Shape is = contiguous_strides(in_), os = contiguous_strides(out_);
      const int64_t n = shape_numel(in_);
      StridedView<2> v;  // over the output's axes: (input strides, output strides)
      v.push(a.batch, {n, n});
      for (size_t d = 0; d < out_.size(); ++d) {
        const int64_t s = is[perm_[d]];
        v.push(out_[d], {back ? os[d] : s, back ? s : os[d]});
      }
      if (back) copy_view<T>(a.device, v, a.output_grad<T>(0), a.input_grad<T>(0));
      else copy_view<T>(a.device, v, a.input<T>(0), a.output<T>(0));
    });
  }

  std::vector<int64_t> perm_spec_;
  std::vector<std::pair<int64_t, int64_t>> swaps_;
  std::string where_;
  Shape in_, out_;
  std::vector<int64_t> perm_;
};

// ====================================================================================== PartLayer
struct PartItem {
  enum Kind { Index, Slice, All } kind = All;
  int64_t index = 0;
  Span span;
};

class PartLayer final : public Layer {
 public:
  PartLayer(std::vector<PartItem> items, std::string where, const char* type = "PartLayer")
      : items_(std::move(items)), where_(std::move(where)), type_(type) {}
  const char* type() const override { return type_; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    in_ = known(in, 0, "Input", where_, "input=...");
    const int64_t rank = int64_t(in_.size());
    if (int64_t(items_.size()) > rank)
      throw IndexError(cat(where_, ": ", items_.size(), " parts given for an input of shape ", shape_str(in_), " (rank ",
                           rank, "); at most one part per axis"));
    const Shape is = contiguous_strides(in_);
    offset_ = 0;
    dims_.clear();
    strides_.clear();
    for (int64_t d = 0; d < rank; ++d) {
      const PartItem item = d < int64_t(items_.size()) ? items_[d] : PartItem{};
      if (item.kind == PartItem::Index) {
        const int64_t i = item.index < 0 ? item.index + in_[d] : item.index;
        if (i < 0 || i >= in_[d])
          throw IndexError(cat(where_, ": index ", item.index, " is out of range for axis ", d, " of size ", in_[d],
                               " (input shape ", shape_str(in_), "; valid: 0 to ", in_[d] - 1, ", or -", in_[d], " to -1)"));
        offset_ += i * is[d];
      } else if (item.kind == PartItem::Slice) {
        int64_t start, count;
        span_indices(item.span, in_[d], &start, &count);
        if (count == 0 && std::string(type_) != "PartLayer")
          throw ValueError(cat(where_, ": needs a sequence of at least 2 elements (it drops one); given shape ",
                               shape_str(in_)));
        if (count == 0)
          throw ValueError(cat(where_, ": ", span_str(item.span), " selects nothing from axis ", d, " of size ", in_[d],
                               " (input shape ", shape_str(in_), ")"));
        offset_ += start * is[d];
        dims_.push_back(count);
        strides_.push_back(item.span.step * is[d]);
      } else {
        dims_.push_back(in_[d]);
        strides_.push_back(is[d]);
      }
    }
    out = {dims_};
  }

  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // Linear in its inputs: the tangents map as the values do.
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override { forward(on_tangents(a)); }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      copy_view<T>(a.device, view(a.batch, false), a.input<T>(0) + offset_, a.output<T>(0));
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      T* dx = a.input_grad<T>(0);
      ops::fill<T>(a.device, a.batch * shape_numel(in_), T(0), dx);
      copy_view<T>(a.device, view(a.batch, true), a.output_grad<T>(0), dx + offset_);
    });
  }

 private:
  // Over the output's axes: (input strides, output strides), swapped for the backward scatter.
  StridedView<2> view(int64_t batch, bool back) const {
    const Shape os = contiguous_strides(dims_);
    const int64_t n_in = shape_numel(in_), n_out = shape_numel(dims_);
    StridedView<2> v;
    v.push(batch, {back ? n_out : n_in, back ? n_in : n_out});
    for (size_t d = 0; d < dims_.size(); ++d) v.push(dims_[d], {back ? os[d] : strides_[d], back ? strides_[d] : os[d]});
    return v;
  }

  std::vector<PartItem> items_;
  std::string where_;
  const char* type_;
  Shape in_, dims_, strides_;
  int64_t offset_ = 0;
};

// ================================================================================== PaddingLayer
// The example surrounded by `value` or by its own elements: pads_[d] = (before, after) elements on
// axis d (the first pads_.size() axes; the rest are not padded). Modes as Wolfram's "Padding":
// "Fixed" repeats the edge element, "Reflected" mirrors about it (without repeating it),
// "Periodic" wraps around.
enum class PadMode { Value, Fixed, Reflected, Periodic };

class PaddingLayer final : public Layer {
 public:
  PaddingLayer(std::vector<std::pair<int64_t, int64_t>> pads, PadMode mode, double value, std::string where)
      : pads_(std::move(pads)), mode_(mode), value_(value), where_(std::move(where)) {}
  const char* type() const override { return "PaddingLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    in_ = known(in, 0, "Input", where_, "input=...");
    if (pads_.size() > in_.size())
      throw ValueError(cat(where_, ": ", pads_.size(), " (before, after) pairs given for an input of shape ",
                           shape_str(in_), " (rank ", in_.size(), "); at most one pair per axis"));
    dims_ = in_;
    for (size_t d = 0; d < pads_.size(); ++d) {
      const auto [before, after] = pads_[d];
      if (before > (int64_t(1) << 40) || after > (int64_t(1) << 40))
        throw ValueError(cat(where_, ": padding of axis ", d, " is too large"));
      // A mirror or a wrap reads each padded element from the interior: at most n-1 (n) of them.
      const bool mirror = mode_ == PadMode::Reflected, wrap = mode_ == PadMode::Periodic;
      const int64_t most = mirror ? in_[d] - 1 : in_[d];
      if ((mirror || wrap) && std::max(before, after) > most)
        throw ValueError(cat(where_, ": padding (", before, ", ", after, ") of axis ", d, " (size ", in_[d],
                             ") is more than ", mode_ == PadMode::Reflected ? "\"Reflected\"" : "\"Periodic\"",
                             " padding can take from the axis: at most ", most, " on each side"));
      dims_[d] += before + after;
    }
    out = {dims_};
  }

  size_t workspace_bytes(const MemoryQuery& q) const override {
    if (mode_ == PadMode::Value) return 0;
    // Backward: a copy of the output's gradient, then the sum of two of its hyperplanes.
    const size_t round = 64, n = size_t(q.batch) * size_t(shape_numel(dims_)) * dtype_size(q.dtype);
    return 2 * ((n + round - 1) / round * round);
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      T* y = a.output<T>(0);
      if (mode_ == PadMode::Value) ops::fill<T>(a.device, a.batch * shape_numel(dims_), T(value_), y);
      copy_view<T>(a.device, interior(a.batch, false), a.input<T>(0), y + offset());
      if (mode_ == PadMode::Value) return;
      // Axis by axis, as numpy.pad: each padded hyperplane copies an interior one that already holds
      // the padding of the earlier axes (the corners come out right).
      for_each_padded_row(a.batch, [&](const StridedView<2>& v, int64_t src, int64_t dst) {
        copy_view<T>(a.device, v, y + src, y + dst);
      });
    });
  }

  void backward(const LayerArgs& a) const override {
    if (!a.din[0]) return;
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const T* dy = a.output_grad<T>(0);
      if (mode_ != PadMode::Value) {
        // The adjoint of the forward's copies, in reverse order: each padded hyperplane's gradient
        // adds into the hyperplane it was copied from; then the interior is the input's gradient.
        const int64_t n = a.batch * shape_numel(dims_);
        T* g = a.workspace_as<T>();
        T* sum = g + (size_t(n) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
        copy_view<T>(a.device, flat(n), dy, g);
        const auto& k = ops::shape<T>(a.device);
        for_each_padded_row(a.batch, [&](const StridedView<2>& v, int64_t src, int64_t dst) {
          k.binary_forward(kernels::BinaryFn::Plus, v.rank, v.dims, g + src, v.strides[0], g + dst, v.strides[1], sum);
          StridedView<2> back;  // the contiguous sum back into the source hyperplane
          back.rank = v.rank;
          int64_t c = 1;
          for (int i = v.rank; i-- > 0;) {
            back.dims[i] = v.dims[i];
            back.strides[0][i] = c;
            back.strides[1][i] = v.strides[0][i];
            c *= v.dims[i];
          }
          copy_view<T>(a.device, back, sum, g + src);
        }, /*reverse=*/true);
        dy = g;
      }
      copy_view<T>(a.device, interior(a.batch, true), dy + offset(), a.input_grad<T>(0));
    });
  }

  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // The padding methods are linear in the input: the tangent pads as the values do. A constant
  // value pads the tangent with zeros.
  std::string no_jvp(bool) const override { return ""; }
  size_t jvp_workspace_bytes(const MemoryQuery&) const override { return 0; }
  void jvp(const LayerArgs& a) const override {
    if (mode_ != PadMode::Value) return forward(on_tangents(a));
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      ops::fill<T>(a.device, a.batch * shape_numel(dims_), T(0), a.output_tangent<T>(0));
      copy_view<T>(a.device, interior(a.batch, false), a.input_tangent<T>(0), a.output_tangent<T>(0) + offset());
    });
  }

 private:
  int64_t offset() const {
    const Shape os = contiguous_strides(dims_);
    int64_t o = 0;
    for (size_t d = 0; d < pads_.size(); ++d) o += pads_[d].first * os[d];
    return o;
  }
  // Over the input's axes: (input strides, output strides), swapped for the backward.
  StridedView<2> interior(int64_t batch, bool back) const {
    const Shape is = contiguous_strides(in_), os = contiguous_strides(dims_);
    const int64_t n_in = shape_numel(in_), n_out = shape_numel(dims_);
    StridedView<2> v;
    v.push(batch, {back ? n_out : n_in, back ? n_in : n_out});
    for (size_t d = 0; d < in_.size(); ++d) v.push(in_[d], {back ? os[d] : is[d], back ? is[d] : os[d]});
    return v;
  }
  static StridedView<2> flat(int64_t n) {
    StridedView<2> v;
    v.push(n, {1, 1});
    return v;
  }
  // The input row (0..n-1) that padded position i (i < 0 before, i >= n after) of an axis of size n shows.
  int64_t source(int64_t i, int64_t n) const {
    if (mode_ == PadMode::Fixed) return i < 0 ? 0 : n - 1;
    if (mode_ == PadMode::Reflected) return i < 0 ? -i : 2 * (n - 1) - i;
    return i < 0 ? i + n : i - n;  // Periodic
  }
  // f(view, source offset, destination offset) for every padded hyperplane of the output, axis by
  // axis (last to first when reversed): the full padded extent on earlier axes, the interior on
  // later ones.
  template <typename F>
  void for_each_padded_row(int64_t batch, F&& f, bool reverse = false) const {
    const Shape os = contiguous_strides(dims_);
    const int64_t n_out = shape_numel(dims_), axes = int64_t(pads_.size());
    for (int64_t k = 0; k < axes; ++k) {
      const size_t d = size_t(reverse ? axes - 1 - k : k);
      const auto [before, after] = pads_[d];
      if (!before && !after) continue;
      StridedView<2> v;
      v.push(batch, {n_out, n_out});
      int64_t base = 0;
      for (size_t e = 0; e < dims_.size(); ++e) {
        if (e == d) continue;
        const bool done = e < d;  // earlier axes are padded already
        v.push(done ? dims_[e] : in_[e], {os[e], os[e]});
        if (!done && e < pads_.size()) base += pads_[e].first * os[e];
      }
      const int64_t n = in_[d];
      auto row = [&](int64_t i) { f(v, base + (before + source(i, n)) * os[d], base + (before + i) * os[d]); };
      for (int64_t i = -before; i < 0; ++i) row(i);
      for (int64_t i = n; i < n + after; ++i) row(i);
    }
  }

  std::vector<std::pair<int64_t, int64_t>> pads_;
  PadMode mode_;
  double value_;
  std::string where_;
  Shape in_, dims_;
};

// ============================================================================= ConstantArrayLayer
class ConstantArrayLayer final : public Layer {
 public:
  ConstantArrayLayer(Shape shape, bool learnable, std::string where)
      : shape_(std::move(shape)), learnable_(learnable), where_(std::move(where)) {}
  const char* type() const override { return "ConstantArrayLayer"; }
  std::vector<std::string> inputs() const override { return {}; }
  std::vector<ParamDecl> params() const override {
    ParamDecl p{"Array", shape_};
    p.init = ParamDecl::Init::Zeros;
    p.learnable = learnable_;  // a constant (learnable false) still has a gradient when asked by name
    return {p};
  }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override { out = {shape_}; }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const int64_t n = shape_numel(shape_);
      StridedView<2> v;
      v.push(a.batch, {0, n});
      v.push(n, {1, 1});
      copy_view<T>(a.device, v, a.array<T>(0), a.output<T>(0));
    });
  }

  // The array's gradient is the output's gradient summed over the batch (per example: the output's
  // gradient itself).
  std::string no_per_example(bool) const override { return ""; }
  void backward(const LayerArgs& a) const override {
    if (!a.dparam[0]) return;
    if (a.array_per_example(0))
      return ops::copy_bytes(a.device, a.dparam[0], a.dout[0],
                             size_t(a.batch * shape_numel(shape_)) * dtype_size(a.dtype));
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const int64_t n = shape_numel(shape_);
      StridedView<2> kept;
      StridedView<1> red;
      kept.push(n, {1, 1});
      red.push(a.batch, {n});
      ops::shape<T>(a.device).reduce(ReduceOp::Sum, kept.rank, kept.dims, kept.strides[0], red.rank, red.dims,
                                     red.strides[0], a.output_grad<T>(0), a.array_grad<T>(0));
    });
  }

  // The backward reads neither inputs nor arrays: second order is the backward of the tangents.
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override { backward(on_gradient_tangents(a)); }
  // The array's tangent, the same for every example.
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override {
    if (a.tparam[0]) {
      LayerArgs b = a;
      b.param = a.tparam;
      b.out = a.tout;
      return forward(b);
    }
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      ops::fill<T>(a.device, a.batch * shape_numel(shape_), T(0), a.output_tangent<T>(0));
    });
  }

 private:
  Shape shape_;
  bool learnable_;
  std::string where_;
};

// --------------------------------------------------------------------------------- spec reading
int input_count(const json::Value& s, const std::string& where, int fallback, int least) {
  const json::Value* v = spec::get(s, "count");
  if (!v) return fallback;
  const int64_t n = spec::integer(*v, where + ": the number of inputs");
  if (n < least || n > 1024)
    throw ValueError(cat(where, ": the number of inputs must be ", least, " to 1024, given ", n));
  return int(n);
}

int64_t int_option(const json::Value& s, const char* key, const std::string& where, int64_t fallback) {
  const json::Value* v = spec::get(s, key);
  return v ? spec::integer(*v, cat(where, ": option \"", key, "\"")) : fallback;
}

std::vector<int64_t> int_list(const json::Value& v, const std::string& what) {
  if (v.kind != json::Value::Kind::Array) throw ValueError(cat(what, " must be a list of integers"));
  if (v.array.size() > kMaxExampleRank) throw ValueError(cat(what, ": more than ", kMaxExampleRank, " entries"));
  std::vector<int64_t> l;
  for (const auto& x : v.array) l.push_back(spec::integer(x, what));
  return l;
}

}  // namespace

std::unique_ptr<Layer> make_catenate_layer(const json::Value& s, const std::string& where) {
  return std::make_unique<CatenateLayer>(int_option(s, "axis", where, 0), input_count(s, where, 2, 1), where);
}

std::unique_ptr<Layer> make_threading_layer(const json::Value& s, const std::string& where) {
  if (spec::string(s, "type", where) == "TotalLayer")
    return std::make_unique<ThreadingLayer>(BinaryFn::Plus, input_count(s, where, 2, 2), true, where);
  const std::string name = spec::string(s, "function", where);
  int f = 0;
  while (f < int(BinaryFn::Count) && name != kernels::kBinaryFnNames[f]) ++f;
  if (f == int(BinaryFn::Count)) {
    std::string known;
    for (const char* k : kernels::kBinaryFnNames) known += std::string(known.empty() ? "" : ", ") + k;
    throw ValueError(cat(where, ": unknown function \"", name, "\"; known: ", known));
  }
  const BinaryFn fn = static_cast<BinaryFn>(f);
  const int n = input_count(s, where, 2, 2);
  const bool nary = fn == BinaryFn::Plus || fn == BinaryFn::Times || fn == BinaryFn::Max || fn == BinaryFn::Min;
  if (n > 2 && !nary)
    throw ValueError(cat(where, ": ", name, " takes exactly 2 inputs, given ", n,
                         " (only Plus, Times, Max and Min take more)"));
  return std::make_unique<ThreadingLayer>(fn, n, false, where);
}

std::unique_ptr<Layer> make_aggregation_layer(const json::Value& s, const std::string& where) {
  Levels levels;
  if (spec::string(s, "type", where) == "SummationLayer") {
    levels.kind = Levels::Slice;  // every axis
    return std::make_unique<AggregationLayer>(ReduceOp::Sum, levels, true, where);
  }
  const std::string name = spec::string(s, "function", where);
  ReduceOp op;
  if (name == "Max") op = ReduceOp::Max;
  else if (name == "Min") op = ReduceOp::Min;
  else if (name == "Mean") op = ReduceOp::Mean;
  else if (name == "Total") op = ReduceOp::Sum;
  else throw ValueError(cat(where, ": unknown aggregation function \"", name, "\"; known: Max, Min, Mean, Total"));
  const json::Value* l = spec::get(s, "levels");
  if (!l) {
    levels.span.has_start = true;  // all axes but the first (Wolfram's 2;;All)
    levels.span.start = 1;
  } else if (l->kind == json::Value::Kind::Number) {
    levels.kind = Levels::One;
    levels.list = {spec::integer(*l, where + ": levels")};
  } else if (l->kind == json::Value::Kind::Array) {
    levels.kind = Levels::List;
    levels.list = int_list(*l, where + ": levels");
    if (levels.list.empty()) throw ValueError(cat(where, ": levels is an empty list"));
  } else if (l->kind == json::Value::Kind::Object) {
    levels.span = parse_span(*l, where + ": levels");
  } else {
    throw ValueError(cat(where, ": levels must be an axis, a list of axes or a slice"));
  }
  return std::make_unique<AggregationLayer>(op, levels, false, where);
}

std::unique_ptr<Layer> make_replicate_layer(const json::Value& s, const std::string& where) {
  const json::Value* n = spec::get(s, "n");
  if (!n) throw ValueError(cat(where, ": missing option \"n\" (how many copies)"));
  Shape dims = n->kind == json::Value::Kind::Array ? spec::shape(*n, where + ": n") : Shape{spec::integer(*n, where + ": n")};
  if (dims.empty()) throw ValueError(cat(where, ": n is an empty list"));
  for (int64_t d : dims)
    if (d < 1 || d > (int64_t(1) << 40)) throw ValueError(cat(where, ": n must be positive, given ", d));
  return std::make_unique<ReplicateLayer>(dims, int_option(s, "axis", where, 0), where);
}

std::unique_ptr<Layer> make_transpose_layer(const json::Value& s, const std::string& where) {
  std::vector<int64_t> perm;
  std::vector<std::pair<int64_t, int64_t>> swaps;
  if (const json::Value* p = spec::get(s, "perm")) perm = int_list(*p, where + ": perm");
  if (const json::Value* w = spec::get(s, "swaps")) {
    if (w->kind != json::Value::Kind::Array || w->array.size() > 64)
      throw ValueError(cat(where, ": swaps must be a list of pairs of axes"));
    for (const auto& pair : w->array) {
      const auto l = int_list(pair, where + ": a swap");
      if (l.size() != 2) throw ValueError(cat(where, ": a swap is a pair of axes, given ", l.size(), " numbers"));
      swaps.emplace_back(l[0], l[1]);
    }
  }
  if (perm.empty() && swaps.empty()) swaps.emplace_back(0, 1);
  return std::make_unique<TransposeLayer>(perm, swaps, where);
}

std::unique_ptr<Layer> make_padding_layer(const json::Value& s, const std::string& where) {
  const json::Value* p = spec::get(s, "padding");
  if (!p || p->kind != json::Value::Kind::Array || p->array.empty() || p->array.size() > kMaxExampleRank)
    throw ValueError(cat(where, ": \"padding\" must be a list of 1 to ", kMaxExampleRank, " (before, after) pairs"));
  std::vector<std::pair<int64_t, int64_t>> pads;
  for (const auto& pair : p->array) {
    const std::vector<int64_t> ba = int_list(pair, where + ": a (before, after) pair");
    if (ba.size() != 2 || ba[0] < 0 || ba[1] < 0)
      throw ValueError(cat(where, ": each padding entry is a pair (before, after) of non-negative ints"));
    pads.emplace_back(ba[0], ba[1]);
  }
  const json::Value* v = spec::get(s, "value");
  PadMode mode = PadMode::Value;
  if (v && v->kind == json::Value::Kind::String) {
    if (v->string == "Fixed") mode = PadMode::Fixed;
    else if (v->string == "Reflected") mode = PadMode::Reflected;
    else if (v->string == "Periodic") mode = PadMode::Periodic;
    else throw ValueError(cat(where, ": option \"value\" must be a finite number, \"Fixed\", \"Reflected\" or "
                              "\"Periodic\"; given \"", v->string, "\""));
  } else if (v && (v->kind != json::Value::Kind::Number || !std::isfinite(v->number))) {
    throw ValueError(cat(where, ": option \"value\" must be a finite number, \"Fixed\", \"Reflected\" or "
                            "\"Periodic\""));
  }
  return std::make_unique<PaddingLayer>(std::move(pads), mode, v && mode == PadMode::Value ? v->number : 0.0, where);
}

std::unique_ptr<Layer> make_part_layer(const json::Value& s, const std::string& where) {
  const json::Value* p = spec::get(s, "part");
  if (!p || p->kind != json::Value::Kind::Array || p->array.empty() || p->array.size() > kMaxExampleRank)
    throw ValueError(cat(where, ": \"part\" must be a list of 1 to ", kMaxExampleRank, " parts"));
  std::vector<PartItem> items;
  for (const auto& v : p->array) {
    PartItem item;
    if (v.kind == json::Value::Kind::Number) {
      item.kind = PartItem::Index;
      item.index = spec::integer(v, where + ": part index");
    } else if (v.kind == json::Value::Kind::Object) {
      item.kind = PartItem::Slice;
      item.span = parse_span(v, where + ": part");
    } else if (v.kind == json::Value::Kind::String && v.string == "All") {
      item.kind = PartItem::All;
    } else {
      throw ValueError(cat(where, ": a part is an index, a slice or \"All\""));
    }
    items.push_back(item);
  }
  return std::make_unique<PartLayer>(items, where);
}

// Wolfram's Sequence*Layers on a fixed-length sequence (its first axis): parts of that axis.
// SequenceLastLayer: element -1; SequenceMostLayer: all but the last; SequenceRestLayer: all but
// the first; SequenceReverseLayer: the elements in reverse order.
std::unique_ptr<Layer> make_sequence_layer(const json::Value& s, const std::string& where) {
  const std::string type = spec::string(s, "type", where);
  PartItem item;
  if (type == "SequenceLastLayer") {
    item.kind = PartItem::Index;
    item.index = -1;
    return std::make_unique<PartLayer>(std::vector<PartItem>{item}, where, "SequenceLastLayer");
  }
  item.kind = PartItem::Slice;
  if (type == "SequenceMostLayer") item.span.has_stop = true, item.span.stop = -1;
  else if (type == "SequenceRestLayer") item.span.has_start = true, item.span.start = 1;
  else item.span.step = -1;
  static const char* const kNames[] = {"SequenceMostLayer", "SequenceRestLayer", "SequenceReverseLayer"};
  const char* name = type == "SequenceMostLayer" ? kNames[0] : type == "SequenceRestLayer" ? kNames[1] : kNames[2];
  return std::make_unique<PartLayer>(std::vector<PartItem>{item}, where, name);
}

std::unique_ptr<Layer> make_constant_array_layer(const json::Value& s, const std::string& where) {
  const json::Value* shape = spec::get(s, "shape");
  if (!shape) throw ValueError(cat(where, ": ConstantArrayLayer needs the shape of its array"));
  return std::make_unique<ConstantArrayLayer>(spec::shape(*shape, where + ": shape"),
                                              spec::boolean(s, "learnable", where, true), where);
}

}  // namespace portgrad
