/// @brief The compiler passes of a plan (graph/passes.h).
#include "graph/passes.h"

#include <algorithm>

namespace portgrad::passes {

namespace {
// Nodes that some value of `vals` depends on.
std::vector<char> ancestors(const Net& net, const std::vector<int>& vals) {
  const auto& values = net.values();
  const auto& nodes = net.nodes();
  std::vector<char> mark(nodes.size(), 0);
  std::vector<int> stack(vals);
  while (!stack.empty()) {
    const int v = stack.back();
    stack.pop_back();
    const int n = values[v].producer;
    if (n < 0 || mark[n]) continue;
    mark[n] = 1;
    for (int u : nodes[n].in) stack.push_back(u);
  }
  return mark;
}
}  // namespace

Work select_work(const Net& net, const Request& r) {
  const auto& values = net.values();
  const auto& nodes = net.nodes();
  const size_t N = nodes.size();
  Work w;
  std::vector<int> wanted;
  for (int o : r.outputs) wanted.push_back(net.outputs()[o].value);
  for (int v : r.probes) wanted.push_back(v);
  w.any_grad_tangent = !r.grad_tangent_inputs.empty() || !r.grad_tangent_params.empty();
  w.any_grad = !r.input_grads.empty() || !r.param_grads.empty() || w.any_grad_tangent;
  // The gradient flows from every output (of their sum), or from the imposed ones.
  std::vector<int> seeds;
  if (r.imposed.empty())
    for (const PortInfo& o : net.outputs()) seeds.push_back(o.value);
  else
    for (int o : r.imposed) seeds.push_back(net.outputs()[o].value);
  std::vector<int> tangent_wanted;
  for (int o : r.tangent_outputs) tangent_wanted.push_back(net.outputs()[o].value);
  if (w.any_grad_tangent)  // the gradients' tangents need the values' tangents up to the seeds
    for (int v : seeds) tangent_wanted.push_back(v);
  w.any_tangent = !r.tangent_outputs.empty() || w.any_grad_tangent;
  const std::vector<char> reaches_tangent = ancestors(net, tangent_wanted);
  for (int v : tangent_wanted) wanted.push_back(v);
  w.run_forward = ancestors(net, wanted);
  w.reaches_seed = w.any_grad ? ancestors(net, seeds) : std::vector<char>(N, 0);
  for (size_t n = 0; n < N; ++n) w.run_forward[n] |= w.reaches_seed[n];

  w.needs_grad.assign(values.size(), 0);
  w.array_requested.assign(net.params().size(), 0);
  std::vector<char> has_requested_array(N, 0);
  for (int i : r.input_grads) w.needs_grad[net.inputs()[i].value] = 1;
  for (int i : r.grad_tangent_inputs) w.needs_grad[net.inputs()[i].value] = 1;
  for (int p : r.grad_tangent_params) {
    w.array_requested[p] = 1;
    for (int n : net.params()[p].users) has_requested_array[n] = 1;
  }
  w.array_per_example.assign(net.params().size(), 0);
  for (size_t j = 0; j < r.param_grads.size(); ++j) {
    const int p = r.param_grads[j];
    if (!r.per_example.empty() && r.per_example[j]) w.array_per_example[p] = 1;
    w.array_requested[p] = 1;
    for (int n : net.params()[p].users) has_requested_array[n] = 1;
  }
  w.run_backward.assign(N, 0);
  for (int n : net.order()) {
    bool dep = has_requested_array[n];
    for (int v : nodes[n].in) dep |= w.needs_grad[v] && values[v].index_bound == 0;
    if (!dep) continue;
    for (int v : nodes[n].out) w.needs_grad[v] = 1;
    w.run_backward[n] = w.reaches_seed[n];
  }

  w.run_tangent.assign(N, 0);
  w.has_tangent.assign(values.size(), 0);
  std::vector<char> has_tangent_array(N, 0);
  for (int i : r.tangent_inputs) w.has_tangent[net.inputs()[i].value] = 1;
  for (int p : r.tangent_params)
    for (int n : net.params()[p].users) has_tangent_array[n] = 1;
  for (int n : net.order()) {
    bool dep = has_tangent_array[n];
    for (int v : nodes[n].in) dep |= w.has_tangent[v] && values[v].index_bound == 0;
    if (!dep || !reaches_tangent[n]) continue;
    for (int v : nodes[n].out) w.has_tangent[v] = 1;
    w.run_tangent[n] = 1;
  }
  return w;
}

Fusion fuse_activations(const Net& net, const Request& r, const Work& w) {
  const auto& values = net.values();
  const auto& nodes = net.nodes();
  const size_t N = nodes.size();
  Fusion f;
  f.fused_into.assign(N, -1);
  f.backward_fused.assign(N, 0);
  f.tangent_fused.assign(N, 0);
  if (w.any_grad_tangent) return f;  // a gradient's tangent step reads every layer's own values
  for (int n : net.order()) {
    if (!w.run_forward[n] || nodes[n].out.size() != 1) continue;
    const int v = nodes[n].out[0];
    if (values[v].consumers.size() != 1) continue;
    const int m = values[v].consumers[0].first;
    const bool probed = std::find(r.probes.begin(), r.probes.end(), v) != r.probes.end();
    const bool is_output =
        std::any_of(net.outputs().begin(), net.outputs().end(), [&](const PortInfo& o) { return o.value == v; });
    if (!w.run_forward[m] || probed || is_output || nodes[m].map_count != nodes[n].map_count ||
        nodes[m].layer->unary_function() == kernels::UnaryFn::Count ||
        !nodes[n].layer->can_apply_activation())
      continue;
    f.fused_into[m] = n;
  }
  for (size_t m = 0; m < N; ++m) {
    const int n = f.fused_into[m];
    if (n < 0) continue;
    const auto& ps = nodes[n].params;  // a per-example gradient reads the plain dy
    const bool per_example = std::any_of(ps.begin(), ps.end(), [&](int p) { return w.array_per_example[p]; });
    if (w.run_backward[m] && w.run_backward[n] && !per_example && nodes[n].layer->can_backward_activated())
      f.backward_fused[m] = 1;
    const kernels::UnaryFn fn = nodes[m].layer->unary_function();  // (f'(z) made once scales each direction)
    if (w.run_tangent[m] && w.run_tangent[n] && nodes[n].layer->can_jvp_activated() && kernels::derivative_scales(fn))
      f.tangent_fused[m] = 1;
  }
  return f;
}

// The elementwise node fused into v's producer, or -1.
static int fused_consumer(const Net& net, const Fusion& f, int v) {
  const ValueInfo& value = net.values()[v];
  const int p = value.producer;
  if (p < 0 || value.consumers.size() != 1) return -1;
  const int m = value.consumers[0].first;
  return f.fused_into[m] == p ? m : -1;
}

bool Fusion::unbuffered_gradient(const Net& net, int v) const {
  const int m = fused_consumer(net, *this, v);
  return m >= 0 && backward_fused[m];
}

bool Fusion::unbuffered_tangent(const Net& net, int v) const {
  const int m = fused_consumer(net, *this, v);
  return m >= 0 && tangent_fused[m];
}

size_t Layout::take(size_t bytes) {
  const size_t at = arena_bytes;
  arena_bytes += (bytes + 63) / 64 * 64;
  return at;
}

Layout lay_out_arena(const Net& net, const Request& r, const Work& w, const Fusion& f) {
  const auto& values = net.values();
  const auto& nodes = net.nodes();
  const size_t esz = dtype_size(r.dtype);
  // (a layer inside a NetMapOperator runs on batch x map_count elements)
  auto query = [&](int n) {
    return MemoryQuery{r.batch * nodes[n].map_count, r.dtype, r.device, r.train, r.directions, w.any_grad};
  };
  Layout l;
  l.value.assign(values.size(), kNone);
  l.grad.assign(values.size(), kNone);
  l.array_grad.assign(net.params().size(), kNone);
  l.tangent.assign(values.size(), kNone);
  l.array_tangent.assign(net.params().size(), kNone);
  l.grad_tangent.assign(values.size(), kNone);
  l.array_grad_tangent.assign(net.params().size(), kNone);
  l.saved.assign(nodes.size(), kNone);
  l.prepared.assign(nodes.size(), kNone);
  l.device_array.assign(net.params().size(), kNone);
  l.device_input.assign(net.inputs().size(), kNone);
  auto value_bytes = [&](int v) { return size_t(r.batch * shape_numel(*values[v].shape)) * esz; };
  auto tangent_bytes = [&](int v) { return value_bytes(v) * size_t(r.directions); };
  for (int n : net.order()) {
    if (!w.run_forward[n]) continue;
    for (int v : nodes[n].out) l.value[v] = l.take(value_bytes(v));
    const MemoryQuery q = query(n);
    if (size_t bytes = nodes[n].layer->saved_bytes(q)) l.saved[n] = l.take(bytes);
    if (size_t bytes = nodes[n].layer->prepared_bytes(q)) l.prepared[n] = l.take(bytes);
    l.workspace_bytes = std::max(l.workspace_bytes, nodes[n].layer->workspace_bytes(q));
    if (w.run_tangent[n]) l.workspace_bytes = std::max(l.workspace_bytes, nodes[n].layer->jvp_workspace_bytes(q));
    if (w.any_grad_tangent && w.run_backward[n])
      l.workspace_bytes = std::max(l.workspace_bytes, nodes[n].layer->jvp_backward_workspace_bytes(q));
  }
  // Tangents: of every real input and output of a tangent step (an input no tangent reaches is a
  // buffer of zeros), of the requested outputs (zeros where none flows) and of the imposed arrays.
  for (int n : net.order()) {
    if (!w.run_tangent[n]) continue;
    if (!f.tangent_fused[n])  // (a fused node's input, the pre-activation, has its tangent never formed)
      for (int v : nodes[n].in)
        if (values[v].index_bound == 0 && l.tangent[v] == kNone) l.tangent[v] = l.take(tangent_bytes(v));
    for (int v : nodes[n].out)
      if (l.tangent[v] == kNone && !f.unbuffered_tangent(net, v)) l.tangent[v] = l.take(tangent_bytes(v));
  }
  for (int o : r.tangent_outputs) {
    const int v = net.outputs()[o].value;
    if (l.tangent[v] == kNone) l.tangent[v] = l.take(tangent_bytes(v));
  }
  for (int i : r.tangent_inputs) {
    const int v = net.inputs()[i].value;
    if (l.tangent[v] == kNone) l.tangent[v] = l.take(tangent_bytes(v));
  }
  for (int p : r.tangent_params) l.array_tangent[p] = l.take(size_t(shape_numel(net.params()[p].shape)) * esz);
  if (w.any_grad_tangent) {
    // Second order: every backward step also reads its values' tangents (zeros where none flows)...
    for (int n : net.order()) {
      if (!w.run_backward[n]) continue;
      for (int v : nodes[n].in)
        if (values[v].index_bound == 0 && l.tangent[v] == kNone) l.tangent[v] = l.take(tangent_bytes(v));
      for (int v : nodes[n].out)
        if (l.tangent[v] == kNone) l.tangent[v] = l.take(tangent_bytes(v));
    }
  }
  l.workspace_bytes = (l.workspace_bytes + 63) / 64 * 64;
  for (size_t v = 0; v < values.size(); ++v) {
    const bool input_target = values[v].producer < 0 && w.needs_grad[v];
    if (w.needs_grad[v] && (input_target || w.run_backward[values[v].producer]) &&
        !f.unbuffered_gradient(net, int(v)))
      l.grad[v] = l.take(value_bytes(int(v)));
  }
  for (size_t p = 0; p < net.params().size(); ++p)  // (asked for, or needed for a second-order request)
    if (w.array_requested[p])
      l.array_grad[p] = l.take(size_t(shape_numel(net.params()[p].shape)) * esz *
                               size_t(w.array_per_example[p] ? r.batch : 1));
  if (w.any_grad_tangent) {  // ... and writes the tangents of the gradients it computes
    for (size_t v = 0; v < values.size(); ++v)
      if (l.grad[v] != kNone) l.grad_tangent[v] = l.take(value_bytes(int(v)));
    for (size_t p = 0; p < net.params().size(); ++p)
      if (w.array_requested[p]) l.array_grad_tangent[p] = l.take(size_t(shape_numel(net.params()[p].shape)) * esz);
  }
  return l;
}

std::vector<Contribution> plan_accumulation(const Net& net, const Request& r, const Work& w, const Fusion& f,
                                            Layout& layout) {
  std::vector<Contribution> contributions;
  if (!w.any_grad) return contributions;
  const auto& values = net.values();
  const auto& nodes = net.nodes();
  std::vector<char> written(values.size(), 0), array_written(net.params().size(), 0);
  for (const PortInfo& o : net.outputs())
    if (layout.grad[o.value] != kNone) written[o.value] = 1;
  const auto& order = net.order();
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const int n = *it;
    if (!w.run_backward[n] || f.backward_fused[n]) continue;
    for (int v : nodes[n].out) written[v] = 1;  // zero-filled if nothing flowed into it
    for (size_t i = 0; i < nodes[n].in.size(); ++i) {
      const int v = nodes[n].in[i];
      if (layout.grad[v] == kNone || values[v].index_bound > 0) continue;
      const size_t bytes = size_t(r.batch * shape_numel(*values[v].shape)) * dtype_size(r.dtype);
      contributions.push_back({n, int(i), written[v] ? layout.take(bytes) : kNone, false});
      written[v] = 1;
    }
    for (size_t k = 0; k < nodes[n].params.size(); ++k) {  // a shared array: one contribution per use
      const int p = nodes[n].params[k];
      if (!w.array_requested[p]) continue;
      const size_t bytes = size_t(shape_numel(net.params()[p].shape)) * dtype_size(r.dtype) *
                           size_t(w.array_per_example[p] ? r.batch : 1);
      contributions.push_back({n, int(k), array_written[p] ? layout.take(bytes) : kNone, true});
      array_written[p] = 1;
    }
  }
  return contributions;
}

void stage_on_device(const Net& net, const Request& r, Layout& layout) {
  if (r.device != Device::GPU) return;
  const size_t esz = dtype_size(r.dtype);
  for (size_t p = 0; p < net.params().size(); ++p)
    layout.device_array[p] = layout.take(size_t(shape_numel(net.params()[p].shape)) * esz);
  for (size_t i = 0; i < net.inputs().size(); ++i) {
    const ValueInfo& v = net.values()[net.inputs()[i].value];
    layout.input_bytes.push_back(size_t(r.batch * shape_numel(*v.shape)) * (v.index_bound > 0 ? 8 : esz));
    layout.device_input[i] = layout.take(layout.input_bytes.back());
  }
}

}  // namespace portgrad::passes
