/// @brief Compiling a request into a schedule (which layers run forward, which backward, which
/// gradients accumulate where), and running it.
///
/// Only what the request needs is computed: an output alone runs no backward; an input gradient
/// alone computes no parameter gradient; a layer whose inputs do not depend on a requested
/// input or parameter gets no backward step.
#include "graph/plan.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "ops/ops.h"

namespace portgrad {

Plan::Plan(Net& net, const Request& r) : net_(net), req_(r) {
  if (r.device == Device::GPU && build_fused_mlp()) return;
  const size_t esz = dtype_size(r.dtype);
  const int64_t B = r.batch;
  const auto& values = net.values_;
  const auto& nodes = net.nodes_;
  const size_t V = values.size(), N = nodes.size();

  // --- What must run.
  auto ancestors = [&](const std::vector<int>& vals) {
    std::vector<char> mark(N, 0);
    std::vector<int> stack(vals);
    while (!stack.empty()) {
      int v = stack.back();
      stack.pop_back();
      int n = values[v].producer;
      if (n < 0 || mark[n]) continue;
      mark[n] = 1;
      for (int u : nodes[n].in) stack.push_back(u);
    }
    return mark;
  };
  std::vector<int> wanted_vals;
  for (int o : r.outputs) wanted_vals.push_back(net.outputs_[o].value);
  for (int v : r.probes) wanted_vals.push_back(v);
  const bool any_grad = !r.input_grads.empty() || !r.param_grads.empty();
  std::vector<int> grad_out_idx;  // outputs the gradient flows from
  if (r.imposed.empty()) for (size_t o = 0; o < net.outputs_.size(); ++o) grad_out_idx.push_back(int(o));
  else grad_out_idx = r.imposed;
  std::vector<int> grad_vals;
  for (int o : grad_out_idx) grad_vals.push_back(net.outputs_[o].value);
  std::vector<char> run_fwd = ancestors(wanted_vals);
  std::vector<char> reaches_grad_out = any_grad ? ancestors(grad_vals) : std::vector<char>(N, 0);
  for (size_t n = 0; n < N; ++n) run_fwd[n] |= reaches_grad_out[n];

  // Values that depend on a requested input or parameter: their gradients are needed.
  std::vector<char> needs_grad(V, 0), has_target_param(N, 0);
  std::vector<char> param_requested(net.params_.size(), 0);
  for (int i : r.input_grads) needs_grad[net.inputs_[i].value] = 1;
  for (int p : r.param_grads) {
    param_requested[p] = 1;
    has_target_param[net.params_[p].node] = 1;
  }
  std::vector<char> run_bwd(N, 0);
  for (int n : net.order_) {
    bool dep = has_target_param[n];
    for (int v : nodes[n].in) dep |= needs_grad[v] && values[v].index_bound == 0;
    if (!dep) continue;
    for (int v : nodes[n].out) needs_grad[v] = 1;
    run_bwd[n] = reaches_grad_out[n];
  }

  // Fusion: a layer whose only consumer is an elementwise function applies it in its own
  // epilogue (Linear + activation), and the elementwise layer's forward step is skipped. The
  // pre-activation is still kept when a backward pass needs it.
  std::vector<int> fused_into(N, -1);  // elementwise node -> the node that computes it
  for (int n : net.order_) {
    if (!run_fwd[n] || nodes[n].out.size() != 1) continue;
    const int v = nodes[n].out[0];
    if (values[v].consumers.size() != 1) continue;
    const int m = values[v].consumers[0].first;
    const bool probed = std::find(r.probes.begin(), r.probes.end(), v) != r.probes.end();
    const bool is_output = std::any_of(net.outputs_.begin(), net.outputs_.end(), [&](auto& o) { return o.value == v; });
    if (!run_fwd[m] || probed || is_output || nodes[m].layer->unary_function() == kernels::UnaryFn::Count ||
        !nodes[n].layer->can_apply_activation())
      continue;
    fused_into[m] = n;
  }
  // Backward fusion: where both layers of a fused pair run backward and the producer can fold f'
  // into its own backward, the elementwise layer's backward step is skipped too. The producer then
  // reads the gradient of the activated value directly, and the pre-activation's gradient (whose
  // only contribution would have come from the skipped step) gets no buffer.
  std::vector<char> bwd_fused(N, 0);  // elementwise node whose backward its producer does
  for (size_t m = 0; m < N; ++m) {
    const int n = fused_into[m];
    if (n >= 0 && run_bwd[m] && run_bwd[n] && nodes[n].layer->can_backward_activated()) bwd_fused[m] = 1;
  }
  auto bwd_fused_out = [&](int v) {  // v: the pre-activation of a backward-fused pair
    const int p = values[v].producer;
    return p >= 0 && values[v].consumers.size() == 1 && bwd_fused[values[v].consumers[0].first] &&
           fused_into[values[v].consumers[0].first] == p;
  };

  // --- Buffers: sized in a first pass over the arena layout, placed in a second.
  std::vector<size_t> fwd_off(V, SIZE_MAX), grad_off(V, SIZE_MAX), pgrad_off(net.params_.size(), SIZE_MAX);
  std::vector<size_t> saved_off(N, SIZE_MAX), prepared_off(N, SIZE_MAX);
  size_t total = 0;
  auto take_bytes = [&](size_t bytes) {
    size_t at = total;
    total += (bytes + 63) / 64 * 64;
    return at;
  };
  auto take = [&](int64_t elems) { return take_bytes(size_t(elems) * esz); };
  auto numel = [&](int v) { return B * shape_numel(*values[v].shape); };
  for (int n : net.order_) {
    if (!run_fwd[n]) continue;
    for (int v : nodes[n].out) fwd_off[v] = take(numel(v));
    if (size_t bytes = nodes[n].layer->saved_bytes(B, r.dtype, r.train)) saved_off[n] = take_bytes(bytes);
    if (size_t bytes = nodes[n].layer->prepared_bytes(B, r.dtype, r.device)) prepared_off[n] = take_bytes(bytes);
    workspace_bytes_ = std::max(workspace_bytes_, nodes[n].layer->workspace_bytes(B, r.dtype, r.device));
  }
  for (size_t v = 0; v < V; ++v) {
    const bool input_target = values[v].producer < 0 && needs_grad[v];
    if (needs_grad[v] && (input_target || run_bwd[values[v].producer]) && !bwd_fused_out(int(v)))
      grad_off[v] = take(numel(int(v)));
  }
  for (int p : r.param_grads) pgrad_off[p] = take(shape_numel(net.params_[p].shape));

  // Gradient accumulation: the first contribution to a value's gradient writes it; later ones go
  // to a scratch buffer and are added. Seeds count as the first contribution.
  struct Contribution { int node, slot; size_t scratch; };
  std::vector<Contribution> contributions;
  std::vector<char> initialised(V, 0);
  if (any_grad) {
    for (const PortInfo& o : net.outputs_) if (grad_off[o.value] != SIZE_MAX) initialised[o.value] = 1;
    for (auto it = net.order_.rbegin(); it != net.order_.rend(); ++it) {
      const int n = *it;
      if (!run_bwd[n] || bwd_fused[n]) continue;
      for (int v : nodes[n].out) initialised[v] = 1;  // zero-filled if nothing flowed into it
      for (size_t i = 0; i < nodes[n].in.size(); ++i) {
        const int v = nodes[n].in[i];
        if (grad_off[v] == SIZE_MAX || values[v].index_bound > 0) continue;
        contributions.push_back({n, int(i), initialised[v] ? take(numel(v)) : SIZE_MAX});
        initialised[v] = 1;
      }
    }
  }
  // A GPU plan also holds device copies of the net's arrays and of its inputs.
  std::vector<size_t> param_off(net.params_.size(), SIZE_MAX), input_off(net.inputs_.size(), SIZE_MAX);
  if (r.device == Device::GPU) {
    gpu_ = &require_gpu_backend();
    for (size_t p = 0; p < net.params_.size(); ++p) param_off[p] = take(shape_numel(net.params_[p].shape));
    for (size_t i = 0; i < net.inputs_.size(); ++i) {
      const ValueInfo& v = values[net.inputs_[i].value];
      input_bytes_.push_back(size_t(B * shape_numel(*v.shape)) * (v.index_bound > 0 ? 8 : esz));
      input_off[i] = take_bytes(input_bytes_.back());
    }
  }
  const size_t arena_bytes = total;
  workspace_bytes_ = (workspace_bytes_ + 63) / 64 * 64;
  char* base = nullptr;
  if (gpu_) {
    gpu_check(gpu_->set_device(r.device_index), "set_device");
    gpu_check(gpu_->alloc(arena_bytes + workspace_bytes_, &device_arena_), "memory allocation for a plan");
    base = static_cast<char*>(device_arena_);
  } else {
    arena_ = Tensor::empty({int64_t((arena_bytes + workspace_bytes_) / 8 + 1)}, DType::F64);
    base = static_cast<char*>(arena_.data);
  }
  workspace_ = workspace_bytes_ ? base + arena_bytes : nullptr;
  bytes_ = arena_bytes + workspace_bytes_;
  auto at = [&](size_t off) -> void* { return off == SIZE_MAX ? nullptr : base + off; };
  if (gpu_) {
    for (size_t p = 0; p < net.params_.size(); ++p) device_params_.emplace_back(int(p), at(param_off[p]));
    for (size_t i = 0; i < net.inputs_.size(); ++i) staged_inputs_.push_back(at(input_off[i]));
    upload_params();
  }
  auto param_ptr = [&](int p) -> void* {
    if (gpu_) return device_params_[p].second;
    return r.dtype == DType::F64 ? net.params_[p].f64.data : net.params_[p].f32.data;
  };
  auto input_index = [&](int v) {
    for (size_t i = 0; i < net.inputs_.size(); ++i)
      if (net.inputs_[i].value == v) return int(i);
    return -1;
  };

  // --- The schedule.
  auto layer_step = [&](int n, bool backward) {
    LayerStep s;
    s.node = n;
    s.backward = backward;
    const int id = int(layer_steps_.size());
    for (size_t i = 0; i < nodes[n].in.size(); ++i) {
      const int v = nodes[n].in[i];
      s.in.push_back(values[v].producer < 0 ? nullptr : at(fwd_off[v]));
      if (values[v].producer < 0) input_uses_.push_back({id, int(i), input_index(v)});
    }
    for (int v : nodes[n].out) s.out.push_back(at(fwd_off[v]));
    for (int p : nodes[n].params) s.param.push_back(param_ptr(p));
    s.saved = at(saved_off[n]);
    s.prepared = at(prepared_off[n]);
    if (backward) {
      for (int v : nodes[n].out) s.dout.push_back(at(grad_off[v]));
      s.din.assign(nodes[n].in.size(), nullptr);
      for (int p : nodes[n].params) s.dparam.push_back(param_requested[p] ? at(pgrad_off[p]) : nullptr);
    }
    layer_steps_.push_back(std::move(s));
    Step st{};
    st.kind = Step::Layer;
    st.layer_step = id;
    steps_.push_back(st);
    return id;
  };
  auto fill = [&](void* dst, int64_t n, double value) {
    Step st{};
    st.kind = Step::Fill;
    st.dst = dst;
    st.n = n;
    st.value = value;
    steps_.push_back(st);
  };

  for (int n : net.order_) {
    if (!run_fwd[n] || fused_into[n] >= 0) continue;  // a fused elementwise layer: its producer computes it
    const int id = layer_step(n, false);
    for (size_t m = 0; m < N; ++m) {
      if (fused_into[m] != n) continue;
      LayerStep& ls = layer_steps_[id];
      ls.fused = nodes[m].layer->unary_function();
      ls.activated = at(fwd_off[nodes[m].out[0]]);
      if (!any_grad) ls.out[0] = ls.activated;  // nothing needs the pre-activation: compute in place
    }
  }
  for (size_t n = 0; n < N; ++n) {
    if (prepared_off[n] == SIZE_MAX) continue;
    std::vector<const void*> params;
    for (int p : nodes[n].params) params.push_back(param_ptr(p));
    nodes[n].layer->prepare(params.data(), r.dtype, r.device, at(prepared_off[n]));
  }

  if (any_grad) {
    // Seeds: 1 for every output (gradient of the sum), or the imposed gradients, 0 for the rest.
    std::fill(initialised.begin(), initialised.end(), 0);
    for (size_t o = 0; o < net.outputs_.size(); ++o) {
      const int v = net.outputs_[o].value;
      if (grad_off[v] == SIZE_MAX) continue;
      auto it = std::find(r.imposed.begin(), r.imposed.end(), int(o));
      if (it != r.imposed.end()) {
        Step st{};
        st.kind = Step::CopyImposed;
        st.dst = at(grad_off[v]);
        st.n = numel(v);
        st.slot = int(it - r.imposed.begin());
        steps_.push_back(st);
      } else {
        fill(at(grad_off[v]), numel(v), r.imposed.empty() ? 1.0 : 0.0);
      }
      initialised[v] = 1;
    }
    size_t c = 0;
    for (auto it = net.order_.rbegin(); it != net.order_.rend(); ++it) {
      const int n = *it;
      if (!run_bwd[n]) continue;
      for (int v : nodes[n].out)
        if (!initialised[v] && grad_off[v] != SIZE_MAX) {
          fill(at(grad_off[v]), numel(v), 0.0);
          initialised[v] = 1;
        }
      if (bwd_fused[n]) continue;  // its producer's backward step does it
      const int id = layer_step(n, true);
      for (size_t m = 0; m < N; ++m) {
        if (fused_into[m] != n || !bwd_fused[m]) continue;
        const int w = nodes[m].out[0];  // the activated value: its gradient is what this step reads
        LayerStep& ls = layer_steps_[id];
        ls.fused = nodes[m].layer->unary_function();
        ls.activated = at(fwd_off[w]);
        ls.dout[0] = at(grad_off[w]);
      }
      std::vector<Step> adds;
      for (; c < contributions.size() && contributions[c].node == n; ++c) {
        const Contribution& k = contributions[c];
        const int v = nodes[n].in[k.slot];
        if (k.scratch == SIZE_MAX) {
          layer_steps_[id].din[k.slot] = at(grad_off[v]);
        } else {
          layer_steps_[id].din[k.slot] = at(k.scratch);
          Step st{};
          st.kind = Step::Axpy;
          st.src = at(k.scratch);
          st.dst = at(grad_off[v]);
          st.n = numel(v);
          adds.push_back(st);
        }
        initialised[v] = 1;
      }
      steps_.insert(steps_.end(), adds.begin(), adds.end());
    }
    for (int i : r.input_grads) {
      const int v = net.inputs_[i].value;
      if (!initialised[v]) fill(at(grad_off[v]), numel(v), 0.0);  // the input does not reach the outputs
    }
    for (int p : r.param_grads)
      if (!run_bwd[net.params_[p].node]) fill(at(pgrad_off[p]), shape_numel(net.params_[p].shape), 0.0);
  }

  // --- Results into the caller's buffers.
  for (size_t j = 0; j < r.outputs.size(); ++j) {
    const int v = net.outputs_[r.outputs[j]].value;
    Step st{};
    st.kind = Step::CopyOutput;
    st.src = at(fwd_off[v]);
    st.n = numel(v);
    st.slot = int(j);
    steps_.push_back(st);
  }
  for (size_t j = 0; j < r.probes.size(); ++j) {
    const int v = r.probes[j];
    Step st{};
    st.kind = values[v].producer < 0 ? Step::CopyProbeInput : Step::CopyProbe;
    st.src = at(fwd_off[v]);
    st.input = input_index(v);
    st.n = values[v].index_bound > 0 ? numel(v) * 8 / int64_t(esz) : numel(v);
    st.slot = int(j);
    steps_.push_back(st);
  }
  for (size_t j = 0; j < r.input_grads.size(); ++j) {
    const int v = net.inputs_[r.input_grads[j]].value;
    Step st{};
    st.kind = Step::CopyInputGrad;
    st.src = at(grad_off[v]);
    st.n = numel(v);
    st.slot = int(j);
    steps_.push_back(st);
  }
  for (size_t j = 0; j < r.param_grads.size(); ++j) {
    const int p = r.param_grads[j];
    Step st{};
    st.kind = Step::CopyParamGrad;
    st.src = at(pgrad_off[p]);
    st.n = shape_numel(net.params_[p].shape);
    st.slot = int(j);
    steps_.push_back(st);
  }
}

bool Plan::build_fused_mlp() {
  // Opt-in (PORTGRAD_FUSED_MLP=1, read per plan): on an H200 the fused kernel as it stands ran at
  // about half the speed of a kernel per layer (bench/README.md, run 8).
  const char* env = std::getenv("PORTGRAD_FUSED_MLP");
  const bool off = !env || std::string(env) != "1";
  const Net& net = net_;
  const Request& r = req_;
  if (off || r.train || !r.probes.empty() || net.inputs_.size() != 1 || net.outputs_.size() != 1) return false;
  const auto& values = net.values_;
  const auto& nodes = net.nodes_;
  if (values[net.inputs_[0].value].index_bound > 0) return false;

  // The net must be Linear [f] Linear [f] ...: each node feeding only the next, the last the output.
  kernels::MlpShape shape;
  int node_of_layer[kernels::kMlpMaxLayers] = {};
  int v = net.inputs_[0].value;
  for (size_t k = 0; k < net.order_.size(); ++k) {
    const NodeInfo& node = nodes[net.order_[k]];
    if (node.in.size() != 1 || node.out.size() != 1 || node.in[0] != v) return false;
    if (k > 0 && (values[v].consumers.size() != 1)) return false;
    const int64_t n_in = shape_numel(*values[v].shape), n_out = shape_numel(*values[node.out[0]].shape);
    const kernels::UnaryFn f = node.layer->unary_function();
    if (std::string(node.layer->type()) == "LinearLayer") {
      const int l = shape.layers;
      if (l == kernels::kMlpMaxLayers || n_in > kernels::kMlpMaxWidth || n_out > kernels::kMlpMaxWidth) return false;
      shape.dims[l] = int(n_in);
      shape.dims[l + 1] = int(n_out);
      shape.act[l] = kernels::UnaryFn::Count;
      node_of_layer[l] = net.order_[k];
      ++shape.layers;
    } else if (f != kernels::UnaryFn::Count && shape.layers > 0 &&
               shape.act[shape.layers - 1] == kernels::UnaryFn::Count) {
      shape.act[shape.layers - 1] = f;
    } else {
      return false;
    }
    v = node.out[0];
  }
  if (shape.layers == 0 || v != net.outputs_[0].value || !kernels::mlp_shape_valid(shape)) return false;
  shape.backward = !r.input_grads.empty() || !r.param_grads.empty();
  shape.param_grads = !r.param_grads.empty();

  gpu_ = &require_gpu_backend();
  gpu_check(gpu_->set_device(r.device_index), "set_device");
  const bool f64 = r.dtype == DType::F64;
  const size_t esz = dtype_size(r.dtype);
  const int64_t B = r.batch;
  const size_t ws = f64 ? gpu_->f64.mlp->workspace_bytes(shape, B) : gpu_->f32.mlp->workspace_bytes(shape, B);
  if (ws == SIZE_MAX) {
    gpu_ = nullptr;
    return false;  // one block cannot hold it: a step per layer
  }

  // The arena: the net's arrays, the staged input, the results, the imposed gradient, the workspace.
  size_t total = 0;
  auto take = [&](size_t bytes) {
    const size_t at = total;
    total += (bytes + 63) / 64 * 64;
    return at;
  };
  const int L = shape.layers;
  std::vector<size_t> param_off(net.params_.size());
  for (size_t p = 0; p < net.params_.size(); ++p) param_off[p] = take(size_t(shape_numel(net.params_[p].shape)) * esz);
  input_bytes_.push_back(size_t(B) * shape.dims[0] * esz);
  const size_t x_off = take(input_bytes_[0]);
  const size_t y_off = r.outputs.empty() ? SIZE_MAX : take(size_t(B) * shape.dims[L] * esz);
  const size_t dy_off = r.imposed.empty() ? SIZE_MAX : take(size_t(B) * shape.dims[L] * esz);
  const size_t dx_off = r.input_grads.empty() ? SIZE_MAX : take(size_t(B) * shape.dims[0] * esz);
  std::vector<size_t> pgrad_off;
  for (int p : r.param_grads) pgrad_off.push_back(take(size_t(shape_numel(net.params_[p].shape)) * esz));
  const size_t ws_off = take(ws);
  gpu_check(gpu_->alloc(total, &device_arena_), "memory allocation for a plan");
  bytes_ = total;
  char* base = static_cast<char*>(device_arena_);
  auto at = [&](size_t off) -> void* { return off == SIZE_MAX ? nullptr : base + off; };
  for (size_t p = 0; p < net.params_.size(); ++p) device_params_.emplace_back(int(p), at(param_off[p]));
  staged_inputs_.push_back(at(x_off));
  upload_params();

  auto fill_args = [&](auto& a) {
    using T = std::remove_pointer_t<decltype(a.y)>;
    a.shape = shape;
    a.batch = B;
    a.x = static_cast<const T*>(at(x_off));
    for (int l = 0; l < L; ++l) {
      const NodeInfo& node = nodes[node_of_layer[l]];
      a.weight[l] = static_cast<const T*>(device_params_[node.params[0]].second);
      a.bias[l] = node.params.size() > 1 ? static_cast<const T*>(device_params_[node.params[1]].second) : nullptr;
    }
    a.y = static_cast<T*>(at(y_off));
    a.dy = static_cast<const T*>(at(dy_off));
    a.dx = static_cast<T*>(at(dx_off));
    for (size_t j = 0; j < r.param_grads.size(); ++j) {
      const int p = r.param_grads[j], node = net.params_[p].node;
      for (int l = 0; l < L; ++l)
        if (node_of_layer[l] == node) {
          T** slot = nodes[node].params[0] == p ? &a.dweight[l] : &a.dbias[l];
          *slot = static_cast<T*>(at(pgrad_off[j]));
        }
    }
    a.workspace = at(ws_off);
  };
  if (f64) fill_args(mlp_f64_);
  else fill_args(mlp_f32_);

  auto step = [&](Step::Kind kind, void* dst, const void* src, int64_t n, int slot) {
    Step st{};
    st.kind = kind;
    st.dst = dst;
    st.src = src;
    st.n = n;
    st.slot = slot;
    steps_.push_back(st);
  };
  if (!r.imposed.empty()) step(Step::CopyImposed, at(dy_off), nullptr, B * shape.dims[L], 0);
  step(Step::FusedMlp, nullptr, nullptr, 0, 0);
  if (!r.outputs.empty()) step(Step::CopyOutput, nullptr, at(y_off), B * shape.dims[L], 0);
  if (!r.input_grads.empty()) step(Step::CopyInputGrad, nullptr, at(dx_off), B * shape.dims[0], 0);
  for (size_t j = 0; j < r.param_grads.size(); ++j)
    step(Step::CopyParamGrad, nullptr, at(pgrad_off[j]), shape_numel(net.params_[r.param_grads[j]].shape), int(j));
  return true;
}

std::vector<std::string> Plan::describe() const {
  static const char* kinds[] = {"layer", "fill", "copy imposed gradient", "accumulate gradient", "copy output",
                                "copy input gradient", "copy array gradient", "copy internal value",
                                "copy internal value"};
  std::vector<std::string> lines;
  for (const Step& st : steps_) {
    if (st.kind == Step::FusedMlp) {
      const kernels::MlpShape& s = req_.dtype == DType::F64 ? mlp_f64_.shape : mlp_f32_.shape;
      std::string line = "fused MLP ";
      for (int l = 0; l <= s.layers; ++l) line += cat(l ? "-" : "", s.dims[l]);
      for (int l = 0; l < s.layers; ++l)
        if (s.act[l] != kernels::UnaryFn::Count) line += cat(" ", kernels::unary_name(s.act[l]), "@", l);
      line += s.backward ? cat(": forward, backward", s.param_grads ? " with array gradients" : "") : ": forward";
      lines.push_back(line);
      continue;
    }
    if (st.kind != Step::Layer) {
      lines.push_back(st.kind == Step::Fill ? cat("fill ", st.value) : kinds[st.kind]);
      continue;
    }
    const LayerStep& ls = layer_steps_[st.layer_step];
    const NodeInfo& node = net_.nodes_[ls.node];
    std::string line = cat(ls.backward ? "backward " : "forward ", node.path.empty() ? "." : node.path, " (",
                           node.layer->type(), ")");
    if (ls.fused != kernels::UnaryFn::Count) line += cat(" + ", kernels::unary_name(ls.fused));
    if (ls.backward) {
      std::string what;
      const auto in_names = node.layer->inputs();
      for (size_t i = 0; i < ls.din.size(); ++i)
        if (ls.din[i]) what += cat(what.empty() ? "" : " ", "d", in_names[i]);
      for (size_t p = 0; p < ls.dparam.size(); ++p)
        if (ls.dparam[p]) {
          const std::string& path = net_.params_[node.params[p]].path;
          what += cat(what.empty() ? "" : " ", "d", path.substr(path.rfind('/') + 1));
        }
      line += cat(": ", what.empty() ? "-" : what);
    }
    lines.push_back(line);
  }
  return lines;
}

// The caller's buffer a result step writes, or null for every other step.
void* Plan::result_dst(const Step& st, const Buffers& b) {
  switch (st.kind) {
    case Step::CopyOutput: return b.outputs[st.slot];
    case Step::CopyInputGrad: return b.input_grads[st.slot];
    case Step::CopyParamGrad: return b.param_grads[st.slot];
    case Step::CopyProbe:
    case Step::CopyProbeInput: return b.probes[st.slot];
    default: return nullptr;
  }
}

Plan::~Plan() {
  if (!gpu_) return;
  if (graph_) gpu_->graph_destroy(graph_);
  gpu_->free(device_arena_);
}

// Copies the net's arrays to the plan's device copies (once: a net's arrays never change).
void Plan::upload_params() {
  const size_t esz = dtype_size(req_.dtype);
  for (const auto& [p, dst] : device_params_) {
    const ParamInfo& info = net_.params_[p];
    const Tensor& host = req_.dtype == DType::F64 ? info.f64 : info.f32;
    gpu_check(gpu_->copy(dst, host.data, size_t(shape_numel(info.shape)) * esz, CopyKind::HostToDevice),
              "copy of the net's arrays to the device");
  }
  gpu_check(gpu_->synchronize(), "copy of the net's arrays to the device");
}

void Plan::run(const Buffers& b) {
  if (gpu_) return run_gpu(b);
  for (const InputUse& u : input_uses_) layer_steps_[u.layer_step].in[u.slot] = b.inputs[u.input];
  run_steps(b, false);
}

void Plan::run_gpu(const Buffers& b) {
  gpu_check(gpu_->set_device(req_.device_index), "set_device");
  auto kind = [&](const void* p, bool to_device) {
    const bool on_device = gpu_->pointer_device(p) >= 0;
    return on_device ? CopyKind::DeviceToDevice : to_device ? CopyKind::HostToDevice : CopyKind::DeviceToHost;
  };
  // Inputs are staged into the plan's memory, so the (captured) compute steps always read the same addresses.
  for (size_t i = 0; i < staged_inputs_.size(); ++i)
    gpu_check(gpu_->copy(staged_inputs_[i], b.inputs[i], input_bytes_[i], kind(b.inputs[i], true)), "input copy");
  for (const InputUse& u : input_uses_) layer_steps_[u.layer_step].in[u.slot] = staged_inputs_[u.input];
  const size_t esz = dtype_size(req_.dtype);
  for (const Step& st : steps_)
    if (st.kind == Step::CopyImposed)
      gpu_check(gpu_->copy(st.dst, b.imposed[st.slot], size_t(st.n) * esz, kind(b.imposed[st.slot], true)),
                "copy of an imposed gradient");

  static const bool graphs_off = [] {
    const char* e = std::getenv("PORTGRAD_CUDA_GRAPHS");
    return e && std::string(e) == "0";
  }();
  // The first run launches directly (lazy library set-up cannot be captured); later Test-mode runs
  // replay a graph. Train mode draws a new dropout seed per call, so it is never captured.
  if (!graph_ && !graph_failed_ && runs_ > 0 && !req_.train && !graphs_off && gpu_->capture_begin) {
    // A capture launches nothing: a graph that could not be made leaves the direct run below.
    if (gpu_->capture_begin() == nullptr) {
      run_steps(b, true);
      if (gpu_->capture_end(&graph_) != nullptr) graph_ = nullptr;
    }
    graph_failed_ = !graph_;
  }
  if (graph_) gpu_check(gpu_->graph_launch(graph_), "graph launch");
  else run_steps(b, true);
  ++runs_;

  for (const Step& st : steps_)
    if (void* dst = result_dst(st, b)) {
      const void* src = st.kind == Step::CopyProbeInput ? staged_inputs_[st.input] : st.src;
      gpu_check(gpu_->copy(dst, src, size_t(st.n) * esz, kind(dst, false)), "result copy");
    }
  gpu_check(gpu_->synchronize(), "evaluation");
}

// Every step in order; with compute_only, just the layer, fill and accumulation steps (what a GPU
// plan launches, or captures into a graph, between its copies in and out).
void Plan::run_steps(const Buffers& b, bool compute_only) {
  const size_t esz = dtype_size(req_.dtype);
  for (const Step& st : steps_) {
    if (compute_only && st.kind != Step::Layer && st.kind != Step::Fill && st.kind != Step::Axpy &&
        st.kind != Step::FusedMlp)
      continue;
    switch (st.kind) {
      case Step::FusedMlp:
        if (req_.dtype == DType::F64) ops::mlp<double>().run(mlp_f64_);
        else ops::mlp<float>().run(mlp_f32_);
        break;
      case Step::Layer: {
        const LayerStep& ls = layer_steps_[st.layer_step];
        LayerArgs a;
        a.batch = req_.batch;
        a.dtype = req_.dtype;
        a.device = req_.device;
        a.in = ls.in.data();
        a.out = ls.out.data();
        a.param = ls.param.data();
        a.dout = ls.dout.data();
        a.din = ls.din.data();
        a.dparam = ls.dparam.data();
        a.workspace = workspace_;
        a.saved = ls.saved;
        a.prepared = ls.prepared;
        a.train = req_.train;
        a.seed = b.seed;
        const Layer& layer = *net_.nodes_[ls.node].layer;
        if (ls.backward && ls.fused != kernels::UnaryFn::Count)
          layer.backward_activated(a, ls.fused, ls.out[0], ls.activated);
        else if (ls.backward) layer.backward(a);
        else if (ls.fused != kernels::UnaryFn::Count) layer.forward_activated(a, ls.fused, ls.activated);
        else layer.forward(a);
        break;
      }
      case Step::Fill:
        if (req_.dtype == DType::F64) ops::fill<double>(req_.device, st.n, st.value, static_cast<double*>(st.dst));
        else ops::fill<float>(req_.device, st.n, static_cast<float>(st.value), static_cast<float*>(st.dst));
        break;
      case Step::CopyImposed:
        std::memcpy(st.dst, b.imposed[st.slot], size_t(st.n) * esz);
        break;
      case Step::Axpy:
        with_float_type(req_.dtype, [&](auto t) {
          using T = decltype(t);
          ops::vector<T>(req_.device).axpy(st.n, T(1), static_cast<const T*>(st.src), static_cast<T*>(st.dst));
        });
        break;
      default:  // a result into the caller's buffer
        std::memcpy(result_dst(st, b), st.kind == Step::CopyProbeInput ? b.inputs[st.input] : st.src,
                    size_t(st.n) * esz);
        break;
    }
  }
}

}  // namespace portgrad
