/// @brief What the CUDA kernel tables need from the CUDA runtime (csrc/cuda/runtime_*.cc), for the
/// standalone drivers of tests/test_cuda_kernels.py: no stream (the emulator runs launches at
/// once), and an error hook that fails the driver unless the driver is checking for an error.
#pragma once

namespace portgrad::cuda_test {
// While true, note_error() only counts (a driver checking that a kernel reports an error);
// otherwise it prints the message and ends the driver with exit code 2.
extern bool expect_error;
extern int errors_noted;
}  // namespace portgrad::cuda_test
