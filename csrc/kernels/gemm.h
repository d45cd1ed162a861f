/// @brief General matrix multiply over strided operands.
///
///   C[i*ldc + j] = alpha * sum_p A[i*rsa + p*csa] * B[p*rsb + j*csb] + beta * C[i*ldc + j]
///   for i < m, j < n, p < k.
/// Strides express every transpose without materialising it: A^T is (rsa, csa) = (1, lda).
/// With beta == 0, C is not read (it may hold NaN). k == 0 gives C = beta * C.
/// C must not overlap A or B. alpha == 0 still reads A and B (NaN there propagates).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/host_device.h"
#include "kernels/isa.h"
#include "kernels/unary.h"

namespace portgrad::kernels {

// What gemm_ex does after C = alpha*op(A)op(B) + beta*C, while each tile of C is still in cache,
// and one operand prologue: the activation derivative of a backward pass, applied to A as it is
// loaded (so dz = da * f'(z) is never written).
template <typename T>
struct GemmEpilogue {
  // Prologue. If a_derivative is not Count, every element of op(A) is read as
  //   dz = da * f'(z),  da = A[i*rsa + p*csa], z = a_x[i*rsa + p*csa], y = a_y[i*rsa + p*csa] = f(z)
  // exactly as the active unary kernels' backward(f, ..., x=z, y, dy=da) computes it (rounded to
  // T): a_x and a_y share A's strides, both must be set, and neither may overlap C. The products
  // and row_sums below then see dz, never da.
  UnaryFn a_derivative = UnaryFn::Count;
  const T* a_x = nullptr;
  const T* a_y = nullptr;
  const T* bias = nullptr;            // if set: C[i, j] += bias[j]
  UnaryFn unary = UnaryFn::Count;     // if not Count: D[i*ldd + j] = f(C[i, j]) (after the bias)
  T* D = nullptr;                     // may equal C with ldd == ldc: then only f(C) is kept
  int64_t ldd = 0;
  T* row_sums = nullptr;              // if set: row_sums[i] = sum_p op(A)[i, p] (beta-free, overwritten):
                                      // the bias gradient of a dW = dY^T X product, at no extra pass
  // Scale epilogue (not with `unary`): if scale is set, after the bias
  //   D[i*ldd + j] = C[i, j] * scale[(i % scale_period) * lds + j]   (one rounding)
  // the tangent of an activation, f'(z) t, applied to the product that forms t: scale holds f'(z)
  // of scale_period examples, whose tangents come stacked once per direction (m = directions *
  // scale_period). D may be C (or null: C).
  const T* scale = nullptr;
  int64_t lds = 0;
  int64_t scale_period = 0;
  bool has_prologue() const { return a_derivative != UnaryFn::Count; }
  bool has_activation() const { return unary != UnaryFn::Count || scale; }
};

// A batch of products with the same sizes, at offsets in two levels (examples, and heads within
// one): product i reads X + (i / inner) * outer_X + (i % inner) * inner_X for X = A, B, C.
struct GemmBatch {
  int64_t count = 0, inner = 1;
  int64_t outer_a = 0, inner_a = 0, outer_b = 0, inner_b = 0, outer_c = 0, inner_c = 0;
  PG_HOST_DEVICE int64_t a(int64_t i) const { return i / inner * outer_a + i % inner * inner_a; }
  PG_HOST_DEVICE int64_t b(int64_t i) const { return i / inner * outer_b + i % inner * inner_b; }
  PG_HOST_DEVICE int64_t c(int64_t i) const { return i / inner * outer_c + i % inner * inner_c; }
};

// B packed once for many products (a layer's weights in a plan). The layout is private to the
// variant that packed it; pack with the same table that multiplies.
template <typename T>
struct GemmKernels {
  void (*gemm)(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
               const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc);
  // gemm followed by the epilogue; deterministic and bit-identical for any thread count.
  void (*gemm_ex)(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                  const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc,
                  const GemmEpilogue<T>& epilogue);
  // Bytes needed to pack a (k x n) B; pack_b fills `packed` (64-byte aligned, caller-owned).
  size_t (*packed_b_bytes)(int64_t k, int64_t n);
  void (*pack_b)(int64_t k, int64_t n, const T* B, int64_t rsb, int64_t csb, void* packed);
  // gemm_ex with a B packed by pack_b.
  void (*gemm_packed_b)(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                        const void* packed_b, T beta, T* C, int64_t ldc, const GemmEpilogue<T>& epilogue);
  // gemm for each product of the batch (attention's per example and head): the same bits as
  // gemm on each; small products are shared out to the threads whole. No C may overlap another C,
  // an A or a B.
  void (*gemm_batched)(const GemmBatch& batch, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                       int64_t csa, const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc);
};

// Threads used by large products (1 = none). Defaults to the CPU count, or PORTGRAD_NUM_THREADS.
// Results never depend on it: every element of C is summed by one thread in a fixed order.
int gemm_num_threads();
void set_gemm_num_threads(int n);

PORTGRAD_DECLARE_KERNEL_FAMILY(GemmKernels, gemm)

}  // namespace portgrad::kernels
