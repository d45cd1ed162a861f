/// @brief AVX2 embedding kernels: row copies and in-order row additions with masked tails.
#include <immintrin.h>

#include "kernels/cpu/vecmath_avx2.h"
#include "kernels/embed.h"

namespace portgrad::kernels {
namespace {

template <typename V>
void gather(int64_t n, int64_t size, const int64_t* idx, const typename VT<V>::S* W_, typename VT<V>::S* y) {
  constexpr int W = VT<V>::W;
  const int64_t full = size / W * W;
  const __m256i tail = VT<V>::mask(size - full);
  for (int64_t i = 0; i < n; ++i) {
    const typename VT<V>::S* src = W_ + idx[i] * size;
    typename VT<V>::S* dst = y + i * size;
    for (int64_t k = 0; k < full; k += W) VT<V>::store(dst + k, VT<V>::load(src + k));
    if (full < size) VT<V>::mstore(dst + full, tail, VT<V>::mload(src + full, tail));
  }
}

// Lane-wise additions in T round exactly as the reference's (T + T in double, rounded to T).
template <typename V>
void scatter_add(int64_t n, int64_t rows, int64_t size, const int64_t* idx, const typename VT<V>::S* dy,
                 typename VT<V>::S* dW) {
  constexpr int W = VT<V>::W;
  const int64_t total = rows * size, tfull = total / W * W;
  for (int64_t j = 0; j < tfull; j += W) VT<V>::store(dW + j, C<V>(0.0));
  for (int64_t j = tfull; j < total; ++j) dW[j] = 0;
  const int64_t full = size / W * W;
  const __m256i tail = VT<V>::mask(size - full);
  for (int64_t i = 0; i < n; ++i) {
    typename VT<V>::S* row = dW + idx[i] * size;
    const typename VT<V>::S* g = dy + i * size;
    for (int64_t k = 0; k < full; k += W) VT<V>::store(row + k, add(VT<V>::load(row + k), VT<V>::load(g + k)));
    if (full < size)
      VT<V>::mstore(row + full, tail, add(VT<V>::mload(row + full, tail), VT<V>::mload(g + full, tail)));
  }
}

}  // namespace

const EmbedKernels<float> embed_avx2_f32{&gather<__m256>, &scatter_add<__m256>};
const EmbedKernels<double> embed_avx2_f64{&gather<__m256d>, &scatter_add<__m256d>};

}  // namespace portgrad::kernels
