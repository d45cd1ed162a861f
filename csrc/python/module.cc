/// @brief The `portgrad._core` extension: error translation, ISA information, and its parts.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "core/errors.h"
#include "core/tensor.h"
#include "kernels/families.h"
#include "layers/layer.h"
#include "python/bindings.h"

namespace py = pybind11;
using namespace portgrad;

namespace {

// The ISAs of a family's variants that this CPU can run, reference ("scalar") first: exactly what
// the kernel hooks accept, and what kernel tests iterate over (tests/conftest.py isa_params). A
// family's float and double variants come from one line of families.def: float stands for both.
std::vector<std::string> kernel_variants(const std::string& name) {
  std::vector<std::string> isas;
#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512)                                             \
  if (name == #family) {                                                                           \
    for (auto isa : {kernels::Isa::Scalar, kernels::Isa::Avx2, kernels::Isa::Avx512})              \
      if (kernels::family##_kernels_for<float>(isa)) isas.push_back(kernels::isa_name(isa));       \
    return isas;                                                                                   \
  }
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
  static const char known[] =
#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512) " " #family
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
      ;
  throw ValueError(cat("unknown kernel family '", name, "'; expected one of:", known));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "portgrad's compiled core: the net engine and its kernels";
#ifdef PORTGRAD_VERSION
  m.attr("__version__") = PORTGRAD_VERSION;
#endif
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what());
    } catch (const KeyError& e) {
      PyErr_SetString(PyExc_KeyError, e.what());
    } catch (const OSError& e) {
      // OSError(errno, message, filename) picks the subclass: FileNotFoundError, PermissionError, ...
      py::object err = py::reinterpret_borrow<py::object>(PyExc_OSError)(e.errnum, e.what());
      // The file name as Python spells it: its bytes decoded as os.fsdecode does (surrogates for
      // bytes that are not UTF-8), never a decoding error.
      py::object name = py::reinterpret_steal<py::object>(
          PyUnicode_DecodeFSDefaultAndSize(e.filename.data(), py::ssize_t(e.filename.size())));
      if (!name) {
        PyErr_Clear();
        name = py::none();
      }
      err.attr("filename") = name;
      PyErr_SetObject(PyExc_OSError, err.ptr());
    }
  });

  m.def("isa_supported", [](const std::string& name) {
    for (auto isa : {kernels::Isa::Scalar, kernels::Isa::Avx2, kernels::Isa::Avx512})
      if (name == kernels::isa_name(isa)) return kernels::isa_supported(isa);
    throw ValueError(cat("unknown ISA '", name, "'; expected scalar, avx2 or avx512"));
  }, "Whether this CPU and OS support the named instruction set.");
  m.def("layer_types", &layer_types, "Every layer type the engine builds (csrc/layers/layers.def)");
  m.def("active_isa", [] { return std::string(kernels::isa_name(kernels::active_isa())); },
        "The instruction set the kernels run on (PORTGRAD_ISA overrides the CPU's best).");
  m.def("allocation_count", &allocation_count,
        "How many buffers the engine has allocated so far (for tests of plan caching).");

  py::module_ k = m.def_submodule("kernels", "Direct access to kernel variants, for tests and benchmarks");
  k.def("variants", &kernel_variants, py::arg("family"),
        "The instruction sets of a kernel family's variants this CPU can run, reference first.");
  python::bind_gemm_kernels(k);
  python::bind_elementwise_kernels(k);
  python::bind_norm_kernels(k);
  python::bind_structure_kernels(k);
  python::bind_conv_kernels(k);
  python::bind_engine(m);
  python::bind_io(m);
  python::bind_train(m);
}
