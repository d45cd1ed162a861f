/// @brief The GPU for C++ programs: link the CMake target portgrad::cuda (built where the CUDA
/// toolkit is found) and call enable_gpu() once; then a Query with device = Device::GPU, or
/// net.on(Device::GPU), runs there.
///
///     #include <portgrad/gpu.h>
///     std::string why;
///     if (portgrad::enable_gpu(&why) == 0) std::fprintf(stderr, "no GPU: %s\n", why.c_str());
///
/// (portgrad::gpu_emulator, built with -DPORTGRAD_GPU_EMULATOR_LIB=ON, provides the same function
/// over the CPU emulator of the CUDA device, for tests on machines without a GPU.)
#pragma once
#include <string>

#include "portgrad/portgrad.h"

namespace portgrad {
inline namespace api {

// Makes the linked backend the process's GPU backend (idempotent). Returns the number of devices it
// can use: 0, with the driver's reason in *why, where there is no usable driver or device. Throws
// ValueError if another GPU backend was enabled first.
int enable_gpu(std::string* why = nullptr);

}  // namespace api
}  // namespace portgrad
