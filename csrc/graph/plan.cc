/// @brief Compiling a request into a schedule, and running it: the passes of graph/passes.h decide
/// what runs, what is fused and where every buffer lives; the emitters below turn that into steps.
#include "graph/plan.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "graph/passes.h"
#include "ops/ops.h"

namespace portgrad {

Plan::Plan(Net& net, const Request& r) : net_(net), req_(r) {
  // A constructor that throws runs no destructor: the device memory taken so far goes back here.
  try {
    build();
  } catch (...) {
    release_device();
    throw;
  }
}

void Plan::build() {
  const Net& net = net_;
  const Request& r = req_;
  if (r.device == Device::GPU && build_fused_mlp()) return;
  const passes::Work work = passes::select_work(net, r);
  const passes::Fusion fusion = passes::fuse_activations(net, r, work);
  passes::Layout layout = passes::lay_out_arena(net, r, work, fusion);
  const std::vector<passes::Contribution> contributions = passes::plan_accumulation(net, r, work, fusion, layout);
  passes::stage_on_device(net, r, layout);
  refuse_unsupported(work);  // before allocate: a refused request takes no memory
  allocate(layout);
  emit_forward(work, fusion, layout);
  if (work.any_tangent) emit_tangents(work, fusion, layout);
  if (work.any_grad) emit_backward(work, fusion, layout, contributions);
  if (work.any_grad_tangent) emit_grad_tangents(work, layout, contributions);
  emit_results(work, layout);
  if (r.device == Device::CPU) find_direct_results();
}

// Every reason to refuse the request, checked before any memory is taken. Per-example array
// gradients are refused by a layer that owns such an array without supporting them, and by every
// layer downstream of one whose backward mixes the examples' gradients (BatchNormalizationLayer
// in Train mode): past it, no example's gradient is its own.
void Plan::refuse_unsupported(const passes::Work& work) const {
  const auto& nodes = net_.nodes_;
  const auto& values = net_.values_;
  std::vector<char> downstream(nodes.size(), 0);  // downstream of a per-example array's user
  for (int n : net_.order_) {
    const NodeInfo& node = nodes[n];
    if (work.run_tangent[n]) {
      const std::string why = node.layer->no_jvp(req_.train);
      if (!why.empty()) throw ValueError(cat("NetPortTangent: ", node.where, ": ", why));
    }
    if (!work.run_backward[n]) continue;
    if (work.any_grad_tangent) {
      const std::string why = node.layer->no_jvp_backward(req_.train);
      if (!why.empty()) throw ValueError(cat("NetPortTangent(NetPortGradient(...)): ", node.where, ": ", why));
    }
    bool owns = false;
    for (int p : node.params) owns |= bool(work.array_per_example[p]);
    bool below = owns;
    for (int v : node.in) below |= values[v].producer >= 0 && downstream[values[v].producer];
    downstream[n] = below;
    if (owns || (below && node.layer->couples_examples(req_.train))) {
      const std::string why = node.layer->no_per_example(req_.train);
      if (!why.empty()) throw ValueError(cat("NetPortGradient(..., PerExample=True): ", node.where, ": ", why));
    }
  }
}

// The arena (and after it the workspace) on the plan's device; a GPU plan's copies of the net's
// arrays are uploaded into it.
void Plan::allocate(const passes::Layout& layout) {
  workspace_bytes_ = layout.workspace_bytes;
  const size_t total = layout.arena_bytes + workspace_bytes_;
  if (req_.device == Device::GPU) {
    gpu_ = &require_gpu_backend();
    gpu_check(gpu_->set_device(req_.device_index), "set_device");
    gpu_check(gpu_->alloc(total, &device_arena_), "memory allocation for a plan");
    base_ = static_cast<char*>(device_arena_);
  } else {
    arena_ = Tensor::empty({int64_t(total / 8 + 1)}, DType::F64);
    base_ = static_cast<char*>(arena_.data);
  }
  workspace_ = workspace_bytes_ ? base_ + layout.arena_bytes : nullptr;
  bytes_ = total;
  if (gpu_) {
    for (size_t p = 0; p < net_.params_.size(); ++p) device_params_.emplace_back(int(p), at(layout.device_array[p]));
    for (size_t i = 0; i < net_.inputs_.size(); ++i) staged_inputs_.push_back(at(layout.device_input[i]));
    input_bytes_ = layout.input_bytes;
    upload_params();
  }
}

void* Plan::at(size_t offset) const { return offset == passes::kNone ? nullptr : base_ + offset; }

void* Plan::array_ptr(int p) const {
  if (gpu_) return device_params_[p].second;
  return req_.dtype == DType::F64 ? net_.params_[p].f64.data : net_.params_[p].f32.data;
}

int Plan::input_index(int v) const {
  for (size_t i = 0; i < net_.inputs_.size(); ++i)
    if (net_.inputs_[i].value == v) return int(i);
  return -1;
}

int64_t Plan::numel(int v) const { return req_.batch * shape_numel(*net_.values_[v].shape); }

int64_t Plan::array_grad_numel(int p, const passes::Work& work) const {
  return shape_numel(net_.params_[p].shape) * (work.array_per_example[p] ? req_.batch : 1);
}

int Plan::add_layer_step(int n, bool backward, const passes::Layout& layout, const passes::Work& work) {
  const NodeInfo& node = net_.nodes_[n];
  const auto& values = net_.values_;
  LayerStep s;
  s.node = n;
  s.backward = backward;
  const int id = int(layer_steps_.size());
  for (size_t i = 0; i < node.in.size(); ++i) {
    const int v = node.in[i];
    s.in.push_back(values[v].producer < 0 ? nullptr : at(layout.value[v]));
    if (values[v].producer < 0) input_uses_.push_back({id, int(i), input_index(v)});
  }
  for (int v : node.out) s.out.push_back(at(layout.value[v]));
  for (int p : node.params) s.param.push_back(array_ptr(p));
  s.saved = at(layout.saved[n]);
  s.prepared = at(layout.prepared[n]);
  if (backward) {
    for (int v : node.out) s.dout.push_back(at(layout.grad[v]));
    s.din.assign(node.in.size(), nullptr);
    for (int p : node.params) s.dparam.push_back(work.array_requested[p] ? at(layout.array_grad[p]) : nullptr);
    bool any = false;
    for (int p : node.params) {
      s.per_example.push_back(work.array_per_example[p]);
      any |= bool(work.array_per_example[p]);
    }
    if (!any) s.per_example.clear();
  }
  layer_steps_.push_back(std::move(s));
  Step st{};
  st.kind = Step::Layer;
  st.layer_step = id;
  steps_.push_back(st);
  return id;
}

void Plan::add_fill(void* dst, int64_t n, double value) {
  Step st{};
  st.kind = Step::Fill;
  st.dst = dst;
  st.n = n;
  st.value = value;
  steps_.push_back(st);
}

// Forward steps in topological order (a fused elementwise node is computed by its producer), then
// the work done once on the arrays (packing weights).
void Plan::emit_forward(const passes::Work& work, const passes::Fusion& fusion, const passes::Layout& layout) {
  const auto& nodes = net_.nodes_;
  const size_t N = nodes.size();
  for (int n : net_.order_) {
    if (!work.run_forward[n] || fusion.fused_into[n] >= 0) continue;
    const int id = add_layer_step(n, false, layout, work);
    for (size_t m = 0; m < N; ++m) {
      if (fusion.fused_into[m] != n) continue;
      LayerStep& ls = layer_steps_[id];
      ls.fused = nodes[m].layer->unary_function();
      ls.activated = at(layout.value[nodes[m].out[0]]);
      if (!work.any_grad && !work.any_tangent) ls.out[0] = ls.activated;  // nothing needs the pre-activation
    }
  }
  refresh_prepared();
}

void Plan::refresh_prepared() {
  for (const LayerStep& ls : layer_steps_) {
    if (!ls.prepared || ls.backward || ls.tangent) continue;
    std::vector<const void*> params;
    for (int p : net_.nodes_[ls.node].params) params.push_back(array_ptr(p));
    net_.nodes_[ls.node].layer->prepare(params.data(), req_.dtype, req_.device, ls.prepared);
  }
}

void* Plan::array_data(int p) const {
  if (gpu_ && (size_t(p) >= device_params_.size() || !device_params_[p].second)) return nullptr;
  return array_ptr(p);
}

void* Plan::forward_saved(int node) const {
  for (const LayerStep& ls : layer_steps_)
    if (ls.node == node && !ls.backward && !ls.tangent) return ls.saved;
  return nullptr;
}

// Seeds (1 for every output: the gradient of their sum; or the imposed gradients, 0 for the other
// outputs), backward steps in reverse topological order with their accumulations, and zeros for
// requested gradients nothing flows into.
void Plan::emit_backward(const passes::Work& work, const passes::Fusion& fusion, const passes::Layout& layout,
                         const std::vector<passes::Contribution>& contributions) {
  const Net& net = net_;
  const Request& r = req_;
  const auto& nodes = net.nodes_;
  const size_t N = nodes.size();
  std::vector<char> initialised(net.values_.size(), 0);
  for (size_t o = 0; o < net.outputs_.size(); ++o) {
    const int v = net.outputs_[o].value;
    if (layout.grad[v] == passes::kNone) continue;
    auto it = std::find(r.imposed.begin(), r.imposed.end(), int(o));
    if (it != r.imposed.end()) {
      Step st{};
      st.kind = Step::CopyImposed;
      st.dst = at(layout.grad[v]);
      st.n = numel(v);
      st.slot = int(it - r.imposed.begin());
      steps_.push_back(st);
    } else {
      add_fill(at(layout.grad[v]), numel(v), r.imposed.empty() ? 1.0 : 0.0);
    }
    initialised[v] = 1;
  }
  size_t c = 0;
  for (auto it = net.order_.rbegin(); it != net.order_.rend(); ++it) {
    const int n = *it;
    if (!work.run_backward[n]) continue;
    for (int v : nodes[n].out)
      if (!initialised[v] && layout.grad[v] != passes::kNone) {
        add_fill(at(layout.grad[v]), numel(v), 0.0);
        initialised[v] = 1;
      }
    if (fusion.backward_fused[n]) continue;  // its producer's backward step does it
    const int id = add_layer_step(n, true, layout, work);
    for (size_t m = 0; m < N; ++m) {
      if (fusion.fused_into[m] != n || !fusion.backward_fused[m]) continue;
      const int w = nodes[m].out[0];  // the activated value: its gradient is what this step reads
      LayerStep& ls = layer_steps_[id];
      ls.fused = nodes[m].layer->unary_function();
      ls.activated = at(layout.value[w]);
      ls.dout[0] = at(layout.grad[w]);
    }
    wire_contributions(id, contributions, c, layout.grad, layout.array_grad, work, false, initialised);
  }
  for (int i : r.input_grads) {
    const int v = net.inputs_[i].value;
    if (!initialised[v]) add_fill(at(layout.grad[v]), numel(v), 0.0);  // the input does not reach the outputs
  }
  for (int p : r.param_grads) {
    const auto& users = net.params_[p].users;
    if (std::none_of(users.begin(), users.end(), [&](int n) { return work.run_backward[n]; }))
      add_fill(at(layout.array_grad[p]), array_grad_numel(p, work), 0.0);
  }
}

// Forward mode, after the forward steps (a tangent step reads its layer's values): the imposed
// tangents copied in, zeros for every other tangent no step writes, then the tangent steps in
// topological order (a tangent-fused elementwise node's tangent written by its producer's step).
void Plan::emit_tangents(const passes::Work& work, const passes::Fusion& fusion, const passes::Layout& layout) {
  const Net& net = net_;
  const Request& r = req_;
  const auto& nodes = net.nodes_;
  const auto& values = net.values_;
  auto copy_in = [&](Step::Kind kind, void* dst, int64_t n, int slot) {
    Step st{};
    st.kind = kind;
    st.dst = dst;
    st.n = n;
    st.slot = slot;
    steps_.push_back(st);
  };
  const int64_t K = r.directions;
  std::vector<char> written(values.size(), 0);
  for (size_t j = 0; j < r.tangent_inputs.size(); ++j) {
    const int v = net.inputs_[r.tangent_inputs[j]].value;
    copy_in(Step::CopyInputTangent, at(layout.tangent[v]), numel(v) * K, int(j));
    written[v] = 1;
  }
  for (size_t j = 0; j < r.tangent_params.size(); ++j) {
    const int p = r.tangent_params[j];
    copy_in(Step::CopyParamTangent, at(layout.array_tangent[p]), shape_numel(net.params_[p].shape), int(j));
  }
  for (int n : net.order_)
    if (work.run_tangent[n])
      for (int v : nodes[n].out) written[v] = 1;
  for (size_t v = 0; v < values.size(); ++v)
    if (layout.tangent[v] != passes::kNone && !written[v]) add_fill(at(layout.tangent[v]), numel(int(v)) * K, 0.0);
  const size_t esz = dtype_size(r.dtype);
  for (int n : net.order_) {
    if (!work.run_tangent[n] || fusion.tangent_fused[n]) continue;
    const NodeInfo& node = nodes[n];
    const int id = add_layer_step(n, false, layout, work);
    LayerStep& ls = layer_steps_[id];
    ls.tangent = true;
    for (int v : node.in) {
      ls.tin.push_back(values[v].index_bound > 0 ? nullptr : at(layout.tangent[v]));
      ls.tin_stride.push_back(size_t(numel(v)) * esz);
    }
    for (int p : node.params) ls.tparam.push_back(at(layout.array_tangent[p]));
    for (int v : node.out) {
      ls.tout.push_back(at(layout.tangent[v]));
      ls.tout_stride.push_back(size_t(numel(v)) * esz);
    }
    for (size_t m = 0; m < nodes.size(); ++m) {
      if (fusion.fused_into[m] != n || !fusion.tangent_fused[m]) continue;
      const int w = nodes[m].out[0];  // the activated value: this step writes its tangent
      ls.fused = nodes[m].layer->unary_function();
      ls.activated = at(layout.value[w]);
      ls.tout[0] = at(layout.tangent[w]);
    }
  }
}

// Points layer step `id`'s gradient outputs at their buffers (`grad` per value, `array_grad` per
// array; the layer step already points a first array contribution there): a first contribution
// writes the buffer, a later one writes its scratch and an accumulation step after the layer step
// adds it. Consumes the node's entries of `contributions` from index c.
void Plan::wire_contributions(int id, const std::vector<passes::Contribution>& contributions, size_t& c,
                              const std::vector<size_t>& grad, const std::vector<size_t>& array_grad,
                              const passes::Work& work, bool tangents, std::vector<char>& initialised) {
  LayerStep& ls = layer_steps_[id];
  const NodeInfo& node = net_.nodes_[ls.node];
  std::vector<Step> adds;
  auto add = [&](const void* src, void* dst, int64_t n) {
    Step st{};
    st.kind = Step::Axpy;
    st.src = src;
    st.dst = dst;
    st.n = n;
    adds.push_back(st);
  };
  for (; c < contributions.size() && contributions[c].node == ls.node; ++c) {
    const passes::Contribution& k = contributions[c];
    if (k.array) {
      const int p = node.params[k.slot];
      if (k.scratch == passes::kNone) continue;
      ls.dparam[k.slot] = at(k.scratch);
      add(at(k.scratch), at(array_grad[p]), tangents ? shape_numel(net_.params_[p].shape) : array_grad_numel(p, work));
      continue;
    }
    const int v = node.in[k.slot];
    if (k.scratch == passes::kNone) {
      ls.din[k.slot] = at(grad[v]);
    } else {
      ls.din[k.slot] = at(k.scratch);
      add(at(k.scratch), at(grad[v]), numel(v));
    }
    initialised[v] = 1;
  }
  steps_.insert(steps_.end(), adds.begin(), adds.end());
}

// Second order, after the backward steps (each reads its values, their tangents and its outputs'
// gradients): the tangents of the gradients, in reverse topological order, with the backward's
// accumulation (its scratch buffers are free again); zeros where nothing flows. The seeds (the
// outputs' gradients) are constants: their tangents are zero.
void Plan::emit_grad_tangents(const passes::Work& work, const passes::Layout& layout,
                              const std::vector<passes::Contribution>& contributions) {
  const Net& net = net_;
  const Request& r = req_;
  const auto& nodes = net.nodes_;
  const auto& values = net.values_;
  std::vector<char> initialised(values.size(), 0);
  for (const PortInfo& o : net.outputs_) {
    const int v = o.value;
    if (layout.grad_tangent[v] == passes::kNone || initialised[v]) continue;
    add_fill(at(layout.grad_tangent[v]), numel(v), 0.0);
    initialised[v] = 1;
  }
  size_t c = 0;
  for (auto it = net.order_.rbegin(); it != net.order_.rend(); ++it) {
    const int n = *it;
    if (!work.run_backward[n]) continue;
    const NodeInfo& node = nodes[n];
    for (int v : node.out)
      if (!initialised[v] && layout.grad_tangent[v] != passes::kNone) {
        add_fill(at(layout.grad_tangent[v]), numel(v), 0.0);
        initialised[v] = 1;
      }
    const int id = add_layer_step(n, true, layout, work);
    LayerStep& ls = layer_steps_[id];
    ls.grad_tangent = true;
    ls.per_example.clear();
    for (size_t i = 0; i < ls.din.size(); ++i) ls.din[i] = nullptr;
    for (size_t p = 0; p < ls.dparam.size(); ++p)
      ls.dparam[p] = work.array_requested[node.params[p]] ? at(layout.array_grad_tangent[node.params[p]]) : nullptr;
    for (int v : node.in) ls.tin.push_back(values[v].index_bound > 0 ? nullptr : at(layout.tangent[v]));
    for (int p : node.params) ls.tparam.push_back(at(layout.array_tangent[p]));
    for (int v : node.out) {
      ls.tout.push_back(at(layout.tangent[v]));
      ls.tdout.push_back(at(layout.grad_tangent[v]));
    }
    // The contributions of this node, as the backward made them (in this loop's order).
    wire_contributions(id, contributions, c, layout.grad_tangent, layout.array_grad_tangent, work, true, initialised);
  }
  for (int i : r.grad_tangent_inputs) {
    const int v = net.inputs_[i].value;
    if (!initialised[v]) add_fill(at(layout.grad_tangent[v]), numel(v), 0.0);
  }
  for (size_t p = 0; p < net.params_.size(); ++p) {
    if (!work.array_requested[p]) continue;
    const auto& users = net.params_[p].users;
    if (std::none_of(users.begin(), users.end(), [&](int n) { return work.run_backward[n]; }))
      add_fill(at(layout.array_grad_tangent[p]), shape_numel(net.params_[p].shape), 0.0);
  }
}

// Copies of the results into the caller's buffers.
void Plan::emit_results(const passes::Work& work, const passes::Layout& layout) {
  const Net& net = net_;
  const Request& r = req_;
  auto result = [&](Step::Kind kind, const void* src, int64_t n, int slot) {
    Step st{};
    st.kind = kind;
    st.src = src;
    st.n = n;
    st.slot = slot;
    steps_.push_back(st);
    return &steps_.back();
  };
  for (size_t j = 0; j < r.outputs.size(); ++j) {
    const int v = net.outputs_[r.outputs[j]].value;
    result(Step::CopyOutput, at(layout.value[v]), numel(v), int(j));
  }
  for (size_t j = 0; j < r.probes.size(); ++j) {
    const int v = r.probes[j];
    const bool index = net.values_[v].index_bound > 0;  // int64 values: counted in elements of the dtype
    Step* st = result(net.values_[v].producer < 0 ? Step::CopyProbeInput : Step::CopyProbe, at(layout.value[v]),
                      index ? numel(v) * 8 / int64_t(dtype_size(r.dtype)) : numel(v), int(j));
    st->input = input_index(v);
  }
  for (size_t j = 0; j < r.input_grads.size(); ++j) {
    const int v = net.inputs_[r.input_grads[j]].value;
    result(Step::CopyInputGrad, at(layout.grad[v]), numel(v), int(j));
  }
  for (size_t j = 0; j < r.param_grads.size(); ++j) {
    const int p = r.param_grads[j];
    result(Step::CopyParamGrad, at(layout.array_grad[p]), array_grad_numel(p, work), int(j));
  }
  for (size_t j = 0; j < r.tangent_outputs.size(); ++j) {
    const int v = net.outputs_[r.tangent_outputs[j]].value;
    result(Step::CopyOutputTangent, at(layout.tangent[v]), numel(v) * r.directions, int(j));
  }
  for (size_t j = 0; j < r.grad_tangent_inputs.size(); ++j) {
    const int v = net.inputs_[r.grad_tangent_inputs[j]].value;
    result(Step::CopyInputGradTangent, at(layout.grad_tangent[v]), numel(v), int(j));
  }
  for (size_t j = 0; j < r.grad_tangent_params.size(); ++j) {
    const int p = r.grad_tangent_params[j];
    result(Step::CopyParamGradTangent, at(layout.array_grad_tangent[p]), shape_numel(net.params_[p].shape), int(j));
  }
}

// A result copy whose source one layer step writes (as din, dparam or tout) and nothing else reads
// or writes. Pointers are compared by their start: a buffer that shares memory with the source
// without starting there is never live together with it (the layout's invariant), and after the
// change the source is not written at all.
void Plan::find_direct_results() {
  for (size_t s = 0; s < steps_.size(); ++s) {
    const Step& st = steps_[s];
    if (st.kind != Step::CopyParamGrad && st.kind != Step::CopyInputGrad && st.kind != Step::CopyOutputTangent)
      continue;
    const void* p = st.src;
    int refs = 0;
    DirectResult d{int(s), -1, -1, -1};
    for (size_t t = 0; t < steps_.size(); ++t) refs += t != s && (steps_[t].src == p || steps_[t].dst == p);
    for (size_t l = 0; l < layer_steps_.size(); ++l) {
      const LayerStep& ls = layer_steps_[l];
      auto count = [&](const auto& list, int which) {
        for (size_t k = 0; k < list.size(); ++k)
          if (list[k] == p) {
            ++refs;
            if (which >= 0) d = {int(s), int(l), which, int(k)};
          }
      };
      count(ls.in, -1), count(ls.out, -1), count(ls.param, -1), count(ls.dout, -1), count(ls.tin, -1);
      count(ls.tparam, -1), count(ls.tdout, -1), count(ls.din, 0), count(ls.dparam, 1), count(ls.tout, 2);
      refs += (ls.saved == p) + (ls.prepared == p) + (ls.activated == p);
    }
    if (refs == 1 && d.layer_step >= 0) direct_results_.push_back(d);
  }
}

// Whether [dst, dst + bytes) overlaps an input, an imposed gradient or a tangent of this call.
bool Plan::overlaps_what_is_read(const Buffers& b, const void* dst, size_t bytes) const {
  const char* lo = static_cast<const char*>(dst);
  auto overlaps = [&](const void* p, size_t n) {
    const char* q = static_cast<const char*>(p);
    return n > 0 && bytes > 0 && q < lo + bytes && lo < q + n;
  };
  const size_t esz = dtype_size(req_.dtype);
  for (size_t i = 0; i < net_.inputs_.size() && i < b.inputs.size(); ++i) {
    const ValueInfo& v = net_.values_[net_.inputs_[i].value];
    if (overlaps(b.inputs[i], size_t(numel(net_.inputs_[i].value)) * (v.index_bound > 0 ? 8 : esz))) return true;
  }
  for (const Step& st : steps_)
    if (const void* src = imposed_src(st, b))
      if (overlaps(src, size_t(st.n) * esz)) return true;
  return false;
}

// Per call: each direct result's writer gets the caller's buffer (its copy is skipped), or the
// arena again where that buffer overlaps what the call reads.
void Plan::point_direct_results(const Buffers& b) {
  const size_t esz = dtype_size(req_.dtype);
  for (const DirectResult& d : direct_results_) {
    Step& st = steps_[d.step];
    void* dst = result_dst(st, b);
    st.direct = dst && !overlaps_what_is_read(b, dst, size_t(st.n) * esz);
    LayerStep& ls = layer_steps_[d.layer_step];
    auto& list = d.list == 0 ? ls.din : d.list == 1 ? ls.dparam : ls.tout;
    list[d.slot] = st.direct ? dst : const_cast<void*>(st.src);
  }
}

bool Plan::build_fused_mlp() {
  // Opt-in (PORTGRAD_FUSED_MLP=1, read per plan): on an H200 the fused kernel as it stands ran at
  // about half the speed of a kernel per layer (bench/README.md, run 8).
  const char* env = std::getenv("PORTGRAD_FUSED_MLP");
  const bool off = !env || std::string(env) != "1";
  const Net& net = net_;
  const Request& r = req_;
  const bool per_example = std::find(r.per_example.begin(), r.per_example.end(), char(1)) != r.per_example.end();
  if (off || r.train || per_example || !r.probes.empty() || !r.tangent_outputs.empty() || !r.grad_tangent_inputs.empty() ||
      !r.grad_tangent_params.empty() || net.inputs_.size() != 1 ||
      net.outputs_.size() != 1)
    return false;
  const auto& values = net.values_;
  const auto& nodes = net.nodes_;
  if (values[net.inputs_[0].value].index_bound > 0) return false;
  for (const ParamInfo& p : net.params_)
    if (p.users.size() > 1) return false;  // the fused kernel reads each layer's own arrays

  // The net must be Linear [f] Linear [f] ...: each node feeding only the next, the last the output.
  kernels::MlpShape shape;
  int node_of_layer[kernels::kMlpMaxLayers] = {};
  int v = net.inputs_[0].value;
  for (size_t k = 0; k < net.order_.size(); ++k) {
    const NodeInfo& node = nodes[net.order_[k]];
    if (node.in.size() != 1 || node.out.size() != 1 || node.in[0] != v || node.mapped > 0) return false;
    if (k > 0 && (values[v].consumers.size() != 1)) return false;
    const int64_t n_in = shape_numel(*values[v].shape), n_out = shape_numel(*values[node.out[0]].shape);
    const kernels::UnaryFn f = node.layer->unary_function();
    if (node.layer->is_mlp_linear()) {
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
      const int p = r.param_grads[j], node = net.params_[p].users[0];  // (no shared arrays here)
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
                                "copy internal value", "fused MLP", "copy input tangent", "copy array tangent",
                                "copy output tangent", "copy input gradient's tangent",
                                "copy array gradient's tangent"};
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
    std::string line = cat(ls.grad_tangent ? "gradient tangent " : ls.backward ? "backward " : ls.tangent ? "tangent " : "forward ",
                           node.path.empty() ? "." : node.path, " (",
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

// The caller's buffer an imposed gradient or tangent is copied from, or null for every other step.
const void* Plan::imposed_src(const Step& st, const Buffers& b) {
  switch (st.kind) {
    case Step::CopyImposed: return b.imposed[st.slot];
    case Step::CopyInputTangent: return b.input_tangents[st.slot];
    case Step::CopyParamTangent: return b.param_tangents[st.slot];
    default: return nullptr;
  }
}

// The caller's buffer a result step writes, or null for every other step.
void* Plan::result_dst(const Step& st, const Buffers& b) {
  switch (st.kind) {
    case Step::CopyOutput: return b.outputs[st.slot];
    case Step::CopyInputGrad: return b.input_grads[st.slot];
    case Step::CopyParamGrad: return b.param_grads[st.slot];
    case Step::CopyProbe:
    case Step::CopyProbeInput: return b.probes[st.slot];
    case Step::CopyOutputTangent: return b.output_tangents[st.slot];
    case Step::CopyInputGradTangent: return b.input_grad_tangents[st.slot];
    case Step::CopyParamGradTangent: return b.param_grad_tangents[st.slot];
    default: return nullptr;
  }
}

Plan::~Plan() { release_device(); }

void Plan::release_device() {
  if (!gpu_) return;
  if (graph_) gpu_->graph_destroy(graph_);
  graph_ = nullptr;
  if (device_arena_) gpu_->free(device_arena_);
  device_arena_ = nullptr;
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
  point_direct_results(b);
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
    if (const void* src = imposed_src(st, b))
      gpu_check(gpu_->copy(st.dst, src, size_t(st.n) * esz, kind(src, true)), "copy of an imposed gradient or tangent");

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

// A tangent step with several directions: in one call where the layer takes them (a.directions),
// else one call per direction on that direction's block of each tangent.
void Plan::jvp_directions(const Layer& layer, const LayerStep& ls, LayerArgs& a) const {
  if (layer.jvp_takes_directions()) {
    a.directions = req_.directions;
    layer.jvp(a);
    return;
  }
  // Per-call copies of the pointer lists (no allocation after the first call of this thread).
  thread_local std::vector<const void*> tin;
  thread_local std::vector<void*> tout;
  tin.assign(ls.tin.begin(), ls.tin.end());
  tout.assign(ls.tout.begin(), ls.tout.end());
  a.tin = tin.data();
  a.tout = tout.data();
  for (int64_t k = 0; k < req_.directions; ++k) {
    for (size_t i = 0; i < tin.size(); ++i)
      if (ls.tin[i]) tin[i] = static_cast<const char*>(ls.tin[i]) + size_t(k) * ls.tin_stride[i];
    for (size_t o = 0; o < tout.size(); ++o) tout[o] = static_cast<char*>(ls.tout[o]) + size_t(k) * ls.tout_stride[o];
    layer.jvp(a);
  }
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
        a.batch = req_.batch * net_.nodes_[ls.node].map_count;
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
        a.per_example = ls.per_example.empty() ? nullptr : ls.per_example.data();
        a.tin = ls.tin.data();
        a.tparam = ls.tparam.data();
        a.tout = ls.tout.data();
        a.tdout = ls.tdout.data();
        const Layer& layer = *net_.nodes_[ls.node].layer;
        if (ls.grad_tangent) layer.jvp_backward(a);
        else if (ls.tangent && ls.fused != kernels::UnaryFn::Count) {
          a.directions = req_.directions;
          layer.jvp_activated(a, ls.fused, ls.out[0], ls.activated);
        } else if (ls.tangent && req_.directions > 1) jvp_directions(layer, ls, a);
        else if (ls.tangent) layer.jvp(a);
        else if (ls.backward && ls.fused != kernels::UnaryFn::Count)
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
      case Step::CopyInputTangent:
      case Step::CopyParamTangent:
        std::memcpy(st.dst, imposed_src(st, b), size_t(st.n) * esz);
        break;
      case Step::Axpy:
        with_float_type(req_.dtype, [&](auto t) {
          using T = decltype(t);
          ops::vector<T>(req_.device).axpy(st.n, T(1), static_cast<const T*>(st.src), static_cast<T*>(st.dst));
        });
        break;
      default:  // a result into the caller's buffer
        if (st.direct) break;  // written there by its layer step
        std::memcpy(result_dst(st, b), st.kind == Step::CopyProbeInput ? b.inputs[st.input] : st.src,
                    size_t(st.n) * esz);
        break;
    }
  }
}

}  // namespace portgrad
