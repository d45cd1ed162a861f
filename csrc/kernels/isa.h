/// @brief CPU feature detection, the one-time choice of instruction set for every kernel family,
/// and what each family declares.
#pragma once
#include <string>

namespace portgrad::kernels {

// Ordered: a higher value needs every feature of the lower ones.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);          // "scalar", "avx2", "avx512"
bool isa_supported(Isa isa);            // CPU and OS (XSAVE) support
// Chosen once, on first use: the best supported ISA, or the one named by the environment
// variable PORTGRAD_ISA=scalar|avx2|avx512. Naming an unsupported ISA throws ValueError.
Isa active_isa();

// One entry of a family's candidate list: the ISA a variant needs and its table.
template <typename Table>
struct Candidate {
  Isa isa;
  const Table* table;
};

// The best candidate whose ISA is at most `limit` (candidates are listed best first, reference
// last, so the reference always matches).
template <typename Table, size_t N>
const Table* pick(const Candidate<Table> (&candidates)[N], Isa limit) {
  for (const auto& c : candidates)
    if (c.table && static_cast<int>(c.isa) <= static_cast<int>(limit)) return c.table;
  return nullptr;
}

// The variant built for exactly `isa`, or nullptr: what kernel tests use to compare one ISA with
// the reference. Unsupported ISAs give nullptr too, so a test cannot run code the CPU lacks.
template <typename Table, size_t N>
const Table* exactly(const Candidate<Table> (&candidates)[N], Isa isa) {
  if (!isa_supported(isa)) return nullptr;
  for (const auto& c : candidates)
    if (c.table && c.isa == isa) return c.table;
  return nullptr;
}

// What a family of kernels/families.def declares, once, in its header after its table (inside
// namespace portgrad::kernels): its CPU variants and its dispatch (kernels/dispatch.cc). The
// AVX-512 variant is declared for every family so that families.def alone says which have one; the
// others neither define nor use it. The CUDA variants are declared by kernels/cuda/tables.h, for
// the GPU modules alone.
#define PORTGRAD_DECLARE_KERNEL_FAMILY(Family, family)                                            \
  extern const Family<float> family##_ref_f32;                                                   \
  extern const Family<double> family##_ref_f64;                                                  \
  extern const Family<float> family##_avx2_f32;                                                  \
  extern const Family<double> family##_avx2_f64;                                                 \
  extern const Family<float> family##_avx512_f32;                                                \
  extern const Family<double> family##_avx512_f64;                                               \
  /* The active ISA's variant. */                                                                \
  template <typename T> const Family<T>& family##_kernels();                                     \
  /* Exactly that ISA's variant, or null (no such variant, or the CPU lacks the ISA). */         \
  template <typename T> const Family<T>* family##_kernels_for(Isa isa);

}  // namespace portgrad::kernels
