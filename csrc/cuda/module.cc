/// @brief The Python module of a GPU backend (`portgrad._cuda`, or `portgrad._gpu_emulator`): the
/// backend capsule the engine registers, device queries, and DeviceArray — device memory that
/// speaks __cuda_array_interface__ and DLPack, in which results can be returned.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/dlpack.h"
#include "cuda/backend.h"
#include "cuda/runtime.h"

namespace py = pybind11;

namespace portgrad::cuda {
namespace {

void check(const char* message, const char* what) {
  if (message) throw std::runtime_error(std::string("GPU ") + what + ": " + message);
}

using namespace portgrad::dlpack;

// A C-contiguous array in device memory (float32, float64 or int64), freed back to the
// backend's caching allocator.
class DeviceArray {
 public:
  DeviceArray(std::vector<int64_t> shape, char kind, int device) : shape_(std::move(shape)), kind_(kind), device_(device) {
    if (kind != 'f' && kind != 'd' && kind != 'q') throw py::type_error("DeviceArray holds float32, float64 or int64");
    for (int64_t d : shape_)
      if (d < 0) throw py::value_error("negative dimension");
    check(set_device(device), "set_device");
    check(alloc(nbytes(), &data_), "memory allocation");
  }
  ~DeviceArray() {
    if (data_) {
      set_device(device_);
      free(data_);
    }
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : shape_) n *= d;
    return n;
  }
  size_t nbytes() const { return size_t(size()) * (kind_ == 'f' ? 4 : 8); }
  const std::vector<int64_t>& shape() const { return shape_; }
  char kind() const { return kind_; }
  int device() const { return device_; }
  void* data() const { return data_; }
  py::dtype dtype() const { return py::dtype(std::string(1, kind_)); }

  py::array numpy() const {
    py::array a(dtype(), std::vector<py::ssize_t>(shape_.begin(), shape_.end()));
    check(set_device(device_), "set_device");
    check(copy(a.mutable_data(), data_, nbytes(), CopyKind::DeviceToHost), "copy to the host");
    return a;
  }

  static std::unique_ptr<DeviceArray> from_host(const py::array& host, int device) {
    const char kind = host.dtype().kind() == 'f' ? (host.itemsize() == 4 ? 'f' : 'd') : 'q';
    if (host.dtype().kind() == 'f' ? (host.itemsize() != 4 && host.itemsize() != 8)
                                   : (host.dtype().kind() != 'i' || host.itemsize() != 8))
      throw py::type_error("DeviceArray holds float32, float64 or int64; given " + std::string(py::str(host.dtype())));
    py::array c = py::array::ensure(host, py::array::c_style);
    auto d = std::make_unique<DeviceArray>(std::vector<int64_t>(c.shape(), c.shape() + c.ndim()), kind, device);
    check(copy(d->data_, c.data(), d->nbytes(), CopyKind::HostToDevice), "copy to the device");
    check(synchronize(), "copy to the device");
    return d;
  }

 private:
  std::vector<int64_t> shape_;
  char kind_;
  int device_;
  void* data_ = nullptr;
};

struct DLPackContext {
  DLManagedTensor managed;
  std::vector<int64_t> shape;
  py::object owner;  // the DeviceArray, alive while the consumer holds the tensor
};

// The emulator's device memory is exported as CUDA memory too, so the protocol is tested without a
// GPU (only portgrad itself can read it).
py::capsule to_dlpack(py::object self) {
  const DeviceArray& a = self.cast<const DeviceArray&>();
  auto* ctx = new DLPackContext;
  ctx->shape = a.shape();
  ctx->owner = self;
  DLTensor& t = ctx->managed.dl_tensor;
  t.data = a.data();
  t.device = {kDLCUDA, a.device()};
  t.ndim = int32_t(ctx->shape.size());
  t.dtype = {a.kind() == 'q' ? kDLInt : kDLFloat, uint8_t(a.kind() == 'f' ? 32 : 64), 1};
  t.shape = ctx->shape.data();
  t.strides = nullptr;  // C-contiguous
  t.byte_offset = 0;
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = [](DLManagedTensor* m) {
    py::gil_scoped_acquire gil;
    delete static_cast<DLPackContext*>(m->manager_ctx);
  };
  // A consumer renames the capsule "used_dltensor" and calls the deleter itself; one never consumed
  // is released here.
  return py::capsule(&ctx->managed, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      m->deleter(m);
    }
  });
}

}  // namespace
}  // namespace portgrad::cuda

PYBIND11_MODULE(PORTGRAD_GPU_MODULE, m) {
  using namespace portgrad::cuda;
  m.doc() = "portgrad's GPU backend: device queries and device arrays (the engine registers backend())";
  m.attr("name") = kBackendName;
  m.def("backend", [] { return py::capsule(const_cast<portgrad::GpuBackend*>(backend()), "portgrad.GpuBackend"); },
        "The backend's function table, for portgrad._core.register_gpu_backend");
  m.def("device_count", [] {
    const char* why = nullptr;
    const int n = device_count(&why);
    return py::make_tuple(n, why ? py::object(py::str(why)) : py::object(py::none()));
  }, "(number of usable devices, reason when there are none)");
  m.def("device_name", [](int d) { return std::string(device_name(d)); });
  m.def("memory_in_use", &memory_in_use, "Bytes of device memory held by live arrays and plans");
  m.def("memory_cached", &memory_cached, "Bytes of freed device memory kept by the caching allocator");
  m.def("empty_cache", &empty_cache, "Returns the cached device memory to the driver");

  py::class_<DeviceArray>(m, "DeviceArray",
                          "A C-contiguous float32/float64/int64 array in GPU memory. Use it with CuPy or PyTorch "
                          "through DLPack (torch.from_dlpack(a), cupy.from_dlpack(a)) or __cuda_array_interface__; "
                          ".numpy() copies it to the host.")
      .def(py::init([](std::vector<int64_t> shape, py::object dtype, int device) {
             return std::make_unique<DeviceArray>(std::move(shape), py::dtype::from_args(dtype).char_(), device);
           }),
           py::arg("shape"), py::arg("dtype") = "float32", py::arg("device") = 0, "An uninitialised array")
      .def_static("from_numpy", &DeviceArray::from_host, py::arg("array"), py::arg("device") = 0,
                  "A device copy of a NumPy array")
      .def_property_readonly("shape", [](const DeviceArray& a) {
        py::tuple t(a.shape().size());
        for (size_t i = 0; i < a.shape().size(); ++i) t[i] = a.shape()[i];
        return t;
      })
      .def_property_readonly("dtype", &DeviceArray::dtype)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("ptr", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.data()); })
      .def("numpy", &DeviceArray::numpy, "A host copy as a NumPy array")
      .def("__array__", [](const DeviceArray& a, py::object dtype, py::object copy) {
        py::array h = a.numpy();
        return dtype.is_none() ? h : py::array(h.attr("astype")(dtype));
      }, py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def_property_readonly("__cuda_array_interface__", [](const DeviceArray& a) {
        py::dict d;
        py::tuple shape(a.shape().size());
        for (size_t i = 0; i < a.shape().size(); ++i) shape[i] = a.shape()[i];
        d["shape"] = shape;
        d["typestr"] = a.kind() == 'f' ? "<f4" : a.kind() == 'd' ? "<f8" : "<i8";
        d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(a.data()), false);
        d["strides"] = py::none();
        d["version"] = 3;
        return d;
      })
      .def("__dlpack__", [](py::object self, py::object stream, py::object max_version, py::object dl_device,
                            py::object copy) { return to_dlpack(self); },
           py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
           py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(kDLCUDA, a.device()); })
      .def("__len__", [](const DeviceArray& a) {
        if (a.shape().empty()) throw py::type_error("len() of a 0-d array");
        return a.shape()[0];
      })
      .def("__repr__", [](const DeviceArray& a) {
        std::string s = "DeviceArray(shape=(";
        for (size_t i = 0; i < a.shape().size(); ++i) s += std::to_string(a.shape()[i]) + (a.shape().size() == 1 || i + 1 < a.shape().size() ? "," : "");
        return s + "), dtype=" + std::string(py::str(a.dtype())) + ", device=" + std::to_string(a.device()) + ")";
      });
}
