/// @brief The runtime functions the CUDA kernel tables call, for the emulator test drivers.
#include "runtime_stubs.h"

#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/common.cuh"

namespace portgrad::cuda_test {
bool expect_error = false;
int errors_noted = 0;
}  // namespace portgrad::cuda_test

namespace portgrad::cuda {
cudaStream_t current_stream() { return nullptr; }
int multiprocessor_count() { return 3; }  // as the emulated runtime
size_t max_shared_per_block() { return 227 * 1024; }
size_t shared_per_multiprocessor() { return 228 * 1024; }
void note_error(const char* what) {
  ++cuda_test::errors_noted;
  if (cuda_test::expect_error) return;
  std::fflush(stdout);
  std::fprintf(stderr, "FAIL: unexpected CUDA error (note_error): %s\n", what);
  std::fflush(stderr);
  std::_Exit(2);
}
}  // namespace portgrad::cuda
