/// @brief CUDA GEMM (kernels/gemm.h contract): a hand-written tiled kernel over arbitrary strides
/// with the whole epilogue fused, and, where the build found cublasLt.h (PORTGRAD_HAVE_CUBLASLT),
/// cuBLASLt for large products whose operands it can express.
///
/// Tiled kernel: a block of 256 threads computes a 64x64 tile of C. Each K slice of 16 is loaded
/// from A and B through their general strides into static shared memory (the element each thread
/// loads is chosen so that neighbouring threads read neighbouring addresses along whichever stride
/// of the operand is smaller, so row-major, transposed and K-contiguous operands all load
/// coalesced), and each thread accumulates a 4x4 micro-tile in registers. The micro-tile is strided
/// (rows ty + 16r, columns tx + 16c), so shared-memory reads and the stores of C are contiguous
/// across a warp. Every element of C is summed by one thread over p = 0..k-1 in order: results are
/// deterministic. Then alpha/beta (beta == 0 never reads C), the bias, and the activation (written
/// to D, which may be C) are applied before the single store; a scale epilogue is a pass after.
///
/// An operand prologue (gemm.h) is applied as each element of A is loaded, in the tile and in the
/// row sums, with unary_math::backward (the unary kernels' arithmetic); cuBLASLt is not used then.
///
/// row_sums come from a separate small kernel (fixed-order per-thread sums and a fixed shared-memory
/// tree; no atomics), so they are deterministic too. k == 0 needs no special case: the K loop is
/// empty, so C = beta*C (+ bias, activation) and row_sums = 0.
///
/// Nothing here synchronises or allocates (except cuBLASLt's one-time handle and workspace).
#include "kernels/cuda/unary_math.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

#if defined(__CUDACC__) && defined(PORTGRAD_HAVE_CUBLASLT)
#define PG_GEMM_CUBLASLT 1
#include <cublasLt.h>

#include <map>
#include <mutex>
#include <utility>
#endif


namespace portgrad::kernels {
namespace {

using cuda::launch;

constexpr int64_t kGridCap = 65535;  // grid.y limit; the kernels loop over tiles beyond it

// ------------------------------------------------------------------------------------------------
// Tiled kernel

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN))
gemm_tiled_kernel(GemmBatch batch, int64_t m, int64_t n, int64_t k, T alpha, const T* A0, int64_t rsa, int64_t csa,
                  const T* B0, int64_t rsb, int64_t csb, T beta, T* C0, int64_t ldc, const T* bias,
                  int unary, T* D, int64_t ldd, int a_derivative, const T* a_x) {
  constexpr int DX = BN / TN, DY = BM / TM, NT = DX * DY;
  static_assert(BM % TM == 0 && BN % TN == 0, "micro-tiles must divide the block tile");
  static_assert((BM * BK) % NT == 0 && (BK * BN) % NT == 0, "tile loads must split evenly");
  // One column of padding: the transposing stores of a K-fast load do not all hit one bank.
  __shared__ T As[BK][BM + 1];
  __shared__ T Bs[BK][BN + 1];

  const int t = static_cast<int>(threadIdx.x);
  const int tx = t % DX, ty = t / DX;
  // Which index neighbouring threads take when loading: the one with the smaller stride.
  const bool a_k_fast = (csa < 0 ? -csa : csa) <= (rsa < 0 ? -rsa : rsa);
  const bool b_n_fast = (csb < 0 ? -csb : csb) <= (rsb < 0 ? -rsb : rsb);
  const bool has_unary = unary >= 0 && unary < static_cast<int>(UnaryFn::Count);
  const bool has_prologue = a_derivative >= 0 && a_derivative < static_cast<int>(UnaryFn::Count);
  const int64_t tiles_m = (m + BM - 1) / BM, tiles_n = (n + BN - 1) / BN;

  // Product z of the batch (grid.z; one product when batch.count is 1: no offsets). The epilogue's
  // D and the prologue's a_x serve single products only (gemm_ex), never a batch.
  for (int64_t z = blockIdx.z; z < batch.count; z += gridDim.z) {
  const T* A = A0 + batch.a(z);
  const T* B = B0 + batch.b(z);
  T* C = C0 + batch.c(z);
  for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
    for (int64_t tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
      const int64_t i0 = tm * BM, j0 = tn * BN;
      T acc[TM][TN];
PG_UNROLL
      for (int r = 0; r < TM; ++r)
PG_UNROLL
        for (int c = 0; c < TN; ++c) acc[r][c] = T(0);

      for (int64_t p0 = 0; p0 < k; p0 += BK) {
        // A slice: BM x BK, zero outside the matrix (0*0 adds +0 in the K tail).
PG_UNROLL
        for (int e0 = 0; e0 < BM * BK; e0 += NT) {
          const int e = e0 + t;
          const int ii = a_k_fast ? e / BK : e % BM;
          const int pp = a_k_fast ? e % BK : e / BM;
          const int64_t gi = i0 + ii, gp = p0 + pp;
          T v = T(0);
          if (gi < m && gp < k) {
            const int64_t o = gi * rsa + gp * csa;
            v = has_prologue ? unary_math::backward(static_cast<UnaryFn>(a_derivative), a_x[o], A[o]) : A[o];
          }
          As[pp][ii] = v;
        }
        // B slice: BK x BN.
PG_UNROLL
        for (int e0 = 0; e0 < BK * BN; e0 += NT) {
          const int e = e0 + t;
          const int jj = b_n_fast ? e % BN : e / BK;
          const int pp = b_n_fast ? e / BN : e % BK;
          const int64_t gj = j0 + jj, gp = p0 + pp;
          Bs[pp][jj] = (gj < n && gp < k) ? B[gp * rsb + gj * csb] : T(0);
        }
        __syncthreads();
PG_UNROLL
        for (int p = 0; p < BK; ++p) {
          T a[TM], b[TN];
PG_UNROLL
          for (int r = 0; r < TM; ++r) a[r] = As[p][ty + r * DY];
PG_UNROLL
          for (int c = 0; c < TN; ++c) b[c] = Bs[p][tx + c * DX];
PG_UNROLL
          for (int r = 0; r < TM; ++r)
PG_UNROLL
            for (int c = 0; c < TN; ++c) acc[r][c] += a[r] * b[c];
        }
        __syncthreads();
      }

      // Epilogue: C = alpha*acc + beta*C + bias; D = f(C) (only f(C) is stored when D is C).
PG_UNROLL
      for (int r = 0; r < TM; ++r) {
        const int64_t i = i0 + ty + r * DY;
        if (i >= m) continue;
PG_UNROLL
        for (int c = 0; c < TN; ++c) {
          const int64_t j = j0 + tx + c * DX;
          if (j >= n) continue;
          T* cij = C + i * ldc + j;
          T v = alpha * acc[r][c];
          if (beta != T(0)) v += beta * *cij;
          if (bias) v += bias[j];
          if (has_unary) {
            T* dij = D ? D + i * ldd + j : cij;
            if (dij != cij) *cij = v;
            *dij = unary_math::forward(static_cast<UnaryFn>(unary), v);
          } else {
            *cij = v;
          }
        }
      }
    }
  }
  }
}

constexpr int kBM = 64, kBN = 64, kBK = 16, kTM = 4, kTN = 4;
constexpr int kTiledThreads = (kBM / kTM) * (kBN / kTN);

template <typename T>
void gemm_tiled(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc, const T* bias,
                int unary, T* D, int64_t ldd, int a_derivative, const T* a_x, GemmBatch batch = {1}) {
  const int64_t tiles_m = (m + kBM - 1) / kBM, tiles_n = (n + kBN - 1) / kBN;
  const dim3 grid(static_cast<unsigned>(tiles_n < kGridCap ? tiles_n : kGridCap),
                  static_cast<unsigned>(tiles_m < kGridCap ? tiles_m : kGridCap),
                  static_cast<unsigned>(batch.count < kGridCap ? batch.count : kGridCap));
  launch(grid, dim3(kTiledThreads), &gemm_tiled_kernel<T, kBM, kBN, kBK, kTM, kTN>, batch, m, n, k, alpha,
         A, rsa, csa, B, rsb, csb, beta, C, ldc, bias, unary, D, ldd, a_derivative, a_x);
}

// ------------------------------------------------------------------------------------------------
// row_sums[i] = sum_p A[i*rsa + p*csa], overwritten. A 32x8 block; along whichever of A's strides
// is contiguous, 32 neighbouring threads read neighbouring addresses:
//   K-fast (|csa| <= |rsa|): 8 rows per block, 32 lanes per row stride over p; lanes reduced by a tree;
//   M-fast: 32 rows per block (one per threadIdx.x), 8 lanes per row stride over p; tree over lanes.
// Each lane sums its p in increasing order, and the trees are fixed: deterministic.

constexpr int kRsX = 32, kRsY = 8;

template <typename T>
__global__ void __launch_bounds__(kRsX * kRsY)
row_sums_kernel(int64_t m, int64_t k, const T* A, int64_t rsa, int64_t csa, int a_derivative, const T* a_x,
                T* out) {
  __shared__ T part[kRsY][kRsX + 1];
  const int x = static_cast<int>(threadIdx.x), y = static_cast<int>(threadIdx.y);
  const bool k_fast = (csa < 0 ? -csa : csa) <= (rsa < 0 ? -rsa : rsa);
  const int rows_per_block = k_fast ? kRsY : kRsX;
  const bool has_prologue = a_derivative >= 0 && a_derivative < static_cast<int>(UnaryFn::Count);
  const auto a_at = [&](int64_t o) {
    return has_prologue ? unary_math::backward(static_cast<UnaryFn>(a_derivative), a_x[o], A[o]) : A[o];
  };
  for (int64_t r0 = int64_t(blockIdx.x) * rows_per_block; r0 < m; r0 += int64_t(gridDim.x) * rows_per_block) {
    if (k_fast) {
      const int64_t i = r0 + y;
      T s = T(0);
      if (i < m)
        for (int64_t p = x; p < k; p += kRsX) s += a_at(i * rsa + p * csa);
      part[y][x] = s;
      __syncthreads();
      for (int h = kRsX / 2; h > 0; h /= 2) {
        if (x < h) part[y][x] += part[y][x + h];
        __syncthreads();
      }
      if (x == 0 && i < m) out[i] = part[y][0];
    } else {
      const int64_t i = r0 + x;
      T s = T(0);
      if (i < m)
        for (int64_t p = y; p < k; p += kRsY) s += a_at(i * rsa + p * csa);
      part[y][x] = s;
      __syncthreads();
      for (int h = kRsY / 2; h > 0; h /= 2) {
        if (y < h) part[y][x] += part[y + h][x];
        __syncthreads();
      }
      if (y == 0 && i < m) out[i] = part[0][x];
    }
    __syncthreads();  // part is reused by the next rows
  }
}

template <typename T>
void row_sums(int64_t m, int64_t k, const T* A, int64_t rsa, int64_t csa, int a_derivative, const T* a_x, T* out) {
  const bool k_fast = (csa < 0 ? -csa : csa) <= (rsa < 0 ? -rsa : rsa);
  const int64_t rows = k_fast ? kRsY : kRsX;
  const int64_t blocks = (m + rows - 1) / rows;
  launch(dim3(static_cast<unsigned>(blocks < 4096 ? blocks : 4096)), dim3(kRsX, kRsY),
         &row_sums_kernel<T>, m, k, A, rsa, csa, a_derivative, a_x, out);
}

// ------------------------------------------------------------------------------------------------
// cuBLASLt path (GPU builds that found cublasLt.h only; never emulated).

#if defined(PG_GEMM_CUBLASLT)

// D[i*ldd + j] = f(C[i*ldc + j]): the activation after a cuBLASLt product (D may be C).
template <typename T>
__global__ void activation_kernel(int64_t m, int64_t n, const T* C, int64_t ldc, int unary, T* D,
                                  int64_t ldd) {
  const int64_t total = m * n;
  for (int64_t e = cuda::global_thread(); e < total; e += cuda::grid_threads()) {
    const int64_t i = e / n, j = e - i * n;
    D[i * ldd + j] = unary_math::forward(static_cast<UnaryFn>(unary), C[i * ldc + j]);
  }
}

// Products at least this large (m*n*k) go to cuBLASLt; smaller ones to the tiled kernel, whose
// launch has no heuristic query.
constexpr double kLtMinWork = 128.0 * 128.0 * 128.0;
constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;  // cuBLASLt's recommendation for Hopper

// One handle per device and one workspace per (device, stream), created on first use and kept for
// the life of the process. The workspace is per stream so that products queued on two streams of
// one device never share scratch.
struct LtState {
  std::mutex mu;
  std::map<int, cublasLtHandle_t> handles;
  std::map<std::pair<int, cudaStream_t>, void*> workspaces;
};
LtState& lt_state() {
  static LtState* s = new LtState;  // leaked on purpose: no handle destruction after the runtime shut down
  return *s;
}

// The handle and workspace for the current device and stream, or false (then use the tiled kernel).
bool lt_context(cudaStream_t stream, cublasLtHandle_t* handle, void** workspace) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  LtState& s = lt_state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto h = s.handles.find(dev);
  if (h == s.handles.end()) {
    cublasLtHandle_t created = nullptr;
    if (cublasLtCreate(&created) != CUBLAS_STATUS_SUCCESS) created = nullptr;
    h = s.handles.emplace(dev, created).first;  // a failure is remembered: no retry per call
  }
  if (!h->second) return false;
  const auto key = std::make_pair(dev, stream);
  auto w = s.workspaces.find(key);
  if (w == s.workspaces.end()) {
    void* p = nullptr;
    if (cudaMalloc(&p, kLtWorkspaceBytes) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the (non-sticky) allocation error: run without workspace
      p = nullptr;
    }
    w = s.workspaces.emplace(key, p).first;
  }
  *handle = h->second;
  *workspace = w->second;
  return true;
}

uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && (a % align) != 0) align /= 2;
  return align;
}

#endif  // PG_GEMM_CUBLASLT

// The operand mapping of the cuBLASLt path, kept outside its #if so that the emulator tests can
// check it against the reference.
//
// A logical column-major R x C operand with element (r, c) at r*sr + c*sc, as cuBLASLt sees it:
// a stored column-major matrix (rows x cols, leading dimension ld), transposed or not to give R x C.
struct LtOperand {
  bool trans;
  uint64_t rows, cols;
  int64_t ld;
};
[[maybe_unused]] bool lt_operand(int64_t R, int64_t C, int64_t sr, int64_t sc, LtOperand* o) {
  const int64_t r1 = R > 1 ? R : 1, c1 = C > 1 ? C : 1;
  if (sr == 1 && (C == 1 || sc >= r1)) {
    *o = {false, uint64_t(R), uint64_t(C), C == 1 ? r1 : sc};
    return true;
  }
  if (sc == 1 && (R == 1 || sr >= c1)) {
    *o = {true, uint64_t(C), uint64_t(R), R == 1 ? c1 : sr};
    return true;
  }
  return false;
}

// Row-major C (m x n, ldc) is column-major C' = C^T (n x m, ldc), and C' = op(B)^T op(A)^T, so
// cuBLASLt's "A" is op(B)^T (n x k, element (j, p) at j*csb + p*rsb), its "B" is op(A)^T (k x m,
// element (p, i) at p*csa + i*rsa), and its C and D are C' (never transposed). False when a stride
// pair is not one cuBLASLt can express (neither stride 1, or a leading dimension too small).
[[maybe_unused]] bool lt_plan(int64_t m, int64_t n, int64_t k, int64_t rsa, int64_t csa, int64_t rsb,
                              int64_t csb, int64_t ldc, LtOperand* la, LtOperand* lb, LtOperand* lc) {
  return lt_operand(n, k, csb, rsb, la) && lt_operand(k, m, csa, rsa, lb) && lt_operand(n, m, 1, ldc, lc) &&
         !lc->trans;
}

#if defined(PG_GEMM_CUBLASLT)

template <typename T> struct LtTypes;
template <> struct LtTypes<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_32F;  // no TF32: full fp32 products
};
template <> struct LtTypes<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_64F;
};

// C = alpha*op(A)op(B) + beta*C (+ bias, fused as CUBLASLT_EPILOGUE_BIAS) by cuBLASLt. Returns
// false, having queued nothing, when cuBLASLt cannot take the problem (strides, no algorithm).
// Operands as lt_plan maps them. The bias is indexed by j, a row of C': exactly cuBLASLt's bias (one value per row of D, broadcast over columns). Only the bias is fused:
// cuBLASLt's RELU is max(x, 0), which maps NaN to 0 (the reference keeps NaN), and its GELU is the
// tanh approximation (ours is exact erf), so activations run as a separate elementwise kernel.
// With beta == 0, cuBLASLt does not read C (BLAS semantics).
template <typename T>
bool gemm_cublaslt(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                   const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc, const T* bias) {
  LtOperand oa, ob, oc;
  if (!lt_plan(m, n, k, rsa, csa, rsb, csb, ldc, &oa, &ob, &oc)) return false;

  cudaStream_t stream = cuda::current_stream();
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  if (!lt_context(stream, &handle, &workspace)) return false;
  const uint64_t workspace_bytes = workspace ? kLtWorkspaceBytes : 0;

  constexpr cudaDataType_t dt = LtTypes<T>::data;
  cublasLtMatmulDescOpaque_t op_desc;
  cublasLtMatrixLayoutOpaque_t a_desc, b_desc, c_desc;
  cublasLtMatmulPreferenceOpaque_t pref;
  if (cublasLtMatmulDescInit(&op_desc, LtTypes<T>::compute, dt) != CUBLAS_STATUS_SUCCESS) return false;
  const int32_t ta = oa.trans ? CUBLAS_OP_T : CUBLAS_OP_N, tb = ob.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (cublasLtMatmulDescSetAttribute(&op_desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(&op_desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)) != CUBLAS_STATUS_SUCCESS)
    return false;
  if (bias) {
    const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    if (cublasLtMatmulDescSetAttribute(&op_desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)) !=
            CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(&op_desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) !=
            CUBLAS_STATUS_SUCCESS)
      return false;
  }
  if (cublasLtMatrixLayoutInit(&a_desc, dt, oa.rows, oa.cols, oa.ld) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutInit(&b_desc, dt, ob.rows, ob.cols, ob.ld) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutInit(&c_desc, dt, oc.rows, oc.cols, oc.ld) != CUBLAS_STATUS_SUCCESS)
    return false;

  // The heuristic assumes 256-byte aligned buffers unless told otherwise: views may start anywhere.
  const uint32_t align_a = alignment_of(B), align_b = alignment_of(A), align_c = alignment_of(C);
  if (cublasLtMatmulPreferenceInit(&pref) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                           sizeof(workspace_bytes)) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                           sizeof(align_a)) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                           sizeof(align_b)) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                           sizeof(align_c)) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                           sizeof(align_c)) != CUBLAS_STATUS_SUCCESS)
    return false;

  // cuBLASLt caches heuristic answers itself (CUBLASLT_HEURISTICS_CACHE_CAPACITY), so repeated
  // shapes cost little here. The same shape always gets the same algorithm: deterministic.
  cublasLtMatmulHeuristicResult_t heuristic;
  int found = 0;
  if (cublasLtMatmulAlgoGetHeuristic(handle, &op_desc, &a_desc, &b_desc, &c_desc, &c_desc, &pref, 1, &heuristic,
                                     &found) != CUBLAS_STATUS_SUCCESS ||
      found < 1 || heuristic.state != CUBLAS_STATUS_SUCCESS)
    return false;

  const cublasStatus_t st = cublasLtMatmul(handle, &op_desc, &alpha, B, &a_desc, A, &b_desc, &beta, C, &c_desc, C,
                                           &c_desc, &heuristic.algo, workspace, workspace_bytes, stream);
  if (st != CUBLAS_STATUS_SUCCESS) {
    cuda::note_error("cublasLtMatmul failed");
    return true;  // may have been queued in part: do not run the product a second time
  }
  return true;
}

#endif  // PG_GEMM_CUBLASLT

// D[i*ldd + j] = C[i*ldc + j] * scale[(i % period)*lds + j]: the scale epilogue (gemm.h), a pass
// after the product (tangent products are the forward-mode passes, not the hot path on the GPU).
template <typename T>
__global__ void scale_epilogue_kernel(int64_t m, int64_t n, const T* C, int64_t ldc, const T* scale, int64_t lds,
                                      int64_t period, T* D, int64_t ldd) {
  const int64_t total = m * n;
  for (int64_t e = cuda::global_thread(); e < total; e += cuda::grid_threads()) {
    const int64_t i = e / n, j = e - i * n;
    D[i * ldd + j] = C[i * ldc + j] * scale[i % period * lds + j];
  }
}

// ------------------------------------------------------------------------------------------------
// Table entries

template <typename T>
void gemm_ex_cuda(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
                  const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc,
                  const GemmEpilogue<T>& epi) {
  if (m <= 0) return;
  if (k < 0) k = 0;
  const int pro = epi.has_prologue() ? static_cast<int>(epi.a_derivative) : -1;  // dz = A f'(a_x) on load
  if (n > 0) {
    const int unary = epi.unary != UnaryFn::Count ? static_cast<int>(epi.unary) : -1;
    bool done = false;
#if defined(PG_GEMM_CUBLASLT)
    if (k > 0 && !epi.has_prologue() && double(m) * double(n) * double(k) >= kLtMinWork &&
        gemm_cublaslt(m, n, k, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc, epi.bias)) {
      if (unary >= 0) {
        T* D = epi.D ? epi.D : C;
        const int64_t ldd = epi.D ? epi.ldd : ldc;
        launch(dim3(cuda::grid_for(m * n, 256)), dim3(256), &activation_kernel<T>, m, n,
               static_cast<const T*>(C), ldc, unary, D, ldd);
      }
      done = true;
    }
#endif
    if (!done)
      gemm_tiled(m, n, k, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc, epi.bias, unary, epi.D, epi.ldd, pro, epi.a_x);
    if (epi.scale) {
      T* D = epi.D ? epi.D : C;
      const int64_t ldd = epi.D ? epi.ldd : ldc;
      launch(dim3(cuda::grid_for(m * n, 256)), dim3(256), &scale_epilogue_kernel<T>, m, n, static_cast<const T*>(C),
             ldc, epi.scale, epi.lds, epi.scale_period, D, ldd);
    }
  }
  // Like the reference, row sums are produced for every row even when n == 0 (they depend on A only).
  if (epi.row_sums) row_sums(m, k, A, rsa, csa, pro, epi.a_x, epi.row_sums);
}

template <typename T>
void gemm_cuda(int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa, int64_t csa,
               const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc) {
  gemm_ex_cuda(m, n, k, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc, GemmEpilogue<T>{});
}

// The GPU path never pre-packs B: with 0 bytes the engine calls gemm_ex on B as it is.
template <typename T>
size_t packed_b_bytes_cuda(int64_t, int64_t) {
  return 0;
}

template <typename T>
void pack_b_cuda(int64_t, int64_t, const T*, int64_t, int64_t, void*) {}

template <typename T>
void gemm_packed_b_cuda(int64_t, int64_t, int64_t, T, const T*, int64_t, int64_t, const void*, T, T*, int64_t,
                        const GemmEpilogue<T>&) {
  cuda::note_error("gemm_packed_b called on the CUDA GEMM, which never packs B (packed_b_bytes is 0)");
}

// Small products (attention's per example and head) in one launch of the tiled kernel, the batch
// on grid.z; products large enough for cuBLASLt one after another through gemm (each its bits).
template <typename T>
void gemm_batched_cuda(const GemmBatch& bt, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t rsa,
                       int64_t csa, const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc) {
  if (bt.count <= 0 || m <= 0 || n <= 0) return;
  bool each = k <= 0;  // (C = beta C: gemm's own path)
#if defined(PG_GEMM_CUBLASLT)
  each = each || double(m) * double(n) * double(k) >= kLtMinWork;
#endif
  if (each) {
    for (int64_t i = 0; i < bt.count; ++i)
      gemm_cuda(m, n, k, alpha, A + bt.a(i), rsa, csa, B + bt.b(i), rsb, csb, beta, C + bt.c(i), ldc);
    return;
  }
  gemm_tiled(m, n, k, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc, static_cast<const T*>(nullptr), -1,
             static_cast<T*>(nullptr), 0, -1, static_cast<const T*>(nullptr), bt);
}

template <typename T>
constexpr GemmKernels<T> table() {
  return {&gemm_cuda<T>, &gemm_ex_cuda<T>, &packed_b_bytes_cuda<T>, &pack_b_cuda<T>, &gemm_packed_b_cuda<T>,
          &gemm_batched_cuda<T>};
}

}  // namespace

const GemmKernels<float> gemm_cuda_f32 = table<float>();
const GemmKernels<double> gemm_cuda_f64 = table<double>();

}  // namespace portgrad::kernels
