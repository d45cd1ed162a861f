/// @brief LinearLayer: y = W x + b with x flattened; W is (output shape..., n_in), or with
/// "transposed" (n_in, output shape...) — the layout of ONNX's MatMul and Gemm with transB=0, so an
/// imported tensor is the layer's array as the file stores it.
#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

class LinearLayer final : public Layer {
 public:
  LinearLayer(Shape size, bool biases, bool transposed, std::string where)
      : size_(std::move(size)), biases_(biases), transposed_(transposed), where_(std::move(where)) {}

  const char* type() const override { return "LinearLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=..."));
    n_in_ = shape_numel(*in[0]);
    if (n_in_ < 1) throw ValueError(cat(where_, ": port \"Input\" has no elements (shape ", shape_str(*in[0]), ")"));
    n_out_ = shape_numel(size_);
    out = {size_};
  }

  std::vector<ParamDecl> params() const override {
    ParamDecl w{"Weights", transposed_ ? shape_concat({n_in_}, size_) : shape_concat(size_, {n_in_})};
    w.init = ParamDecl::Init::Weights;
    w.fan_in = n_in_;
    w.fan_out = n_out_;
    std::vector<ParamDecl> p{w};
    if (biases_) p.push_back({"Biases", size_});
    return p;
  }

  void forward(const LayerArgs& a) const override { forward_activated(a, kernels::UnaryFn::Count, nullptr); }

  // y (batch x n_out) = x (batch x n_in) . W^T + b, with an optional activation f(y) written to
  // `activated` by the same GEMM epilogue. W is read along n_in (the A.B^T form), or pre-packed.
  bool can_apply_activation() const override { return true; }
  bool is_mlp_linear() const override { return !transposed_; }

  // W as the GEMMs' operand (n_in x n_out: y = x W) and its transpose (n_out x n_in: dx = dy W^T),
  // as (row stride, column stride) of either layout.
  int64_t w_rs() const { return transposed_ ? n_out_ : 1; }
  int64_t w_cs() const { return transposed_ ? 1 : n_in_; }

  void forward_activated(const LayerArgs& a, kernels::UnaryFn f, void* activated) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& g = ops::gemm<T>(a.device);
      kernels::GemmEpilogue<T> ep;
      ep.bias = biases_ ? a.array<T>(1) : nullptr;
      if (f != kernels::UnaryFn::Count) {
        ep.unary = f;
        ep.D = static_cast<T*>(activated);
        ep.ldd = n_out_;
      }
      const T* x = a.input<T>(0);
      T* y = a.output<T>(0);
      if (a.prepared)
        g.gemm_packed_b(a.batch, n_out_, n_in_, T(1), x, n_in_, 1, a.prepared, T(0), y, n_out_, ep);
      else
        g.gemm_ex(a.batch, n_out_, n_in_, T(1), x, n_in_, 1, a.array<T>(0), w_rs(), w_cs(), T(0), y,
                  n_out_, ep);
    });
  }

  // Packing W pays off once the batch fills a few rows of the GEMM's register tile; a batch of a
  // few examples is a matrix-vector product, which reads W as it is (the A.B^T dot path).
  static constexpr int64_t kPackedMinBatch = 8;

  size_t prepared_bytes(const MemoryQuery& q) const override {
    if (q.batch < kPackedMinBatch) return 0;
    size_t bytes = 0;
    with_float_type(q.dtype, [&](auto t) { bytes = ops::gemm<decltype(t)>(q.device).packed_b_bytes(n_in_, n_out_); });
    return bytes;
  }

  void prepare(const void* const* param, DType dtype, Device device, void* prepared) const override {
    with_float_type(dtype, [&](auto t) {
      using T = decltype(t);
      ops::gemm<T>(device).pack_b(n_in_, n_out_, static_cast<const T*>(param[0]), w_rs(), w_cs(), prepared);
    });
  }

  void backward(const LayerArgs& a) const override { backward_activated(a, kernels::UnaryFn::Count, nullptr, nullptr); }

  // On the GPU a large backward runs as plain products, which the GPU GEMM hands to cuBLASLt (its
  // own kernel, which folds f' into the operand, makes one block per 64 x 64 tile of the result:
  // dW of a 64-wide layer over 2^20 examples was one block, 40x slower than cuBLAS on an H200):
  // dy = da f'(z) into the workspace, dx = dy W, dW = dy^T x and db = dy^T 1 as products.
  static constexpr double kGpuPlainMinWork = 128.0 * 128.0 * 128.0;
  bool gpu_plain_backward(int64_t batch, Device device) const {
    return device == Device::GPU && double(batch) * double(n_in_) * double(n_out_) >= kGpuPlainMinWork;
  }
  size_t workspace_bytes(const MemoryQuery& q) const override {
    const size_t dy = (size_t(q.batch) * size_t(n_out_) * dtype_size(q.dtype) + 63) / 64 * 64;
    if (!gpu_plain_backward(q.batch, q.device)) return q.backward ? dy : 0;  // (see derivative_once)
    return dy + size_t(q.batch) * dtype_size(q.dtype);  // dy, then a column of ones (db = dy^T 1)
  }

  // When both products of the backward read dy f'(z) and f' costs a transcendental (Tanh, GELU, ...),
  // it is formed once into the workspace rather than in each product's operand: the same values
  // (the same elementwise kernel), half the work. A piecewise-linear f' is cheaper than the pass.
  static bool derivative_once(kernels::UnaryFn f, bool two_products) {
    using kernels::UnaryFn;
    return two_products && f != UnaryFn::Count && f != UnaryFn::Ramp && f != UnaryFn::Abs &&
           f != UnaryFn::HardTanh && f != UnaryFn::HardSigmoid;
  }

  // With f: dy = da f'(z) is never written; both GEMMs read their dy operand through the GEMM's
  // operand prologue (z = pre and f(z) = post share dy's layout and strides).
  // (Not with transposed weights: dW^T = x^T dy reads dy as the B operand, which has no prologue.)
  bool can_backward_activated() const override { return !transposed_; }

  void backward_activated(const LayerArgs& a, kernels::UnaryFn f, const void* pre, const void* post) const override {
    if (a.per_example) return backward_per_example(a);  // (the plan fuses no activation into it then)
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& g = ops::gemm<T>(a.device);
      const T* x = a.input<T>(0);
      const T* W = a.array<T>(0);
      const T* dy = a.output_grad<T>(0);
      if (gpu_plain_backward(a.batch, a.device)) {
        T* ws = a.workspace_as<T>();
        T* ones = ws + (size_t(a.batch) * size_t(n_out_) * sizeof(T) + 63) / 64 * 64 / sizeof(T);
        if (f != kernels::UnaryFn::Count) {
          ops::unary<T>(a.device).backward(f, a.batch * n_out_, static_cast<const T*>(pre),
                                           static_cast<const T*>(post), dy, ws);
          dy = ws;
        }
        if (a.din[0])
          g.gemm(a.batch, n_in_, n_out_, T(1), dy, n_out_, 1, W, w_cs(), w_rs(), T(0), a.input_grad<T>(0), n_in_);
        if (a.dparam[0]) weights_gradient(g, a.batch, dy, x, a.array_grad<T>(0));
        if (biases_ && a.dparam[1]) {
          ops::fill<T>(a.device, a.batch, T(1), ones);
          g.gemm(n_out_, 1, a.batch, T(1), dy, 1, n_out_, ones, 1, 1, T(0), a.array_grad<T>(1), 1);
        }
        return;
      }
      if (derivative_once(f, a.din[0] && (a.dparam[0] || (biases_ && a.dparam[1])))) {
        T* dz = a.workspace_as<T>();
        ops::unary<T>(a.device).backward(f, a.batch * n_out_, static_cast<const T*>(pre), static_cast<const T*>(post),
                                         dy, dz);
        dy = dz;
        f = kernels::UnaryFn::Count;
      }
      kernels::GemmEpilogue<T> pro;
      if (f != kernels::UnaryFn::Count) {
        pro.a_derivative = f;
        pro.a_x = static_cast<const T*>(pre);
        pro.a_y = static_cast<const T*>(post);
      }
      if (a.din[0])  // dx (batch x n_in) = dy (batch x n_out) . W (n_out x n_in)
        g.gemm_ex(a.batch, n_in_, n_out_, T(1), dy, n_out_, 1, W, w_cs(), w_rs(), T(0), a.input_grad<T>(0), n_in_,
                  pro);
      T* db = biases_ ? a.array_grad<T>(1) : nullptr;
      if (a.dparam[0] && transposed_) {
        weights_gradient(g, a.batch, dy, x, a.array_grad<T>(0));
        if (db) ops::vector<T>(a.device).sum_rows(a.batch, n_out_, dy, T(0), db);
      } else if (a.dparam[0]) {  // dW (n_out x n_in) = dy^T . x, summed over the batch; db as its row sums
        kernels::GemmEpilogue<T> ep = pro;
        ep.row_sums = db;
        g.gemm_ex(n_out_, n_in_, a.batch, T(1), dy, 1, n_out_, x, n_in_, 1, T(0), a.array_grad<T>(0),
                  n_in_, ep);
      } else if (db && f != kernels::UnaryFn::Count) {  // db alone: the row sums of an n = 0 product
        kernels::GemmEpilogue<T> ep = pro;
        ep.row_sums = db;
        g.gemm_ex(n_out_, 0, a.batch, T(1), dy, 1, n_out_, x, n_in_, 1, T(0), nullptr, 1, ep);
      } else if (db) {
        ops::vector<T>(a.device).sum_rows(a.batch, n_out_, dy, T(0), db);
      }
    });
  }

  // Per-example gradients: dW_b = dy_b x_b^T, an outer product per example (one batched outer-product
  // kernel), and db_b = dy_b; an array not asked per example is summed as usual.
  std::string no_per_example(bool) const override { return ""; }
  void backward_per_example(const LayerArgs& a) const {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& g = ops::gemm<T>(a.device);
      const T* x = a.input<T>(0);
      const T* W = a.array<T>(0);
      const T* dy = a.output_grad<T>(0);
      if (a.din[0]) g.gemm(a.batch, n_in_, n_out_, T(1), dy, n_out_, 1, W, w_cs(), w_rs(), T(0), a.input_grad<T>(0), n_in_);
      if (a.dparam[0] && a.array_per_example(0)) {
        const auto& v = ops::vector<T>(a.device);
        if (transposed_) v.outer(a.batch, n_in_, n_out_, x, dy, a.array_grad<T>(0));
        else v.outer(a.batch, n_out_, n_in_, dy, x, a.array_grad<T>(0));
      } else if (a.dparam[0]) {
        weights_gradient(g, a.batch, dy, x, a.array_grad<T>(0));
      }
      if (biases_ && a.dparam[1]) {
        if (a.array_per_example(1)) ops::copy_bytes(a.device, a.dparam[1], dy, size_t(a.batch * n_out_) * sizeof(T));
        else ops::vector<T>(a.device).sum_rows(a.batch, n_out_, dy, T(0), a.array_grad<T>(1));
      }
    });
  }

  // Second order: with dx = dy W, dW = dy^T x (or x^T dy) and db = sum dy, their tangents are
  // t(dx) = tdy W + dy tW, t(dW) = tdy^T x + dy^T tx and t(db) = sum tdy.
  std::string no_jvp_backward(bool) const override { return ""; }
  size_t jvp_backward_workspace_bytes(const MemoryQuery&) const override { return 0; }
  void jvp_backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& g = ops::gemm<T>(a.device);
      const T *x = a.input<T>(0), *tx = a.input_tangent<T>(0), *W = a.array<T>(0), *tW = a.array_tangent<T>(0);
      const T *dy = a.output_grad<T>(0), *tdy = a.output_grad_tangent<T>(0);
      if (T* dx = a.input_grad<T>(0)) {
        g.gemm(a.batch, n_in_, n_out_, T(1), tdy, n_out_, 1, W, w_cs(), w_rs(), T(0), dx, n_in_);
        if (tW) g.gemm(a.batch, n_in_, n_out_, T(1), dy, n_out_, 1, tW, w_cs(), w_rs(), T(1), dx, n_in_);
      }
      if (T* dW = a.array_grad<T>(0)) {
        auto product = [&](const T* d, const T* v, T beta) {
          if (transposed_) g.gemm(n_in_, n_out_, a.batch, T(1), v, 1, n_in_, d, n_out_, 1, beta, dW, n_out_);
          else g.gemm(n_out_, n_in_, a.batch, T(1), d, 1, n_out_, v, n_in_, 1, beta, dW, n_in_);
        };
        product(tdy, x, T(0));
        product(dy, tx, T(1));
      }
      if (biases_ && a.dparam[1]) ops::vector<T>(a.device).sum_rows(a.batch, n_out_, tdy, T(0), a.array_grad<T>(1));
    });
  }

  // Forward mode: ty = tx W^T + x tW^T + tb (each term where its tangent is given). Several
  // directions are one product with their rows stacked (they come without array tangents).
  std::string no_jvp(bool) const override { return ""; }
  bool jvp_takes_directions() const override { return true; }
  void jvp(const LayerArgs& a) const override { jvp_activated(a, kernels::UnaryFn::Count, nullptr, nullptr); }

  // With an activation f after it, f'(z) is made once (the backward of ones, in the workspace) and
  // the tangent product's epilogue scales each direction's block by it while the tile is in cache
  // (the tangent of z is never written). An array tangent adds a second product first, so that
  // f'(z) multiplies the whole sum.
  size_t jvp_workspace_bytes(const MemoryQuery& q) const override { return size_t(q.batch * n_out_) * dtype_size(q.dtype); }
  bool can_jvp_activated() const override { return true; }
  void jvp_activated(const LayerArgs& a, kernels::UnaryFn f, const void* pre, const void* post) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const auto& g = ops::gemm<T>(a.device);
      const T* tW = a.array_tangent<T>(0);
      kernels::GemmEpilogue<T> ep;
      ep.bias = biases_ ? a.array_tangent<T>(1) : nullptr;
      kernels::GemmEpilogue<T> last;
      if (f != kernels::UnaryFn::Count) {
        T* derivative = a.workspace_as<T>();
        const int64_t n = a.batch * n_out_;
        ops::fill<T>(a.device, n, T(1), derivative);
        ops::unary<T>(a.device).backward(f, n, static_cast<const T*>(pre), static_cast<const T*>(post), derivative,
                                         derivative);
        last.scale = derivative;
        last.lds = n_out_;
        last.scale_period = a.batch;
      }
      T* ty = a.output_tangent<T>(0);
      const T* tx = a.input_tangent<T>(0);
      const int64_t rows = a.batch * a.directions;
      // tx is never null (zeros when no tangent reaches it): its product writes ty first, with the
      // forward's packed W where there is one.
      if (!tW) ep.scale = last.scale, ep.lds = last.lds, ep.scale_period = last.scale_period;
      if (a.prepared)
        g.gemm_packed_b(rows, n_out_, n_in_, T(1), tx, n_in_, 1, a.prepared, T(0), ty, n_out_, ep);
      else
        g.gemm_ex(rows, n_out_, n_in_, T(1), tx, n_in_, 1, a.array<T>(0), w_rs(), w_cs(), T(0), ty, n_out_, ep);
      if (tW)  // (array tangents come with one direction)
        g.gemm_ex(a.batch, n_out_, n_in_, T(1), a.input<T>(0), n_in_, 1, tW, w_rs(), w_cs(), T(1), ty, n_out_, last);
    });
  }

  // dW = dy^T x (n_out x n_in), or in the transposed layout dW = x^T dy (n_in x n_out).
  template <typename T>
  void weights_gradient(const kernels::GemmKernels<T>& g, int64_t batch, const T* dy, const T* x, T* dW) const {
    if (transposed_) g.gemm(n_in_, n_out_, batch, T(1), x, 1, n_in_, dy, n_out_, 1, T(0), dW, n_out_);
    else g.gemm(n_out_, n_in_, batch, T(1), dy, 1, n_out_, x, n_in_, 1, T(0), dW, n_in_);
  }

 private:
  Shape size_;
  bool biases_;
  bool transposed_;
  std::string where_;
  int64_t n_in_ = 0, n_out_ = 0;
};

}  // namespace

std::unique_ptr<Layer> make_linear_layer(const json::Value& s, const std::string& where) {
  const json::Value* size = spec::get(s, "size");
  if (!size) throw ValueError(cat(where, ": LinearLayer needs an output size"));
  return std::make_unique<LinearLayer>(spec::shape(*size, where + ": output size"),
                                       spec::boolean(s, "biases", where, true),
                                       spec::boolean(s, "transposed", where, false), where);
}

}  // namespace portgrad
