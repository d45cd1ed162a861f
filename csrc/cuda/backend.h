/// @brief The GPU backend of this module (CUDA, or the CPU emulator), for the engine to register:
/// a C++ program links a backend library and calls portgrad::register_gpu_backend(cuda::backend()).
#pragma once
#include "ops/gpu_backend.h"

namespace portgrad::cuda {
const GpuBackend* backend();
}
