/// @brief CPU feature detection and the one-time choice of instruction set for every kernel family.
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

}  // namespace portgrad::kernels

namespace portgrad::kernels {

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

}  // namespace portgrad::kernels
