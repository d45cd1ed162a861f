/// @brief The registered GPU backend, and the error that says how to get one.
#include "ops/gpu_backend.h"

#include <atomic>

#include "core/errors.h"

namespace portgrad {
namespace {
std::atomic<const GpuBackend*> registered{nullptr};
}

void register_gpu_backend(const GpuBackend* backend) {
  if (!backend) throw ValueError("register_gpu_backend: null backend");
  if (backend->abi != kGpuBackendAbi)
    throw ValueError(cat("the GPU backend module was built for engine ABI ", backend->abi, ", this engine has ",
                         kGpuBackendAbi, "; reinstall portgrad so both come from one build"));
  const GpuBackend* expected = nullptr;
  if (!registered.compare_exchange_strong(expected, backend) && expected != backend)
    throw ValueError(cat("a GPU backend (", expected->name, ") is already in use in this process; the ", backend->name,
                         " backend cannot replace it"));
}

const GpuBackend* gpu_backend() { return registered.load(std::memory_order_acquire); }

const GpuBackend& require_gpu_backend() {
  const GpuBackend* b = gpu_backend();
  if (!b)
    throw ValueError("TargetDevice \"GPU\" is not available: no GPU backend is loaded (this build of portgrad "
                     "has no CUDA backend, or it was not imported); use TargetDevice=\"CPU\", or install portgrad "
                     "from source on a machine with the CUDA toolkit (nvcc) so that its CUDA module is built");
  return *b;
}

void gpu_check(const char* message, const char* what) {
  if (message) throw std::runtime_error(cat("GPU ", what, ": ", message));
}

}  // namespace portgrad
