// PLACEHOLDER: gemm and vector kernel hooks.
#include "python/bindings.h"
namespace portgrad::python { void bind_gemm_kernels(pybind11::module_&) {} }
