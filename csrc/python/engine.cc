// PLACEHOLDER: the engine binding.
#include "python/bindings.h"
namespace portgrad::python { void bind_engine(pybind11::module_&) {} }
