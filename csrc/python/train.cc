/// @brief portgrad._core.Trainer: NetTrain's engine (graph/trainer.h) for Python, on a Net of its own.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "core/errors.h"
#include "graph/trainer.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace portgrad::python {
namespace {

OptimMethod method_named(const std::string& name) {
  if (name == "SGD") return OptimMethod::SGD;
  if (name == "ADAM") return OptimMethod::Adam;
  if (name == "RMSProp") return OptimMethod::RMSProp;
  throw ValueError(cat("unknown training method \"", name, "\"; expected \"SGD\", \"ADAM\" or \"RMSProp\""));
}

// The inputs of one batch, checked: one C-contiguous array per input port, [batch, ...port shape],
// float of the trainer's precision (int64 for class-index ports). Returns the batch size.
int64_t gather(const Net& net, DType dtype, const py::list& arrays, std::vector<const void*>& out) {
  const auto& ports = net.inputs();
  if (py::len(arrays) != ports.size())
    throw ValueError(cat("one array per input port is needed (", ports.size(), "), given ", py::len(arrays)));
  int64_t batch = -1;
  out.clear();
  for (size_t i = 0; i < ports.size(); ++i) {
    const py::handle h = arrays[i];
    if (!py::isinstance<py::array>(h)) throw TypeError(cat("input \"", ports[i].name, "\" must be a NumPy array"));
    const py::array a = py::reinterpret_borrow<py::array>(h);
    const bool index = net.values()[ports[i].value].index_bound > 0;
    const bool ok = index ? py::isinstance<py::array_t<int64_t>>(a)
                          : dtype == DType::F64 ? py::isinstance<py::array_t<double>>(a) : py::isinstance<py::array_t<float>>(a);
    if (!ok)
      throw TypeError(cat("input \"", ports[i].name, "\" has dtype ", py::str(a.dtype()).cast<std::string>(), "; expected ",
                          index ? "int64 (class indices)" : dtype == DType::F64 ? "float64" : "float32"));
    if (!(a.flags() & py::array::c_style)) throw ValueError(cat("input \"", ports[i].name, "\" must be C-contiguous"));
    const Shape& want = net.value_shape(ports[i].value);
    const Shape got(a.shape(), a.shape() + a.ndim());
    if (got.size() != want.size() + 1 || !std::equal(want.begin(), want.end(), got.begin() + 1))
      throw ValueError(cat("input \"", ports[i].name, "\": expected shape (batch, ", shape_str(want).substr(1), ", given ",
                           shape_str(got)));
    if (batch >= 0 && got[0] != batch)
      throw ValueError(cat("input \"", ports[i].name, "\" has ", got[0], " examples; the others ", batch));
    batch = got[0];
    out.push_back(a.data());
  }
  return batch;
}

}  // namespace

void bind_train(py::module_& m) {
  py::class_<Trainer>(m, "Trainer", "NetTrain's engine: optimiser steps on a Net of its own (graph/trainer.h)")
      .def(py::init([](Net& net, int loss, std::vector<int> arrays, const std::string& method, int bits,
                       double momentum, double beta1, double beta2, double eps, double rho, double weight_decay,
                       double l2, double clip, const std::string& device, int device_index) {
             kernels::OptimStep s;
             s.momentum = momentum, s.beta1 = beta1, s.beta2 = beta2, s.eps = eps, s.rho = rho;
             s.weight_decay = weight_decay, s.l2 = l2, s.clip = clip;
             if (bits != 32 && bits != 64) throw ValueError(cat("bits must be 32 or 64, given ", bits));
             if (device != "CPU" && device != "GPU") throw ValueError(cat("device must be CPU or GPU, given ", device));
             if (device_index < 0) throw ValueError(cat("negative device index ", device_index));
             return std::make_unique<Trainer>(net, loss, std::move(arrays), method_named(method), s,
                                              bits == 64 ? DType::F64 : DType::F32,
                                              device == "GPU" ? Device::GPU : Device::CPU, device_index);
           }),
           py::keep_alive<1, 2>(), py::arg("net"), py::arg("loss"), py::arg("arrays"), py::arg("method"),
           py::arg("bits"), py::arg("momentum") = 0.0, py::arg("beta1") = 0.9, py::arg("beta2") = 0.999,
           py::arg("eps") = 1e-8, py::arg("rho") = 0.99, py::arg("weight_decay") = 0.0, py::arg("l2") = 0.0,
           py::arg("clip") = 0.0, py::arg("device") = "CPU", py::arg("device_index") = 0)
      .def("step", [](Trainer& t, const py::list& inputs, double lr, uint64_t seed) {
             std::vector<const void*> ptrs;
             const int64_t batch = gather(t.net(), t.dtype(), inputs, ptrs);
             py::gil_scoped_release release;
             return t.step(ptrs, batch, lr, seed);
           }, py::arg("inputs"), py::arg("lr"), py::arg("seed"), "One step on a batch; returns the batch's mean loss")
      .def("loss", [](Trainer& t, const py::list& inputs) {
             std::vector<const void*> ptrs;
             const int64_t batch = gather(t.net(), t.dtype(), inputs, ptrs);
             py::gil_scoped_release release;
             return t.loss(ptrs, batch);
           }, py::arg("inputs"), "The mean loss of a batch in Test mode")
      .def_property("steps", &Trainer::steps, &Trainer::set_steps, "Steps taken (ADAM's bias corrections count them)")
      .def_property_readonly("state_count", &Trainer::state_count, "State arrays per learned array (ADAM: 2)")
      .def("download", [](Trainer& t) {
             py::gil_scoped_release release;
             t.download();
           }, "The arrays as trained so far into the net's host arrays (a GPU run; nothing to do on the CPU)")
      .def("get_state", [](Trainer& t, size_t k, size_t s) {
             if (k >= t.arrays().size()) throw IndexError(cat("array ", k, " out of range"));
             const Shape& shape = t.net().params()[t.arrays()[k]].shape;
             std::vector<py::ssize_t> dims(shape.begin(), shape.end());
             py::array a = t.dtype() == DType::F64 ? py::array(py::array_t<double>(dims)) : py::array(py::array_t<float>(dims));
             t.read_state(k, s, a.mutable_data());
             return a;
           }, py::arg("k"), py::arg("s"), "A copy of state s of array k")
      .def("set_state", [](Trainer& t, size_t k, size_t s, py::array a) {
             if (k >= t.arrays().size()) throw IndexError(cat("array ", k, " out of range"));
             const Net& net = t.net();
             const Shape& shape = net.params()[t.arrays()[k]].shape;
             const bool ok = t.dtype() == DType::F64 ? py::isinstance<py::array_t<double>>(a) : py::isinstance<py::array_t<float>>(a);
             if (!ok || Shape(a.shape(), a.shape() + a.ndim()) != shape || !(a.flags() & py::array::c_style))
               throw ValueError(cat("optimiser state of array ", net.params()[t.arrays()[k]].path, ": expected a C-contiguous ",
                                    t.dtype() == DType::F64 ? "float64" : "float32", " array of shape ", shape_str(shape)));
             t.write_state(k, s, a.data());
           }, py::arg("k"), py::arg("s"), py::arg("array"), "Sets state s of array k (a checkpoint's)");
}

}  // namespace portgrad::python
