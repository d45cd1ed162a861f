/// @brief Embedding kernels: row gather by integer index and its backward, a scatter-add.
///
/// W is a dense row-major (rows x size) table; idx holds n indices, assumed in [0, rows) (the
/// engine range-checks them at the door).
#pragma once
#include <cstdint>

#include "kernels/isa.h"

namespace portgrad::kernels {

template <typename T>
struct EmbedKernels {
  // y[i, :] = W[idx[i], :] for i < n.
  void (*gather)(int64_t n, int64_t size, const int64_t* idx, const T* W, T* y);
  // dW = 0, then dW[idx[i], :] += dy[i, :] for i = 0, 1, ..., n - 1 in that order, each addition
  // rounded to T: deterministic, and every variant gives the same bits.
  void (*scatter_add)(int64_t n, int64_t rows, int64_t size, const int64_t* idx, const T* dy, T* dW);
};

PORTGRAD_DECLARE_KERNEL_FAMILY(EmbedKernels, embed)

}  // namespace portgrad::kernels
