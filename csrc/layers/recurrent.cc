/// @brief Recurrent layers over a sequence of vectors (Wolfram's BasicRecurrentLayer,
/// GatedRecurrentLayer and LongShortTermMemoryLayer): "Input" (time, k) -> "Output" (time, n), the
/// state at every step; full backpropagation through time. The initial state is zero, or with
/// initial_state the input ports "State" (and the LSTM's "CellState"), (n); final_state adds the
/// output ports "State" (and "CellState"): the last step's. The GRU's state_biases adds
/// "MemoryGateStateBiases", a bias inside the reset product (m = tanh(W_mx x + r (W_ms s + b_ms) + b_m):
/// PyTorch's b_hn, ONNX's Rbh), which Wolfram's GRU has not: for imported models.
///
/// Each gate q has its arrays "<Gate>InputWeights" (n x k), "<Gate>StateWeights" (n x n) and
/// "<Gate>Biases" (n); BasicRecurrentLayer's single gate has no name prefix. A step's gate
/// pre-activations are the input part, made for all steps at once (one product per gate over batch x
/// time rows, bias included), plus the state part: one product per step for all gates at once, with
/// the gates' state weights stacked (and packed for the CPU GEMM) once per plan (prepare; the GRU's
/// memory gate, which the reset gate scales, has its own); the recurrent kernels
/// (kernels/recurrent.h) do the pointwise rest. The gates are kept as [batch, time, gates x n]
/// (the forward's `saved`), so a step reads and writes rows with a stride of time x gates x n.
#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

enum class Cell { Basic, Gru, Lstm };

class RecurrentLayer final : public Layer {
 public:
  RecurrentLayer(Cell cell, int64_t n, kernels::UnaryFn f, bool initial, bool final, bool state_biases,
                 std::string where)
      : cell_(cell), n_(n), f_(f), initial_(initial), final_(final), state_biases_(state_biases),
        where_(std::move(where)) {}
  static constexpr size_t kStateBiases = 9;  // the GRU's "MemoryGateStateBiases" (after the gates' arrays)

  std::vector<std::string> state_ports() const {
    if (cell_ == Cell::Lstm) return {"State", "CellState"};
    return {"State"};
  }
  std::vector<std::string> inputs() const override {
    std::vector<std::string> p{"Input"};
    if (initial_) for (const auto& s : state_ports()) p.push_back(s);
    return p;
  }
  std::vector<std::string> outputs() const override {
    std::vector<std::string> p{"Output"};
    if (final_) for (const auto& s : state_ports()) p.push_back(s);
    return p;
  }

  const char* type() const override {
    switch (cell_) {
      case Cell::Basic: return "BasicRecurrentLayer";
      case Cell::Gru: return "GatedRecurrentLayer";
      case Cell::Lstm: break;
    }
    return "LongShortTermMemoryLayer";
  }

  int64_t gates() const { return cell_ == Cell::Basic ? 1 : cell_ == Cell::Gru ? 3 : 4; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=(time, k)"));
    const Shape& s = *in[0];
    if (s.size() != 2)
      throw ValueError(cat(where_, ": port \"Input\" takes a sequence of vectors, shape (time, k); given shape ",
                           shape_str(s), (s.size() == 1 ? " (one vector: declare input=(time, k))" : "")));
    if (s[0] < 1) throw ValueError(cat(where_, ": port \"Input\" needs at least one step (given shape ", shape_str(s), ")"));
    if (s[1] < 1) throw ValueError(cat(where_, ": port \"Input\" has vectors of size 0 (shape ", shape_str(s), ")"));
    time_ = s[0];
    k_ = s[1];
    const std::vector<std::string> states = state_ports();
    for (size_t i = 1; i < in.size(); ++i) {
      if (!in[i]) in[i] = Shape{n_};
      else if (*in[i] != Shape{n_})
        throw ValueError(cat(where_, ": port \"", states[i - 1], "\" takes the initial state, a vector of size ", n_,
                             "; given shape ", shape_str(*in[i])));
    }
    out = {Shape{time_, n_}};
    if (final_) out.insert(out.end(), states.size(), Shape{n_});
  }

  std::vector<ParamDecl> params() const override {
    static const char* const kBasic[] = {""};
    static const char* const kGru[] = {"InputGate", "ResetGate", "MemoryGate"};
    static const char* const kLstm[] = {"InputGate", "OutputGate", "ForgetGate", "MemoryGate"};
    const char* const* names = cell_ == Cell::Basic ? kBasic : cell_ == Cell::Gru ? kGru : kLstm;
    std::vector<ParamDecl> p;
    for (int64_t q = 0; q < gates(); ++q) {
      ParamDecl wx{cat(names[q], "InputWeights"), Shape{n_, k_}};
      wx.init = ParamDecl::Init::Weights;
      wx.fan_in = k_, wx.fan_out = n_;
      ParamDecl ws{cat(names[q], "StateWeights"), Shape{n_, n_}};
      ws.init = ParamDecl::Init::Weights;
      ws.fan_in = n_, ws.fan_out = n_;
      p.push_back(wx), p.push_back(ws), p.push_back({cat(names[q], "Biases"), Shape{n_}});
    }
    if (state_biases_) p.push_back({"MemoryGateStateBiases", Shape{n_}});
    return p;
  }

  // Buffers, each at a 64-byte boundary: saved = the gates [batch, time, G n], then the cell states
  // (LSTM) or the memory gate's state products (GRU), [time, batch, n]; the workspace = zeros
  // (the initial state), and for backward the gates' gradients [batch, time, G n] and four
  // [batch, n] vectors (the state's gradient from the next step, the cell state's, and the GRU's dh
  // and direct part).
  static size_t round64(size_t b) { return (b + 63) / 64 * 64; }
  size_t gate_bytes(const MemoryQuery& q) const { return round64(size_t(q.batch * time_ * gates() * n_) * dtype_size(q.dtype)); }
  size_t vec_bytes(const MemoryQuery& q) const { return round64(size_t(q.batch * n_) * dtype_size(q.dtype)); }
  size_t saved_bytes(const MemoryQuery& q) const override {
    return gate_bytes(q) + (cell_ == Cell::Basic ? 0 : round64(size_t(time_ * q.batch * n_) * dtype_size(q.dtype)));
  }
  size_t seq_bytes(const MemoryQuery& q) const { return round64(size_t(time_ * q.batch * n_) * dtype_size(q.dtype)); }
  size_t workspace_bytes(const MemoryQuery& q) const override {
    return vec_bytes(q) + (q.backward ? gate_bytes(q) + 4 * vec_bytes(q) + (cell_ == Cell::Gru ? seq_bytes(q) : 0) : 0);
  }
  // Forward mode: zeros, the gates' tangents [batch, time, G n] and two [batch, n] vectors (the
  // LSTM's cell-state tangent, the GRU's tangent of h).
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override { return gate_bytes(q) + 3 * vec_bytes(q); }

  // Stacked weights, made once per plan (prepare): the gates' state weights (gates 0 .. stacked()-1:
  // the GRU's memory gate, which r scales, has its own) and all gates' input weights, each as one
  // (gates n x cols) matrix, then the same packed as the GEMM's B operand both ways (W^T for the
  // forward, W for the backward) where the GEMM packs (the CPU's), and the stacked biases.
  int64_t stacked() const { return cell_ == Cell::Gru ? 2 : gates(); }
  struct Stacked {
    const void *w, *fwd, *bwd;  // fwd, bwd null where the GEMM does not pack
    int64_t rows, cols;
  };
  struct Prepared {
    Stacked state, input;
    const void* bias;
    size_t bytes;
  };
  template <typename T>
  Prepared layout(Device device, const void* base) const {
    const auto& g = ops::gemm<T>(device);
    const char* p = static_cast<const char*>(base);
    size_t off = 0;
    auto take = [&](size_t bytes) {
      const size_t at = off;
      off += round64(bytes);
      return bytes ? p + at : nullptr;
    };
    auto matrix = [&](int64_t rows, int64_t cols) {
      Stacked m{nullptr, nullptr, nullptr, rows, cols};
      m.w = take(size_t(rows * cols) * sizeof(T));
      m.fwd = take(g.packed_b_bytes(cols, rows));
      m.bwd = take(g.packed_b_bytes(rows, cols));
      return m;
    };
    Prepared r;
    r.state = matrix(stacked() * n_, n_);
    r.input = matrix(gates() * n_, k_);
    r.bias = take(size_t(gates() * n_) * sizeof(T));
    r.bytes = off;
    return r;
  }
  size_t prepared_bytes(const MemoryQuery& q) const override {
    size_t bytes = 0;
    with_float_type(q.dtype, [&](auto t) { bytes = layout<decltype(t)>(q.device, nullptr).bytes; });
    return bytes;
  }
  void prepare(const void* const* param, DType dtype, Device device, void* prepared) const override {
    with_float_type(dtype, [&](auto t) {
      using T = decltype(t);
      const Prepared pr = layout<T>(device, prepared);
      const auto& g = ops::gemm<T>(device);
      auto fill = [&](const Stacked& m, int64_t first) {  // gates' arrays first, first + 3, ...
        T* w = const_cast<T*>(static_cast<const T*>(m.w));
        const int64_t per = n_ * m.cols;  // one gate's array
        for (int64_t gq = 0; gq < m.rows / n_; ++gq)
          ops::copy_bytes(device, w + gq * per, param[3 * gq + first], size_t(per) * sizeof(T));
        if (m.fwd) g.pack_b(m.cols, m.rows, w, 1, m.cols, const_cast<void*>(m.fwd));
        if (m.bwd) g.pack_b(m.rows, m.cols, w, m.cols, 1, const_cast<void*>(m.bwd));
      };
      fill(pr.state, 1);
      fill(pr.input, 0);
      T* bias = const_cast<T*>(static_cast<const T*>(pr.bias));
      for (int64_t gq = 0; gq < gates(); ++gq)
        ops::copy_bytes(device, bias + gq * n_, param[3 * gq + 2], size_t(n_) * sizeof(T));
    });
  }
  // C (rows x m.rows, row stride ldc) = beta C + X (rows x m.cols) W^T (+ bias), all gates at once.
  template <typename T>
  static void product(const LayerArgs& a, int64_t rows, const Stacked& m, const T* x, int64_t ldx, T beta, T* c,
                      int64_t ldc, const T* bias = nullptr) {
    const auto& g = ops::gemm<T>(a.device);
    kernels::GemmEpilogue<T> ep;
    ep.bias = bias;
    if (m.fwd) g.gemm_packed_b(rows, m.rows, m.cols, T(1), x, ldx, 1, m.fwd, beta, c, ldc, ep);
    else g.gemm_ex(rows, m.rows, m.cols, T(1), x, ldx, 1, static_cast<const T*>(m.w), 1, m.cols, beta, c, ldc, ep);
  }
  // D (rows x m.cols) = beta D + dZ (rows x m.rows, row stride ldz) W.
  template <typename T>
  static void gradient(const LayerArgs& a, int64_t rows, const Stacked& m, const T* dz, int64_t ldz, T beta, T* d) {
    const auto& g = ops::gemm<T>(a.device);
    if (m.bwd)
      g.gemm_packed_b(rows, m.cols, m.rows, T(1), dz, ldz, 1, m.bwd, beta, d, m.cols, kernels::GemmEpilogue<T>{});
    else
      g.gemm(rows, m.cols, m.rows, T(1), dz, ldz, 1, static_cast<const T*>(m.w), m.cols, 1, beta, d, m.cols);
  }

  std::string no_jvp(bool) const override { return ""; }
  std::string no_jvp_backward(bool) const override {
    return "it has no second derivatives yet (forward over reverse through time)";
  }
  std::string no_per_example(bool) const override { return ""; }
  void jvp(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) { jvp_t<decltype(t)>(a); });
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) { forward_t<decltype(t)>(a); });
  }
  void backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) { backward_t<decltype(t)>(a); });
  }

 private:
  template <typename T>
  void forward_t(const LayerArgs& a) const {
    const auto& g = ops::gemm<T>(a.device);
    const int64_t B = a.batch, T_ = time_, G = gates(), n = n_, k = k_;
    const MemoryQuery q{B, a.dtype, a.device};
    const T* x = a.input<T>(0);
    T* out = a.output<T>(0);
    T* z = a.saved_as<T>();
    T* extra = reinterpret_cast<T*>(reinterpret_cast<char*>(a.saved) + gate_bytes(q));  // cell states / GRU h
    T* zero = a.workspace_as<T>();
    ops::fill<T>(a.device, B * n, T(0), zero);
    const T* s0 = initial_ ? a.input<T>(1) : zero;
    const T* c0 = initial_ && cell_ == Cell::Lstm ? a.input<T>(2) : zero;
    // The input part of every gate at every step (with its bias): rows (b, t) of x.
    const Prepared pr = layout<T>(a.device, a.prepared);
    product(a, B * T_, pr.input, x, k, T(0), z, G * n, static_cast<const T*>(pr.bias));
    const int64_t ldz = T_ * G * n;
    if (cell_ == Cell::Lstm)  // the whole recurrence in one kernel call (blocks of examples on threads)
      ops::recurrent<T>(a.device).lstm_sequence(g, B, T_, n, static_cast<const T*>(pr.state.w), pr.state.fwd, s0, c0,
                                                z, extra, out);
    for (int64_t t = 0; t < T_ && cell_ != Cell::Lstm; ++t) {  // the others step by step
      const T* s_prev = t ? out + (t - 1) * n : s0;
      const int64_t ldp = t ? T_ * n : n;
      T* zt = z + t * G * n;
      // The state part: + s_prev W_s^T (the GRU's memory gate into h, which r scales).
      product(a, B, pr.state, s_prev, ldp, T(1), zt, ldz);
      if (cell_ == Cell::Basic) {
        for (int64_t b = 0; b < B; ++b) ops::unary<T>(a.device).forward(f_, n, zt + b * ldz, out + (b * T_ + t) * n);
        continue;
      }
      kernels::GemmEpilogue<T> hb;
      hb.bias = state_biases_ ? a.array<T>(kStateBiases) : nullptr;
      g.gemm_ex(B, n, n, T(1), s_prev, ldp, 1, a.array<T>(7), 1, n, T(0), extra + t * B * n, n, hb);
      ops::recurrent<T>(a.device).gru_forward(B, n, zt, ldz, extra + t * B * n, s_prev, ldp, out + t * n, T_ * n);
    }
    if (final_) {
      copy_rows(a.device, B, out + (T_ - 1) * n, T_ * n, a.output<T>(1));
      if (cell_ == Cell::Lstm) ops::copy_bytes(a.device, a.out[2], extra + (T_ - 1) * B * n, size_t(B * n) * sizeof(T));
    }
  }

  // dst (rows x n, dense) = src (rows x n, row stride lds).
  template <typename T>
  void copy_rows(Device device, int64_t rows, const T* src, int64_t lds, T* dst) const {
    for (int64_t b = 0; b < rows; ++b) ops::copy_bytes(device, dst + b * n_, src + b * lds, size_t(n_) * sizeof(T));
  }

  template <typename T>
  void backward_t(const LayerArgs& a) const {
    const auto& g = ops::gemm<T>(a.device);
    const auto& vec = ops::vector<T>(a.device);
    const int64_t B = a.batch, T_ = time_, G = gates(), n = n_, k = k_;
    const MemoryQuery q{B, a.dtype, a.device};
    const T* x = a.input<T>(0);
    const T* out = a.output<T>(0);
    const T* dout = a.output_grad<T>(0);
    const T* z = a.saved_as<T>();
    const T* extra = reinterpret_cast<const T*>(static_cast<const char*>(a.saved) + gate_bytes(q));
    char* w = static_cast<char*>(a.workspace);
    T* zero = reinterpret_cast<T*>(w);
    T* dz = reinterpret_cast<T*>(w + vec_bytes(q));
    T* ds = reinterpret_cast<T*>(w + vec_bytes(q) + gate_bytes(q));  // the gradient of s_t from step t + 1
    T* dc = ds + vec_bytes(q) / sizeof(T);
    T* dh = dc + vec_bytes(q) / sizeof(T);
    T* direct = dh + vec_bytes(q) / sizeof(T);
    T* dh_all = direct + vec_bytes(q) / sizeof(T);  // GRU: dh of every step, [time, batch, n]
    const Prepared pr = layout<T>(a.device, a.prepared);
    ops::fill<T>(a.device, B * n, T(0), zero);
    const T* s0 = initial_ ? a.input<T>(1) : zero;
    const T* c0 = initial_ && cell_ == Cell::Lstm ? a.input<T>(2) : zero;
    // The final states' gradients start the recurrence's (zero without those ports).
    if (final_) ops::copy_bytes(a.device, ds, a.dout[1], size_t(B * n) * sizeof(T));
    else ops::fill<T>(a.device, B * n, T(0), ds);
    if (final_ && cell_ == Cell::Lstm) ops::copy_bytes(a.device, dc, a.dout[2], size_t(B * n) * sizeof(T));
    else ops::fill<T>(a.device, B * n, T(0), dc);
    for (int64_t gq = 0; gq < G; ++gq)
      if (T* dws = a.array_grad<T>(3 * gq + 1); dws && !a.array_per_example(3 * gq + 1))
        ops::fill<T>(a.device, n * n, T(0), dws);
    const int64_t ldz = T_ * G * n;
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const T* s_prev = t ? out + (t - 1) * n : s0;
      const int64_t ldp = t ? T_ * n : n;
      const T* zt = z + t * G * n;
      T* dzt = dz + t * G * n;
      switch (cell_) {
        case Cell::Basic:  // ds += dout_t, then dz = ds f'(z) row by row
          for (int64_t b = 0; b < B; ++b) {
            vec.axpy(n, T(1), dout + (b * T_ + t) * n, ds + b * n);
            ops::unary<T>(a.device).backward(f_, n, zt + b * ldz, out + (b * T_ + t) * n, ds + b * n, dzt + b * ldz);
          }
          break;
        case Cell::Gru:
          ops::recurrent<T>(a.device).gru_backward(B, n, zt, ldz, extra + t * B * n, s_prev, ldp, dout + t * n, T_ * n,
                                                   ds, dzt, ldz, dh, direct);
          if (a.array_per_example(7) || a.array_per_example(kStateBiases))
            ops::copy_bytes(a.device, dh_all + t * B * n, dh, size_t(B * n) * sizeof(T));
          if (T* dbh = state_biases_ && !a.array_per_example(kStateBiases) ? a.array_grad<T>(kStateBiases) : nullptr)
            vec.sum_rows(B, n, dh, t == T_ - 1 ? T(0) : T(1), dbh);
          break;
        case Cell::Lstm:
          ops::recurrent<T>(a.device).lstm_backward(B, n, zt, ldz, t ? extra + (t - 1) * B * n : c0,
                                                    extra + t * B * n, dout + t * n, T_ * n, ds, dc, dzt, ldz);
          break;
      }
      if (t == 0 && !initial_) break;  // a zero initial state: nothing flows further
      // The state weights' gradients (dW_s += dz^T s_prev) and the state's gradient for step t - 1
      // (ds = sum over gates of dz W_s; the GRU's memory gate through dh, plus its direct part).
      for (int64_t gq = 0; gq < G; ++gq) {
        const bool via_h = cell_ == Cell::Gru && gq == 2;
        const T* d = via_h ? dh : dzt + gq * n;
        const int64_t ldd = via_h ? n : ldz;
        if (T* dws = a.array_grad<T>(3 * gq + 1); dws && !a.array_per_example(3 * gq + 1))
          g.gemm(n, n, B, T(1), d, 1, ldd, s_prev, ldp, 1, T(1), dws, n);
      }
      if (cell_ == Cell::Gru) {
        ops::copy_bytes(a.device, ds, direct, size_t(B * n) * sizeof(T));
        gradient(a, B, pr.state, dzt, ldz, T(1), ds);
        g.gemm(B, n, n, T(1), dh, n, 1, a.array<T>(7), n, 1, T(1), ds, n);
      } else {
        gradient(a, B, pr.state, dzt, ldz, T(0), ds);
      }
    }
    if (initial_) {  // after step 0, ds and dc are the initial states' gradients
      if (a.din[1]) ops::copy_bytes(a.device, a.din[1], ds, size_t(B * n) * sizeof(T));
      if (cell_ == Cell::Lstm && a.din[2]) ops::copy_bytes(a.device, a.din[2], dc, size_t(B * n) * sizeof(T));
    }
    // The input part, over all steps at once: dx = sum over gates of dz W_x; dW_x = dz^T x, whose
    // row sums are the bias gradient.
    if (T* dx = a.input_grad<T>(0)) gradient(a, B * T_, pr.input, dz, G * n, T(0), dx);
    for (int64_t gq = 0; gq < G; ++gq) {
      T* dwx = a.array_per_example(3 * gq) ? nullptr : a.array_grad<T>(3 * gq);
      T* db = a.array_per_example(3 * gq + 2) ? nullptr : a.array_grad<T>(3 * gq + 2);
      if (!dwx && !db) continue;
      kernels::GemmEpilogue<T> ep;
      ep.row_sums = db;
      g.gemm_ex(n, dwx ? k : 0, B * T_, T(1), dz + gq * n, 1, G * n, x, k, 1, T(0), dwx, k, ep);
    }
    if (a.per_example) per_example_gradients(a, g, x, out, s0, dz, dh_all);
  }

  // Each example's own array gradients, as the sums above over its own time steps only: per
  // example b and gate, dW_x = dz_b^T x_b (its row sums db), dW_s = dz_b(1..)^T s_b(..T-1) (the GRU's
  // memory gate with dh in place of dz).
  template <typename T>
  void per_example_gradients(const LayerArgs& a, const kernels::GemmKernels<T>& g, const T* x, const T* out,
                             const T* s0, const T* dz, const T* dh_all) const {
    const int64_t B = a.batch, T_ = time_, G = gates(), n = n_, k = k_;
    if (state_biases_ && a.array_per_example(kStateBiases) && a.dparam[kStateBiases])
      for (int64_t b = 0; b < B; ++b) {  // db_ms = the sum of the example's dh over the steps
        T* db = a.array_grad<T>(kStateBiases) + b * n;
        ops::fill<T>(a.device, n, T(0), db);
        for (int64_t t = 0; t < T_; ++t) ops::vector<T>(a.device).axpy(n, T(1), dh_all + t * B * n + b * n, db);
      }
    for (int64_t gq = 0; gq < G; ++gq) {
      const size_t iw = 3 * gq, is = 3 * gq + 1, ib = 3 * gq + 2;
      for (int64_t b = 0; b < B; ++b) {
        T* dwx = a.array_per_example(iw) && a.dparam[iw] ? a.array_grad<T>(iw) + b * n * k : nullptr;
        T* db = a.array_per_example(ib) && a.dparam[ib] ? a.array_grad<T>(ib) + b * n : nullptr;
        const T* dzb = dz + b * T_ * G * n + gq * n;
        if (dwx || db) {
          kernels::GemmEpilogue<T> ep;
          ep.row_sums = db;
          g.gemm_ex(n, dwx ? k : 0, T_, T(1), dzb, 1, G * n, x + b * T_ * k, k, 1, T(0), dwx, k, ep);
        }
        if (!a.array_per_example(is) || !a.dparam[is]) continue;
        T* dws = a.array_grad<T>(is) + b * n * n;
        const bool via_h = cell_ == Cell::Gru && gq == 2;
        const T* d = via_h ? dh_all + B * n + b * n : dzb + G * n;  // steps 1 .. T-1
        const int64_t ldd = via_h ? B * n : G * n;
        g.gemm(n, n, T_ - 1, T(1), d, 1, ldd, out + b * T_ * n, n, 1, T(0), dws, n);
        if (initial_)  // step 0's term, from the initial state
          g.gemm(n, n, 1, T(1), via_h ? dh_all + b * n : dzb, 1, ldd, s0 + b * n, n, 1, T(1), dws, n);
      }
    }
  }

  // Forward mode: the gates' pre-activation tangents, tz = tx W_x^T + x tW_x^T + tb (all steps at
  // once) + ts_prev W_s^T + s_prev tW_s^T (per step), then the cell's tangent through the saved
  // gates (the GRU's memory gate through th, the tangent of h = W_ms s_prev).
  template <typename T>
  void jvp_t(const LayerArgs& a) const {
    const auto& g = ops::gemm<T>(a.device);
    const int64_t B = a.batch, T_ = time_, G = gates(), n = n_, k = k_;
    const MemoryQuery q{B, a.dtype, a.device};
    const T* x = a.input<T>(0);
    const T* tx = a.input_tangent<T>(0);
    const T* out = a.output<T>(0);
    T* tout = a.output_tangent<T>(0);
    const T* z = a.saved_as<T>();
    const T* extra = reinterpret_cast<const T*>(static_cast<const char*>(a.saved) + gate_bytes(q));
    char* w = static_cast<char*>(a.workspace);
    T* zero = reinterpret_cast<T*>(w);
    T* tz = reinterpret_cast<T*>(w + vec_bytes(q));
    T* tc = reinterpret_cast<T*>(w + vec_bytes(q) + gate_bytes(q));
    T* th = tc + vec_bytes(q) / sizeof(T);
    ops::fill<T>(a.device, B * n, T(0), zero);
    const T* s0 = initial_ ? a.input<T>(1) : zero;
    const T* ts0 = initial_ ? a.input_tangent<T>(1) : zero;
    const T* c0 = initial_ && cell_ == Cell::Lstm ? a.input<T>(2) : zero;
    if (initial_ && cell_ == Cell::Lstm) ops::copy_bytes(a.device, tc, a.tin[2], size_t(B * n) * sizeof(T));
    else ops::fill<T>(a.device, B * n, T(0), tc);
    const Prepared pr = layout<T>(a.device, a.prepared);
    product(a, B * T_, pr.input, tx, k, T(0), tz, G * n);
    for (int64_t gq = 0; gq < G; ++gq) {
      if (const T* tb = a.array_tangent<T>(3 * gq + 2))
        for (int64_t r = 0; r < B * T_; ++r) ops::vector<T>(a.device).axpy(n, T(1), tb, tz + r * G * n + gq * n);
      if (const T* twx = a.array_tangent<T>(3 * gq))
        g.gemm(B * T_, n, k, T(1), x, k, 1, twx, 1, k, T(1), tz + gq * n, G * n);
    }
    const int64_t ldz = T_ * G * n;
    for (int64_t t = 0; t < T_; ++t) {
      const T* s_prev = t ? out + (t - 1) * n : s0;
      const T* ts_prev = t ? tout + (t - 1) * n : ts0;
      const int64_t ldp = t ? T_ * n : n;
      const T* zt = z + t * G * n;
      T* tzt = tz + t * G * n;
      product(a, B, pr.state, ts_prev, ldp, T(1), tzt, ldz);
      if (cell_ == Cell::Gru) {
        kernels::GemmEpilogue<T> tb;
        tb.bias = state_biases_ ? a.array_tangent<T>(kStateBiases) : nullptr;
        g.gemm_ex(B, n, n, T(1), ts_prev, ldp, 1, a.array<T>(7), 1, n, T(0), th, n, tb);
      }
      for (int64_t gq = 0; gq < G; ++gq) {
        const bool via_h = cell_ == Cell::Gru && gq == 2;
        if (const T* tws = a.array_tangent<T>(3 * gq + 1))
          g.gemm(B, n, n, T(1), s_prev, ldp, 1, tws, 1, n, T(1), via_h ? th : tzt + gq * n, via_h ? n : ldz);
      }
      switch (cell_) {
        case Cell::Basic:
          for (int64_t b = 0; b < B; ++b)
            ops::unary<T>(a.device).backward(f_, n, zt + b * ldz, out + (b * T_ + t) * n, tzt + b * ldz,
                                             tout + (b * T_ + t) * n);
          break;
        case Cell::Gru:
          ops::recurrent<T>(a.device).gru_jvp(B, n, zt, ldz, extra + t * B * n, th, s_prev, ts_prev, ldp, tzt, ldz,
                                              tout + t * n, T_ * n);
          break;
        case Cell::Lstm:
          ops::recurrent<T>(a.device).lstm_jvp(B, n, zt, ldz, t ? extra + (t - 1) * B * n : c0, extra + t * B * n,
                                               tzt, ldz, tc, tout + t * n, T_ * n);
          break;
      }
    }
    if (final_) {
      copy_rows(a.device, B, tout + (T_ - 1) * n, T_ * n, a.output_tangent<T>(1));
      if (cell_ == Cell::Lstm) ops::copy_bytes(a.device, a.tout[2], tc, size_t(B * n) * sizeof(T));
    }
  }

  Cell cell_;
  int64_t n_;
  kernels::UnaryFn f_;
  bool initial_, final_, state_biases_;
  std::string where_;
  int64_t time_ = 0, k_ = 0;
};

}  // namespace

std::unique_ptr<Layer> make_recurrent_layer(const json::Value& s, const std::string& where) {
  const std::string type = spec::string(s, "type", where);
  const Cell cell = type == "BasicRecurrentLayer" ? Cell::Basic : type == "GatedRecurrentLayer" ? Cell::Gru : Cell::Lstm;
  const json::Value* size = spec::get(s, "size");
  if (!size) throw ValueError(cat(where, ": ", type, " needs a state size n"));
  const int64_t n = spec::integer(*size, cat(where, ": state size"));
  if (n < 1) throw ValueError(cat(where, ": ", type, " needs a state size n >= 1; given ", n));
  kernels::UnaryFn f = kernels::UnaryFn::Tanh;
  if (cell == Cell::Basic) {
    const std::string name = spec::string(s, "activation", where, "Tanh");
    if (!kernels::unary_from_name(name, &f))
      throw ValueError(cat(where, ": BasicRecurrentLayer: unknown activation \"", name, "\""));
  }
  const bool initial = spec::boolean(s, "initial_state", where, false);
  const bool final = spec::boolean(s, "final_state", where, false);
  const bool state_biases = cell == Cell::Gru && spec::boolean(s, "state_biases", where, false);
  return std::make_unique<RecurrentLayer>(cell, n, f, initial, final, state_biases, where);
}

}  // namespace portgrad
