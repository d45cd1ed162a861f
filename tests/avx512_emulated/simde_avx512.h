// AVX-512 on a CPU without it: SIMDe's portable _mm512_* behind the native names, for a kernel
// source compiled with -mavx2 -mfma only (AVX2 stays native). Include before the kernel .cc.
//
// SIMDe 0.7.4 (Debian's libsimde-dev) lacks some intrinsics a GEMM uses; they are added below,
// each only where SIMDe has no alias of its own. An intrinsic missing from both fails to compile
// ("inlining failed in call to 'always_inline' ... target specific option mismatch": the name
// fell through to GCC's native AVX-512 one); add it here. Masked loads and stores touch only the
// enabled lanes, so a kernel that relies on masked-off lanes not faulting behaves as on hardware.
#pragma once
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <cstring>

#define PG_SIMDE_MASKED(name, V, E, N, M, load, store)                                          \
  static inline V pg_simde_maskz_loadu_##name(M k, const void* p) {                             \
    E t[N] = {};                                                                                 \
    for (int i = 0; i < N; ++i)                                                                  \
      if ((k >> i) & 1) std::memcpy(&t[i], static_cast<const E*>(p) + i, sizeof(E));             \
    return load(t);                                                                              \
  }                                                                                              \
  static inline V pg_simde_mask_loadu_##name(V src, M k, const void* p) {                       \
    E t[N];                                                                                      \
    store(t, src);                                                                               \
    for (int i = 0; i < N; ++i)                                                                  \
      if ((k >> i) & 1) std::memcpy(&t[i], static_cast<const E*>(p) + i, sizeof(E));             \
    return load(t);                                                                              \
  }                                                                                              \
  static inline void pg_simde_mask_storeu_##name(void* p, M k, V v) {                           \
    E t[N];                                                                                      \
    store(t, v);                                                                                 \
    for (int i = 0; i < N; ++i)                                                                  \
      if ((k >> i) & 1) std::memcpy(static_cast<E*>(p) + i, &t[i], sizeof(E));                   \
  }

PG_SIMDE_MASKED(512_ps, simde__m512, float, 16, simde__mmask16, simde_mm512_loadu_ps, simde_mm512_storeu_ps)
PG_SIMDE_MASKED(512_pd, simde__m512d, double, 8, simde__mmask8, simde_mm512_loadu_pd, simde_mm512_storeu_pd)
PG_SIMDE_MASKED(256_ps, simde__m256, float, 8, simde__mmask8, simde_mm256_loadu_ps, simde_mm256_storeu_ps)
PG_SIMDE_MASKED(256_pd, simde__m256d, double, 4, simde__mmask8, simde_mm256_loadu_pd, simde_mm256_storeu_pd)
#undef PG_SIMDE_MASKED

#ifndef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps(k, p) pg_simde_maskz_loadu_512_ps(k, p)
#define _mm512_mask_loadu_ps(s, k, p) pg_simde_mask_loadu_512_ps(s, k, p)
#define _mm512_mask_storeu_ps(p, k, v) pg_simde_mask_storeu_512_ps(p, k, v)
#endif
#ifndef _mm512_maskz_loadu_pd
#define _mm512_maskz_loadu_pd(k, p) pg_simde_maskz_loadu_512_pd(k, p)
#define _mm512_mask_loadu_pd(s, k, p) pg_simde_mask_loadu_512_pd(s, k, p)
#define _mm512_mask_storeu_pd(p, k, v) pg_simde_mask_storeu_512_pd(p, k, v)
#endif
#ifndef _mm256_maskz_loadu_ps
#define _mm256_maskz_loadu_ps(k, p) pg_simde_maskz_loadu_256_ps(k, p)
#define _mm256_mask_loadu_ps(s, k, p) pg_simde_mask_loadu_256_ps(s, k, p)
#define _mm256_mask_storeu_ps(p, k, v) pg_simde_mask_storeu_256_ps(p, k, v)
#endif
#ifndef _mm256_maskz_loadu_pd
#define _mm256_maskz_loadu_pd(k, p) pg_simde_maskz_loadu_256_pd(k, p)
#define _mm256_mask_loadu_pd(s, k, p) pg_simde_mask_loadu_256_pd(s, k, p)
#define _mm256_mask_storeu_pd(p, k, v) pg_simde_mask_storeu_256_pd(p, k, v)
#endif

// Horizontal sums in GCC's order (halves, then quarters, ...), so the bits match a native build.
static inline float pg_simde_reduce_add_ps(simde__m512 v) {
  float a[16], t[8];
  simde_mm512_storeu_ps(a, v);
  for (int i = 0; i < 8; ++i) t[i] = a[i + 8] + a[i];
  for (int i = 0; i < 4; ++i) t[i] = t[i + 4] + t[i];
  return (t[0] + t[2]) + (t[1] + t[3]);
}
static inline double pg_simde_reduce_add_pd(simde__m512d v) {
  double a[8], t[4];
  simde_mm512_storeu_pd(a, v);
  for (int i = 0; i < 4; ++i) t[i] = a[i + 4] + a[i];
  return (t[0] + t[2]) + (t[1] + t[3]);
}
#ifndef _mm512_reduce_add_ps
#define _mm512_reduce_add_ps(v) pg_simde_reduce_add_ps(v)
#endif
#ifndef _mm512_reduce_add_pd
#define _mm512_reduce_add_pd(v) pg_simde_reduce_add_pd(v)
#endif

// Mask conversions (masks are plain integers in SIMDe), and lane shuffles SIMDe has under its
// own name only.
#ifndef _cvtu32_mask16
#define _cvtu32_mask16(x) static_cast<simde__mmask16>(x)
#define _cvtmask16_u32(k) static_cast<unsigned>(static_cast<simde__mmask16>(k))
#endif
#ifndef _cvtu32_mask8
#define _cvtu32_mask8(x) static_cast<simde__mmask8>(x)
#define _cvtmask8_u32(k) static_cast<unsigned>(static_cast<simde__mmask8>(k))
#endif
#ifndef _mm512_shuffle_f32x4
#define _mm512_shuffle_f32x4(a, b, imm) simde_mm512_shuffle_f32x4(a, b, imm)
#endif
#ifndef _mm512_shuffle_f64x2
#define _mm512_shuffle_f64x2(a, b, imm) simde_mm512_shuffle_f64x2(a, b, imm)
#endif
#ifndef _mm512_extractf32x8_ps
#define _mm512_extractf32x8_ps(a, imm) \
  simde_mm256_castpd_ps(simde_mm512_extractf64x4_pd(simde_mm512_castps_pd(a), imm))
#endif
