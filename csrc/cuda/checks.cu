/// @brief The backend's own small kernels: fill, and the input checks of arrays that arrive on the
/// device (first non-finite value, first out-of-range class index).
#include "cuda/runtime.h"
#include "kernels/cuda/common.cuh"

namespace portgrad::cuda {
namespace {

template <typename T>
__global__ void fill_kernel(int64_t n, T value, T* dst) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) dst[i] = value;
}

// *first = min(*first, i) over the failing i: the smallest failing index, whatever the schedule.
template <typename T>
__global__ void nonfinite_kernel(int64_t n, const T* x, unsigned long long* first) {
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    if (!math::is_finite(x[i])) atomicMin(first, static_cast<unsigned long long>(i));
}

__global__ void range_kernel(int64_t n, const int64_t* x, int64_t bound, unsigned long long* first) {
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    if (x[i] < 0 || x[i] >= bound) atomicMin(first, static_cast<unsigned long long>(i));
}

const char* read_first(int64_t* index) {
  unsigned long long first = 0;
  if (const char* e = copy(&first, result_slot(), 8, CopyKind::DeviceToHost)) return e;
  *index = first == ~0ull ? -1 : static_cast<int64_t>(first);
  return nullptr;
}

const char* reset_slot() {
  const unsigned long long none = ~0ull;
  return copy(result_slot(), &none, 8, CopyKind::HostToDevice);
}

}  // namespace

template <typename T>
void fill(int64_t n, T value, T* dst) {
  if (n > 0) launch(dim3(grid_for(n, 256)), dim3(256), fill_kernel<T>, n, value, dst);
}

template <typename T>
const char* first_nonfinite(int64_t n, const T* x, int64_t* index) {
  *index = -1;
  if (n <= 0) return nullptr;
  if (!result_slot()) return "no device memory for the input check";
  if (const char* e = reset_slot()) return e;
  launch(dim3(grid_for(n, 256)), dim3(256), nonfinite_kernel<T>, n, x,
         reinterpret_cast<unsigned long long*>(result_slot()));
  return read_first(index);
}

const char* first_out_of_range(int64_t n, const int64_t* x, int64_t bound, int64_t* index) {
  *index = -1;
  if (n <= 0) return nullptr;
  if (!result_slot()) return "no device memory for the input check";
  if (const char* e = reset_slot()) return e;
  launch(dim3(grid_for(n, 256)), dim3(256), range_kernel, n, x, bound,
         reinterpret_cast<unsigned long long*>(result_slot()));
  return read_first(index);
}

template void fill<float>(int64_t, float, float*);
template void fill<double>(int64_t, double, double*);
template const char* first_nonfinite<float>(int64_t, const float*, int64_t*);
template const char* first_nonfinite<double>(int64_t, const double*, int64_t*);

}  // namespace portgrad::cuda
