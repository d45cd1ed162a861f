/// @brief DotLayer: the matrix product of two computed arrays, numpy's matmul per example
/// (ONNX's MatMul, the products of attention).
///
/// Input1 (..., m, k) and Input2 (..., k, n) give (..., m, n); the leading axes broadcast by
/// numpy's rule, and a vector operand is a matrix with that axis dropped from the result, as in
/// numpy: (k,) . (..., k, n) is (..., n), (..., m, k) . (k,) is (..., m), (k,) . (k,) is ().
/// Every product is one GEMM of the active table with strides, so transposes are never copied and
/// the layer runs wherever the GEMM table does (CPU variants, the GPU).
#include <algorithm>

#include "layers/layer.h"
#include "layers/second_order.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

constexpr size_t kMaxExampleRank = 16;

class DotLayer final : public Layer {
 public:
  explicit DotLayer(std::string where) : where_(std::move(where)) {}
  const char* type() const override { return "DotLayer"; }
  std::vector<std::string> inputs() const override { return {"Input1", "Input2"}; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    for (int i = 0; i < 2; ++i)
      if (!in[i])
        throw ValueError(cat(where_, ": the shape of port \"Input", i + 1,
                             "\" is not known; declare it with inputs=[shape1, shape2]"));
    Shape a = *in[0], b = *in[1];
    if (a.empty() || b.empty())
      throw ValueError(cat(where_, ": ports \"Input1\" (shape ", shape_str(a), ") and \"Input2\" (shape ", shape_str(b),
                           ") must be vectors or arrays; a scalar has no axis to contract (use ThreadingLayer[\"Times\"])"));
    if (a.size() > kMaxExampleRank || b.size() > kMaxExampleRank)
      throw ValueError(cat(where_, ": inputs of rank more than ", kMaxExampleRank, " are not supported"));
    const bool a_vector = a.size() == 1, b_vector = b.size() == 1;
    if (a_vector) a.insert(a.begin(), 1);
    if (b_vector) b.push_back(1);
    m_ = a[a.size() - 2];
    k_ = a.back();
    n_ = b.back();
    if (b[b.size() - 2] != k_)
      throw ValueError(cat(where_, ": the last axis of port \"Input1\" (shape ", shape_str(*in[0]),
                           ") must equal the ", b_vector ? "only" : "second-to-last", " axis of port \"Input2\" (shape ",
                           shape_str(*in[1]), "): ", k_, " vs ", b[b.size() - 2]));
    // The leading axes, numpy's rule (aligned at the end, sizes equal or 1).
    const Shape la(a.begin(), a.end() - 2), lb(b.begin(), b.end() - 2);
    const size_t rank = std::max(la.size(), lb.size());
    lead_.assign(rank, 1);
    a_strides_.assign(rank, 0);
    b_strides_.assign(rank, 0);
    int64_t sa = m_ * k_, sb = k_ * n_;
    for (size_t d = rank; d-- > 0;) {
      const size_t back = rank - d;  // 1 for the last leading axis
      const int64_t da = back <= la.size() ? la[la.size() - back] : 1;
      const int64_t db = back <= lb.size() ? lb[lb.size() - back] : 1;
      if (da != db && da != 1 && db != 1)
        throw ValueError(cat(where_, ": ports \"Input1\" (shape ", shape_str(*in[0]), ") and \"Input2\" (shape ",
                             shape_str(*in[1]), ") have leading axes that cannot be broadcast together: size ", da,
                             " vs ", db, " (sizes must be equal or 1)"));
      lead_[d] = std::max(da, db);
      if (da != 1) a_strides_[d] = sa;
      if (db != 1) b_strides_[d] = sb;
      sa *= da;
      sb *= db;
    }
    a_numel_ = sa;  // elements of one example of each input
    b_numel_ = sb;
    lead_numel_ = shape_numel(lead_);
    a_broadcast_ = a_numel_ != lead_numel_ * m_ * k_;
    b_broadcast_ = b_numel_ != lead_numel_ * k_ * n_;
    Shape o = lead_;
    if (!a_vector) o.push_back(m_);
    if (!b_vector) o.push_back(n_);
    out = {o};
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& g = ops::gemm<T>(a.device);
      const T *A = a.input<T>(0), *B = a.input<T>(1);
      T* C = a.output<T>(0);
      for_each_product(a.batch, [&](int64_t ia, int64_t ib, int64_t ic) {
        g.gemm(m_, n_, k_, T(1), A + ia, k_, 1, B + ib, n_, 1, T(0), C + ic, n_);
      });
    });
  }

  // dA = dC B^T and dB = A^T dC for each product, summed over the products that share an operand
  // (in product order: deterministic).
  void backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& g = ops::gemm<T>(a.device);
      const T *A = a.input<T>(0), *B = a.input<T>(1), *dC = a.output_grad<T>(0);
      T *dA = a.input_grad<T>(0), *dB = a.input_grad<T>(1);
      if (dA && a_broadcast_) ops::fill<T>(a.device, a.batch * a_numel_, T(0), dA);
      if (dB && b_broadcast_) ops::fill<T>(a.device, a.batch * b_numel_, T(0), dB);
      const T beta_a = a_broadcast_ ? T(1) : T(0), beta_b = b_broadcast_ ? T(1) : T(0);
      for_each_product(a.batch, [&](int64_t ia, int64_t ib, int64_t ic) {
        if (dA) g.gemm(m_, k_, n_, T(1), dC + ic, n_, 1, B + ib, 1, n_, beta_a, dA + ia, k_);
        if (dB) g.gemm(k_, n_, m_, T(1), A + ia, 1, k_, dC + ic, n_, 1, beta_b, dB + ib, n_);
      });
    });
  }

  // Second order of a bilinear map: the backward of the tangents plus the backward of the
  // gradient with the inputs' tangents in place of the inputs (into scratch, then added).
  std::string no_jvp_backward(bool) const override { return ""; }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override {
    const int64_t count[2] = {q.batch * a_numel_, q.batch * b_numel_};
    return second_pass_scratch_bytes(count, 2, q.dtype);
  }
  void jvp_backward(const LayerArgs& a) const override {
    backward(on_gradient_tangents(a));
    const int64_t count[2] = {a.batch * a_numel_, a.batch * b_numel_};
    add_backward_on_input_tangents(*this, a, count, 2, a.workspace);
  }

  // Bilinear: tC = tA B + A tB, product by product.
  std::string no_jvp(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& g = ops::gemm<T>(a.device);
      const T *A = a.input<T>(0), *B = a.input<T>(1), *tA = a.input_tangent<T>(0), *tB = a.input_tangent<T>(1);
      T* tC = a.output_tangent<T>(0);
      for_each_product(a.batch, [&](int64_t ia, int64_t ib, int64_t ic) {
        g.gemm(m_, n_, k_, T(1), tA + ia, k_, 1, B + ib, n_, 1, T(0), tC + ic, n_);
        g.gemm(m_, n_, k_, T(1), A + ia, k_, 1, tB + ib, n_, 1, T(1), tC + ic, n_);
      });
    });
  }

 private:
  // f(offset into Input1, offset into Input2, offset into the output) for every product, batch
  // outermost, then the leading axes in row-major order.
  template <typename F>
  void for_each_product(int64_t batch, F&& f) const {
    const size_t rank = lead_.size();
    int64_t idx[kMaxExampleRank] = {};
    int64_t ic = 0;
    for (int64_t e = 0; e < batch; ++e) {
      int64_t ia = e * a_numel_, ib = e * b_numel_;
      for (int64_t l = 0; l < lead_numel_; ++l) {
        f(ia, ib, ic);
        ic += m_ * n_;
        for (size_t d = rank; d-- > 0;) {  // the next multi-index: carry from the last axis
          ia += a_strides_[d];
          ib += b_strides_[d];
          if (++idx[d] < lead_[d]) break;
          ia -= a_strides_[d] * lead_[d];
          ib -= b_strides_[d] * lead_[d];
          idx[d] = 0;
        }
      }
    }
  }

  std::string where_;
  int64_t m_ = 0, k_ = 0, n_ = 0;
  Shape lead_, a_strides_, b_strides_;
  int64_t a_numel_ = 0, b_numel_ = 0, lead_numel_ = 1;
  bool a_broadcast_ = false, b_broadcast_ = false;
};

}  // namespace

std::unique_ptr<Layer> make_dot_layer(const json::Value& s, const std::string& where) {
  return std::make_unique<DotLayer>(where);
}

}  // namespace portgrad
