#include "graph/trainer.h"

#include <cmath>
#include <cstring>

#include "graph/plan.h"
#include "layers/layer.h"
#include "ops/ops.h"

namespace portgrad {

Trainer::Trainer(Net& net, int loss, std::vector<int> arrays, OptimMethod method, const kernels::OptimStep& base,
                 DType dtype, Device device, int device_index)
    : net_(net), loss_(loss), arrays_(std::move(arrays)), method_(method), base_(base), dtype_(dtype),
      device_(device), device_index_(device_index) {
  if (loss < 0 || size_t(loss) >= net.outputs().size()) throw ValueError(cat("no output ", loss, " to train"));
  if (dtype != DType::F32 && dtype != DType::F64) throw TypeError("training runs in float32 or float64");
  if (device == Device::GPU) gpu_check(require_gpu_backend().set_device(device_index), "set_device");
  for (int p : arrays_) {
    if (p < 0 || size_t(p) >= net.params().size()) throw ValueError(cat("no array ", p, " to train"));
    const ParamInfo& info = net.params()[p];
    if (!info.learnable || !info.differentiable)
      throw ValueError(cat("array ", info.path, " is state, not learned: it has no gradient to train with"));
    if (!info.set) throw ValueError(cat("array ", info.path, " has no value; initialise the net first"));
  }
  for (int p : arrays_) {
    grads_.push_back(buffer(bytes_of(p)));
    for (size_t s = 0; s < state_count(); ++s) state_.push_back(buffer(bytes_of(p)));
  }
}

Trainer::~Trainer() {
  for (void* p : owned_) {
    if (device_ == Device::GPU) require_gpu_backend().free(p);
    else std::free(p);
  }
}

void* Trainer::buffer(size_t bytes) {
  void* p = nullptr;
  const size_t n = bytes ? bytes : 1;
  if (device_ == Device::GPU) {
    gpu_check(require_gpu_backend().alloc(n, &p), "memory allocation for training");
    owned_.push_back(p);
    with_float_type(dtype_, [&](auto t) {
      using T = decltype(t);
      ops::fill<T>(Device::GPU, int64_t(bytes / sizeof(T)), T(0), static_cast<T*>(p));
    });
  } else {
    p = std::calloc(1, n);
    if (!p) throw ValueError(cat("out of memory: ", n, " bytes for training"));
    owned_.push_back(p);
  }
  return p;
}

void Trainer::select_device() const {
  if (device_ == Device::GPU) gpu_check(require_gpu_backend().set_device(device_index_), "set_device");
}

size_t Trainer::bytes_of(int p) const { return size_t(shape_numel(net_.params()[p].shape)) * dtype_size(dtype_); }

void* Trainer::array_of(int p) const {
  if (device_ == Device::GPU && current_) return current_->array_data(p);
  return dtype_ == DType::F64 ? net_.params_[p].f64.data : net_.params_[p].f32.data;
}

Request Trainer::request(int64_t batch, bool train) const {
  Request r;
  r.batch = batch;
  r.dtype = dtype_;
  r.device = device_;
  r.device_index = device_index_;
  r.train = train;
  r.outputs = {loss_};
  if (train) {
    r.imposed = {loss_};  // the gradient of the loss's sum alone, whatever other outputs the net has
    r.param_grads = arrays_;
  }
  return r;
}

// The plan for a batch size and mode; on the GPU with the arrays as trained so far in its device
// copies (taken from the plan that ran last).
Trainer::Compiled& Trainer::compiled(int64_t batch, bool train) {
  Compiled& c = compiled_[{batch, train}];
  if (!c.plan) {
    c.request = request(batch, train);
    c.plan = net_.plan_for(c.request);
    for (int n : net_.order_)
      if (void* saved = c.plan->forward_saved(n)) c.saved.emplace_back(n, saved);
  }
  if (device_ == Device::GPU && current_ && current_ != c.plan.get()) {
    const GpuBackend& gpu = require_gpu_backend();
    for (size_t p = 0; p < net_.params().size(); ++p) {
      void *from = current_->array_data(int(p)), *to = c.plan->array_data(int(p));
      if (from && to) gpu_check(gpu.copy(to, from, bytes_of(int(p)), CopyKind::DeviceToDevice), "array copy");
    }
  }
  if (device_ == Device::GPU) current_ = c.plan.get();
  return c;
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
  select_device();
  Compiled& c = compiled(batch, true);
  if (!c.ones.data) {
    const Shape loss_shape = shape_concat({batch}, net_.value_shape(net_.outputs()[loss_].value));
    c.ones = Tensor::empty(loss_shape, dtype_);
    c.losses = Tensor::empty(loss_shape, dtype_);
    if (dtype_ == DType::F64) ops::fill<double>(Device::CPU, c.ones.numel(), 1.0, c.ones.ptr<double>());
    else ops::fill<float>(Device::CPU, c.ones.numel(), 1.0f, c.ones.ptr<float>());
  }
  Buffers& b = buffers_;  // assigned, not made: a step of a size seen before allocates nothing
  b.inputs.assign(inputs.begin(), inputs.end());
  b.imposed.assign(1, c.ones.data);
  b.outputs.assign(1, c.losses.data);
  b.param_grads.assign(grads_.begin(), grads_.end());
  b.seed = seed;
  net_.validate(c.request, b);  // finite inputs, class indices in range: as every evaluation checks them
  Plan& plan = *c.plan;
  {
    std::lock_guard<std::mutex> lock(plan.mutex());
    plan.refresh_prepared();  // the arrays changed in place since the last step
    plan.run(b);
  }
  const double loss = mean_loss(c.losses, batch);

  // Moving statistics from this batch (before the arrays move: they describe this forward).
  for (const auto& [n, saved] : c.saved) {
    const NodeInfo& node = net_.nodes_[n];
    std::vector<void*>& params = node_params_;
    params.clear();
    for (int p : node.params) params.push_back(array_of(p));
    node.layer->update_moving_statistics(saved, params.data(), batch * node.map_count, dtype_, device_);
  }

  ++steps_;
  kernels::OptimStep s = base_;
  s.lr = lr;
  s.scale = 1.0 / double(batch);  // the gradient of the mean loss
  s.c1 = 1.0 - std::pow(base_.beta1, double(steps_));
  s.c2 = 1.0 - std::pow(base_.beta2, double(steps_));
  with_float_type(dtype_, [&](auto t) {
    using T = decltype(t);
    const auto& k = ops::optim<T>(device_);
    for (size_t j = 0; j < arrays_.size(); ++j) {
      T* w = static_cast<T*>(array_of(arrays_[j]));
      const T* g = static_cast<const T*>(grads_[j]);
      const int64_t n = shape_numel(net_.params()[arrays_[j]].shape);
      T* s0 = static_cast<T*>(state_[j * state_count()]);
      switch (method_) {
        case OptimMethod::SGD: k.sgd(n, s, g, w, s0); break;
        case OptimMethod::RMSProp: k.rmsprop(n, s, g, w, s0); break;
        case OptimMethod::Adam: k.adam(n, s, g, w, s0, static_cast<T*>(state_[j * 2 + 1])); break;
      }
    }
  });
  return loss;
}

double Trainer::loss(const std::vector<const void*>& inputs, int64_t batch) {
  check(inputs, batch);
  select_device();
  const Tensor losses = Tensor::empty(shape_concat({batch}, net_.value_shape(net_.outputs()[loss_].value)), dtype_);
  Buffers b;
  b.inputs = inputs;
  b.outputs = {losses.data};
  Compiled& c = compiled(batch, false);
  net_.validate(c.request, b);
  {
    std::lock_guard<std::mutex> lock(c.plan->mutex());
    c.plan->refresh_prepared();
    c.plan->run(b);
  }
  return mean_loss(losses, batch);
}

void Trainer::download() {
  if (device_ != Device::GPU || !current_) return;
  select_device();
  const GpuBackend& gpu = require_gpu_backend();
  for (size_t p = 0; p < net_.params().size(); ++p) {
    const void* from = current_->array_data(int(p));
    if (!from) continue;
    staging_.resize(bytes_of(int(p)));
    gpu_check(gpu.copy(staging_.data(), from, staging_.size(), CopyKind::DeviceToHost), "array copy");
    net_.set_param(int(p), staging_.data(), dtype_);  // (the Net's plans are dropped; the trainer keeps its own)
  }
}

void Trainer::read_state(size_t k, size_t s, void* host) const {
  if (k >= arrays_.size() || s >= state_count()) throw IndexError(cat("optimiser state ", k, "/", s, " out of range"));
  const size_t bytes = bytes_of(arrays_[k]);
  select_device();
  if (device_ == Device::GPU)
    gpu_check(require_gpu_backend().copy(host, state_[k * state_count() + s], bytes, CopyKind::DeviceToHost), "state copy");
  else std::memcpy(host, state_[k * state_count() + s], bytes);
}

void Trainer::write_state(size_t k, size_t s, const void* host) {
  if (k >= arrays_.size() || s >= state_count()) throw IndexError(cat("optimiser state ", k, "/", s, " out of range"));
  const size_t bytes = bytes_of(arrays_[k]);
  select_device();
  if (device_ == Device::GPU) {
    const GpuBackend& gpu = require_gpu_backend();
    gpu_check(gpu.copy(state_[k * state_count() + s], host, bytes, CopyKind::HostToDevice), "state copy");
    gpu_check(gpu.synchronize(), "state copy");
  } else {
    std::memcpy(state_[k * state_count() + s], host, bytes);
  }
}

}  // namespace portgrad
