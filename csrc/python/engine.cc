/// @brief Python binding of the engine: array conversion and checks at the door, one C++ call per
/// evaluation with the GIL released, numpy arrays out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <vector>

#include "core/dlpack.h"
#include "core/json.h"
#include "graph/net.h"
#include "ops/gpu_backend.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace portgrad::python {
namespace {

py::tuple shape_tuple(const Shape& s) {
  py::tuple t(s.size());
  for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
  return t;
}

Shape array_shape(const py::array& a) {
  return Shape(a.shape(), a.shape() + a.ndim());
}

std::string describe_dtype(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Rejects what cannot be a number: complex, object, string, bytes, datetime, structured.
// `what` names the port in the message; it is only called on failure.
template <typename What>
void check_real_kind(const py::array& a, What&& what) {
  const char kind = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr)->kind;
  if (kind == 'b' || kind == 'i' || kind == 'u' || kind == 'f') return;
  if (kind == 'c')
    throw TypeError(cat(what(), ": complex values are not supported (given dtype ", describe_dtype(a), ")"));
  throw TypeError(cat(what(), ": expected real numbers, given an array of dtype ", describe_dtype(a)));
}

// The shape check of every port: one example has exactly the port's shape, a batch one more
// leading axis. Returns the batch size, or -1 for a single example.
int64_t batch_of(const py::array& a, const Shape& port, const std::string& port_name) {
  const auto nd = size_t(a.ndim());
  const py::ssize_t* dims = a.shape();
  if (nd == port.size() && std::equal(port.begin(), port.end(), dims)) return -1;
  if (nd == port.size() + 1 && std::equal(port.begin(), port.end(), dims + 1)) return dims[0];
  std::string batched = shape_str(shape_concat({0}, port));
  batched.replace(1, 1, "n");
  throw ValueError(cat("port \"", port_name, "\": expected an array of shape ", shape_str(port), " (one example) or ",
                       batched, " (a batch), given shape ", shape_str(array_shape(a))));
}

// Real32 evaluation of float64 (or wider integer) data: a finite value beyond float32's range
// would silently become infinite.
void check_float32_range(const py::array& a, const std::string& port) {
  const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr);
  if (descr->kind != 'f' || a.itemsize() <= 4) return;
  auto d = as_contiguous<double>(a, cat("port \"", port, "\""));
  const double* p = d.data();
  for (py::ssize_t k = 0; k < d.size(); ++k)
    if (std::isfinite(p[k]) && std::fabs(p[k]) > 3.4028234663852886e38)
      throw ValueError(cat("port \"", port, "\": the value ", p[k], " at flat index ", k,
                           " is outside the float32 range; use WorkingPrecision=\"Real64\""));
}

template <typename T>
py::array converted(const py::array& a, const std::string& what) {
  // Already T, native byte order, C-contiguous and aligned (the common case): used as it is.
  using npy = py::detail::npy_api;
  constexpr int need = npy::NPY_ARRAY_C_CONTIGUOUS_ | npy::NPY_ARRAY_ALIGNED_;
  const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr);
  const char kind = std::is_floating_point<T>::value ? 'f' : 'i';
  if (descr->kind == kind && a.itemsize() == py::ssize_t(sizeof(T)) && descr->byteorder != '>' &&
      (a.flags() & need) == need)
    return a;
  return as_contiguous<T>(a, what);
}

// --- GPU arrays: objects with __cuda_array_interface__ (CuPy, PyTorch CUDA tensors, our
// DeviceArray) are read in place; device results are made by the GPU module's DeviceArray.
py::object& device_array_factory() {
  static py::object* f = new py::object();  // leaked: outlives interpreter teardown order
  return *f;
}

struct DeviceView {
  const void* data;
  Shape shape;
  char kind;  // 'f' float32, 'd' float64, 'q' int64
};

// A DLPack tensor taken from its producer: released (its deleter called) when the call is over.
struct DlpackTaken {
  dlpack::DLManagedTensor* managed = nullptr;
  ~DlpackTaken() {
    if (managed && managed->deleter) managed->deleter(managed);
  }
};
using DlpackHolds = std::vector<std::unique_ptr<DlpackTaken>>;

char kind_of(const std::string& what, int code, int bits) {
  if (code == dlpack::kDLFloat && bits == 32) return 'f';
  if (code == dlpack::kDLFloat && bits == 64) return 'd';
  if (code == dlpack::kDLInt && bits == 64) return 'q';
  throw TypeError(cat(what, ": a GPU array must be float32, float64 or int64; given DLPack type code ", code, " with ",
                      bits, " bits"));
}

void check_c_contiguous(const std::string& what, const Shape& shape, const std::vector<int64_t>& strides, int64_t unit) {
  int64_t expect = unit;
  for (size_t k = shape.size(); k-- > 0;) {
    if (shape[k] != 1 && strides[k] != expect)
      throw ValueError(cat(what, ": a GPU array must be C-contiguous (make it so with .contiguous() or cupy.ascontiguousarray)"));
    expect *= shape[k];
  }
}

// The array behind obj's __cuda_array_interface__, or behind its DLPack export when that is on a
// CUDA device; false when obj is neither (a host array). `what` names it in errors: called only
// for objects that are not NumPy arrays, so the common call builds no message.
bool device_view(const py::handle& obj, const std::string& what, DeviceView* v, DlpackHolds& holds) {
  v->shape.clear();
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    std::string typestr;
    std::vector<int64_t> strides;
    bool has_strides = false;
    try {  // a malformed interface is the producer's error, said as such (not a cast failure)
      py::dict cai = obj.attr("__cuda_array_interface__");
      for (auto d : cai["shape"].cast<py::tuple>()) v->shape.push_back(d.cast<int64_t>());
      typestr = cai["typestr"].cast<std::string>();
      has_strides = cai.contains("strides") && !cai["strides"].is_none();
      if (has_strides) strides = cai["strides"].cast<std::vector<int64_t>>();
      v->data = reinterpret_cast<const void*>(cai["data"].cast<py::tuple>()[0].cast<uintptr_t>());
    } catch (const py::error_already_set& e) {
      throw TypeError(cat(what, ": malformed __cuda_array_interface__ (", e.what(), ")"));
    } catch (const py::cast_error&) {
      throw TypeError(cat(what, ": malformed __cuda_array_interface__ (shape, typestr, data or strides of the wrong type)"));
    }
    if (typestr == "<f4") v->kind = 'f';
    else if (typestr == "<f8") v->kind = 'd';
    else if (typestr == "<i8") v->kind = 'q';
    else throw TypeError(cat(what, ": a GPU array must be float32, float64 or int64; given typestr \"", typestr, "\""));
    if (has_strides) {
      if (strides.size() != v->shape.size())
        throw TypeError(cat(what, ": malformed __cuda_array_interface__ (", strides.size(), " strides for ", v->shape.size(),
                            " dimensions)"));
      check_c_contiguous(what, v->shape, strides, v->kind == 'f' ? 4 : 8);
    }
    return true;
  }
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__")) return false;
  // (negative dimensions of either protocol fail the port's shape check)
  const auto device = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
  if (device.first != dlpack::kDLCUDA && device.first != dlpack::kDLCUDAManaged) return false;
  py::capsule cap = obj.attr("__dlpack__")();  // the unversioned form: no max_version given
  if (!PyCapsule_IsValid(cap.ptr(), "dltensor")) throw TypeError(cat(what, ": __dlpack__ did not return a DLPack tensor"));
  auto* managed = static_cast<dlpack::DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  PyCapsule_SetName(cap.ptr(), "used_dltensor");  // taken: the capsule no longer frees it
  holds.push_back(std::make_unique<DlpackTaken>());
  holds.back()->managed = managed;
  const dlpack::DLTensor& t = managed->dl_tensor;
  if (t.dtype.lanes != 1) throw TypeError(cat(what, ": vector (multi-lane) DLPack types are not supported"));
  v->kind = kind_of(what, t.dtype.code, t.dtype.bits);
  if (t.ndim < 0 || (t.ndim > 0 && !t.shape)) throw TypeError(cat(what, ": malformed DLPack tensor (no shape)"));
  v->shape.assign(t.shape, t.shape + t.ndim);
  if (t.strides) check_c_contiguous(what, v->shape, std::vector<int64_t>(t.strides, t.strides + t.ndim), 1);
  v->data = static_cast<const char*>(t.data) + t.byte_offset;
  return true;
}

// The batch of a GPU array for a port, as batch_of does for NumPy arrays.
int64_t device_batch(const DeviceView& v, const Shape& port, const std::string& port_name) {
  const size_t nd = v.shape.size();
  if (nd == port.size() && std::equal(port.begin(), port.end(), v.shape.begin())) return -1;
  if (nd == port.size() + 1 && std::equal(port.begin(), port.end(), v.shape.begin() + 1)) return v.shape[0];
  std::string batched = shape_str(shape_concat({0}, port));
  batched.replace(1, 1, "n");
  throw ValueError(cat("port \"", port_name, "\": expected an array of shape ", shape_str(port), " (one example) or ",
                       batched, " (a batch), given a GPU array of shape ", shape_str(v.shape)));
}

void check_device_kind(const DeviceView& v, char want, const std::string& what, const Request& r) {
  if (v.kind == want) return;
  auto name = [](char k) { return k == 'f' ? "float32" : k == 'd' ? "float64" : "int64"; };
  throw TypeError(cat(what, ": a GPU array is used in place, so it must have dtype ", name(want), "; given ", name(v.kind),
                      want == 'q' ? " (class indices are int64)" : r.dtype == DType::F32 ? " (or evaluate with WorkingPrecision=\"Real64\")" : " (or evaluate with WorkingPrecision=\"Real32\")"));
}

// Memory a producer calls GPU memory must be GPU memory: a host pointer would be read as a device
// one (garbage or a crash). An empty array may have no memory at all.
void check_on_device(const DeviceView& v, const std::string& what) {
  if (shape_numel(v.shape) == 0) return;
  const GpuBackend& gpu = require_gpu_backend();
  if (gpu.pointer_device(v.data) < 0)
    throw ValueError(cat(what, ": the array claims GPU memory (__cuda_array_interface__ or DLPack), but its data pointer "
                         "is not in the memory of any GPU of the ", gpu.name, " backend"));
}

// A request prepared once by Python (which outputs and gradients), run many times.
struct PreparedRequest {
  Request request;
};

py::tuple run(Net& net, const PreparedRequest& prepared, const py::list& inputs, const py::list& imposed,
              uint64_t seed, bool device_results) {
  // Per-thread scratch copies: assignment reuses their vectors' capacity, so a repeated call
  // allocates nothing here (and concurrent calls sharing one prepared request don't race). One set
  // per nesting depth: an input's __array__, __cuda_array_interface__ or __dlpack__ may call
  // portgrad again on this thread, and that call must not overwrite this one's.
  struct Scratch {
    Request r;
    Buffers buf;
  };
  thread_local std::vector<std::unique_ptr<Scratch>> scratch;
  thread_local size_t depth = 0;
  if (scratch.size() <= depth) scratch.push_back(std::make_unique<Scratch>());
  Scratch& mine = *scratch[depth];
  struct Nest {
    size_t& d;
    explicit Nest(size_t& d_) : d(d_) { ++d; }
    ~Nest() { --d; }
  } nest(depth);
  Request& r = mine.r;
  Buffers& buf = mine.buf;
  r = prepared.request;
  const auto& ports = net.inputs();
  if (py::len(inputs) != ports.size()) throw ValueError("one array per input port is needed");
  if (py::len(imposed) != r.imposed.size()) throw ValueError("one imposed gradient per imposed output is needed");
  py::object keep[16];  // converted arrays stay alive across the GIL-free call (py::object: no array made)
  DlpackHolds dlpack_holds;  // GPU arrays taken through DLPack, released after the call
  std::vector<py::object> keep_more;
  auto hold = [&](size_t k, py::array a) -> const void* {
    const void* data = a.data();
    if (k < 16) keep[k] = std::move(a);
    else keep_more.push_back(std::move(a));
    return data;
  };
  buf.inputs.assign(ports.size(), nullptr);
  buf.imposed.clear();
  buf.outputs.clear();
  buf.input_grads.clear();
  buf.param_grads.clear();
  buf.probes.clear();
  int64_t batch = ports.empty() ? -1 : 0;  // a net without inputs (a ConstantArrayLayer) gives one example
  for (size_t i = 0; i < ports.size(); ++i) {
    const ValueInfo& v = net.values()[ports[i].value];
    DeviceView dv;
    if (!py::isinstance<py::array>(inputs[i]) &&
        device_view(inputs[i], cat("port \"", ports[i].name, "\""), &dv, dlpack_holds)) {
      if (r.device != Device::GPU)
        throw ValueError(cat("port \"", ports[i].name, "\" holds a GPU array; evaluate with TargetDevice=\"GPU\" or copy it "
                             "to the host"));
      check_device_kind(dv, v.index_bound > 0 ? 'q' : r.dtype == DType::F64 ? 'd' : 'f', cat("port \"", ports[i].name, "\""), r);
      check_on_device(dv, cat("port \"", ports[i].name, "\""));
      const int64_t b = device_batch(dv, *v.shape, ports[i].name);
      if (i == 0) batch = b;
      else if (b != batch)
        throw ValueError(cat("ports \"", ports[0].name, "\" and \"", ports[i].name, "\" disagree in their batch sizes"));
      buf.inputs[i] = dv.data;  // range and finiteness are checked on the device by Net::evaluate
      continue;
    }
    py::array a = py::reinterpret_borrow<py::array>(inputs[i]);
    if (!py::isinstance<py::array>(a)) a = py::array::ensure(inputs[i]);
    if (!a) throw TypeError(cat("port \"", ports[i].name, "\": expected an array"));
    check_real_kind(a, [&] { return cat("port \"", ports[i].name, "\""); });
    const int64_t b = batch_of(a, *v.shape, ports[i].name);
    if (i == 0) {
      batch = b;
    } else if (b != batch) {
      auto say = [](int64_t n) { return n < 0 ? std::string("one example") : cat("a batch of ", n); };
      throw ValueError(cat("ports \"", ports[0].name, "\" and \"", ports[i].name, "\" disagree: ", say(batch), " vs ",
                           say(b)));
    }
    if (v.index_bound > 0) {
      const char kind = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr)->kind;
      const auto [noun, bound] = net.index_words(ports[i].value);
      if (kind == 'u' && a.itemsize() == 8) {  // past INT64_MAX a cast to int64 would show it negative
        auto u = as_contiguous<uint64_t>(a, cat("port \"", ports[i].name, "\""));
        for (py::ssize_t k = 0; k < u.size(); ++k)
          if (u.data()[k] >= uint64_t(v.index_bound))
            throw IndexError(cat("port \"", ports[i].name, "\": ", noun, " ", u.data()[k], " is out of range for ",
                                 v.index_bound, " ", bound, " (indices are 0-based: 0 to ", v.index_bound - 1, ")"));
      }
      if (kind == 'f') {
        auto f = as_contiguous<double>(a, cat("port \"", ports[i].name, "\""));
        const double* p = f.data();
        for (py::ssize_t k = 0; k < f.size(); ++k) {
          if (!(std::isfinite(p[k]) && p[k] == std::floor(p[k])))
            throw ValueError(cat("port \"", ports[i].name, "\" takes 0-based class indices (integers); given the value ", p[k]));
          if (p[k] < 0 || p[k] >= double(v.index_bound))  // before the cast to int64, which could overflow
            throw IndexError(cat("port \"", ports[i].name, "\": ", noun, " ", p[k], " is out of range for ", v.index_bound,
                                 " ", bound, " (indices are 0-based: 0 to ", v.index_bound - 1, ")"));
        }
      } else if (kind == 'b') {
        throw TypeError(cat("port \"", ports[i].name, "\" takes 0-based class indices (integers); given booleans"));
      }
      const std::string what = cat("port \"", ports[i].name, "\"");
      buf.inputs[i] = hold(i, converted<int64_t>(a, what));
    } else {
      if (r.dtype == DType::F32) check_float32_range(a, ports[i].name);
      const std::string what = cat("port \"", ports[i].name, "\"");
      buf.inputs[i] = hold(i, r.dtype == DType::F64 ? converted<double>(a, what) : converted<float>(a, what));
    }
  }
  const bool batched = batch >= 0;
  r.batch = batched ? batch : 1;

  for (size_t j = 0; j < r.imposed.size(); ++j) {
    const int o = r.imposed[j];
    const std::string& name = net.outputs()[o].name;
    DeviceView dv;
    if (!py::isinstance<py::array>(imposed[j]) &&
        device_view(imposed[j], cat("the gradient imposed on output \"", name, "\""), &dv, dlpack_holds)) {
      if (r.device != Device::GPU)
        throw ValueError(cat("the gradient imposed on output \"", name, "\" is a GPU array; evaluate with TargetDevice=\"GPU\""));
      check_device_kind(dv, r.dtype == DType::F64 ? 'd' : 'f', cat("the gradient imposed on output \"", name, "\""), r);
      check_on_device(dv, cat("the gradient imposed on output \"", name, "\""));
      const Shape& s = net.value_shape(net.outputs()[o].value);
      const Shape want = batched ? shape_concat({r.batch}, s) : s;
      if (dv.shape != want)
        throw ValueError(cat("the gradient imposed on output \"", name, "\": expected shape ", shape_str(want),
                             " (the output's shape), given shape ", shape_str(dv.shape)));
      buf.imposed.push_back(dv.data);
      continue;
    }
    py::array a = py::array::ensure(imposed[j]);
    if (!a) throw TypeError(cat("the gradient imposed on output \"", name, "\" must be an array"));
    check_real_kind(a, [&] { return cat("the gradient imposed on output \"", name, "\""); });
    const Shape& s = net.value_shape(net.outputs()[o].value);
    const Shape want = batched ? shape_concat({r.batch}, s) : s;
    if (array_shape(a) != want)
      throw ValueError(cat("the gradient imposed on output \"", name, "\": expected shape ", shape_str(want),
                           " (the output's shape), given shape ", shape_str(array_shape(a))));
    const std::string what = cat("the gradient imposed on output \"", name, "\"");
    buf.imposed.push_back(hold(ports.size() + j, r.dtype == DType::F64 ? converted<double>(a, what)
                                                                        : converted<float>(a, what)));
  }

  // Results are allocated here so the C++ call writes straight into numpy's memory.
  if (device_results && (r.device != Device::GPU || !device_array_factory()))
    throw ValueError("device results need TargetDevice=\"GPU\"");
  // A device result is a DeviceArray of the GPU module; `data` receives where the engine writes.
  auto make_any = [&](std::vector<py::ssize_t> dims, char kind, void** data) -> py::object {
    if (device_results) {
      py::object a = device_array_factory()(py::cast(dims), std::string(1, kind), r.device_index);
      *data = reinterpret_cast<void*>(a.attr("ptr").cast<uintptr_t>());
      return a;
    }
    py::array a = kind == 'q' ? py::array(py::array_t<int64_t>(dims))
                  : kind == 'd' ? py::array(py::array_t<double>(dims)) : py::array(py::array_t<float>(dims));
    *data = a.mutable_data();
    return std::move(a);
  };
  auto make = [&](const Shape& per_example, bool with_batch, void** data) -> py::object {
    std::vector<py::ssize_t> dims;
    if (with_batch && batched) dims.push_back(r.batch);
    dims.insert(dims.end(), per_example.begin(), per_example.end());
    return make_any(std::move(dims), r.dtype == DType::F64 ? 'd' : 'f', data);
  };
  py::list outs(r.outputs.size()), igs(r.input_grads.size()), pgs(r.param_grads.size()), probes(r.probes.size());
  for (size_t j = 0; j < r.probes.size(); ++j) {
    const ValueInfo& v = net.values()[r.probes[j]];
    std::vector<py::ssize_t> dims;
    if (batched) dims.push_back(r.batch);
    dims.insert(dims.end(), v.shape->begin(), v.shape->end());
    void* data = nullptr;
    probes[j] = make_any(std::move(dims), v.index_bound > 0 ? 'q' : r.dtype == DType::F64 ? 'd' : 'f', &data);
    buf.probes.push_back(data);
  }
  buf.seed = seed;
  for (size_t j = 0; j < r.outputs.size(); ++j) {
    void* data = nullptr;
    outs[j] = make(net.value_shape(net.outputs()[r.outputs[j]].value), true, &data);
    buf.outputs.push_back(data);
  }
  for (size_t j = 0; j < r.input_grads.size(); ++j) {
    void* data = nullptr;
    igs[j] = make(net.value_shape(ports[r.input_grads[j]].value), true, &data);
    buf.input_grads.push_back(data);
  }
  for (size_t j = 0; j < r.param_grads.size(); ++j) {
    void* data = nullptr;
    pgs[j] = make(net.params()[r.param_grads[j]].shape, false, &data);
    buf.param_grads.push_back(data);
  }
  {
    py::gil_scoped_release release;
    net.evaluate(r, buf);
  }
  return py::make_tuple(std::move(outs), std::move(igs), std::move(pgs), std::move(probes));
}

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<PreparedRequest>(m, "Request", "A prepared evaluation request (see Net.request)");
  m.def("register_gpu_backend", [](py::capsule backend, py::object device_array) {
    if (std::string(backend.name() ? backend.name() : "") != "portgrad.GpuBackend")
      throw TypeError("register_gpu_backend expects the capsule of a portgrad GPU module's backend()");
    register_gpu_backend(static_cast<const GpuBackend*>(backend.get_pointer()));
    device_array_factory() = std::move(device_array);
  }, py::arg("backend"), py::arg("device_array"),
     "Registers a GPU backend (portgrad._cuda or portgrad._gpu_emulator) and the factory of its device arrays");
  m.def("gpu_backend_name", [] {
    const GpuBackend* b = gpu_backend();
    return b ? py::object(py::str(b->name)) : py::object(py::none());
  }, "The name of the registered GPU backend, or None");
  m.def("declared_inputs", [](const std::string& spec_json) {
    py::list l;
    for (const auto& [name, shape] : Net::declared_inputs(json::parse(spec_json)))
      l.append(py::make_tuple(name, shape ? py::object(shape_tuple(*shape)) : py::object(py::none())));
    return l;
  }, "[(name, declared shape or None)] of a spec's input ports");
  py::class_<Net>(m, "Net", "A compiled net: the DAG, its shapes, its arrays and its cached plans")
      .def(py::init([](const std::string& spec_json, const std::vector<std::pair<std::string, std::vector<int64_t>>>& shapes) {
             std::vector<std::pair<std::string, Shape>> s;
             for (const auto& [name, dims] : shapes) {
               for (int64_t d : dims)
                 if (d < 0) throw ValueError(cat("input port \"", name, "\": negative dimension ", d));
               s.emplace_back(name, Shape(dims.begin(), dims.end()));
             }
             return std::make_unique<Net>(json::parse(spec_json), s);
           }),
           py::arg("spec_json"), py::arg("input_shapes") = std::vector<std::pair<std::string, std::vector<int64_t>>>{})
      .def_property_readonly("inputs", [](const Net& n) {
        py::list l;
        for (const PortInfo& p : n.inputs()) {
          const ValueInfo& v = n.values()[p.value];
          l.append(py::make_tuple(p.name, shape_tuple(*v.shape), v.index_bound));
        }
        return l;
      }, "[(name, shape, index_bound)] of the input ports; index_bound > 0 marks class-index ports")
      .def_property_readonly("outputs", [](const Net& n) {
        py::list l;
        for (const PortInfo& p : n.outputs()) l.append(py::make_tuple(p.name, shape_tuple(n.value_shape(p.value))));
        return l;
      }, "[(name, shape)] of the output ports")
      .def_property_readonly("nodes", [](const Net& n) {
        py::list l;
        for (const NodeInfo& node : n.nodes()) {
          py::list ins, outs;
          for (int v : node.in) ins.append(shape_tuple(n.value_shape(v)));
          for (int v : node.out) outs.append(shape_tuple(n.value_shape(v)));
          l.append(py::make_tuple(node.path, node.layer->type(), ins, outs));
        }
        return l;
      }, "[(path, type, input shapes, output shapes)] of every layer node")
      .def_property_readonly("params", [](const Net& n) {
        py::list l;
        for (const ParamInfo& p : n.params()) l.append(py::make_tuple(p.path, shape_tuple(p.shape)));
        return l;
      }, "[(path, shape)] of the learned arrays")
      .def("set_param", [](Net& n, int p, py::array a) {
        if (p < 0 || size_t(p) >= n.params().size()) throw IndexError(cat("parameter index ", p, " out of range"));
        const ParamInfo& info = n.params()[p];
        const std::string what = cat("array \"", info.path, "\"");
        check_real_kind(a, [&] { return what; });
        if (array_shape(a) != info.shape)
          throw ValueError(cat(what, ": expected shape ", shape_str(info.shape), ", given shape ", shape_str(array_shape(a))));
        if (a.dtype().is(py::dtype::of<double>())) {
          n.set_param(p, as_contiguous<double>(a, what).data(), DType::F64);
        } else {
          n.set_param(p, as_contiguous<float>(a, what).data(), DType::F32);
        }
      })
      .def("request", [](const Net& n, int bits, const std::string& device, const std::vector<int>& outputs,
                         const std::vector<int>& input_grads, const std::vector<int>& param_grads,
                         const std::vector<int>& imposed, const std::vector<std::pair<std::string, std::string>>& probes,
                         bool train, int device_index) {
        PreparedRequest p;
        Request& r = p.request;
        if (bits != 32 && bits != 64) throw ValueError("WorkingPrecision must be \"Real32\" or \"Real64\"");
        r.dtype = bits == 64 ? DType::F64 : DType::F32;
        if (device == "CPU") r.device = Device::CPU;
        else if (device == "GPU") r.device = Device::GPU;
        else throw ValueError(cat("TargetDevice must be \"CPU\" or \"GPU\", given \"", device, "\""));
        auto check = [](const std::vector<int>& ids, size_t count, const char* what) {
          for (int i : ids)
            if (i < 0 || size_t(i) >= count) throw IndexError(cat(what, " index ", i, " out of range"));
          return ids;
        };
        r.outputs = check(outputs, n.outputs().size(), "output");
        r.input_grads = check(input_grads, n.inputs().size(), "input");
        r.param_grads = check(param_grads, n.params().size(), "parameter");
        r.imposed = check(imposed, n.outputs().size(), "output");
        for (const auto& [path, port] : probes) {
          const int v = n.find_value(path, port);
          if (v < 0)
            throw KeyError(cat("NetPort: the net has no layer \"", path, "\" with a port \"", port, "\""));
          r.probes.push_back(v);
        }
        r.train = train;
        if (device_index < 0) throw ValueError(cat("TargetDevice: negative device index ", device_index));
        r.device_index = device_index;
        return p;
      }, py::arg("bits"), py::arg("device"), py::arg("outputs"), py::arg("input_grads"), py::arg("param_grads"),
         py::arg("imposed"), py::arg("probes") = std::vector<std::pair<std::string, std::string>>{},
         py::arg("train") = false, py::arg("device_index") = 0,
         "Prepares a request: outputs, gradients, internal values (layer path, port), precision, mode")
      .def("run", &run, py::arg("request"), py::arg("inputs"), py::arg("imposed"), py::arg("seed") = 0,
           py::arg("device_results") = false,
           "Evaluates a prepared request: returns (outputs, input_grads, param_grads, probes) as lists of arrays")
      .def("get_param", [](const Net& n, int p, int bits) -> py::array {
        if (p < 0 || size_t(p) >= n.params().size()) throw IndexError(cat("parameter index ", p, " out of range"));
        const Shape& s = n.params()[p].shape;
        std::vector<py::ssize_t> dims(s.begin(), s.end());
        if (bits == 64) {
          py::array_t<double> a(dims);
          n.get_param(p, DType::F64, a.mutable_data());
          return std::move(a);
        }
        py::array_t<float> a(dims);
        n.get_param(p, DType::F32, a.mutable_data());
        return std::move(a);
      }, py::arg("index"), py::arg("bits") = 32, "A copy of an array's current values")
      .def_property_readonly("param_info", [](const Net& n) {
        py::list l;
        static const char* inits[] = {"weights", "zeros", "ones"};
        for (const ParamInfo& p : n.params()) {
          py::dict d;
          d["path"] = p.path;
          d["shape"] = shape_tuple(p.shape);
          d["learnable"] = p.learnable;
          d["init"] = inits[static_cast<int>(p.init)];
          d["fan_in"] = p.fan_in;
          d["fan_out"] = p.fan_out;
          l.append(d);
        }
        return l;
      }, "Per array: path, shape, learnable, init ('weights', 'zeros', 'ones'), fan_in, fan_out")
      .def("describe_plan", [](Net& n, const PreparedRequest& p, int64_t batch) {
        if (batch < 0) throw ValueError("negative batch size");
        Request r = p.request;
        r.batch = batch;
        return n.describe_plan(r);
      }, py::arg("request"), py::arg("batch") = 1, "The schedule of a request's plan, one line a step")
      .def("plan_count", &Net::plan_count, "How many plans (request shapes) are cached");
}

}  // namespace portgrad::python
