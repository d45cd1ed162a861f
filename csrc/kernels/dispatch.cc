/// @brief The candidate list of every kernel family, best first, reference last; the only place
/// that chooses a kernel variant.
#include "kernels/families.h"

namespace portgrad::kernels {

// A family's AVX-512 variant where families.def says it has one (yes); where not (no), none
// (nullptr): AVX-512 CPUs then run its AVX2 one.
#define PORTGRAD_AVX512_yes(family, type) &family##_avx512_##type
#define PORTGRAD_AVX512_no(family, type) nullptr

// Each family: a candidates<T>() list, the active choice (made once), and an exact lookup.
#define PORTGRAD_KERNEL_FAMILY(Family, family, avx512)                                             \
  template <typename T> static const Candidate<Family<T>> (&family##_candidates())[3];             \
  template <> const Candidate<Family<float>> (&family##_candidates<float>())[3] {                  \
    static const Candidate<Family<float>> c[] = {                                                  \
        {Isa::Avx512, PORTGRAD_AVX512_##avx512(family, f32)},                                      \
        {Isa::Avx2, &family##_avx2_f32},                                                           \
        {Isa::Scalar, &family##_ref_f32}};                                                         \
    return c;                                                                                      \
  }                                                                                                \
  template <> const Candidate<Family<double>> (&family##_candidates<double>())[3] {                \
    static const Candidate<Family<double>> c[] = {                                                 \
        {Isa::Avx512, PORTGRAD_AVX512_##avx512(family, f64)},                                      \
        {Isa::Avx2, &family##_avx2_f64},                                                           \
        {Isa::Scalar, &family##_ref_f64}};                                                         \
    return c;                                                                                      \
  }                                                                                                \
  template <typename T> const Family<T>& family##_kernels() {                                      \
    static const Family<T>* chosen = pick(family##_candidates<T>(), active_isa());                 \
    return *chosen;                                                                                \
  }                                                                                                \
  template <typename T> const Family<T>* family##_kernels_for(Isa isa) {                           \
    return exactly(family##_candidates<T>(), isa);                                                 \
  }                                                                                                \
  template const Family<float>& family##_kernels<float>();                                         \
  template const Family<double>& family##_kernels<double>();                                       \
  template const Family<float>* family##_kernels_for<float>(Isa);                                  \
  template const Family<double>* family##_kernels_for<double>(Isa);
#include "kernels/families.def"
#undef PORTGRAD_KERNEL_FAMILY
#undef PORTGRAD_AVX512_yes
#undef PORTGRAD_AVX512_no

}  // namespace portgrad::kernels
