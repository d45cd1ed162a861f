/// @brief The candidate list of every kernel family, best first, reference last; the only place
/// that chooses a kernel variant.
#include "kernels/conv.h"
#include "kernels/embed.h"
#include "kernels/gemm.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/pool.h"
#include "kernels/shape_ops.h"
#include "kernels/softmax.h"
#include "kernels/unary.h"
#include "kernels/vector.h"

namespace portgrad::kernels {

// Each family: a candidates<T>() list, the active choice (made once), and an exact lookup.
// A family without an AVX-512 variant names none (nullptr): AVX-512 CPUs then run its AVX2 one.
#define PORTGRAD_FAMILY(Family, family, avx512_f32, avx512_f64)                                   \
  template <typename T> static const Candidate<Family<T>> (&family##_candidates())[3];           \
  template <> const Candidate<Family<float>> (&family##_candidates<float>())[3] {                \
    static const Candidate<Family<float>> c[] = {{Isa::Avx512, avx512_f32},                      \
                                                 {Isa::Avx2, &family##_avx2_f32},                \
                                                 {Isa::Scalar, &family##_ref_f32}};              \
    return c;                                                                                    \
  }                                                                                              \
  template <> const Candidate<Family<double>> (&family##_candidates<double>())[3] {              \
    static const Candidate<Family<double>> c[] = {{Isa::Avx512, avx512_f64},                     \
                                                  {Isa::Avx2, &family##_avx2_f64},               \
                                                  {Isa::Scalar, &family##_ref_f64}};             \
    return c;                                                                                    \
  }                                                                                              \
  template <typename T> const Family<T>& family##_kernels() {                                    \
    static const Family<T>* chosen = pick(family##_candidates<T>(), active_isa());               \
    return *chosen;                                                                              \
  }                                                                                              \
  template <typename T> const Family<T>* family##_kernels_for(Isa isa) {                         \
    return exactly(family##_candidates<T>(), isa);                                               \
  }                                                                                              \
  template const Family<float>& family##_kernels<float>();                                       \
  template const Family<double>& family##_kernels<double>();                                     \
  template const Family<float>* family##_kernels_for<float>(Isa);                                \
  template const Family<double>* family##_kernels_for<double>(Isa);

PORTGRAD_FAMILY(UnaryKernels, unary, nullptr, nullptr)
PORTGRAD_FAMILY(SoftmaxKernels, softmax, nullptr, nullptr)
PORTGRAD_FAMILY(LossKernels, loss, nullptr, nullptr)
PORTGRAD_FAMILY(VectorKernels, vector, nullptr, nullptr)
PORTGRAD_FAMILY(GemmKernels, gemm, &gemm_avx512_f32, &gemm_avx512_f64)
PORTGRAD_FAMILY(NormKernels, norm, nullptr, nullptr)
PORTGRAD_FAMILY(EmbedKernels, embed, nullptr, nullptr)
PORTGRAD_FAMILY(ShapeKernels, shape, nullptr, nullptr)
PORTGRAD_FAMILY(ConvKernels, conv, nullptr, nullptr)
PORTGRAD_FAMILY(PoolKernels, pool, nullptr, nullptr)

#undef PORTGRAD_FAMILY

}  // namespace portgrad::kernels
