/// @brief Reference embedding kernels: row gather and in-order scatter-add.
#include <cstring>

#include "kernels/embed.h"

namespace portgrad::kernels {
namespace {

template <typename T>
void gather(int64_t n, int64_t size, const int64_t* idx, const T* W, T* y) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < size; ++k) y[i * size + k] = W[idx[i] * size + k];
}

// Each addition rounds to T (in double for float, so exactly as T + T rounds): the contract of
// the header, which every variant shares bit for bit.
template <typename T>
void scatter_add(int64_t n, int64_t rows, int64_t size, const int64_t* idx, const T* dy, T* dW) {
  for (int64_t j = 0; j < rows * size; ++j) dW[j] = T(0);
  for (int64_t i = 0; i < n; ++i) {
    T* row = dW + idx[i] * size;
    const T* g = dy + i * size;
    for (int64_t k = 0; k < size; ++k) row[k] = static_cast<T>(static_cast<double>(row[k]) + static_cast<double>(g[k]));
  }
}

}  // namespace

const EmbedKernels<float> embed_ref_f32{&gather<float>, &scatter_add<float>};
const EmbedKernels<double> embed_ref_f64{&gather<double>, &scatter_add<double>};

}  // namespace portgrad::kernels
