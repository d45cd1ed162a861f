/// @brief Entry points of the pieces of the `portgrad._core` extension module.
#pragma once
#include <type_traits>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "core/errors.h"

namespace portgrad::python {

void bind_engine(pybind11::module_& m);               // Net, plans, evaluation (engine.cc)
void bind_io(pybind11::module_& m);
void bind_train(pybind11::module_& m);                // NetTrain's Trainer (train.cc)                   // save and load of portgrad files (io.cc)
void bind_gemm_kernels(pybind11::module_& m);         // kernel test hooks: gemm, vector (kernels_gemm.cc)
void bind_elementwise_kernels(pybind11::module_& m);  // unary/softmax/loss hooks (kernels_elementwise.cc)
void bind_norm_kernels(pybind11::module_& m);         // norm/dropout/embed hooks (kernels_norm.cc)
void bind_structure_kernels(pybind11::module_& m);    // shape ops and log-softmax hooks (kernels_structure.cc)
void bind_conv_kernels(pybind11::module_& m);         // conv/pool hooks (kernels_conv.cc)

// `a` as a C-contiguous array of T, converted (copied) where it is not one already. A copy that
// cannot be made (pybind11 clears NumPy's error) is a MemoryError naming what and how big, never a
// null array read later.
template <typename T>
using ContiguousArray = pybind11::array_t<T, pybind11::array::c_style | pybind11::array::forcecast>;
// `what` is a string, or a callable that makes it: messages are built only on failure, so the
// common call formats nothing (an ostringstream per port was ~5 % of a small net's call).
template <typename What>
inline std::string what_text(const What& what) {
  if constexpr (std::is_invocable_v<const What&>) return what();
  else return std::string(what);
}

template <typename T, typename What>
inline ContiguousArray<T> as_contiguous(const pybind11::array& a, const What& what) {
  auto c = ContiguousArray<T>::ensure(a);
  if (!c) {
    const double bytes = double(a.size()) * double(sizeof(T));
    const std::string msg = cat(what_text(what), ": could not make a contiguous ", sizeof(T) == 8 ? "64" : "32", "-bit copy of ",
                                a.size(), " values (", bytes / double(1ull << 30), " GiB); pass a smaller array, or one "
                                "already C-contiguous of the working precision's dtype");
    PyErr_SetString(PyExc_MemoryError, msg.c_str());
    throw pybind11::error_already_set();
  }
  return c;
}

}  // namespace portgrad::python
