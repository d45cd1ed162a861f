// PLACEHOLDER: unary, softmax and loss kernel hooks.
#include "python/bindings.h"
namespace portgrad::python { void bind_elementwise_kernels(pybind11::module_&) {} }
