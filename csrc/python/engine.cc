/// @brief Python binding of the engine: array conversion and checks at the door, one C++ call per
/// evaluation with the GIL released, numpy arrays out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>

#include "graph/json.h"
#include "graph/net.h"
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
void check_real_kind(const py::array& a, const std::string& what) {
  const char kind = a.dtype().kind();
  if (kind == 'c')
    throw TypeError(cat(what, ": complex values are not supported (given dtype ", describe_dtype(a), ")"));
  if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f')
    throw TypeError(cat(what, ": expected real numbers, given an array of dtype ", describe_dtype(a)));
}

// The shape check of every port: one example has exactly the port's shape, a batch one more
// leading axis. Returns the batch size, or -1 for a single example.
int64_t batch_of(const py::array& a, const Shape& port, const std::string& what) {
  const Shape s = array_shape(a);
  if (s == port) return -1;
  if (s.size() == port.size() + 1 && std::equal(port.begin(), port.end(), s.begin() + 1)) return s[0];
  Shape batched = shape_concat({0}, port);
  std::string b = shape_str(batched);
  b.replace(1, 1, "n");
  throw ValueError(cat(what, ": expected an array of shape ", shape_str(port), " (one example) or ", b,
                       " (a batch), given shape ", shape_str(s)));
}

template <typename T>
py::array new_array(const Shape& s) {
  return py::array_t<T>(std::vector<py::ssize_t>(s.begin(), s.end()));
}

struct Evaluation {
  bool batched = false;
  py::list outputs, input_grads, param_grads;
};

Evaluation evaluate(Net& net, const py::list& inputs, int bits, const std::string& device,
                    const std::vector<int>& outputs, const std::vector<int>& input_grads,
                    const std::vector<int>& param_grads, const std::vector<std::pair<int, py::object>>& imposed) {
  Request r;
  if (bits != 32 && bits != 64) throw ValueError("WorkingPrecision must be \"Real32\" or \"Real64\"");
  r.dtype = bits == 64 ? DType::F64 : DType::F32;
  if (device == "CPU") r.device = Device::CPU;
  else if (device == "GPU") r.device = Device::GPU;
  else throw ValueError(cat("TargetDevice must be \"CPU\" or \"GPU\", given \"", device, "\""));
  r.outputs = outputs;
  r.input_grads = input_grads;
  r.param_grads = param_grads;

  const auto& ports = net.inputs();
  if (py::len(inputs) != ports.size()) throw ValueError("one array per input port is needed");
  std::vector<py::array> keep;  // converted arrays stay alive across the GIL-free call
  int64_t batch = 0;
  int first = -1;  // the port that fixed batch-ness, for the error message
  for (size_t i = 0; i < ports.size(); ++i) {
    const std::string what = cat("port \"", ports[i].name, "\"");
    py::array a = py::reinterpret_borrow<py::array>(inputs[i]);
    check_real_kind(a, what);
    const ValueInfo& v = net.values()[ports[i].value];
    const int64_t b = batch_of(a, *v.shape, what);
    if (first < 0) {
      batch = b;
      first = int(i);
    } else if (b != batch) {
      auto say = [](int64_t n) { return n < 0 ? std::string("one example") : cat("a batch of ", n); };
      throw ValueError(cat("ports \"", ports[first].name, "\" and \"", ports[i].name, "\" disagree: ", say(batch),
                           " vs ", say(b)));
    }
    if (v.index_bound > 0) {
      if (a.dtype().kind() == 'f') {
        auto f = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
        const double* p = f.data();
        for (py::ssize_t k = 0; k < f.size(); ++k)
          if (!(std::isfinite(p[k]) && p[k] == std::floor(p[k])))
            throw ValueError(cat(what, " takes 0-based class indices (integers); given the value ", p[k]));
      } else if (a.dtype().kind() == 'b') {
        throw TypeError(cat(what, " takes 0-based class indices (integers); given booleans"));
      }
      keep.push_back(py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a));
    } else if (r.dtype == DType::F64) {
      keep.push_back(py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a));
    } else {
      keep.push_back(py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a));
    }
    if (!keep.back()) throw py::error_already_set();
  }
  const bool batched = batch >= 0;
  r.batch = batched ? batch : 1;

  Buffers buf;
  for (const py::array& a : keep) buf.inputs.push_back(a.data());
  for (const auto& [o, g] : imposed) {
    if (o < 0 || size_t(o) >= net.outputs().size()) throw IndexError(cat("output index ", o, " out of range"));
    const std::string what = cat("the gradient imposed on output \"", net.outputs()[o].name, "\"");
    py::array a = py::array::ensure(g);
    if (!a) throw TypeError(cat(what, " must be an array"));
    check_real_kind(a, what);
    const Shape& s = net.value_shape(net.outputs()[o].value);
    const Shape want = batched ? shape_concat({r.batch}, s) : s;
    if (array_shape(a) != want)
      throw ValueError(cat(what, ": expected shape ", shape_str(want), " (the output's shape), given shape ",
                           shape_str(array_shape(a))));
    if (r.dtype == DType::F64) keep.push_back(py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a));
    else keep.push_back(py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a));
    r.imposed.push_back(o);
    buf.imposed.push_back(keep.back().data());
  }

  // Results, allocated here so the C++ call writes straight into numpy's memory.
  Evaluation ev;
  ev.batched = batched;
  auto make = [&](const Shape& per_example, bool with_batch) {
    const Shape s = with_batch && batched ? shape_concat({r.batch}, per_example) : per_example;
    return r.dtype == DType::F64 ? new_array<double>(s) : new_array<float>(s);
  };
  for (int o : outputs) {
    if (o < 0 || size_t(o) >= net.outputs().size()) throw IndexError(cat("output index ", o, " out of range"));
    py::array a = make(net.value_shape(net.outputs()[o].value), true);
    buf.outputs.push_back(a.mutable_data());
    ev.outputs.append(a);
  }
  for (int i : input_grads) {
    if (i < 0 || size_t(i) >= ports.size()) throw IndexError(cat("input index ", i, " out of range"));
    py::array a = make(net.value_shape(ports[i].value), true);
    buf.input_grads.push_back(a.mutable_data());
    ev.input_grads.append(a);
  }
  for (int p : param_grads) {
    if (p < 0 || size_t(p) >= net.params().size()) throw IndexError(cat("parameter index ", p, " out of range"));
    py::array a = make(net.params()[p].shape, false);
    buf.param_grads.push_back(a.mutable_data());
    ev.param_grads.append(a);
  }
  {
    py::gil_scoped_release release;
    net.evaluate(r, buf);
  }
  return ev;
}

}  // namespace

void bind_engine(py::module_& m) {
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
        check_real_kind(a, what);
        if (array_shape(a) != info.shape)
          throw ValueError(cat(what, ": expected shape ", shape_str(info.shape), ", given shape ", shape_str(array_shape(a))));
        if (a.dtype().is(py::dtype::of<double>())) {
          auto d = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
          n.set_param(p, d.data(), DType::F64);
        } else {
          auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
          n.set_param(p, f.data(), DType::F32);
        }
      })
      .def("evaluate", [](Net& n, const py::list& inputs, int bits, const std::string& device,
                          const std::vector<int>& outputs, const std::vector<int>& input_grads,
                          const std::vector<int>& param_grads, const std::vector<std::pair<int, py::object>>& imposed) {
        Evaluation ev = evaluate(n, inputs, bits, device, outputs, input_grads, param_grads, imposed);
        return py::make_tuple(ev.batched, ev.outputs, ev.input_grads, ev.param_grads);
      }, py::arg("inputs"), py::arg("bits"), py::arg("device"), py::arg("outputs"), py::arg("input_grads"),
         py::arg("param_grads"), py::arg("imposed"),
         "Evaluates: returns (batched, outputs, input_grads, param_grads) as lists of arrays")
      .def("plan_count", &Net::plan_count, "How many plans (request shapes) are cached");
}

}  // namespace portgrad::python
