/// @brief Building a Net from its spec: chains flattened into one DAG, shapes inferred in order.
#include "graph/net.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_set>

#include "graph/plan.h"

namespace portgrad {
namespace {

std::string where_of(const std::string& path, const char* type) {
  return path.empty() ? std::string(type) : cat("layer ", path, " (", type, ")");
}

}  // namespace

Net::Net(const json::Value& spec, const std::vector<std::pair<std::string, Shape>>& input_shapes,
         int64_t max_param_elements)
    : param_budget_(max_param_elements) {
  if (spec.kind != json::Value::Kind::Object) throw ValueError("a net spec must be a JSON object");
  Built b = build(spec, "", {}, 0);
  for (auto& [name, v] : b.in) inputs_.push_back({name, v});
  for (auto& [name, v] : b.out) outputs_.push_back({name, v});
  for (const auto& [name_, shape] : input_shapes) {
    const std::string& name = name_;  // (clang before 16 cannot capture a structured binding)
    auto it = std::find_if(inputs_.begin(), inputs_.end(), [&](const PortInfo& p) { return p.name == name; });
    if (it == inputs_.end()) throw KeyError(cat("the net has no input port \"", name, "\""));
    declare(it->value, shape, cat("input port \"", name, "\""));
  }
  infer_shapes();
}

Net::~Net() = default;

std::vector<std::pair<std::string, MaybeShape>> Net::declared_inputs(const json::Value& spec) {
  if (spec.kind != json::Value::Kind::Object) throw ValueError("a net spec must be a JSON object");
  Net skeleton;
  std::vector<std::pair<std::string, MaybeShape>> r;
  for (auto& [name, v] : skeleton.build(spec, "", {}, 0).in) r.emplace_back(name, skeleton.values_[v].shape);
  return r;
}

void Net::declare(int v, const Shape& shape, const std::string& what) {
  auto& s = values_[v].shape;
  if (s && *s != shape)
    throw ValueError(cat(what, ": shape ", shape_str(shape), " conflicts with the shape ", shape_str(*s),
                         " it already has"));
  s = shape;
}

Net::Built Net::build(const json::Value& s, const std::string& path,
                      const std::vector<std::pair<std::string, int>>& bound, int depth) {
  if (depth > 32) throw ValueError("net spec nests deeper than 32 levels");
  if (s.kind != json::Value::Kind::Object) throw ValueError(cat("spec of ", path.empty() ? "the net" : path, " must be an object"));
  const std::string type = spec::string(s, "type", path.empty() ? "net" : path);
  Built built;
  auto bound_value = [&](const std::string& port) {
    for (const auto& [name, v] : bound)
      if (name == port) return v;
    return -1;
  };

  if (type == "NetChain") {
    const std::string where = path.empty() ? "NetChain" : cat("NetChain ", path);
    const json::Value* layers = spec::get(s, "layers");
    if (!layers || layers->kind != json::Value::Kind::Array || layers->array.empty())
      throw ValueError(cat(where, ": needs a non-empty list of layers"));
    int prev = -1;
    std::unordered_set<std::string> names;  // a set: a hostile spec may have millions of layers
    for (size_t k = 0; k < layers->array.size(); ++k) {
      const json::Value& entry = layers->array[k];
      const std::string name = spec::string(entry, "name", cat(where, " layer ", k));
      if (name.empty() || name.find('/') != std::string::npos)
        throw ValueError(cat(where, ": layer name \"", name, "\" must be non-empty and contain no '/'"));
      if (!names.insert(name).second) throw ValueError(cat(where, ": two layers are named \"", name, "\""));
      const json::Value* sub = spec::get(entry, "net");
      if (!sub) throw ValueError(cat(where, ": layer ", name, " has no spec"));
      std::vector<std::pair<std::string, int>> sub_bound;
      for (const auto& [port, v] : bound)
        if (k == 0 || port != "Input") sub_bound.emplace_back(port, v);
      if (k > 0) sub_bound.emplace_back("Input", prev);
      Built inner = build(*sub, path.empty() ? name : path + "/" + name, sub_bound, depth + 1);
      if (k > 0 && std::none_of(inner.in.begin(), inner.in.end(), [](auto& p) { return p.first == "Input"; }))
        throw ValueError(cat(where, ": layer ", name, " has no port \"Input\" to take the previous layer's output"));
      for (const auto& [port, v] : inner.in) {
        if (k > 0 && port == "Input") continue;
        bool seen = false;
        for (const auto& [p2, v2] : built.in) {
          if (p2 != port) continue;
          if (v2 != v)
            throw ValueError(cat(where, ": input port \"", port, "\" of layer ", name,
                                 " clashes with the port of the same name of an earlier layer"));
          seen = true;
        }
        if (!seen) built.in.emplace_back(port, v);
      }
      if (k + 1 < layers->array.size() && inner.out.size() != 1)
        throw ValueError(cat(where, ": layer ", name, " has ", inner.out.size(),
                             " outputs; only the last layer of a chain may have several"));
      prev = inner.out.front().second;
      if (k + 1 == layers->array.size()) built.out = inner.out;
    }
  } else {
    NodeInfo node;
    node.path = path;
    node.layer = make_layer(s, where_of(path, type.c_str()));
    node.where = where_of(path, node.layer->type());
    const int id = static_cast<int>(nodes_.size());
    for (const std::string& port : node.layer->inputs()) {
      int v = bound_value(port);
      if (v < 0) {
        v = static_cast<int>(values_.size());
        values_.emplace_back();
      }
      values_[v].consumers.emplace_back(id, static_cast<int>(node.in.size()));
      node.in.push_back(v);
      built.in.emplace_back(port, v);
    }
    for (const std::string& port : node.layer->outputs()) {
      int v = static_cast<int>(values_.size());
      values_.emplace_back();
      values_[v].producer = id;
      node.out.push_back(v);
      built.out.emplace_back(port, v);
    }
    nodes_.push_back(std::move(node));
  }

  // Declared port shapes: {"inputs": {"Input": [2], "Target": null}}.
  if (const json::Value* decl = spec::get(s, "inputs")) {
    if (decl->kind != json::Value::Kind::Object)
      throw ValueError(cat(path.empty() ? type : path, ": \"inputs\" must map port names to shapes"));
    for (const auto& [port_, shape] : decl->object) {
      const std::string& port = port_;  // (clang before 16 cannot capture a structured binding)
      if (shape.is_null()) continue;
      auto it = std::find_if(built.in.begin(), built.in.end(), [&](auto& p) { return p.first == port; });
      if (it == built.in.end())
        throw ValueError(cat(path.empty() ? type : path, ": declares a shape for input port \"", port,
                             "\", which it does not have"));
      const std::string what = cat(path.empty() ? type : path, ": input port \"", port, "\"");
      declare(it->second, spec::shape(shape, what), what);
    }
  }
  return built;
}

void Net::infer_shapes() {
  // Nodes are created in dependency order (a chain feeds only forward), which is a topological
  // order; a general graph builder must sort here.
  order_.clear();
  for (size_t n = 0; n < nodes_.size(); ++n) order_.push_back(static_cast<int>(n));
  for (int n : order_) {
    NodeInfo& node = nodes_[n];
    std::vector<MaybeShape> in;
    for (int v : node.in) in.push_back(values_[v].shape);
    std::vector<Shape> out;
    node.layer->infer(in, out);
    for (size_t i = 0; i < node.in.size(); ++i) {
      ValueInfo& v = values_[node.in[i]];
      if (!in[i]) throw ValueError(cat(node.where, ": the shape of its input ", node.layer->inputs()[i], " is not known"));
      v.shape = in[i];
      const int64_t bound = node.layer->index_bound(static_cast<int>(i));
      if (bound > 0) {
        if (v.producer != -1 || v.consumers.size() != 1)
          throw ValueError(cat(node.where, ": port \"", node.layer->inputs()[i],
                               "\" takes class indices and must be fed directly by a net input used nowhere else"));
        v.index_bound = bound;
      }
    }
    for (size_t o = 0; o < node.out.size(); ++o) values_[node.out[o]].shape = out[o];
    for (const ParamDecl& d : node.layer->params()) {
      // Sizes are checked in double before anything is allocated: no overflow, no huge allocation.
      double numel = 1;
      for (int64_t dim : d.shape) numel *= double(dim);
      if (numel > double(int64_t(1) << 40))
        throw ValueError(cat(node.where, ": array \"", d.name, "\" of shape ", shape_str(d.shape),
                             " has more than 2^40 elements"));
      if (param_budget_ >= 0) {
        if (numel > double(param_budget_))
          throw ValueError(cat(node.where, ": array \"", d.name, "\" of shape ", shape_str(d.shape),
                               " is larger than the arrays the file holds"));
        param_budget_ -= static_cast<int64_t>(numel);
      }
      ParamInfo p;
      p.path = node.path.empty() ? d.name : node.path + "/" + d.name;
      p.shape = d.shape;
      p.node = n;
      p.f32 = Tensor::zeros(d.shape, DType::F32);
      p.f64 = Tensor::zeros(d.shape, DType::F64);
      node.params.push_back(static_cast<int>(params_.size()));
      params_.push_back(std::move(p));
    }
  }
}

int Net::find_param(const std::string& path) const {
  for (size_t p = 0; p < params_.size(); ++p)
    if (params_[p].path == path) return static_cast<int>(p);
  return -1;
}

void Net::set_param(int p, const void* data, DType dtype) {
  ParamInfo& info = params_.at(p);
  const int64_t n = shape_numel(info.shape);
  float* f = info.f32.ptr<float>();
  double* d = info.f64.ptr<double>();
  if (dtype == DType::F32) {
    std::memcpy(f, data, size_t(n) * 4);
    for (int64_t i = 0; i < n; ++i) d[i] = f[i];
  } else if (dtype == DType::F64) {
    std::memcpy(d, data, size_t(n) * 8);
    for (int64_t i = 0; i < n; ++i) f[i] = static_cast<float>(d[i]);
  } else {
    throw TypeError(cat("array ", info.path, " must be float32 or float64"));
  }
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(d[i])) throw ValueError(cat("array ", info.path, " contains a non-finite value at flat index ", i));
  info.set = true;
}

void Net::check_initialized() const {
  for (const ParamInfo& p : params_)
    if (!p.set)
      throw ValueError(cat("the net is not initialised: array \"", p.path,
                           "\" has no value; call NetInitialize(net) or set it with NetReplacePart"));
}

void Net::validate(const Request& r, const Buffers& b) const {
  auto in_range = [](const std::vector<int>& ids, size_t n, const char* what) {
    for (int i : ids)
      if (i < 0 || size_t(i) >= n) throw IndexError(cat(what, " index ", i, " out of range"));
  };
  in_range(r.outputs, outputs_.size(), "output");
  in_range(r.input_grads, inputs_.size(), "input");
  in_range(r.param_grads, params_.size(), "parameter");
  in_range(r.imposed, outputs_.size(), "output");
  if (r.batch < 0) throw ValueError("negative batch size");
  if (r.device != Device::CPU)
    throw ValueError("TargetDevice \"GPU\" is not available: this build of portgrad has no CUDA backend; "
                     "use TargetDevice=\"CPU\"");
  if (b.inputs.size() != inputs_.size() || b.imposed.size() != r.imposed.size() ||
      b.outputs.size() != r.outputs.size() || b.input_grads.size() != r.input_grads.size() ||
      b.param_grads.size() != r.param_grads.size())
    throw ValueError("buffers do not match the request");
  for (int i : r.input_grads)
    if (values_[inputs_[i].value].index_bound > 0)
      throw ValueError(cat("port \"", inputs_[i].name, "\" takes integer class indices and has no gradient"));
  check_initialized();

  // Inputs must be finite reals or in-range class indices.
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const ValueInfo& v = values_[inputs_[i].value];
    const int64_t n = r.batch * shape_numel(*v.shape);
    if (v.index_bound > 0) {
      const int64_t* idx = static_cast<const int64_t*>(b.inputs[i]);
      for (int64_t k = 0; k < n; ++k)
        if (idx[k] < 0 || idx[k] >= v.index_bound)
          throw IndexError(cat("port \"", inputs_[i].name, "\": class index ", idx[k], " is out of range for ",
                               v.index_bound, " classes (indices are 0-based: 0 to ", v.index_bound - 1, ")"));
      continue;
    }
    auto scan = [&](auto* x) {
      for (int64_t k = 0; k < n; ++k)
        if (!std::isfinite(x[k]))
          throw ValueError(cat("port \"", inputs_[i].name, "\" contains ", std::isnan(x[k]) ? "NaN" : "an infinity",
                               " at flat index ", k, "; inputs must be finite"));
    };
    if (r.dtype == DType::F32) scan(static_cast<const float*>(b.inputs[i]));
    else scan(static_cast<const double*>(b.inputs[i]));
  }
  for (size_t j = 0; j < r.imposed.size(); ++j) {
    const int64_t n = r.batch * shape_numel(*values_[outputs_[r.imposed[j]].value].shape);
    auto scan = [&](auto* g) {
      for (int64_t k = 0; k < n; ++k)
        if (!std::isfinite(g[k]))
          throw ValueError(cat("the gradient imposed on output \"", outputs_[r.imposed[j]].name,
                               "\" is not finite at flat index ", k));
    };
    if (r.dtype == DType::F32) scan(static_cast<const float*>(b.imposed[j]));
    else scan(static_cast<const double*>(b.imposed[j]));
  }
}

Plan& Net::plan_for(const Request& r) {
  std::lock_guard<std::mutex> lock(plans_mu_);
  for (auto& [req, plan] : plans_)
    if (req == r) return *plan;
  plans_.emplace_back(r, std::make_unique<Plan>(*this, r));
  return *plans_.back().second;
}

void Net::evaluate(const Request& r, const Buffers& b) {
  validate(r, b);
  Plan& plan = plan_for(r);
  std::lock_guard<std::mutex> lock(plan.mutex());
  plan.run(b);
}

std::vector<std::string> Net::describe_plan(const Request& r) {
  Plan& plan = plan_for(r);
  std::lock_guard<std::mutex> lock(plan.mutex());
  return plan.describe();
}

size_t Net::plan_count() const {
  std::lock_guard<std::mutex> lock(plans_mu_);
  return plans_.size();
}

}  // namespace portgrad
