/// @brief CPU feature detection (cpuid + XGETBV) and the PORTGRAD_ISA override.
#include "kernels/isa.h"

#include <cpuid.h>

#include <cstdlib>
#include <cstring>

#include "core/errors.h"

namespace portgrad::kernels {
namespace {

unsigned long long xgetbv0() {
  unsigned int lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

struct Features {
  bool avx2_fma = false;
  bool avx512 = false;
};

Features detect() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12);
  if (!osxsave || !avx) return f;
  const unsigned long long xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE and AVX state saved by the OS
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;          // plus opmask and ZMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31);
  f.avx2_fma = os_ymm && avx2 && fma;
  f.avx512 = f.avx2_fma && os_zmm && avx512f && avx512dq && avx512bw && avx512vl;
  return f;
}

const Features& features() {
  static const Features f = detect();
  return f;
}

Isa choose() {
  Isa best = features().avx512 ? Isa::Avx512 : features().avx2_fma ? Isa::Avx2 : Isa::Scalar;
  const char* env = std::getenv("PORTGRAD_ISA");
  if (!env || !*env) return best;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (std::strcmp(env, isa_name(isa)) == 0) {
      if (!isa_supported(isa))
        throw ValueError(cat("PORTGRAD_ISA=", env, " names an instruction set this CPU (or OS) does "
                             "not support; the best available is '", isa_name(best), "'"));
      return isa;
    }
  }
  throw ValueError(cat("PORTGRAD_ISA=", env, " is not one of scalar, avx2, avx512"));
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return features().avx2_fma;
    case Isa::Avx512: return features().avx512;
  }
  return false;
}

Isa active_isa() {
  static const Isa isa = choose();
  return isa;
}

}  // namespace portgrad::kernels
