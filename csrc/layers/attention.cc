/// @brief AttentionLayer (Wolfram's, dot-product scoring): "Key" (n, d), "Value" (n, dv) and "Query"
/// (m, d) -> "Output" (m, dv), each query's softmax-weighted sum of the values,
///   O = softmax(scale Q K^T) V,  scale = 1/sqrt(d) (Wolfram's ScoreRescaling "DimensionSqrt") or given;
/// multi-head with a head axis, (n, heads, d) -> (m, heads, dv), every head on its own; with the
/// causal mask, query i sees keys 0..i (m == n); with a "Mask" port (m, n) per example, query i sees
/// the keys j where Mask[i, j] != 0 (a query that sees none gives 0; the mask has a zero gradient).
/// The attention weights P are kept from the forward
/// (saved) for backward, forward mode and second order; the softmax's backward serves the first two
/// (its JVP has its form), its backward_tangent the third.
/// The products of all examples and heads are one batched GEMM each (strided views of the
/// [.., heads, ..] arrays; the GEMM shares small ones out to the threads).
#include <array>
#include <cmath>
#include <limits>

#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

class AttentionLayer final : public Layer {
 public:
  AttentionLayer(bool causal, bool mask_port, double scale, std::string where)
      : causal_(causal), mask_port_(mask_port), scale_(scale), where_(std::move(where)) {}

  const char* type() const override { return "AttentionLayer"; }
  std::vector<std::string> inputs() const override {
    if (mask_port_) return {"Key", "Value", "Query", "Mask"};
    return {"Key", "Value", "Query"};
  }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    const char* names[] = {"Key", "Value", "Query"};
    for (int i = 0; i < 3; ++i) {
      if (!in[i]) throw ValueError(cat(where_, ": the shape of port \"", names[i], "\" is not known; declare it"));
      if (in[i]->size() != 2 && in[i]->size() != 3)
        throw ValueError(cat(where_, ": port \"", names[i], "\" takes a sequence of vectors, (length, size), or of "
                             "per-head vectors, (length, heads, size); given shape ", shape_str(*in[i])));
    }
    const Shape &K = *in[0], &V = *in[1], &Q = *in[2];
    if (K.size() != V.size() || K.size() != Q.size())
      throw ValueError(cat(where_, ": Key, Value and Query must all have a head axis or none; given shapes ",
                           shape_str(K), ", ", shape_str(V), ", ", shape_str(Q)));
    heads_ = K.size() == 3 ? K[1] : 1;
    n_ = K[0], d_ = K.back(), dv_ = V.back(), m_ = Q[0];
    if (V[0] != n_)
      throw ValueError(cat(where_, ": \"Value\" has ", V[0], " elements but \"Key\" ", n_, "; one value per key"));
    if (Q.back() != d_)
      throw ValueError(cat(where_, ": \"Query\" vectors have size ", Q.back(), " but \"Key\" vectors ", d_,
                           "; they are compared by their dot product"));
    if (heads_ > 1 || K.size() == 3)
      if (V[1] != heads_ || Q[1] != heads_)
        throw ValueError(cat(where_, ": Key, Value and Query must have the same number of heads; given shapes ",
                             shape_str(K), ", ", shape_str(V), ", ", shape_str(Q)));
    if (causal_ && m_ != n_)
      throw ValueError(cat(where_, ": the causal mask needs as many queries as keys; given ", m_, " and ", n_));
    if (d_ < 1 || dv_ < 1 || n_ < 1 || m_ < 1 || heads_ < 1)
      throw ValueError(cat(where_, ": empty inputs (shapes ", shape_str(K), ", ", shape_str(V), ", ", shape_str(Q), ")"));
    // The weights (heads x m x n per example) are kept: bounded like every value (2^40 elements), in
    // double so that the product cannot overflow.
    if (double(heads_) * double(m_) * double(n_) > double(int64_t(1) << 40))
      throw ValueError(cat(where_, ": ", m_, " queries x ", n_, " keys x ", heads_, " heads of attention weights is too "
                           "many per example (at most 2^40)"));
    if (mask_port_) {
      if (!in[3]) in[3] = Shape{m_, n_};  // (its shape follows from the others)
      if (*in[3] != Shape{m_, n_})
        throw ValueError(cat(where_, ": \"Mask\" says which of the ", n_, " keys each of the ", m_, " queries sees: "
                             "shape (", m_, ", ", n_, "); given shape ", shape_str(*in[3])));
    }
    out = {K.size() == 3 ? Shape{m_, heads_, dv_} : Shape{m_, dv_}};
  }

  double scale() const { return scale_ > 0 ? scale_ : 1.0 / std::sqrt(double(d_)); }
  size_t weights_bytes(const MemoryQuery& q) const {
    return (size_t(q.batch * heads_ * m_ * n_) * dtype_size(q.dtype) + 63) / 64 * 64;
  }
  size_t saved_bytes(const MemoryQuery& q) const override { return weights_bytes(q); }
  size_t workspace_bytes(const MemoryQuery& q) const override { return q.backward ? weights_bytes(q) : 0; }
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override { return weights_bytes(q); }
  size_t jvp_backward_workspace_bytes(const MemoryQuery& q) const override { return 4 * weights_bytes(q); }
  std::string no_jvp(bool) const override { return ""; }
  std::string no_jvp_backward(bool) const override { return ""; }
  void jvp_backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) { jvp_backward_t<decltype(t)>(a); });
  }

  void forward(const LayerArgs& a) const override { with_float_type(a.dtype, [&](auto t) { forward_t<decltype(t)>(a); }); }
  void backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) { backward_t<decltype(t)>(a); });
  }
  void jvp(const LayerArgs& a) const override { with_float_type(a.dtype, [&](auto t) { jvp_t<decltype(t)>(a); }); }

 private:
  // The (m x n) block of the attention weights of example b, head h.
  int64_t pw(int64_t b, int64_t h) const { return (b * heads_ + h) * m_ * n_; }
  // The batch of (example, head) products from operands X (rows of length `xl`, vectors of `xs`), Y
  // and the result Z, as (outer stride, inner stride) each: an [.., heads, size] array (length l)
  // steps l heads size per example and size per head; a weights block, m n per (example, head).
  kernels::GemmBatch batch(int64_t batch, std::array<int64_t, 2> x, std::array<int64_t, 2> y,
                           std::array<int64_t, 2> z) const {
    kernels::GemmBatch bt;
    bt.count = batch * heads_, bt.inner = heads_;
    bt.outer_a = x[0], bt.inner_a = x[1], bt.outer_b = y[0], bt.inner_b = y[1], bt.outer_c = z[0], bt.inner_c = z[1];
    return bt;
  }
  std::array<int64_t, 2> seq(int64_t len, int64_t size) const { return {len * heads_ * size, size}; }
  std::array<int64_t, 2> block() const { return {heads_ * m_ * n_, m_ * n_}; }

  // P = softmax(scale Q K^T) (masked), all examples and heads; S: its scores' buffer (may be P).
  template <typename T>
  void weights(const LayerArgs& a, const T* K, const T* Q, T* P) const {
    const auto& g = ops::gemm<T>(a.device);
    const int64_t ld = heads_ * d_;
    g.gemm_batched(batch(a.batch, seq(m_, d_), seq(n_, d_), block()), m_, n_, d_, T(scale()), Q, ld, 1, K, 1, ld,
                   T(0), P, n_);
    if (causal_)  // query i sees keys 0..i: the rest scores -inf, weight 0
      for (int64_t b = 0; b < a.batch; ++b)
        for (int64_t h = 0; h < heads_; ++h)
          for (int64_t i = 0; i + 1 < n_; ++i)
            ops::fill<T>(a.device, n_ - 1 - i, -std::numeric_limits<T>::infinity(), P + pw(b, h) + i * n_ + i + 1);
    if (mask_port_) ops::softmax<T>(a.device).masked_forward(a.batch, heads_, m_, n_, P, a.input<T>(3), P);
    else ops::softmax<T>(a.device).forward(a.batch * heads_ * m_, n_, P, P);
  }

  // O (+)= P V per example and head.
  template <typename T>
  void weighted(const LayerArgs& a, const T* P, const T* V, T beta, T* O) const {
    const int64_t ld = heads_ * dv_;
    ops::gemm<T>(a.device).gemm_batched(batch(a.batch, block(), seq(n_, dv_), seq(m_, dv_)), m_, dv_, n_, T(1), P, n_, 1,
                                        V, ld, 1, beta, O, ld);
  }

  template <typename T>
  void forward_t(const LayerArgs& a) const {
    T* P = a.saved_as<T>();
    weights(a, a.input<T>(0), a.input<T>(2), P);
    weighted(a, P, a.input<T>(1), T(0), a.output<T>(0));
  }

  template <typename T>
  void backward_t(const LayerArgs& a) const {
    const auto& g = ops::gemm<T>(a.device);
    const T *K = a.input<T>(0), *V = a.input<T>(1), *Q = a.input<T>(2), *dO = a.output_grad<T>(0);
    const T* P = a.saved_as<T>();
    T* dS = a.workspace_as<T>();
    const int64_t lk = heads_ * d_, lv = heads_ * dv_;
    const int64_t B = a.batch;  // dP = dO V^T; dV = P^T dO
    g.gemm_batched(batch(B, seq(m_, dv_), seq(n_, dv_), block()), m_, n_, dv_, T(1), dO, lv, 1, V, 1, lv, T(0), dS, n_);
    if (T* dV = a.input_grad<T>(1))
      g.gemm_batched(batch(B, block(), seq(m_, dv_), seq(n_, dv_)), n_, dv_, m_, T(1), P, 1, n_, dO, lv, 1, T(0), dV, lv);
    ops::softmax<T>(a.device).backward(B * heads_ * m_, n_, P, dS, dS);  // the scores' gradient
    if (T* dQ = a.input_grad<T>(2))  // dQ = scale dS K; dK = scale dS^T Q
      g.gemm_batched(batch(B, block(), seq(n_, d_), seq(m_, d_)), m_, d_, n_, T(scale()), dS, n_, 1, K, lk, 1, T(0),
                     dQ, lk);
    if (T* dK = a.input_grad<T>(0))
      g.gemm_batched(batch(B, block(), seq(m_, d_), seq(n_, d_)), n_, d_, m_, T(scale()), dS, 1, n_, Q, lk, 1, T(0),
                     dK, lk);
    if (T* dM = mask_port_ ? a.input_grad<T>(3) : nullptr) ops::fill<T>(a.device, B * m_ * n_, T(0), dM);
  }

  // tS = scale (tQ K^T + Q tK^T); tP = P (tS - rowsum(P tS)) (the softmax backward's form: masked
  // weights are 0, so their scores' tangents drop out); tO = tP V + P tV.
  template <typename T>
  void jvp_t(const LayerArgs& a) const {
    const auto& g = ops::gemm<T>(a.device);
    const T *K = a.input<T>(0), *V = a.input<T>(1), *Q = a.input<T>(2);
    const T *tK = a.input_tangent<T>(0), *tV = a.input_tangent<T>(1), *tQ = a.input_tangent<T>(2);
    const T* P = a.saved_as<T>();
    T* tP = a.workspace_as<T>();
    const int64_t lk = heads_ * d_;
    const kernels::GemmBatch bt = batch(a.batch, seq(m_, d_), seq(n_, d_), block());
    g.gemm_batched(bt, m_, n_, d_, T(scale()), tQ, lk, 1, K, 1, lk, T(0), tP, n_);
    g.gemm_batched(bt, m_, n_, d_, T(scale()), Q, lk, 1, tK, 1, lk, T(1), tP, n_);
    ops::softmax<T>(a.device).backward(a.batch * heads_ * m_, n_, P, tP, tP);
    T* tO = a.output_tangent<T>(0);
    weighted(a, tP, V, T(0), tO);
    weighted(a, P, tV, T(1), tO);
  }

  // Forward over reverse: the tangents of the backward's gradients along the inputs' tangents and the
  // output gradient's (tdO). With tP = P (tS - rowsum(P tS)) (as in jvp):
  //   t(dP) = tdO V^T + dO tV^T,  t(dV) = tP^T dO + P^T tdO,
  //   t(dS) = the softmax backward's tangent along (tP, t(dP)),
  //   t(dQ) = scale (t(dS) K + dS tK),  t(dK) = scale (t(dS)^T Q + dS^T tQ); the mask's: 0.
  template <typename T>
  void jvp_backward_t(const LayerArgs& a) const {
    const auto& g = ops::gemm<T>(a.device);
    const auto& sm = ops::softmax<T>(a.device);
    const T *K = a.input<T>(0), *V = a.input<T>(1), *Q = a.input<T>(2);
    const T *tK = a.input_tangent<T>(0), *tV = a.input_tangent<T>(1), *tQ = a.input_tangent<T>(2);
    const T *dO = a.output_grad<T>(0), *tdO = a.output_grad_tangent<T>(0);
    const T* P = a.saved_as<T>();
    const MemoryQuery q{a.batch, a.dtype, a.device};
    const size_t wb = weights_bytes(q);
    char* w = static_cast<char*>(a.workspace);
    T *tP = reinterpret_cast<T*>(w), *dP = reinterpret_cast<T*>(w + wb), *tdP = reinterpret_cast<T*>(w + 2 * wb);
    T* dS = reinterpret_cast<T*>(w + 3 * wb);
    const int64_t B = a.batch, lk = heads_ * d_, lv = heads_ * dv_, rows = B * heads_ * m_;
    const kernels::GemmBatch scores = batch(B, seq(m_, d_), seq(n_, d_), block());
    g.gemm_batched(scores, m_, n_, d_, T(scale()), tQ, lk, 1, K, 1, lk, T(0), tP, n_);
    g.gemm_batched(scores, m_, n_, d_, T(scale()), Q, lk, 1, tK, 1, lk, T(1), tP, n_);
    sm.backward(rows, n_, P, tP, tP);
    const kernels::GemmBatch by_values = batch(B, seq(m_, dv_), seq(n_, dv_), block());
    g.gemm_batched(by_values, m_, n_, dv_, T(1), dO, lv, 1, V, 1, lv, T(0), dP, n_);
    g.gemm_batched(by_values, m_, n_, dv_, T(1), tdO, lv, 1, V, 1, lv, T(0), tdP, n_);
    g.gemm_batched(by_values, m_, n_, dv_, T(1), dO, lv, 1, tV, 1, lv, T(1), tdP, n_);
    sm.backward(rows, n_, P, dP, dS);
    sm.backward_tangent(rows, n_, P, tP, dP, tdP, tdP);  // t(dS), over t(dP)
    if (T* t_dV = a.input_grad<T>(1)) {
      const kernels::GemmBatch bt = batch(B, block(), seq(m_, dv_), seq(n_, dv_));
      g.gemm_batched(bt, n_, dv_, m_, T(1), tP, 1, n_, dO, lv, 1, T(0), t_dV, lv);
      g.gemm_batched(bt, n_, dv_, m_, T(1), P, 1, n_, tdO, lv, 1, T(1), t_dV, lv);
    }
    if (T* t_dQ = a.input_grad<T>(2)) {
      const kernels::GemmBatch bt = batch(B, block(), seq(n_, d_), seq(m_, d_));
      g.gemm_batched(bt, m_, d_, n_, T(scale()), tdP, n_, 1, K, lk, 1, T(0), t_dQ, lk);
      g.gemm_batched(bt, m_, d_, n_, T(scale()), dS, n_, 1, tK, lk, 1, T(1), t_dQ, lk);
    }
    if (T* t_dK = a.input_grad<T>(0)) {
      const kernels::GemmBatch bt = batch(B, block(), seq(m_, d_), seq(n_, d_));
      g.gemm_batched(bt, n_, d_, m_, T(scale()), tdP, 1, n_, Q, lk, 1, T(0), t_dK, lk);
      g.gemm_batched(bt, n_, d_, m_, T(scale()), dS, 1, n_, tQ, lk, 1, T(1), t_dK, lk);
    }
    if (T* t_dM = mask_port_ ? a.input_grad<T>(3) : nullptr) ops::fill<T>(a.device, B * m_ * n_, T(0), t_dM);
  }

  bool causal_, mask_port_;
  double scale_;
  std::string where_;
  int64_t heads_ = 1, n_ = 0, m_ = 0, d_ = 0, dv_ = 0;
};

}  // namespace

std::unique_ptr<Layer> make_attention_layer(const json::Value& s, const std::string& where) {
  const std::string mask = spec::string(s, "mask", where, "None");
  if (mask != "None" && mask != "Causal" && mask != "Port")
    throw ValueError(cat(where, ": AttentionLayer: mask must be \"None\", \"Causal\" or \"Port\"; given \"", mask.substr(0, 40),
                         "\""));
  double scale = 0.0;
  if (const json::Value* v = spec::get(s, "scale")) {
    if (v->kind != json::Value::Kind::Number || !(v->number > 0) || !std::isfinite(v->number))
      throw ValueError(cat(where, ": AttentionLayer: scale must be a positive number"));
    scale = v->number;
  }
  return std::make_unique<AttentionLayer>(mask == "Causal", mask == "Port", scale, where);
}

}  // namespace portgrad
