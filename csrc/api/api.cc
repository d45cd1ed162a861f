/// @brief The public C++ API (portgrad/portgrad.h) over the engine: names to indices, shape checks
/// at the door, one engine call per evaluation.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/errors.h"
#include "graph/inputs.h"
#include "graph/net.h"
#include "graph/request.h"
#include "io/safetensors.h"
#include "ops/gpu_backend.h"

namespace pg_engine {
using Engine = portgrad::Net;  // named before the public header makes portgrad::Net refer to both
using EngineBuffers = portgrad::Buffers;
using EngineDevice = portgrad::Device;
using portgrad::DType;
}  // namespace pg_engine

#include "portgrad/portgrad.h"

namespace portgrad {
inline namespace api {

using pg_engine::DType;
using pg_engine::Engine;
using Dims = std::vector<int64_t>;

struct Net::Impl {
  std::unique_ptr<Engine> engine;
  std::vector<Port> inputs, outputs;
};

const char* version() { return io::library_version(); }

namespace {

std::shared_ptr<Net::Impl> make_impl(io::FileContents c, const std::string& what) {
  if (!c.net)
    throw ValueError(cat(what, ": the net declares no input shape, so it cannot be evaluated from C++; declare one "
                               "in Python (e.g. NetChain([...], input=2)) before saving"));
  if (c.varying)
    throw ValueError(cat(what, ": the net has an input of \"Varying\" length, which the C++ API does not evaluate "
                               "yet; save a copy declared with one length"));
  auto impl = std::make_shared<Net::Impl>();
  impl->engine = std::move(c.net);
  const Engine& e = *impl->engine;
  for (const PortInfo& p : e.inputs()) {
    const ValueInfo& v = e.values()[p.value];
    impl->inputs.push_back({p.name, *v.shape, v.index_bound > 0});
  }
  for (const PortInfo& p : e.outputs()) impl->outputs.push_back({p.name, e.value_shape(p.value), false});
  return impl;
}

template <typename T>
constexpr DType dtype_of() {
  return sizeof(T) == 8 ? DType::F64 : DType::F32;
}

std::string names_of(const std::vector<Port>& ports) {
  std::string s;
  for (const Port& p : ports) s += cat(s.empty() ? "" : ", ", "'", p.name, "'");
  return s;
}

int find_port(const std::vector<Port>& ports, const std::string& name) {
  for (size_t k = 0; k < ports.size(); ++k)
    if (ports[k].name == name) return static_cast<int>(k);
  return -1;
}

int64_t numel(const Dims& d) {
  int64_t n = 1;
  for (int64_t x : d) n *= x;
  return n;
}

// Query names -> an engine request (batch and dtype filled in by the caller).
Request resolve(const Net::Impl& impl, const Query& q) {
  EvaluationOptions options;
  if (q.device == Device::GPU) {
    const GpuBackend* b = gpu_backend();
    if (!b)
      throw ValueError("Query::device is Device::GPU, but this program has no GPU backend enabled: link the CMake "
                       "target portgrad::cuda and call portgrad::enable_gpu() first (portgrad/gpu.h)");
    const char* why = nullptr;
    const int n = b->device_count(&why);
    if (q.device_index < 0 || q.device_index >= n)
      throw ValueError(n == 0 ? cat("Query::device is Device::GPU, but no GPU is usable: ", why ? why : "no device")
                              : cat("Query::device_index ", q.device_index, " is not a GPU of this machine (it has ", n,
                                    ": 0 to ", n - 1, ")"));
    options.device = pg_engine::EngineDevice::GPU;
    options.device_index = q.device_index;
  } else if (q.device != Device::CPU) {
    throw ValueError("Query::device must be Device::CPU or Device::GPU");
  }
  RequestNames names;
  names.outputs = q.outputs;
  names.input_grads = q.input_gradients;
  names.array_grads = q.array_gradients;
  if (!q.array_gradients_per_example.empty()) {  // engine: one list, flagged per entry
    names.array_grads.insert(names.array_grads.end(), q.array_gradients_per_example.begin(),
                             q.array_gradients_per_example.end());
    names.per_example.assign(q.array_gradients.size(), 0);
    names.per_example.resize(names.array_grads.size(), 1);
  }
  names.imposed = q.imposed;
  if (q.tangent_inputs.empty() != q.tangent_outputs.empty())
    throw ValueError(q.tangent_inputs.empty()
                         ? "Query::tangent_outputs asks for tangents, but no tangent is given: name the input ports "
                           "whose tangent you give in Query::tangent_inputs"
                         : "Query::tangent_inputs gives tangents, but no output tangent is asked for: name outputs "
                           "in Query::tangent_outputs");
  for (const std::string& name : q.tangent_inputs) {
    const int i = find_port(impl.inputs, name);
    if (i < 0) throw KeyError(cat("Query::tangent_inputs: the net has no input port '", name, "'; its input ports are ",
                                  names_of(impl.inputs)));
    if (impl.inputs[i].class_indices)
      throw ValueError(cat("Query::tangent_inputs: port '", name, "' takes class indices and has no tangent"));
  }
  names.tangent_inputs = q.tangent_inputs;
  names.tangent_outputs = q.tangent_outputs;
  return resolve_request(*impl.engine, names, options);
}

template <typename T>
void check_array(const Array<T>& a, const std::string& what) {
  for (int64_t d : a.shape)
    if (d < 0) throw ValueError(cat(what, ": negative dimension in shape ", shape_str(a.shape)));
  double n = 1;
  for (int64_t d : a.shape) n *= double(d);
  if (n != double(a.values.size()))
    throw ValueError(cat(what, ": shape ", shape_str(a.shape), " needs ", n, " values, given ", a.values.size()));
}

// The inputs as the engine takes them, checked as Python checks them (known ports, shapes, one
// batch size, class indices in range and integral): pointers into `inputs` (class indices as int64
// in `indices`). Returns the batch size, or -1 for one example without a batch axis.
template <typename T>
int64_t gather_inputs(const Net::Impl& impl, const Inputs<T>& inputs, pg_engine::EngineBuffers& eb,
                      std::vector<std::vector<int64_t>>& indices) {
  for (const auto& [name, _] : inputs)
    if (find_port(impl.inputs, name) < 0)
      throw KeyError(cat("the net has no input port '", name, "'; its input ports are ", names_of(impl.inputs)));
  int64_t batch = 0;
  indices.assign(impl.inputs.size(), {});
  for (size_t i = 0; i < impl.inputs.size(); ++i) {
    const Port& port = impl.inputs[i];
    auto it = inputs.find(port.name);
    if (it == inputs.end())
      throw ValueError(cat("no data for input port '", port.name, "'; pass ", names_of(impl.inputs)));
    check_array(it->second, cat("port \"", port.name, "\""));
    const int64_t bt = port_batch(it->second.shape, port.shape, port.name);
    if (i == 0) batch = bt;
    else check_batches_agree(impl.inputs[0].name, batch, port.name, bt);
    if (port.class_indices) {
      for (T v : it->second.values) indices[i].push_back(float_index(*impl.engine, int(i), double(v)));
      eb.inputs.push_back(indices[i].data());
    } else {
      eb.inputs.push_back(it->second.values.data());
    }
  }
  return batch;
}

}  // namespace

Net Net::load(const std::string& path) {
  return Net(make_impl(io::read_file(path), cat("portgrad file \"", path, "\"")));
}

Net Net::load_bytes(const void* data, size_t size) {
  if (!data && size) throw ValueError("Net::load_bytes: null data");
  return Net(make_impl(io::read_bytes(static_cast<const unsigned char*>(data), size, "portgrad data"), "portgrad data"));
}

Net Net::on(Device device, int device_index) const {
  if (device != Device::CPU && device != Device::GPU) throw ValueError("Net::on: device must be Device::CPU or Device::GPU");
  if (device_index < 0) throw ValueError(cat("Net::on: negative device index ", device_index));
  Net n = *this;
  n.device_ = device;
  n.device_index_ = device_index;
  return n;
}

Query Net::query() const {
  Query q;
  q.device = device_;
  q.device_index = device_index_;
  return q;
}

const std::vector<Port>& Net::inputs() const { return impl_->inputs; }
const std::vector<Port>& Net::outputs() const { return impl_->outputs; }

std::vector<ArrayInfo> Net::arrays() const {
  std::vector<ArrayInfo> r;
  for (const ParamInfo& p : impl_->engine->params()) r.push_back({p.path, p.shape});
  return r;
}

template <typename T>
Array<T> Net::array(const std::string& path) const {
  const int p = impl_->engine->find_param(path);
  if (p < 0) throw KeyError(cat("the net has no array '", path, "'"));
  const ParamInfo& info = impl_->engine->params()[p];
  const Tensor& t = sizeof(T) == 8 ? info.f64 : info.f32;
  Array<T> a{info.shape, std::vector<T>(size_t(info.f32.numel()))};
  std::memcpy(a.values.data(), t.data, a.values.size() * sizeof(T));
  return a;
}

template <typename T>
void Net::evaluate(const Query& query, int64_t batch, const Buffers<T>& b) const {
  Request r = resolve(*impl_, query);
  if (batch < 0) throw ValueError(cat("negative batch size ", batch));
  r.batch = batch;
  r.dtype = dtype_of<T>();
  pg_engine::EngineBuffers eb;
  eb.inputs = b.inputs;
  eb.imposed.assign(b.imposed.begin(), b.imposed.end());
  eb.outputs.assign(b.outputs.begin(), b.outputs.end());
  eb.input_grads.assign(b.input_gradients.begin(), b.input_gradients.end());
  eb.param_grads.assign(b.array_gradients.begin(), b.array_gradients.end());
  eb.param_grads.insert(eb.param_grads.end(), b.array_gradients_per_example.begin(), b.array_gradients_per_example.end());
  eb.input_tangents.assign(b.input_tangents.begin(), b.input_tangents.end());
  eb.output_tangents.assign(b.output_tangents.begin(), b.output_tangents.end());
  if (eb.inputs.size() != impl_->inputs.size())
    throw ValueError(cat("Buffers: ", impl_->inputs.size(), " input pointers needed (one per input port), given ",
                         eb.inputs.size()));
  if (eb.imposed.size() != r.imposed.size() || eb.outputs.size() != r.outputs.size() ||
      eb.input_grads.size() != r.input_grads.size() || eb.param_grads.size() != r.param_grads.size() ||
      b.array_gradients.size() != query.array_gradients.size() || eb.input_tangents.size() != r.tangent_inputs.size() ||
      eb.output_tangents.size() != r.tangent_outputs.size())
    throw ValueError("Buffers: one pointer per entry of each of the Query's lists is needed");
  auto null = [](const auto& v) { return std::any_of(v.begin(), v.end(), [](const auto* p) { return p == nullptr; }); };
  if (batch > 0 && (null(eb.inputs) || null(eb.imposed) || null(eb.outputs) || null(eb.input_grads) ||
                    null(eb.input_tangents) || null(eb.output_tangents)))
    throw ValueError("Buffers: a null pointer");
  if (null(eb.param_grads)) throw ValueError("Buffers: a null pointer");
  impl_->engine->evaluate(r, eb);
}

template <typename T>
Result<T> Net::evaluate(const Query& query, const Inputs<T>& inputs, const Inputs<T>& imposed,
                        const Inputs<T>& tangents) const {
  const Impl& impl = *impl_;
  Request r = resolve(impl, query);
  for (const auto& [name, _] : imposed)
    if (std::find(query.imposed.begin(), query.imposed.end(), name) == query.imposed.end())
      throw ValueError(cat("a gradient is given for output '", name, "', which the Query does not impose"));
  pg_engine::EngineBuffers eb;
  std::vector<std::vector<int64_t>> indices;
  const int64_t batch = gather_inputs(impl, inputs, eb, indices);
  const bool batched = batch >= 0;
  r.batch = batched ? batch : 1;
  r.dtype = dtype_of<T>();
  for (int o : r.imposed) {
    const Port& port = impl.outputs[o];
    auto it = imposed.find(port.name);
    if (it == imposed.end()) throw ValueError(cat("no gradient given for the imposed output '", port.name, "'"));
    const std::string what = cat("the gradient imposed on output \"", port.name, "\"");
    check_array(it->second, what);
    check_imposed_shape(port.name, port.shape, batch, it->second.shape);
    eb.imposed.push_back(it->second.values.data());
  }
  for (const auto& [name, _] : tangents)
    if (std::find(query.tangent_inputs.begin(), query.tangent_inputs.end(), name) == query.tangent_inputs.end())
      throw ValueError(cat("a tangent is given for input '", name, "', which Query::tangent_inputs does not name"));
  for (int i : r.tangent_inputs) {
    const Port& port = impl.inputs[i];
    auto it = tangents.find(port.name);
    if (it == tangents.end()) throw ValueError(cat("no tangent given for input '", port.name, "'"));
    const std::string what = cat("the tangent imposed on input \"", port.name, "\"");
    check_array(it->second, what);
    const Dims want = batched ? shape_concat({batch}, port.shape) : port.shape;
    if (it->second.shape != want)
      throw ValueError(cat(what, ": expected shape ", shape_str(want), " (the input's), given shape ",
                           shape_str(it->second.shape)));
    eb.input_tangents.push_back(it->second.values.data());
  }
  Result<T> res;
  auto make = [&](const Dims& shape, bool with_batch, std::vector<Array<T>>& into) {
    Array<T> a;
    if (with_batch && batched) a.shape.push_back(r.batch);
    a.shape.insert(a.shape.end(), shape.begin(), shape.end());
    a.values.resize(size_t(numel(a.shape)));
    into.push_back(std::move(a));
  };
  for (int o : r.outputs) make(impl.outputs[o].shape, true, res.outputs);
  for (int i : r.input_grads) make(impl.inputs[i].shape, true, res.input_gradients);
  for (size_t j = 0; j < r.param_grads.size(); ++j) {
    const bool per_example = !r.per_example.empty() && r.per_example[j];
    make(impl.engine->params()[r.param_grads[j]].shape, per_example,
         per_example ? res.array_gradients_per_example : res.array_gradients);
  }
  for (int o : r.tangent_outputs) make(impl.outputs[o].shape, true, res.output_tangents);
  for (auto& a : res.outputs) eb.outputs.push_back(a.values.data());
  for (auto& a : res.input_gradients) eb.input_grads.push_back(a.values.data());
  for (auto& a : res.array_gradients) eb.param_grads.push_back(a.values.data());
  for (auto& a : res.array_gradients_per_example) eb.param_grads.push_back(a.values.data());
  for (auto& a : res.output_tangents) eb.output_tangents.push_back(a.values.data());
  impl.engine->evaluate(r, eb);
  return res;
}

template <typename T>
Array<T> Net::output(const Inputs<T>& inputs, const std::string& port) const {
  std::string name = port;
  if (name.empty()) {
    if (impl_->outputs.size() != 1)
      throw ValueError(cat("the net has ", impl_->outputs.size(), " output ports (", names_of(impl_->outputs),
                           "); name the one you want"));
    name = impl_->outputs[0].name;
  }
  Query q = query();
  q.outputs = {name};
  return std::move(evaluate<T>(q, inputs).outputs[0]);
}

template <typename T>
Array<T> Net::input_gradient(const Inputs<T>& inputs, const std::string& port, const Inputs<T>& imposed) const {
  Query q = query();
  q.input_gradients = {port};
  for (const auto& [name, _] : imposed) q.imposed.push_back(name);
  return std::move(evaluate<T>(q, inputs, imposed).input_gradients[0]);
}

template <typename T>
Array<T> Net::array_gradient(const Inputs<T>& inputs, const std::string& path, const Inputs<T>& imposed) const {
  Query q = query();
  q.array_gradients = {path};
  for (const auto& [name, _] : imposed) q.imposed.push_back(name);
  return std::move(evaluate<T>(q, inputs, imposed).array_gradients[0]);
}

template <typename T>
Array<T> Net::jacobian(const Inputs<T>& inputs, const std::string& input, const std::string& output) const {
  const Impl& impl = *impl_;
  std::string out = output;
  if (out.empty()) {
    if (impl.outputs.size() != 1)
      throw ValueError(cat("the net has ", impl.outputs.size(), " output ports (", names_of(impl.outputs),
                           "); name the one whose Jacobian you want"));
    out = impl.outputs[0].name;
  }
  const int i = find_port(impl.inputs, input);
  if (i < 0) throw KeyError(cat("the net has no input port '", input, "'; its input ports are ", names_of(impl.inputs)));
  const int o = find_port(impl.outputs, out);
  if (o < 0) throw KeyError(cat("the net has no output port '", out, "'; its output ports are ", names_of(impl.outputs)));
  pg_engine::EngineBuffers eb;
  std::vector<std::vector<int64_t>> indices;
  const int64_t batch = gather_inputs(impl, inputs, eb, indices);  // one example: the same data as a batch of one
  const int64_t B = batch < 0 ? 1 : batch, n_in = numel(impl.inputs[i].shape), n_out = numel(impl.outputs[o].shape);
  // Direction j of every example is e_j: tangents [n_in][B][n_in], one evaluation.
  Query q = query();
  q.tangent_inputs = {input};
  q.tangent_outputs = {out};
  // The tangents, the directions' outputs and the plan's tangent buffers grow as B n_in (n_in + n_out):
  // refuse what would not fit rather than let an allocation fail (the bound Python's NetPortJacobian uses).
  const double need = double(B) * double(n_in) * (double(n_in) + 2.0 * double(n_out));
  if (need > double(int64_t(1) << 31))
    throw ValueError(cat("Net::jacobian: ", B, " examples with ", n_in, " directions each need about ", need,
                         " numbers (at most 2^31); evaluate fewer examples at a time, or ask for the products you "
                         "need (Query::tangent_inputs and tangent_outputs: J v)"));
  Array<T> jac;
  if (batch >= 0) jac.shape.push_back(B);
  jac.shape.insert(jac.shape.end(), impl.outputs[o].shape.begin(), impl.outputs[o].shape.end());
  jac.shape.insert(jac.shape.end(), impl.inputs[i].shape.begin(), impl.inputs[i].shape.end());
  jac.values.resize(size_t(B * n_out * n_in));
  if (B * n_in == 0) return jac;
  std::vector<T> tangent(size_t(n_in * B * n_in), T(0)), cols(size_t(n_in * B * n_out));
  for (int64_t j = 0; j < n_in; ++j)
    for (int64_t b = 0; b < B; ++b) tangent[size_t((j * B + b) * n_in + j)] = T(1);
  Request r = resolve(impl, q);
  r.directions = n_in;
  r.batch = B;
  r.dtype = dtype_of<T>();
  eb.input_tangents = {tangent.data()};
  eb.output_tangents = {cols.data()};
  impl.engine->evaluate(r, eb);
  for (int64_t b = 0; b < B; ++b)  // cols [j][b][k] -> jac [b][k][j]
    for (int64_t k = 0; k < n_out; ++k)
      for (int64_t j = 0; j < n_in; ++j) jac.values[size_t((b * n_out + k) * n_in + j)] = cols[size_t((j * B + b) * n_out + k)];
  return jac;
}

#define PORTGRAD_INSTANTIATE(T)                                                                              \
  template Array<T> Net::array<T>(const std::string&) const;                                                 \
  template Result<T> Net::evaluate<T>(const Query&, const Inputs<T>&, const Inputs<T>&, const Inputs<T>&) const; \
  template Array<T> Net::jacobian<T>(const Inputs<T>&, const std::string&, const std::string&) const;        \
  template Array<T> Net::output<T>(const Inputs<T>&, const std::string&) const;                              \
  template Array<T> Net::input_gradient<T>(const Inputs<T>&, const std::string&, const Inputs<T>&) const;    \
  template Array<T> Net::array_gradient<T>(const Inputs<T>&, const std::string&, const Inputs<T>&) const;    \
  template void Net::evaluate<T>(const Query&, int64_t, const Buffers<T>&) const;
PORTGRAD_INSTANTIATE(float)
PORTGRAD_INSTANTIATE(double)
#undef PORTGRAD_INSTANTIATE

}  // namespace api
}  // namespace portgrad
