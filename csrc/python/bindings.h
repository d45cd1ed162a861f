/// @brief Entry points of the pieces of the `portgrad._core` extension module.
#pragma once
#include <pybind11/pybind11.h>

namespace portgrad::python {

void bind_engine(pybind11::module_& m);               // Net, plans, evaluation (engine.cc)
void bind_io(pybind11::module_& m);                   // save and load of portgrad files (io.cc)
void bind_gemm_kernels(pybind11::module_& m);         // kernel test hooks: gemm, vector (kernels_gemm.cc)
void bind_elementwise_kernels(pybind11::module_& m);  // unary/softmax/loss hooks (kernels_elementwise.cc)
void bind_norm_kernels(pybind11::module_& m);         // norm/dropout/embed hooks (kernels_norm.cc)
void bind_structure_kernels(pybind11::module_& m);    // shape ops and log-softmax hooks (kernels_structure.cc)
void bind_conv_kernels(pybind11::module_& m);         // conv/pool hooks (kernels_conv.cc)

}  // namespace portgrad::python
