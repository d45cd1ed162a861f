// csrc/kernels/cpu/gemm_avx512.cc with AVX-512 emulated by SIMDe (simde_avx512.h), compiled with
// -mavx2 -mfma: the AVX-512 table runs on any AVX2 machine, for tests/avx512_emulated/gemm.cc.
#include "simde_avx512.h"

#include "kernels/cpu/gemm_avx512.cc"
