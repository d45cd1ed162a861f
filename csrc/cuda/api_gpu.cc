/// @brief portgrad::enable_gpu() (portgrad/gpu.h) for the C++ GPU libraries: registers this
/// library's backend (CUDA, or the CPU emulator) with the engine.
#include "cuda/backend.h"

#include "portgrad/gpu.h"

namespace portgrad {
inline namespace api {

int enable_gpu(std::string* why) {
  const GpuBackend* b = cuda::backend();
  register_gpu_backend(b);
  const char* reason = nullptr;
  const int n = b->device_count(&reason);
  if (why) *why = n > 0 || !reason ? "" : reason;
  return n;
}

}  // namespace api
}  // namespace portgrad
