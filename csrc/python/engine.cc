/// @brief Python binding of the engine: array conversion and checks at the door, one C++ call per
/// evaluation with the GIL released, numpy arrays out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <tuple>
#include <vector>

#include "core/dlpack.h"
#include "core/json.h"
#include "graph/inputs.h"
#include "graph/net.h"
#include "graph/passes.h"
#include "graph/request.h"
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

// Real32 evaluation of float64 (or wider integer) data: a finite value beyond float32's range
// would silently become infinite.
void check_float32_range(const py::array& a, const std::string& port) {
  const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr);
  if (descr->kind != 'f' || a.itemsize() <= 4) return;
  auto d = as_contiguous<double>(a, [&] { return cat("port \"", port, "\""); });
  const double* p = d.data();
  for (py::ssize_t k = 0; k < d.size(); ++k)
    if (std::isfinite(p[k]) && std::fabs(p[k]) > 3.4028234663852886e38)
      throw ValueError(cat("port \"", port, "\": the value ", p[k], " at flat index ", k,
                           " is outside the float32 range; use WorkingPrecision=\"Real64\""));
}

// A new C-contiguous float32 (or float64) array, straight from NumPy's C API: array_t's
// constructor (strides, dtype object) costs as much again as NumPy's own allocation.
py::array new_float_array(bool f64, const std::vector<py::ssize_t>& dims) {
  auto& api = py::detail::npy_api::get();
  PyObject* descr = api.PyArray_DescrFromType_(f64 ? py::detail::npy_api::NPY_DOUBLE_ : py::detail::npy_api::NPY_FLOAT_);
  if (!descr) throw py::error_already_set();
  // NewFromDescr takes the descriptor's reference, also on failure (MemoryError, set by NumPy).
  PyObject* a = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, int(dims.size()), dims.data(), nullptr, nullptr, 0,
                                          nullptr);
  if (!a) throw py::error_already_set();
  return py::reinterpret_steal<py::array>(a);
}

// A Real32 evaluation's input: float32 data as it is; contiguous float64 data (NumPy's default)
// converted here in one pass that also checks the float32 range (NumPy's cast machinery costs more
// than a small net's whole evaluation); anything else through check_float32_range and NumPy.
template <typename What>
py::array as_float32(const py::array& a, const std::string& port, const What& what) {
  using npy = py::detail::npy_api;
  constexpr int need = npy::NPY_ARRAY_C_CONTIGUOUS_ | npy::NPY_ARRAY_ALIGNED_;
  const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr);
  const bool plain = descr->byteorder != '>' && (a.flags() & need) == need;
  if (plain && descr->kind == 'f' && a.itemsize() == 4) return a;
  if (!(plain && descr->kind == 'f' && a.itemsize() == 8)) {
    check_float32_range(a, port);
    return as_contiguous<float>(a, what);
  }
  const double* p = static_cast<const double*>(a.data());
  std::vector<py::ssize_t> dims(a.shape(), a.shape() + a.ndim());
  py::array f = new_float_array(false, dims);
  float* q = static_cast<float*>(f.mutable_data());
  const py::ssize_t n = a.size();
  for (py::ssize_t k = 0; k < n; ++k) {
    if (std::fabs(p[k]) > 3.4028234663852886e38 && std::isfinite(p[k]))
      throw ValueError(cat("port \"", port, "\": the value ", p[k], " at flat index ", k,
                           " is outside the float32 range; use WorkingPrecision=\"Real64\""));
    q[k] = static_cast<float>(p[k]);
  }
  return std::move(f);
}

template <typename T, typename What>
py::array converted(const py::array& a, const What& what) {
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
              uint64_t seed, bool device_results, const py::list& tangents, int64_t directions) {
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
  r.directions = directions;  // checked with the request (Net::validate)
  const auto& ports = net.inputs();
  if (py::len(inputs) != ports.size()) throw ValueError("one array per input port is needed");
  if (py::len(imposed) != r.imposed.size()) throw ValueError("one imposed gradient per imposed output is needed");
  if (py::len(tangents) != r.tangent_inputs.size() + r.tangent_params.size())
    throw ValueError("one imposed tangent per input port and array given one is needed");
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
  buf.input_tangents.clear();
  buf.param_tangents.clear();
  buf.output_tangents.clear();
  buf.input_grad_tangents.clear();
  buf.param_grad_tangents.clear();
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
      const int64_t b = port_batch(dv.shape, *v.shape, ports[i].name, "a GPU array of ");
      if (i == 0) batch = b;
      else check_batches_agree(ports[0].name, batch, ports[i].name, b);
      buf.inputs[i] = dv.data;  // range and finiteness are checked on the device by Net::evaluate
      continue;
    }
    py::array a = py::reinterpret_borrow<py::array>(inputs[i]);
    if (!py::isinstance<py::array>(a)) a = py::array::ensure(inputs[i]);
    if (!a) throw TypeError(cat("port \"", ports[i].name, "\": expected an array"));
    const auto port_what = [&] { return cat("port \"", ports[i].name, "\""); };
    check_real_kind(a, port_what);
    const int64_t b = port_batch(array_shape(a), *v.shape, ports[i].name);
    if (i == 0) batch = b;
    else check_batches_agree(ports[0].name, batch, ports[i].name, b);
    if (v.index_bound > 0) {
      const char kind = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr)->kind;
      if (kind == 'u' && a.itemsize() == 8) {  // past INT64_MAX a cast to int64 would show it negative
        auto u = as_contiguous<uint64_t>(a, port_what);
        for (py::ssize_t k = 0; k < u.size(); ++k)
          if (u.data()[k] >= uint64_t(v.index_bound)) throw net.index_out_of_range(int(i), cat(u.data()[k]));
      }
      if (kind == 'f') {
        auto f = as_contiguous<double>(a, port_what);
        const double* p = f.data();
        for (py::ssize_t k = 0; k < f.size(); ++k) float_index(net, int(i), p[k]);
      } else if (kind == 'b') {
        throw TypeError(cat("port \"", ports[i].name, "\" takes 0-based class indices (integers); given booleans"));
      }
      buf.inputs[i] = hold(i, converted<int64_t>(a, port_what));
    } else {
      buf.inputs[i] = hold(i, r.dtype == DType::F64 ? converted<double>(a, port_what) : as_float32(a, ports[i].name, port_what));
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
      check_imposed_shape(name, net.value_shape(net.outputs()[o].value), batch, dv.shape);
      buf.imposed.push_back(dv.data);
      continue;
    }
    py::array a = py::array::ensure(imposed[j]);
    if (!a) throw TypeError(cat("the gradient imposed on output \"", name, "\" must be an array"));
    const auto what = [&] { return cat("the gradient imposed on output \"", name, "\""); };
    check_real_kind(a, what);
    check_imposed_shape(name, net.value_shape(net.outputs()[o].value), batch, array_shape(a));
    buf.imposed.push_back(hold(ports.size() + j, r.dtype == DType::F64 ? converted<double>(a, what)
                                                                        : converted<float>(a, what)));
  }

  // Imposed tangents: an input's like the input ([batch, ...]; [directions, batch, ...] with several
  // directions), an array's of the array's shape.
  if (directions < 1) throw ValueError(cat("the number of tangent directions must be at least 1; given ", directions));
  if (directions != 1 && !batched)
    throw ValueError("several tangent directions need a batch of examples (a leading batch axis on the inputs)");
  for (size_t j = 0; j < r.tangent_inputs.size() + r.tangent_params.size(); ++j) {
    const bool on_input = j < r.tangent_inputs.size();
    const std::string what = on_input ? cat("the tangent imposed on input \"", ports[r.tangent_inputs[j]].name, "\"")
                                       : cat("the tangent imposed on array \"",
                                             net.params()[r.tangent_params[j - r.tangent_inputs.size()]].path, "\"");
    const Shape want = on_input ? (directions != 1 ? shape_concat({directions, r.batch}, net.value_shape(ports[r.tangent_inputs[j]].value))
                                   : batched ? shape_concat({r.batch}, net.value_shape(ports[r.tangent_inputs[j]].value))
                                           : net.value_shape(ports[r.tangent_inputs[j]].value))
                                : net.params()[r.tangent_params[j - r.tangent_inputs.size()]].shape;
    const py::handle t = tangents[j];
    DeviceView dv;
    if (!py::isinstance<py::array>(t) && device_view(t, what, &dv, dlpack_holds)) {
      if (r.device != Device::GPU) throw ValueError(cat(what, " is a GPU array; evaluate with TargetDevice=\"GPU\""));
      check_device_kind(dv, r.dtype == DType::F64 ? 'd' : 'f', what, r);
      check_on_device(dv, what);
      if (dv.shape != want)
        throw ValueError(cat(what, ": expected shape ", shape_str(want), ", given shape ", shape_str(dv.shape)));
      (on_input ? buf.input_tangents : buf.param_tangents).push_back(dv.data);
      continue;
    }
    py::array a = py::array::ensure(t);
    if (!a) throw TypeError(cat(what, " must be an array"));
    check_real_kind(a, [&] { return what; });
    if (array_shape(a) != want)
      throw ValueError(cat(what, ": expected shape ", shape_str(want), on_input ? " (the input's)" : " (the array's)",
                           ", given shape ", shape_str(array_shape(a))));
    const void* data = hold(ports.size() + r.imposed.size() + j,
                            r.dtype == DType::F64 ? converted<double>(a, what) : converted<float>(a, what));
    (on_input ? buf.input_tangents : buf.param_tangents).push_back(data);
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
    py::array a = kind == 'q' ? py::array(py::array_t<int64_t>(dims)) : new_float_array(kind == 'd', dims);
    *data = a.mutable_data();
    return std::move(a);
  };
  auto make = [&](const Shape& per_example, bool with_batch, void** data) -> py::object {
    std::vector<py::ssize_t> dims;
    if (with_batch && batched) dims.push_back(r.batch);
    dims.insert(dims.end(), per_example.begin(), per_example.end());
    return make_any(std::move(dims), r.dtype == DType::F64 ? 'd' : 'f', data);
  };
  // An empty kind of result is the empty tuple (a singleton): a small net's call is not made to
  // build and free five empty lists (a null list here, never indexed).
  auto new_list = [](size_t n) { return n ? py::list(n) : py::reinterpret_steal<py::list>(py::handle()); };
  auto listed = [](py::list& l) -> py::object { return l ? py::object(std::move(l)) : py::object(py::tuple()); };
  py::list outs = new_list(r.outputs.size()), igs = new_list(r.input_grads.size()),
           pgs = new_list(r.param_grads.size()), probes = new_list(r.probes.size()),
           touts = new_list(r.tangent_outputs.size()), igts = new_list(r.grad_tangent_inputs.size()),
           pgts = new_list(r.grad_tangent_params.size());
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
    const bool per_example = !r.per_example.empty() && r.per_example[j];
    pgs[j] = make(net.params()[r.param_grads[j]].shape, per_example, &data);
    buf.param_grads.push_back(data);
  }
  for (size_t j = 0; j < r.tangent_outputs.size(); ++j) {
    void* data = nullptr;
    const Shape& shape = net.value_shape(net.outputs()[r.tangent_outputs[j]].value);
    touts[j] = directions != 1 ? make(shape_concat({directions, r.batch}, shape), false, &data) : make(shape, true, &data);
    buf.output_tangents.push_back(data);
  }
  for (size_t j = 0; j < r.grad_tangent_inputs.size(); ++j) {
    void* data = nullptr;
    igts[j] = make(net.value_shape(ports[r.grad_tangent_inputs[j]].value), true, &data);
    buf.input_grad_tangents.push_back(data);
  }
  for (size_t j = 0; j < r.grad_tangent_params.size(); ++j) {
    void* data = nullptr;
    pgts[j] = make(net.params()[r.grad_tangent_params[j]].shape, false, &data);
    buf.param_grad_tangents.push_back(data);
  }
  {
    py::gil_scoped_release release;
    net.evaluate(r, buf);
  }
  return py::make_tuple(listed(outs), listed(igs), listed(pgs), listed(probes), listed(touts), listed(igts),
                        listed(pgts));
}

// net(x, spec) of one array whose result is one of run's: (kind, index) picks it (kind 0 outputs, 1
// input gradients, 2 array gradients, 3 probes, 4 output tangents, 5 and 6 the gradients' tangents).
// The repeated call of a small net goes through here, without the lists and tuple of run's result.
py::object run_pick(Net& net, const PreparedRequest& prepared, py::handle x, int kind, int index) {
  static const py::list& none = *new py::list();  // leaked: outlives interpreter teardown order
  py::list inputs(1);
  inputs[0] = x;
  py::tuple all = run(net, prepared, inputs, none, 0, false, none, 1);
  if (kind < 0 || kind >= 7) throw IndexError(cat("result kind ", kind, " out of range"));
  py::sequence results = all[size_t(kind)];
  if (index < 0 || size_t(index) >= py::len(results)) throw IndexError(cat("result ", index, " out of range"));
  return results[size_t(index)];
}

// How plan_passes names a value: the net's input port, or "layer path/port" of its producer.
std::string value_name(const Net& net, int v) {
  const ValueInfo& value = net.values()[v];
  if (value.producer < 0) {
    for (const PortInfo& p : net.inputs())
      if (p.value == v) return p.name;
  }
  const NodeInfo& node = net.nodes()[value.producer];
  const auto ports = node.layer->outputs();
  for (size_t k = 0; k < node.out.size(); ++k)
    if (node.out[k] == v) return node.path.empty() ? std::string(ports[k]) : cat(node.path, "/", ports[k]);
  return cat("value ", v);
}

py::dict plan_passes(const Net& net, const PreparedRequest& prepared, int64_t batch) {
  if (batch < 0) throw ValueError("negative batch size");
  Request r = prepared.request;
  r.batch = batch;
  const auto& nodes = net.nodes();
  auto offsets = [](const std::vector<size_t>& at, auto&& name) {
    py::dict d;
    for (size_t k = 0; k < at.size(); ++k)
      if (at[k] != passes::kNone) d[py::str(name(int(k)))] = at[k];
    return d;
  };
  auto node_path = [&](int n) { return nodes[n].path; };
  auto value = [&](int v) { return value_name(net, v); };
  auto array = [&](int p) { return net.params()[p].path; };

  const passes::Work work = passes::select_work(net, r);
  py::list forward, backward, needs_grad, arrays, tangent;
  for (int n : net.order()) {
    if (work.run_forward[n]) forward.append(nodes[n].path);
    if (work.run_backward[n]) backward.append(nodes[n].path);
    if (work.run_tangent[n]) tangent.append(nodes[n].path);
  }
  for (size_t v = 0; v < work.needs_grad.size(); ++v)
    if (work.needs_grad[v]) needs_grad.append(value(int(v)));
  for (size_t p = 0; p < work.array_requested.size(); ++p)
    if (work.array_requested[p]) arrays.append(array(int(p)));
  py::dict d, w;
  w["forward"] = forward;
  w["backward"] = backward;
  w["needs_gradient"] = needs_grad;
  w["arrays"] = arrays;
  w["tangent"] = tangent;
  d["select_work"] = w;

  const passes::Fusion fusion = passes::fuse_activations(net, r, work);
  py::list fused;
  for (size_t m = 0; m < nodes.size(); ++m)
    if (fusion.fused_into[m] >= 0)
      fused.append(py::make_tuple(nodes[fusion.fused_into[m]].path, nodes[m].path, bool(fusion.backward_fused[m])));
  d["fuse_activations"] = fused;
  py::list tangent_fused;  // (producer, elementwise node) whose tangent the producer's step writes
  for (size_t m = 0; m < nodes.size(); ++m)
    if (fusion.tangent_fused[m]) tangent_fused.append(py::make_tuple(nodes[fusion.fused_into[m]].path, nodes[m].path));
  d["fuse_tangents"] = tangent_fused;

  passes::Layout layout = passes::lay_out_arena(net, r, work, fusion);
  py::dict l;
  l["values"] = offsets(layout.value, value);
  l["gradients"] = offsets(layout.grad, value);
  l["array_gradients"] = offsets(layout.array_grad, array);
  l["tangents"] = offsets(layout.tangent, value);
  l["array_tangents"] = offsets(layout.array_tangent, array);
  l["saved"] = offsets(layout.saved, node_path);
  l["prepared"] = offsets(layout.prepared, node_path);
  l["arena_bytes"] = layout.arena_bytes;
  l["workspace_bytes"] = layout.workspace_bytes;
  d["lay_out_arena"] = l;

  py::list contributions;
  for (const passes::Contribution& c : passes::plan_accumulation(net, r, work, fusion, layout))
    contributions.append(py::make_tuple(nodes[c.node].path,
                                        c.array ? array(nodes[c.node].params[c.slot]) : value(nodes[c.node].in[c.slot]),
                                        c.scratch == passes::kNone ? "writes" : "adds"));
  d["plan_accumulation"] = contributions;

  const size_t before = layout.arena_bytes;
  passes::stage_on_device(net, r, layout);
  py::dict g;
  g["arrays"] = offsets(layout.device_array, array);
  py::dict inputs;
  for (size_t i = 0; i < layout.input_bytes.size(); ++i) inputs[py::str(net.inputs()[i].name)] = layout.input_bytes[i];
  g["input_bytes"] = inputs;
  g["added_bytes"] = layout.arena_bytes - before;
  d["stage_on_device"] = g;
  return d;
}

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<PreparedRequest>(m, "Request", "A prepared evaluation request (see Net.request)");
  py::class_<EvaluationOptions>(m, "EvaluationOptions", "Validated evaluation options (see evaluation_options)")
      .def_property_readonly("bits", [](const EvaluationOptions& o) { return o.dtype == DType::F64 ? 64 : 32; })
      .def_property_readonly("device", [](const EvaluationOptions& o) { return o.device == Device::GPU ? "GPU" : "CPU"; })
      .def_readonly("device_index", &EvaluationOptions::device_index)
      .def_readonly("train", &EvaluationOptions::train);
  m.def("evaluation_options", [](py::object precision, py::object device, py::object mode) {
    // Each value as the user gave it: a name is checked by graph/request.cc; anything else is
    // refused there by an empty name, and named in the message by its repr.
    auto name = [](py::handle v) { return py::isinstance<py::str>(v) ? v.cast<std::string>() : std::string(); };
    auto shown = [](py::handle v) { return py::repr(v).cast<std::string>(); };
    EvaluationOptions o;
    o.dtype = working_precision(name(precision), shown(precision));
    std::string device_name = name(device);
    int64_t index = -1;
    if (py::isinstance<py::tuple>(device) && py::len(device) == 2) {
      py::tuple t = device.cast<py::tuple>();
      const bool integer = !py::isinstance<py::bool_>(t[1]) && (py::isinstance<py::int_>(t[1]) ||
                                                                py::isinstance(t[1], py::module_::import("numpy").attr("integer")));
      device_name = integer ? name(t[0]) : std::string();
      if (integer) {
        const py::int_ i = py::reinterpret_borrow<py::object>(t[1]).attr("__index__")();
        index = i < py::int_(0) ? -2 : i > py::int_(INT32_MAX) ? int64_t(INT32_MAX) + 1 : i.cast<int64_t>();
      }
    }
    std::tie(o.device, o.device_index) = target_device(device_name, index, shown(device));
    o.train = evaluation_mode_is_train(name(mode), shown(mode));
    return o;
  }, py::arg("WorkingPrecision"), py::arg("TargetDevice"), py::arg("NetEvaluationMode"),
     "Checks the evaluation options as the user gave them");
  py::class_<RequestNames>(m, "RequestNames", "What an evaluation asks for, by name (see Net.request)")
      .def(py::init([](std::vector<std::string> outputs, std::vector<std::string> input_grads,
                       std::vector<std::string> array_grads, std::vector<std::string> imposed,
                       std::vector<std::pair<std::string, std::string>> probes, std::vector<std::string> tangent_inputs,
                       std::vector<std::string> tangent_arrays, std::vector<std::string> tangent_outputs,
                       std::vector<bool> per_example, std::vector<std::string> grad_tangent_inputs,
                       std::vector<std::string> grad_tangent_arrays) {
             RequestNames n;
             n.outputs = std::move(outputs);
             n.input_grads = std::move(input_grads);
             n.array_grads = std::move(array_grads);
             n.per_example.assign(per_example.begin(), per_example.end());
             n.imposed = std::move(imposed);
             n.probes = std::move(probes);
             n.tangent_inputs = std::move(tangent_inputs);
             n.tangent_arrays = std::move(tangent_arrays);
             n.tangent_outputs = std::move(tangent_outputs);
             n.grad_tangent_inputs = std::move(grad_tangent_inputs);
             n.grad_tangent_arrays = std::move(grad_tangent_arrays);
             return n;
           }),
           py::arg("outputs") = std::vector<std::string>{}, py::arg("input_grads") = std::vector<std::string>{},
           py::arg("array_grads") = std::vector<std::string>{}, py::arg("imposed") = std::vector<std::string>{},
           py::arg("probes") = std::vector<std::pair<std::string, std::string>>{},
           py::arg("tangent_inputs") = std::vector<std::string>{}, py::arg("tangent_arrays") = std::vector<std::string>{},
           py::arg("tangent_outputs") = std::vector<std::string>{}, py::arg("per_example") = std::vector<bool>{},
           py::arg("grad_tangent_inputs") = std::vector<std::string>{},
           py::arg("grad_tangent_arrays") = std::vector<std::string>{})
      .def_readonly("outputs", &RequestNames::outputs)
      .def_readonly("input_grads", &RequestNames::input_grads)
      .def_readonly("array_grads", &RequestNames::array_grads)
      .def_readonly("imposed", &RequestNames::imposed)
      .def_readonly("probes", &RequestNames::probes)
      .def_readonly("tangent_inputs", &RequestNames::tangent_inputs)
      .def_readonly("tangent_arrays", &RequestNames::tangent_arrays)
      .def_readonly("tangent_outputs", &RequestNames::tangent_outputs)
      .def_readonly("grad_tangent_inputs", &RequestNames::grad_tangent_inputs)
      .def_readonly("grad_tangent_arrays", &RequestNames::grad_tangent_arrays);
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
      .def_property_readonly("graph", [](const Net& n) {
        py::list nodes, inputs, outputs;
        for (int k : n.order()) {
          const NodeInfo& node = n.nodes()[k];
          nodes.append(py::make_tuple(node.path, node.layer->type(), node.in, node.out, node.params));
        }
        for (const PortInfo& p : n.inputs()) inputs.append(py::make_tuple(p.name, p.value));
        for (const PortInfo& p : n.outputs()) outputs.append(py::make_tuple(p.name, p.value));
        py::dict d;
        d["nodes"] = nodes;
        d["inputs"] = inputs;
        d["outputs"] = outputs;
        return d;
      }, "The DAG: nodes in topological order as (path, type, input value ids, output value ids, array "
         "indices), and the ports' value ids as [(name, value)]")
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
      .def("request", [](const Net& n, const EvaluationOptions& options, const RequestNames& names) {
        return PreparedRequest{resolve_request(n, names, options)};
      }, py::arg("options"), py::arg("names"),
         "Prepares a request: what it asks for (RequestNames) and how (evaluation_options(...))")
      .def("run", &run, py::arg("request"), py::arg("inputs"), py::arg("imposed"), py::arg("seed") = 0,
           py::arg("device_results") = false, py::arg("tangents") = py::list(), py::arg("directions") = 1,
           "Evaluates a prepared request: returns (outputs, input_grads, param_grads, probes, output_tangents) as "
           "lists of arrays; `tangents` are the imposed tangents (of its tangent inputs, then arrays); with "
           "`directions` > 1, each input tangent and output tangent has a leading axis of that many directions")
      .def("run_pick", &run_pick, py::arg("request"), py::arg("input"), py::arg("kind"), py::arg("index"),
           "run() of one input array without imposed gradients or tangents, returning only the result "
           "run()[kind][index]: the fast path of a repeated net(x, spec) whose spec asks for one result")
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
          d["differentiable"] = p.differentiable;
          d["init"] = inits[static_cast<int>(p.init)];
          d["fan_in"] = p.fan_in;
          d["fan_out"] = p.fan_out;
          d["shared"] = p.shared;
          l.append(d);
        }
        return l;
      }, "Per array: path, shape, learnable, differentiable, init ('weights', 'zeros', 'ones'), fan_in, fan_out")
      .def("describe_plan", [](Net& n, const PreparedRequest& p, int64_t batch) {
        if (batch < 0) throw ValueError("negative batch size");
        Request r = p.request;
        r.batch = batch;
        return n.describe_plan(r);
      }, py::arg("request"), py::arg("batch") = 1, "The schedule of a request's plan, one line a step")
      .def("plan_passes", &plan_passes, py::arg("request"), py::arg("batch") = 1,
           "What each pass of graph/passes.h decides for a request (run alone, no plan is built)")
      .def("plan_count", &Net::plan_count, "How many plans (request shapes) are cached");
}

}  // namespace portgrad::python
