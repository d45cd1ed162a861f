#include "graph/trainer.h"

#include <cmath>

#include "graph/plan.h"
#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {

Trainer::Trainer(Net& net, int loss, std::vector<int> arrays, OptimMethod method, const kernels::OptimStep& base,
                 DType dtype)
    : net_(net), loss_(loss), arrays_(std::move(arrays)), method_(method), base_(base), dtype_(dtype) {
  if (loss < 0 || size_t(loss) >= net.outputs().size()) throw ValueError(cat("no output ", loss, " to train"));
  if (dtype != DType::F32 && dtype != DType::F64) throw TypeError("training runs in float32 or float64");
  for (int p : arrays_) {
    if (p < 0 || size_t(p) >= net.params().size()) throw ValueError(cat("no array ", p, " to train"));
    const ParamInfo& info = net.params()[p];
    if (!info.learnable || !info.differentiable)
      throw ValueError(cat("array ", info.path, " is state, not learned: it has no gradient to train with"));
    if (!info.set) throw ValueError(cat("array ", info.path, " has no value; initialise the net first"));
    grads_.push_back(Tensor::zeros(info.shape, dtype));
    for (size_t s = 0; s < state_count(); ++s) state_.push_back(Tensor::zeros(info.shape, dtype));
  }
}

Request Trainer::request(int64_t batch, bool train) const {
  Request r;
  r.batch = batch;
  r.dtype = dtype_;
  r.device = Device::CPU;
  r.train = train;
  r.outputs = {loss_};
  if (train) {
    r.imposed = {loss_};  // the gradient of the loss's sum alone, whatever other outputs the net has
    r.param_grads = arrays_;
  }
  return r;
}

void Trainer::check(const std::vector<const void*>& inputs, int64_t batch) const {
  if (batch < 1) throw ValueError(cat("a training batch needs at least one example; given ", batch));
  if (inputs.size() != net_.inputs().size())
    throw ValueError(cat("one array per input port is needed (", net_.inputs().size(), "), given ", inputs.size()));
  for (const void* p : inputs)
    if (!p) throw ValueError("a null input pointer");
}

double Trainer::mean_loss(const Tensor& losses, int64_t batch) const {
  double sum = 0;
  const int64_t n = losses.numel();
  if (dtype_ == DType::F64)
    for (int64_t i = 0; i < n; ++i) sum += losses.ptr<double>()[i];
  else
    for (int64_t i = 0; i < n; ++i) sum += losses.ptr<float>()[i];
  return sum / double(batch);
}

double Trainer::step(const std::vector<const void*>& inputs, int64_t batch, double lr, uint64_t seed) {
  check(inputs, batch);
  if (!(lr >= 0) || !std::isfinite(lr)) throw ValueError(cat("the learning rate must be finite and >= 0; given ", lr));
  Compiled& c = compiled_[{batch, true}];
  if (!c.plan) c.request = request(batch, true);
  const Request& r = c.request;
  if (ones_.shape.empty() || ones_.shape[0] != batch) {
    const Shape loss_shape = shape_concat({batch}, net_.value_shape(net_.outputs()[loss_].value));
    ones_ = Tensor::empty(loss_shape, dtype_);
    losses_ = Tensor::empty(loss_shape, dtype_);
    if (dtype_ == DType::F64) ops::fill<double>(Device::CPU, ones_.numel(), 1.0, ones_.ptr<double>());
    else ops::fill<float>(Device::CPU, ones_.numel(), 1.0f, ones_.ptr<float>());
  }
  Buffers& b = buffers_;  // assigned, not made: a step of a size seen before allocates nothing
  b.inputs.assign(inputs.begin(), inputs.end());
  b.imposed.assign(1, ones_.data);
  b.outputs.assign(1, losses_.data);
  b.param_grads.clear();
  for (Tensor& g : grads_) b.param_grads.push_back(g.data);
  b.seed = seed;
  net_.validate(r, b);  // finite inputs, class indices in range: as every evaluation checks them
  std::shared_ptr<Plan>& plan = c.plan;
  if (!plan) plan = net_.plan_for(r);
  {
    std::lock_guard<std::mutex> lock(plan->mutex());
    plan->refresh_prepared();  // the arrays changed in place since the last step
    plan->run(b);
  }
  const double loss = mean_loss(losses_, batch);

  // Moving statistics from this batch (before the arrays move: they describe this forward).
  for (int n : net_.order_) {
    const NodeInfo& node = net_.nodes_[n];
    if (const void* saved = plan->forward_saved(n)) {
      std::vector<void*>& params = node_params_;
      params.clear();
      for (int p : node.params)
        params.push_back(dtype_ == DType::F64 ? net_.params_[p].f64.data : net_.params_[p].f32.data);
      node.layer->update_moving_statistics(saved, params.data(), batch, dtype_, Device::CPU);
    }
  }

  ++steps_;
  kernels::OptimStep s = base_;
  s.lr = lr;
  s.scale = 1.0 / double(batch);  // the gradient of the mean loss
  s.c1 = 1.0 - std::pow(base_.beta1, double(steps_));
  s.c2 = 1.0 - std::pow(base_.beta2, double(steps_));
  with_float_type(dtype_, [&](auto t) {
    using T = decltype(t);
    const auto& k = ops::optim<T>(Device::CPU);
    for (size_t j = 0; j < arrays_.size(); ++j) {
      ParamInfo& info = net_.params_[arrays_[j]];
      T* w = static_cast<T*>(dtype_ == DType::F64 ? info.f64.data : info.f32.data);
      const T* g = grads_[j].ptr<T>();
      const int64_t n = grads_[j].numel();
      T* s0 = state_[j * state_count()].ptr<T>();
      switch (method_) {
        case OptimMethod::SGD: k.sgd(n, s, g, w, s0); break;
        case OptimMethod::RMSProp: k.rmsprop(n, s, g, w, s0); break;
        case OptimMethod::Adam: k.adam(n, s, g, w, s0, state_[j * 2 + 1].ptr<T>()); break;
      }
    }
  });
  return loss;
}

double Trainer::loss(const std::vector<const void*>& inputs, int64_t batch) {
  check(inputs, batch);
  const Request r = request(batch, false);
  const Tensor losses = Tensor::empty(shape_concat({batch}, net_.value_shape(net_.outputs()[loss_].value)), dtype_);
  Buffers b;
  b.inputs = inputs;
  b.outputs = {losses.data};
  net_.validate(r, b);
  std::shared_ptr<Plan>& plan = compiled_[{batch, false}].plan;
  if (!plan) plan = net_.plan_for(r);
  {
    std::lock_guard<std::mutex> lock(plan->mutex());
    plan->refresh_prepared();
    plan->run(b);
  }
  return mean_loss(losses, batch);
}

std::vector<void*> Trainer::state(size_t k) {
  if (k >= arrays_.size()) throw IndexError(cat("array ", k, " out of range"));
  std::vector<void*> out;
  for (size_t s = 0; s < state_count(); ++s) out.push_back(state_[k * state_count() + s].data);
  return out;
}

}  // namespace portgrad
