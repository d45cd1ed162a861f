/// @brief Building a Net from its spec: chains flattened into one DAG, shapes inferred in order.
#include "graph/net.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <unordered_set>

#include "graph/plan.h"
#include "ops/gpu_backend.h"

namespace portgrad {
namespace {

// A declared port shape: dimensions, the first of which may be "Varying" (a sequence of any length).
Shape declared_shape(const json::Value& v, const std::string& what) {
  if (v.kind == json::Value::Kind::Array && !v.array.empty() && v.array[0].kind == json::Value::Kind::String) {
    if (v.array[0].string != "Varying")
      throw ValueError(cat(what, ": a dimension is a positive int or, first, \"Varying\"; given \"", v.array[0].string.substr(0, 40), "\""));
    json::Value rest = v;
    rest.array.erase(rest.array.begin());
    Shape s = spec::shape(rest, what);
    s.insert(s.begin(), kVarying);
    return s;
  }
  return spec::shape(v, what);
}

// Whether a shape fits a declaration (a varying dimension fits any extent).
bool fits(const Shape& shape, const Shape& declared) {
  if (shape.size() != declared.size()) return false;
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] != declared[i] && shape[i] != kVarying && declared[i] != kVarying) return false;
  return true;
}

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
  link();
  for (const PortInfo& p : inputs_) {
    const MaybeShape& shape = values_[p.value].shape;
    if (shape && !shape->empty() && (*shape)[0] == kVarying)
      throw ValueError(cat("input port \"", p.name, "\" has a \"Varying\" length: the net is compiled for the "
                           "length its data has (give the port's shape)"));
  }
  infer_shapes();
}

Net::~Net() = default;

std::vector<std::pair<std::string, MaybeShape>> Net::declared_inputs(const json::Value& spec) {
  if (spec.kind != json::Value::Kind::Object) throw ValueError("a net spec must be a JSON object");
  Net skeleton;
  Built b = skeleton.build(spec, "", {}, 0);
  skeleton.link();
  std::vector<std::pair<std::string, MaybeShape>> r;
  for (auto& [name, v] : b.in) {
    const int u = skeleton.resolve(v);
    MaybeShape shape;
    for (const Declaration& d : skeleton.declarations_)
      if (skeleton.resolve(d.value) == u && d.mapped == 0) shape = d.shape;
    r.emplace_back(name, shape);
  }
  return r;
}

void Net::declare(int v, const Shape& shape, const std::string& what) {
  declarations_.push_back({v, shape, what, mapping_});
}

int Net::resolve(int v) const {
  for (int hops = 0; alias_[v] >= 0; ++hops) {
    if (hops > int(alias_.size())) throw ValueError("graph edges form a loop of ports");
    v = alias_[v];
  }
  return v;
}

void Net::link() {
  alias_.resize(values_.size(), -1);
  for (NodeInfo& node : nodes_)
    for (int& v : node.in) v = resolve(v);
  for (PortInfo& p : inputs_) p.value = resolve(p.value);
  for (PortInfo& p : outputs_) p.value = resolve(p.value);
  for (ValueInfo& v : values_) v.consumers.clear();
  for (size_t n = 0; n < nodes_.size(); ++n)
    for (size_t i = 0; i < nodes_[n].in.size(); ++i)
      values_[nodes_[n].in[i]].consumers.emplace_back(int(n), int(i));
  for (const PortInfo& o : outputs_)
    if (values_[o.value].producer < 0)
      throw ValueError(cat("output port \"", o.name, "\" is fed directly by an input port; put a layer between them"));

  // Topological order (Kahn); what remains unsorted lies on a cycle.
  const size_t N = nodes_.size();
  std::vector<int> pending(N, 0);
  for (size_t n = 0; n < N; ++n)
    for (int v : nodes_[n].in)
      if (values_[v].producer >= 0) ++pending[n];
  order_.clear();
  for (size_t n = 0; n < N; ++n)
    if (!pending[n]) order_.push_back(int(n));
  for (size_t k = 0; k < order_.size(); ++k)
    for (int v : nodes_[order_[k]].out)
      for (auto [m, slot] : values_[v].consumers)
        if (--pending[m] == 0) order_.push_back(m);
  if (order_.size() != N) {
    for (size_t n = 0; n < N; ++n)
      if (pending[n]) throw ValueError(cat("the graph has a cycle through ", nodes_[n].where));
  }

  // Declared shapes of net inputs are known before inference; the rest are checked after it.
  for (const Declaration& d : declarations_) {
    ValueInfo& v = values_[resolve(d.value)];
    if (v.producer >= 0 || d.mapped > 0) continue;  // (an element's shape is checked after inference)
    if (v.shape && !fits(*v.shape, d.shape))
      throw ValueError(cat(d.what, ": shape ", shape_str(d.shape), " conflicts with the shape ", shape_str(*v.shape),
                           " declared or given for the same port"));
    if (!v.shape || (!v.shape->empty() && (*v.shape)[0] == kVarying)) v.shape = d.shape;  // the more definite one
  }
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

  if (type == "NetGraph") {
    built = build_graph(s, path, bound, depth);
  } else if (type == "NetMapOperator") {
    // Transparent for names: the mapped net's layers and arrays keep the paths they would have here.
    const json::Value* sub = spec::get(s, "net");
    if (!sub) throw ValueError(cat(path.empty() ? "NetMapOperator" : cat("NetMapOperator ", path), ": has no net"));
    ++mapping_;
    built = build(*sub, path, bound, depth + 1);
    --mapping_;
  } else if (type == "NetChain") {
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
    node.mapped = mapping_;
    node.layer = make_layer(s, where_of(path, type.c_str()));
    node.where = where_of(path, node.layer->type());
    if (const json::Value* shared = spec::get(s, "shared")) {
      if (shared->kind != json::Value::Kind::Object)
        throw ValueError(cat(node.where, ": \"shared\" must map array names to shared array names"));
      for (const auto& [array, name] : shared->object) {
        if (name.kind != json::Value::Kind::String || name.string.empty())
          throw ValueError(cat(node.where, ": the shared array name of \"", array, "\" must be a non-empty string"));
        node.shared.emplace_back(array, name.string);
      }
    }
    const int id = static_cast<int>(nodes_.size());
    for (const std::string& port : node.layer->inputs()) {
      int v = bound_value(port);
      if (v < 0) {
        v = static_cast<int>(values_.size());
        values_.emplace_back();
      }
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
                             "\", which it does not have",
                             type == "NetGraph" ? " (every layer input is fed by an edge: is there a cycle?)" : ""));
      const std::string what = cat(path.empty() ? type : path, ": input port \"", port, "\"");
      declare(it->second, declared_shape(shape, what), what);
    }
  }
  return built;
}

// A NetGraph: {"type": "NetGraph", "layers": [{"name", "net"}...], "edges": [{"from": E, "to": E}...]}
// with endpoints E = {"layer": name or null, "port": name or null}: a null layer is a port of the
// graph itself; a null port is the layer's only output (as a source) or only input (as a target).
// An edge makes the target port's value an alias of the source's; ports left unconnected become
// ports of the graph, named as on their layer.
Net::Built Net::build_graph(const json::Value& s, const std::string& path,
                            const std::vector<std::pair<std::string, int>>& bound, int depth) {
  const std::string where = path.empty() ? "NetGraph" : cat("NetGraph ", path);
  const json::Value* layers = spec::get(s, "layers");
  if (!layers || layers->kind != json::Value::Kind::Array || layers->array.empty())
    throw ValueError(cat(where, ": needs a non-empty list of layers"));
  std::vector<std::pair<std::string, Built>> subs;
  for (size_t k = 0; k < layers->array.size(); ++k) {
    const json::Value& entry = layers->array[k];
    const std::string name = spec::string(entry, "name", cat(where, " layer ", k));
    if (name.empty() || name.find('/') != std::string::npos)
      throw ValueError(cat(where, ": layer name \"", name, "\" must be non-empty and contain no '/'"));
    for (const auto& [other, _] : subs)
      if (other == name) throw ValueError(cat(where, ": two layers are named \"", name, "\""));
    const json::Value* sub = spec::get(entry, "net");
    if (!sub) throw ValueError(cat(where, ": layer ", name, " has no spec"));
    subs.emplace_back(name, build(*sub, path.empty() ? name : path + "/" + name, {}, depth + 1));
  }
  alias_.resize(values_.size(), -1);

  Built built;
  auto graph_input = [&](const std::string& port) {
    for (const auto& [name, v] : built.in)
      if (name == port) return v;
    int v = -1;
    for (const auto& [name, b] : bound)
      if (name == port) v = b;
    if (v < 0) {
      v = int(values_.size());
      values_.emplace_back();
      alias_.push_back(-1);
    }
    built.in.emplace_back(port, v);
    return v;
  };
  auto find_sub = [&](const std::string& layer, const std::string& edge) -> const Built& {
    for (const auto& [name, b] : subs)
      if (name == layer) return b;
    throw ValueError(cat(where, ": ", edge, " names no layer \"", layer, "\""));
  };
  auto port_list = [](const std::vector<std::pair<std::string, int>>& ports) {
    std::string r;
    for (const auto& [name, _] : ports) r += cat(r.empty() ? "" : ", ", name);
    return r.empty() ? std::string("none") : r;
  };
  auto endpoint = [&](const json::Value& e, const char* which) {
    if (e.kind != json::Value::Kind::Object) throw ValueError(cat(where, ": an edge's \"", which, "\" must be an object"));
    const json::Value* layer = spec::get(e, "layer");
    const json::Value* port = spec::get(e, "port");
    if ((layer && layer->kind != json::Value::Kind::String) || (port && port->kind != json::Value::Kind::String))
      throw ValueError(cat(where, ": edge endpoints name a layer and a port by strings"));
    return std::make_pair(layer ? layer->string : std::string(), port ? port->string : std::string());
  };
  auto describe = [](const std::pair<std::string, std::string>& e) {
    if (e.first.empty()) return cat("NetPort(\"", e.second, "\")");
    return e.second.empty() ? e.first : cat(e.first, "/", e.second);
  };

  std::vector<char> used_as_source(values_.size(), 0);
  std::vector<std::string> fed_by(values_.size());
  const json::Value* edges = spec::get(s, "edges");
  if (edges && edges->kind != json::Value::Kind::Array) throw ValueError(cat(where, ": \"edges\" must be a list"));
  for (const json::Value& edge : edges ? edges->array : std::vector<json::Value>{}) {
    const json::Value* from = spec::get(edge, "from");
    const json::Value* to = spec::get(edge, "to");
    if (!from || !to) throw ValueError(cat(where, ": every edge needs \"from\" and \"to\""));
    const auto src = endpoint(*from, "from"), dst = endpoint(*to, "to");
    const std::string name = cat("edge ", describe(src), " -> ", describe(dst));
    if (src.first.empty() && src.second.empty()) throw ValueError(cat(where, ": ", name, " has an empty source"));
    int sv;
    if (src.first.empty()) {
      sv = graph_input(src.second);
    } else {
      const Built& b = find_sub(src.first, name);
      if (src.second.empty()) {
        if (b.out.size() != 1)
          throw ValueError(cat(where, ": ", name, ": layer ", src.first, " has several outputs (", port_list(b.out),
                               "); name one with NetPort(\"", src.first, "\", port)"));
        sv = b.out[0].second;
      } else {
        auto it = std::find_if(b.out.begin(), b.out.end(), [&](auto& p) { return p.first == src.second; });
        if (it == b.out.end())
          throw ValueError(cat(where, ": ", name, ": layer ", src.first, " has no output port \"", src.second,
                               "\" (its outputs: ", port_list(b.out), ")"));
        sv = it->second;
      }
    }
    if (size_t(sv) >= used_as_source.size()) used_as_source.resize(sv + 1, 0);
    used_as_source[sv] = 1;
    if (dst.first.empty()) {
      if (dst.second.empty()) throw ValueError(cat(where, ": ", name, " has an empty target"));
      for (const auto& [o, _] : built.out)
        if (o == dst.second) throw ValueError(cat(where, ": ", name, ": output port \"", o, "\" is fed twice"));
      built.out.emplace_back(dst.second, sv);
      continue;
    }
    const Built& b = find_sub(dst.first, name);
    int dv;
    if (dst.second.empty()) {
      if (b.in.size() != 1)
        throw ValueError(cat(where, ": ", name, ": layer ", dst.first, " has several inputs (", port_list(b.in),
                             "); name one with NetPort(\"", dst.first, "\", port)"));
      dv = b.in[0].second;
    } else {
      auto it = std::find_if(b.in.begin(), b.in.end(), [&](auto& p) { return p.first == dst.second; });
      if (it == b.in.end())
        throw ValueError(cat(where, ": ", name, ": layer ", dst.first, " has no input port \"", dst.second,
                             "\" (its inputs: ", port_list(b.in), ")"));
      dv = it->second;
    }
    if (size_t(dv) >= fed_by.size()) fed_by.resize(dv + 1);
    if (!fed_by[dv].empty())
      throw ValueError(cat(where, ": ", name, ": port ", describe(dst), " is already fed by ", fed_by[dv]));
    fed_by[dv] = describe(src);
    alias_[dv] = sv;
  }

  // Unconnected ports become ports of the graph, named as on their layer. Inputs of the same
  // name share one graph input; outputs whose names clash are named after their layers instead.
  for (const auto& [layer, b] : subs) {
    for (const auto& [port, v] : b.in) {
      if (size_t(v) < fed_by.size() && !fed_by[v].empty()) continue;
      const int g = graph_input(port);
      if (g != v) alias_[v] = g;
    }
  }
  std::vector<std::pair<std::string, std::pair<std::string, int>>> loose;  // (layer, (port, value))
  for (const auto& [layer, b] : subs)
    for (const auto& [port, v] : b.out)
      if (size_t(v) >= used_as_source.size() || !used_as_source[v]) loose.push_back({layer, {port, v}});
  for (const auto& [layer, pv] : loose) {
    int same = 0;
    for (const auto& [l2, pv2] : loose) same += pv2.first == pv.first;
    for (const auto& [o, _] : built.out) same += o == pv.first;
    const std::string name = same > 1 ? layer : pv.first;
    for (const auto& [o, _] : built.out)
      if (o == name)
        throw ValueError(cat(where, ": the unconnected output ", pv.first, " of layer ", layer, " would be named \"", name,
                             "\", which the graph already has; connect it with an edge"));
    built.out.emplace_back(name, pv.second);
  }
  if (built.out.empty())
    throw ValueError(cat(where, ": has no outputs (every layer's output feeds another layer: is there a cycle?)"));
  return built;
}

void Net::infer_shapes() {
  for (int n : order_) {
    NodeInfo& node = nodes_[n];
    std::vector<MaybeShape> in;
    for (int v : node.in) in.push_back(values_[v].shape);
    // A mapped layer sees one element: its inputs without the mapped leading axes, which all its
    // inputs share and its outputs get back.
    Shape lead;
    if (node.mapped > 0) {
      if (node.in.empty())
        throw ValueError(cat(node.where, ": a layer without inputs cannot be inside a NetMapOperator"));
      for (size_t i = 0; i < in.size(); ++i) {
        if (!in[i]) continue;
        const Shape& s = *in[i];
        const std::string port = node.layer->inputs()[i];
        if (int(s.size()) <= node.mapped)
          throw ValueError(cat(node.where, ": inside ", node.mapped, " NetMapOperator(s), its input ", port,
                               " needs more than ", node.mapped, " axes to map over; given shape ", shape_str(s)));
        const Shape head(s.begin(), s.begin() + node.mapped);
        if (lead.empty()) lead = head;
        else if (head != lead)
          throw ValueError(cat(node.where, ": NetMapOperator maps its inputs together, so their leading axes must "
                               "agree; input ", port, " has shape ", shape_str(s), ", an earlier one leads with ",
                               shape_str(lead)));
        in[i] = Shape(s.begin() + node.mapped, s.end());
      }
      node.map_count = 1;
      for (int64_t d : lead) node.map_count *= d;  // (each value's elements are bounded by 2^40)
    }
    std::vector<Shape> out;
    try {
      node.layer->infer(in, out);
    } catch (const ValueError& e) {
      // Say where each input comes from, so a mismatch can be traced to its edge.
      std::string from;
      const auto names = node.layer->inputs();
      for (size_t i = 0; i < node.in.size(); ++i) {
        const ValueInfo& v = values_[node.in[i]];
        std::string src = "a net input";
        for (const PortInfo& p : inputs_)
          if (p.value == node.in[i]) src = cat("net input \"", p.name, "\"");
        if (v.producer >= 0) src = nodes_[v.producer].where;
        from += cat(i ? "; " : "", names[i], " <- ", src, v.shape ? cat(" ", shape_str(*v.shape)) : std::string());
      }
      if (nodes_.size() == 1) throw;
      throw ValueError(cat(e.what(), " [inputs: ", from, "]"));
    }
    for (size_t i = 0; i < node.in.size(); ++i) {
      ValueInfo& v = values_[node.in[i]];
      if (!in[i]) throw ValueError(cat(node.where, ": the shape of its input ", node.layer->inputs()[i], " is not known"));
      if (!lead.empty()) in[i]->insert(in[i]->begin(), lead.begin(), lead.end());
      v.shape = in[i];
      const int64_t bound = node.layer->index_bound(static_cast<int>(i));
      if (bound > 0) {
        if (v.producer != -1 || v.consumers.size() != 1)
          throw ValueError(cat(node.where, ": port \"", node.layer->inputs()[i],
                               "\" takes class indices and must be fed directly by a net input used nowhere else"));
        v.index_bound = bound;
      }
    }
    for (Shape& o : out) o.insert(o.begin(), lead.begin(), lead.end());
    for (size_t o = 0; o < node.out.size(); ++o) {
      // Every intermediate's size is checked in double, so no size arithmetic downstream can overflow.
      double numel = 1;
      for (int64_t dim : out[o]) {
        if (dim < 0) throw ValueError(cat(node.where, ": negative dimension in its output shape ", shape_str(out[o])));
        numel *= double(dim);
      }
      if (numel > double(kMaxValueElements))
        throw ValueError(cat(node.where, ": its output would have ", numel, " elements per example (shape ",
                             shape_str(out[o]), "), more than the ", kMaxValueElements, " portgrad allows"));
      values_[node.out[o]].shape = out[o];
    }
    const std::vector<ParamDecl> decls = node.layer->params();
    for (const auto& entry : node.shared) {  // (a lambda may not capture a structured binding before C++20)
      const std::string& array = entry.first;
      const std::string& name = entry.second;
      if (std::none_of(decls.begin(), decls.end(), [&](const ParamDecl& d) { return d.name == array; })) {
        std::string have;
        for (const ParamDecl& d : decls) have += cat(have.empty() ? "" : ", ", "\"", d.name, "\"");
        throw ValueError(cat(node.where, ": NetSharedArray(\"", name, "\") is given for array \"", array,
                             "\", which it does not have", have.empty() ? std::string(" (it has no arrays)")
                                                                  : cat(" (its arrays: ", have, ")")));
      }
    }
    for (const ParamDecl& d : decls) {
      std::string shared_name;
      for (const auto& [array, name] : node.shared)
        if (array == d.name) shared_name = name;
      if (!shared_name.empty()) {  // a later use of a shared array: the same array, so the same shape
        auto it = std::find_if(params_.begin(), params_.end(),
                               [&](const ParamInfo& p) { return p.shared && p.path == shared_name; });
        if (it != params_.end()) {
          if (it->shape != d.shape || it->learnable != d.learnable || it->differentiable != d.differentiable)
            throw ValueError(cat(node.where, ": NetSharedArray(\"", shared_name, "\") is its array \"", d.name,
                                 "\" of shape ", shape_str(d.shape), ", but ", nodes_[it->users[0]].where,
                                 " uses it as an array of shape ", shape_str(it->shape),
                                 it->differentiable != d.differentiable ? " (and one is learned, the other running state)"
                                 : it->learnable != d.learnable ? " (and one is learned, the other a constant)" : ""));
          it->users.push_back(n);
          node.params.push_back(static_cast<int>(it - params_.begin()));
          continue;
        }
      }
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
      p.path = !shared_name.empty() ? shared_name : node.path.empty() ? d.name : node.path + "/" + d.name;
      p.shared = !shared_name.empty();
      p.shape = d.shape;
      p.learnable = d.learnable;
      p.differentiable = d.differentiable;
      p.nonnegative = d.nonnegative;
      p.init = d.init;
      p.fan_in = d.fan_in;
      p.fan_out = d.fan_out;
      p.users = {n};
      p.f32 = Tensor::zeros(d.shape, DType::F32);
      p.f64 = Tensor::zeros(d.shape, DType::F64);
      node.params.push_back(static_cast<int>(params_.size()));
      params_.push_back(std::move(p));
    }
  }
  for (const ParamInfo& p : params_)  // names must find one array each (NetPortGradient, files)
    if (p.shared && std::count_if(params_.begin(), params_.end(), [&](const ParamInfo& q) { return q.path == p.path; }) > 1)
      throw ValueError(cat("NetSharedArray(\"", p.path, "\") has the name of a layer's array path; rename it"));
  for (const Declaration& d : declarations_) {
    const ValueInfo& v = values_[resolve(d.value)];
    if (v.producer < 0 && d.mapped == 0) continue;  // (checked in link)
    Shape element = *v.shape;
    if (int(element.size()) >= d.mapped) element.erase(element.begin(), element.begin() + d.mapped);
    if (!fits(element, d.shape))
      throw ValueError(cat(d.what, " is declared with shape ", shape_str(d.shape), " but is fed shape ",
                           shape_str(element), d.mapped ? " (one element of what NetMapOperator maps over)" : "",
                           v.producer >= 0 ? cat(" by ", nodes_[v.producer].where) : std::string()));
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
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(d[i])) throw ValueError(cat("array ", info.path, " contains a non-finite value at flat index ", i));
    if (info.nonnegative && d[i] < 0)
      throw ValueError(cat("array ", info.path, " must not be negative (a variance); given ", d[i], " at flat index ", i));
  }
  info.set = true;
  // Plans hold what they prepared from the arrays (packed weights): they are rebuilt on demand.
  std::lock_guard<std::mutex> lock(plans_mu_);
  plans_.clear();
  plan_index_.clear();
  plan_bytes_ = 0;
}

void Net::check_initialized() const {
  for (const ParamInfo& p : params_)
    if (!p.set)
      throw ValueError(cat("the net is not initialised: array \"", p.path,
                           "\" has no value; call NetInitialize(net) or set it with NetReplacePart"));
}

namespace {
// Throws ValueError(message(value, index)) at the first non-finite element of data (host memory,
// or device memory checked by the GPU backend).
// The first index of a non-finite x[j] on the host, or -1. Blocks are screened by their exponent
// bits with no early exit (a loop the compiler vectorizes: a branch per element cost ~100 us per
// call on attention's 400k inputs); only a flagged block is searched element by element.
template <typename T>
int64_t first_nonfinite_host(int64_t n, const T* x) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr U kExponent = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  constexpr int64_t kBlock = 4096;
  for (int64_t lo = 0; lo < n; lo += kBlock) {
    const int64_t hi = std::min(n, lo + kBlock);
    U flagged = 0;
    for (int64_t j = lo; j < hi; ++j) {
      U u;
      std::memcpy(&u, x + j, sizeof(U));
      flagged |= U((u & kExponent) == kExponent);
    }
    if (flagged)
      for (int64_t j = lo; j < hi; ++j)
        if (!std::isfinite(x[j])) return j;
  }
  return -1;
}

template <typename Message>
void check_finite(const GpuBackend* gpu, bool on_device, DType dtype, int64_t n, const void* data, Message&& message) {
  int64_t k = -1;
  double value = 0;
  with_float_type(dtype, [&](auto t) {
    using T = decltype(t);
    const T* x = static_cast<const T*>(data);
    if (on_device) {
      gpu_check(gpu_tables<T>().first_nonfinite(n, x, &k), "input check");
      T v{};
      if (k >= 0) gpu_check(gpu->copy(&v, x + k, sizeof(T), CopyKind::DeviceToHost), "input check");
      value = double(v);
    } else {
      k = first_nonfinite_host(n, x);
      if (k >= 0) value = double(x[k]);
    }
  });
  if (k >= 0) throw ValueError(message(value, k));
}
}  // namespace

void Net::validate(const Request& r, const Buffers& b) const {
  auto in_range = [](const std::vector<int>& ids, size_t n, const char* what) {
    for (int i : ids)
      if (i < 0 || size_t(i) >= n) throw IndexError(cat(what, " index ", i, " out of range"));
  };
  in_range(r.outputs, outputs_.size(), "output");
  in_range(r.input_grads, inputs_.size(), "input");
  in_range(r.param_grads, params_.size(), "parameter");
  if (!r.per_example.empty() && r.per_example.size() != r.param_grads.size())
    throw ValueError("per_example must have one flag per array gradient");
  in_range(r.imposed, outputs_.size(), "output");
  in_range(r.tangent_inputs, inputs_.size(), "input");
  in_range(r.tangent_params, params_.size(), "parameter");
  in_range(r.tangent_outputs, outputs_.size(), "output");
  in_range(r.grad_tangent_inputs, inputs_.size(), "input");
  in_range(r.grad_tangent_params, params_.size(), "parameter");
  if (r.batch < 0) throw ValueError("negative batch size");
  for (size_t k = 0; k < r.per_example.size(); ++k) {
    if (!r.per_example[k]) continue;
    for (int n : params_[r.param_grads[k]].users)
      if (nodes_[n].mapped > 0)
        throw ValueError(cat("per-example gradients of array \"", params_[r.param_grads[k]].path, "\" are not available: ",
                             nodes_[n].where, " is inside a NetMapOperator (its elements' gradients are summed); ask "
                             "for the summed gradient, or evaluate one example at a time"));
  }
  if (r.directions < 1) throw ValueError(cat("the number of tangent directions must be at least 1; given ", r.directions));
  if (r.directions > 1 && (!r.tangent_params.empty() || !r.grad_tangent_inputs.empty() || !r.grad_tangent_params.empty()))
    throw ValueError("several tangent directions per example are for input tangents and output tangents only "
                     "(no array tangents, no NetPortTangent(NetPortGradient(...)))");
  {  // The plan's sizes (batch x elements x bytes, summed over values) must not overflow size_t.
    // Per value at most four buffers of 8-byte numbers: itself, its gradient, its tangent and its
    // gradient's tangent; per-example array gradients hold a batch of each array.
    double bytes = 0;
    for (const ValueInfo& v : values_)
      if (v.shape) bytes += double(r.batch) * double(shape_numel(*v.shape)) * (32 + 8 * double(r.directions - 1));
    for (size_t k = 0; k < r.per_example.size(); ++k)
      if (r.per_example[k]) bytes += double(r.batch) * double(shape_numel(params_[r.param_grads[k]].shape)) * 8;
    if (bytes > double(int64_t(1) << 60))
      throw ValueError(cat("a batch of ", r.batch, " examples needs about ", bytes / double(int64_t(1) << 40),
                           " TiB of working memory for this net; evaluate it in smaller batches"));
  }
  const GpuBackend* gpu = nullptr;
  if (r.device == Device::GPU) {
    gpu = &require_gpu_backend();
    const char* why = nullptr;
    const int count = gpu->device_count(&why);
    if (count == 0)
      throw ValueError(cat("TargetDevice \"GPU\" is not available: ", why ? why : "no GPU is visible",
                           "; use TargetDevice=\"CPU\""));
    if (r.device_index < 0 || r.device_index >= count)
      throw ValueError(cat("TargetDevice (\"GPU\", ", r.device_index, "): this machine has ", count,
                           count == 1 ? " GPU (index 0)" : cat(" GPUs (indices 0 to ", count - 1, ")")));
    gpu_check(gpu->set_device(r.device_index), "set_device");
  }
  if (b.inputs.size() != inputs_.size() || b.imposed.size() != r.imposed.size() ||
      b.outputs.size() != r.outputs.size() || b.input_grads.size() != r.input_grads.size() ||
      b.param_grads.size() != r.param_grads.size() || b.input_tangents.size() != r.tangent_inputs.size() ||
      b.param_tangents.size() != r.tangent_params.size() || b.output_tangents.size() != r.tangent_outputs.size() ||
      b.input_grad_tangents.size() != r.grad_tangent_inputs.size() ||
      b.param_grad_tangents.size() != r.grad_tangent_params.size())
    throw ValueError("buffers do not match the request");
  for (int i : r.tangent_inputs)
    if (values_[inputs_[i].value].index_bound > 0)
      throw ValueError(cat("NetPortTangent(\"", inputs_[i].name, "\"): the port takes integer indices, which have no "
                           "tangent"));
  for (int p : r.tangent_params)
    if (!params_[p].differentiable)
      throw ValueError(cat("NetPortTangent: array \"", params_[p].path, "\" is running state (such as moving "
                           "statistics), not a variable, and has no tangent"));
  for (int v : r.probes)
    if (v < 0 || size_t(v) >= values_.size() || !values_[v].shape) throw IndexError(cat("value index ", v, " out of range"));
  for (int p : r.param_grads)
    if (!params_[p].differentiable)
      throw ValueError(cat("array \"", params_[p].path, "\" is not learned (it is running state, such as "
                           "moving statistics) and has no gradient"));
  for (int i : r.input_grads)
    if (values_[inputs_[i].value].index_bound > 0)
      throw ValueError(cat("port \"", inputs_[i].name, "\" takes integer class indices and has no gradient"));
  check_initialized();

  // Inputs must be finite reals or in-range class indices.
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const ValueInfo& v = values_[inputs_[i].value];
    const int64_t n = r.batch * shape_numel(*v.shape);
    const bool on_device = gpu && gpu->pointer_device(b.inputs[i]) >= 0;
    if (v.index_bound > 0) {
      const int64_t* idx = static_cast<const int64_t*>(b.inputs[i]);
      int64_t k = -1, value = 0;
      if (on_device) {
        gpu_check(gpu->first_out_of_range(n, idx, v.index_bound, &k), "input check");
        if (k >= 0) gpu_check(gpu->copy(&value, idx + k, 8, CopyKind::DeviceToHost), "input check");
      } else {
        for (int64_t j = 0; j < n && k < 0; ++j)
          if (idx[j] < 0 || idx[j] >= v.index_bound) k = j, value = idx[j];
      }
      if (k >= 0) throw index_out_of_range(int(i), cat(value));
      continue;
    }
    check_finite(gpu, on_device, r.dtype, n, b.inputs[i], [&](double x, int64_t k) {
      return cat("port \"", inputs_[i].name, "\" contains ", std::isnan(x) ? "NaN" : "an infinity", " at flat index ", k,
                 "; inputs must be finite");
    });
  }
  for (size_t j = 0; j < r.imposed.size(); ++j) {
    const int64_t n = r.batch * shape_numel(*values_[outputs_[r.imposed[j]].value].shape);
    const bool on_device = gpu && gpu->pointer_device(b.imposed[j]) >= 0;
    check_finite(gpu, on_device, r.dtype, n, b.imposed[j], [&](double, int64_t k) {
      return cat("the gradient imposed on output \"", outputs_[r.imposed[j]].name, "\" is not finite at flat index ", k);
    });
  }
  for (size_t j = 0; j < r.tangent_inputs.size(); ++j) {
    const int64_t n = r.batch * shape_numel(*values_[inputs_[r.tangent_inputs[j]].value].shape);
    const bool on_device = gpu && gpu->pointer_device(b.input_tangents[j]) >= 0;
    check_finite(gpu, on_device, r.dtype, n, b.input_tangents[j], [&](double, int64_t k) {
      return cat("the tangent imposed on input \"", inputs_[r.tangent_inputs[j]].name, "\" is not finite at flat index ",
                 k);
    });
  }
  for (size_t j = 0; j < r.tangent_params.size(); ++j) {
    const int64_t n = shape_numel(params_[r.tangent_params[j]].shape);
    const bool on_device = gpu && gpu->pointer_device(b.param_tangents[j]) >= 0;
    check_finite(gpu, on_device, r.dtype, n, b.param_tangents[j], [&](double, int64_t k) {
      return cat("the tangent imposed on array \"", params_[r.tangent_params[j]].path, "\" is not finite at flat index ",
                 k);
    });
  }
}

size_t Net::RequestHash::operator()(const Request& r) const {
  size_t h = std::hash<int64_t>()(r.batch);
  auto mix = [&h](uint64_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
  mix(uint64_t(r.dtype) | uint64_t(r.device) << 8 | uint64_t(r.train) << 16 | uint64_t(uint32_t(r.device_index)) << 32);
  mix(uint64_t(r.directions));
  for (char c : r.per_example) mix(uint64_t(c) + 7);
  for (const std::vector<int>* list : {&r.outputs, &r.input_grads, &r.param_grads, &r.imposed, &r.probes,
                                       &r.tangent_inputs, &r.tangent_params, &r.tangent_outputs,
                                       &r.grad_tangent_inputs, &r.grad_tangent_params}) {
    mix(list->size());
    for (int v : *list) mix(uint64_t(uint32_t(v)));
  }
  return h;
}

std::shared_ptr<Plan> Net::plan_for(const Request& r) {
  std::lock_guard<std::mutex> lock(plans_mu_);
  auto found = plan_index_.find(r);
  if (found != plan_index_.end()) {
    plans_.splice(plans_.begin(), plans_, found->second);  // now the most recently used
    return found->second->second;
  }
  auto plan = std::make_shared<Plan>(*this, r);
  plans_.emplace_front(r, plan);
  plan_index_.emplace(r, plans_.begin());
  plan_bytes_ += plan->bytes();
  while (plans_.size() > 1 && (plans_.size() > kMaxPlans || plan_bytes_ > kMaxPlanBytes)) {
    plan_bytes_ -= plans_.back().second->bytes();
    plan_index_.erase(plans_.back().first);
    plans_.pop_back();
  }
  return plan;
}

IndexError Net::index_out_of_range(int input, const std::string& shown) const {
  const ValueInfo& v = values_[inputs_[input].value];
  bool embedding = false;
  for (const auto& [node, slot] : v.consumers) embedding |= std::string(nodes_[node].layer->type()) == "EmbeddingLayer";
  return IndexError(cat("port \"", inputs_[input].name, "\": ", embedding ? "index " : "class index ", shown,
                        " is out of range for ", v.index_bound, embedding ? " rows of the embedding" : " classes",
                        " (indices are 0-based: 0 to ", v.index_bound - 1, ")"));
}

void Net::evaluate(const Request& r, const Buffers& b) {
  validate(r, b);
  const std::shared_ptr<Plan> plan = plan_for(r);
  std::lock_guard<std::mutex> lock(plan->mutex());
  plan->run(b);  // reads the net's arrays, never writes them: a net is a value
}

int Net::find_value(const std::string& path, const std::string& port) const {
  for (const NodeInfo& node : nodes_) {
    if (node.path != path) continue;
    const auto ins = node.layer->inputs(), outs = node.layer->outputs();
    for (size_t i = 0; i < outs.size(); ++i)
      if (outs[i] == port) return node.out[i];
    for (size_t i = 0; i < ins.size(); ++i)
      if (ins[i] == port) return node.in[i];
  }
  return -1;
}

void Net::get_param(int p, DType dtype, void* out) const {
  const ParamInfo& info = params_.at(p);
  const Tensor& t = dtype == DType::F64 ? info.f64 : info.f32;
  std::memcpy(out, t.data, t.nbytes());
}

std::vector<std::string> Net::describe_plan(const Request& r) {
  const std::shared_ptr<Plan> plan = plan_for(r);
  std::lock_guard<std::mutex> lock(plan->mutex());
  return plan->describe();
}

size_t Net::plan_count() const {
  std::lock_guard<std::mutex> lock(plans_mu_);
  return plans_.size();
}

}  // namespace portgrad
