/// @brief Python binding of the file format: save and load run in C++ (Python never parses a file).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "io/safetensors.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace portgrad::python {
namespace {

// (spec_json, {metadata}, [(path, array)], [(name, array)]) of a checked file: the net's arrays,
// then a training checkpoint's "portgrad.state/..." ones; fresh copies in the file's dtype.
py::tuple contents(const io::FileContents& c) {
  py::dict meta;
  for (const auto& [k, v] : c.metadata) meta[py::str(k)] = py::str(v);
  auto listed = [](const std::vector<io::FileArray>& arrays) {
    py::list out;
    for (const io::FileArray& a : arrays) {
      std::vector<py::ssize_t> dims(a.shape.begin(), a.shape.end());
      py::array x = a.dtype == DType::F64 ? py::array(py::array_t<double>(dims)) : py::array(py::array_t<float>(dims));
      std::memcpy(x.mutable_data(), a.data, a.nbytes);
      out.append(py::make_tuple(a.name, x));
    }
    return out;
  };
  return py::make_tuple(c.spec_json, meta, listed(c.arrays), listed(c.state));
}

std::string serialize(const std::string& spec_json, const py::list& arrays, const std::string& training = "") {
  std::vector<io::ArrayRef> refs;
  std::vector<py::array> keep;
  for (const py::handle item : arrays) {
    auto pair = item.cast<std::pair<std::string, py::array>>();
    py::array a = pair.second;
    const bool f64 = a.dtype().is(py::dtype::of<double>());
    if (!f64 && !a.dtype().is(py::dtype::of<float>()))
      throw TypeError(cat("array \"", pair.first, "\" must be float32 or float64, given ", std::string(py::str(a.dtype()))));
    const std::string what = cat("array \"", pair.first, "\"");
    if (f64) a = as_contiguous<double>(a, what);
    else a = as_contiguous<float>(a, what);
    keep.push_back(a);
    refs.push_back({pair.first, f64 ? DType::F64 : DType::F32, Shape(a.shape(), a.shape() + a.ndim()), a.data()});
  }
  return io::serialize(spec_json, refs, training);
}

}  // namespace

void bind_io(py::module_& m) {
  m.def("save_file", [](const std::string& path, const std::string& spec_json, const py::list& arrays,
                        const std::string& training) {
    std::string bytes = serialize(spec_json, arrays, training);
    py::gil_scoped_release release;
    io::write_file_atomic(path, bytes);
  }, py::arg("path"), py::arg("spec_json"), py::arg("arrays"), py::arg("training") = "",
        "Writes a portgrad file atomically: [(path, float32/float64 array)] and the spec (and a training "
        "checkpoint's progress, metadata \"portgrad.training\", with its \"portgrad.state/...\" arrays)");
  m.def("save_bytes", [](const std::string& spec_json, const py::list& arrays) {
    return py::bytes(serialize(spec_json, arrays));
  }, py::arg("spec_json"), py::arg("arrays"), "The bytes of a portgrad file");
  m.def("load_file", [](const std::string& path) {
    io::FileContents c;
    {
      py::gil_scoped_release release;
      c = io::read_file(path);
    }
    return contents(c);
  }, py::arg("path"), "Reads and checks a portgrad file: (spec_json, metadata, [(path, array)], [(state name, array)])");
  m.def("load_bytes", [](const py::bytes& data, const std::string& what) {
    const std::string_view view = data;  // no copy; the bytes object outlives the call
    return contents(io::read_bytes(reinterpret_cast<const unsigned char*>(view.data()), view.size(), what));
  }, py::arg("data"), py::arg("what") = "portgrad data", "read_file for bytes in memory");
  m.attr("FORMAT_VERSION") = io::kFormatVersion;
  m.attr("LIBRARY_VERSION") = io::library_version();
}

}  // namespace portgrad::python
