/// @brief LinearLayer: y = W x + b with x flattened; W is (output shape..., n_in).
#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {
namespace {

class LinearLayer final : public Layer {
 public:
  LinearLayer(Shape size, bool biases, std::string where)
      : size_(std::move(size)), biases_(biases), where_(std::move(where)) {}

  const char* type() const override { return "LinearLayer"; }

  void infer(std::vector<MaybeShape>& in, std::vector<Shape>& out) override {
    if (!in[0]) throw ValueError(cat(where_, ": the shape of port \"Input\" is not known; declare it with input=..."));
    n_in_ = shape_numel(*in[0]);
    if (n_in_ < 1) throw ValueError(cat(where_, ": port \"Input\" has no elements (shape ", shape_str(*in[0]), ")"));
    n_out_ = shape_numel(size_);
    out = {size_};
  }

  std::vector<ParamDecl> params() const override {
    ParamDecl w{"Weights", shape_concat(size_, {n_in_})};
    w.init = ParamDecl::Init::Weights;
    w.fan_in = n_in_;
    w.fan_out = n_out_;
    std::vector<ParamDecl> p{w};
    if (biases_) p.push_back({"Biases", size_});
    return p;
  }

  void forward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const T* x = static_cast<const T*>(a.in[0]);
      const T* W = static_cast<const T*>(a.param[0]);
      T* y = static_cast<T*>(a.out[0]);
      // y (batch x n_out) = x (batch x n_in) . W^T: W is read along n_in, the A.B^T form.
      ops::gemm<T>(a.device).gemm(a.batch, n_out_, n_in_, T(1), x, n_in_, 1, W, 1, n_in_, T(0), y, n_out_);
      if (biases_) ops::vector<T>(a.device).add_row_vector(a.batch, n_out_, static_cast<const T*>(a.param[1]), y);
    });
  }

  void backward(const LayerArgs& a) const override {
    with_float_type(a.dtype, [&](auto t) {
      using T = decltype(t);
      const T* x = static_cast<const T*>(a.in[0]);
      const T* W = static_cast<const T*>(a.param[0]);
      const T* dy = static_cast<const T*>(a.dout[0]);
      if (a.din[0])  // dx (batch x n_in) = dy (batch x n_out) . W (n_out x n_in)
        ops::gemm<T>(a.device).gemm(a.batch, n_in_, n_out_, T(1), dy, n_out_, 1, W, n_in_, 1, T(0),
                                    static_cast<T*>(a.din[0]), n_in_);
      if (a.dparam[0])  // dW (n_out x n_in) = dy^T . x, summed over the batch
        ops::gemm<T>(a.device).gemm(n_out_, n_in_, a.batch, T(1), dy, 1, n_out_, x, n_in_, 1, T(0),
                                    static_cast<T*>(a.dparam[0]), n_in_);
      if (biases_ && a.dparam[1])
        ops::vector<T>(a.device).sum_rows(a.batch, n_out_, dy, T(0), static_cast<T*>(a.dparam[1]));
    });
  }

 private:
  Shape size_;
  bool biases_;
  std::string where_;
  int64_t n_in_ = 0, n_out_ = 0;
};

}  // namespace

std::unique_ptr<Layer> make_linear_layer(const json::Value& s, const std::string& where) {
  const json::Value* size = spec::get(s, "size");
  if (!size) throw ValueError(cat(where, ": LinearLayer needs an output size"));
  return std::make_unique<LinearLayer>(spec::shape(*size, where + ": output size"),
                                       spec::boolean(s, "biases", where, true), where);
}

}  // namespace portgrad
