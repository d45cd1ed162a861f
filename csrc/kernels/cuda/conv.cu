/// @brief CUDA N-D grouped convolution (1 to 3 spatial dimensions, described as 3-D): forward,
/// backward-data, backward-weights and the bias add and gradient, with the semantics of
/// kernels/conv.h and its reference twin ref/conv_ref.cc.
///
/// The three convolution products are implicit GEMMs, one per group, with no im2col buffer (and
/// no workspace): C[m, n] = sum_k A[m, k] B[k, n], where the A and B tiles are gathered straight
/// from x / W / dy, padding, stride and dilation resolved in the gather (out-of-range taps read 0):
///
///   forward:          M = c_out/g (o),  N = batch*out_sp (b, p), K = c_in/g * k_sp (i, t);
///                     A = W,  B = x at p*stride + t*dilation - pad.
///   backward_data:    M = c_in/g (i),   N = batch*in_sp (b, q),  K = c_out/g * k_sp (o, t);
///                     A = W (transposed per group), B = dy at p = (q + pad - t*dilation)/stride
///                     where that is an integer in range.
///   backward_weights: M = c_out/g (o),  N = c_in/g * k_sp (i, t), K = batch*out_sp (b, p);
///                     A = dy, B = x at p*stride + t*dilation - pad.
///
/// A block computes a BM x BN tile of C (64 or 16 per dimension: 16 for thin dimensions and when
/// 64 x 64 tiles would give too few blocks) with 256 threads (16 x 16, each a TM x TN sub-tile
/// strided by 16 so loads, shared reads and stores are coalesced), walking K in steps of 16 through shared
/// memory. The per-k decomposition of a K step is computed once into shared memory; each thread's
/// per-row and per-column decompositions are computed once per tile. Every output is one thread's
/// sum in a fixed k order: deterministic, no atomics (backward_weights sums over batch*out_sp inside
/// that loop). Accumulation is in T (float sums for float data, as GPU convolutions do).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

namespace portgrad::kernels {
namespace {

using cuda::block_sum;
using cuda::grid_for;
using cuda::launch;

constexpr int kGemmThreads = 256;  // 16 x 16
constexpr int kBK = 16;            // K step
constexpr unsigned kMaxGridYZ = 65535;

// Spatial position of flat index f in an extent n (d, h, w order).
struct Pos3 {
  int64_t v[3];
};
PG_DEVICE Pos3 unflat(int64_t f, const int64_t n[3]) {
  Pos3 p;
  p.v[2] = f % n[2];
  f /= n[2];
  p.v[1] = f % n[1];
  p.v[0] = f / n[1];
  return p;
}

// The geometry every policy needs, copied by value into the kernel's arguments.
struct Geom {
  ConvShape s;
  int64_t in_sp, out_sp, k_sp, cig, cog;
};

inline Geom make_geom(const ConvShape& s) {
  Geom g;
  g.s = s;
  g.in_sp = s.in[0] * s.in[1] * s.in[2];
  g.out_sp = s.out[0] * s.out[1] * s.out[2];
  g.k_sp = s.k[0] * s.k[1] * s.k[2];
  g.cig = s.c_in / s.groups;
  g.cog = s.c_out / s.groups;
  return g;
}

// x (plane-relative) offset of position h + e, or -1 when it lies in the padding.
PG_DEVICE int64_t in_offset(const ConvShape& s, const int64_t h[3], const int64_t e[3]) {
  const int64_t q0 = h[0] + e[0], q1 = h[1] + e[1], q2 = h[2] + e[2];
  if (q0 < 0 || q0 >= s.in[0] || q1 < 0 || q1 >= s.in[1] || q2 < 0 || q2 >= s.in[2]) return -1;
  return (q0 * s.in[1] + q1) * s.in[2] + q2;
}

// ---- forward: A = W (o, K), B = x gathered (K, (b, p)).
struct FwdPolicy {
  Geom g;
  struct KInfo {
    int64_t k, coff, e[3];  // k, i*in_sp, t*dilation
  };
  struct Row {
    int64_t off;  // o*K
  };
  struct Col {
    int64_t base, h[3];  // (b*c_in + grp*cig)*in_sp, p*stride - pad
  };
  PG_HOST_DEVICE int64_t M() const { return g.cog; }
  PG_HOST_DEVICE int64_t N() const { return g.s.batch * g.out_sp; }
  PG_HOST_DEVICE int64_t K() const { return g.cig * g.k_sp; }
  PG_DEVICE KInfo kinfo(int64_t, int64_t k) const {
    KInfo r;
    r.k = k;
    const int64_t i = k / g.k_sp;
    r.coff = i * g.in_sp;
    const Pos3 t = unflat(k % g.k_sp, g.s.k);
    for (int d = 0; d < 3; ++d) r.e[d] = t.v[d] * g.s.dilation[d];
    return r;
  }
  PG_DEVICE Row row(int64_t grp, int64_t m) const { return Row{(grp * g.cog + m) * K()}; }
  PG_DEVICE Col col(int64_t grp, int64_t n) const {
    Col c;
    const int64_t b = n / g.out_sp;
    c.base = (b * g.s.c_in + grp * g.cig) * g.in_sp;
    const Pos3 p = unflat(n % g.out_sp, g.s.out);
    for (int d = 0; d < 3; ++d) c.h[d] = p.v[d] * g.s.stride[d] - g.s.pad[d];
    return c;
  }
  template <typename T>
  PG_DEVICE T a(const T* w, const Row& r, const KInfo& k) const {
    return w[r.off + k.k];
  }
  template <typename T>
  PG_DEVICE T b(const T* x, const KInfo& k, const Col& c) const {
    const int64_t q = in_offset(g.s, c.h, k.e);
    return q < 0 ? T(0) : x[c.base + k.coff + q];
  }
  template <typename T>
  PG_DEVICE void store(T* y, int64_t grp, int64_t m, int64_t n, T v) const {
    const int64_t b = n / g.out_sp, pf = n % g.out_sp;
    y[(b * g.s.c_out + grp * g.cog + m) * g.out_sp + pf] = v;
  }
};

// ---- backward_data: A = W viewed as (i, (o, t)) per group, B = dy gathered ((o, t), (b, q)).
struct BwdDataPolicy {
  Geom g;
  struct KInfo {
    int64_t woff, dyoff, e[3];  // ((grp*cog + o)*cig)*k_sp + t, (grp*cog + o)*out_sp, t*dilation
  };
  struct Row {
    int64_t off;  // i*k_sp
  };
  struct Col {
    int64_t base, h[3];  // b*c_out*out_sp, q + pad
  };
  PG_HOST_DEVICE int64_t M() const { return g.cig; }
  PG_HOST_DEVICE int64_t N() const { return g.s.batch * g.in_sp; }
  PG_HOST_DEVICE int64_t K() const { return g.cog * g.k_sp; }
  PG_DEVICE KInfo kinfo(int64_t grp, int64_t k) const {
    KInfo r;
    const int64_t o = grp * g.cog + k / g.k_sp, tf = k % g.k_sp;
    r.woff = o * g.cig * g.k_sp + tf;
    r.dyoff = o * g.out_sp;
    const Pos3 t = unflat(tf, g.s.k);
    for (int d = 0; d < 3; ++d) r.e[d] = t.v[d] * g.s.dilation[d];
    return r;
  }
  PG_DEVICE Row row(int64_t, int64_t m) const { return Row{m * g.k_sp}; }
  PG_DEVICE Col col(int64_t, int64_t n) const {
    Col c;
    const int64_t b = n / g.in_sp;
    c.base = b * g.s.c_out * g.out_sp;
    const Pos3 q = unflat(n % g.in_sp, g.s.in);
    for (int d = 0; d < 3; ++d) c.h[d] = q.v[d] + g.s.pad[d];
    return c;
  }
  template <typename T>
  PG_DEVICE T a(const T* w, const Row& r, const KInfo& k) const {
    return w[k.woff + r.off];
  }
  template <typename T>
  PG_DEVICE T b(const T* dy, const KInfo& k, const Col& c) const {
    int64_t pf = 0;
    for (int d = 0; d < 3; ++d) {
      int64_t num = c.h[d] - k.e[d];
      if (num < 0) return T(0);
      const int64_t st = g.s.stride[d];
      if (st != 1) {
        if (num % st != 0) return T(0);
        num /= st;
      }
      if (num >= g.s.out[d]) return T(0);
      pf = pf * g.s.out[d] + num;
    }
    return dy[c.base + k.dyoff + pf];
  }
  template <typename T>
  PG_DEVICE void store(T* dx, int64_t grp, int64_t m, int64_t n, T v) const {
    const int64_t b = n / g.in_sp, qf = n % g.in_sp;
    dx[(b * g.s.c_in + grp * g.cig + m) * g.in_sp + qf] = v;
  }
};

// ---- backward_weights: A = dy (o, (b, p)), B = x gathered ((b, p), (i, t)).
struct BwdWeightsPolicy {
  Geom g;
  struct KInfo {
    int64_t dyoff, xoff, h[3];  // b*c_out*out_sp + p, b*c_in*in_sp, p*stride - pad
  };
  struct Row {
    int64_t off;  // (grp*cog + o)*out_sp
  };
  struct Col {
    int64_t off, e[3];  // (grp*cig + i)*in_sp, t*dilation
  };
  PG_HOST_DEVICE int64_t M() const { return g.cog; }
  PG_HOST_DEVICE int64_t N() const { return g.cig * g.k_sp; }
  PG_HOST_DEVICE int64_t K() const { return g.s.batch * g.out_sp; }
  PG_DEVICE KInfo kinfo(int64_t, int64_t k) const {
    KInfo r;
    const int64_t b = k / g.out_sp, pf = k % g.out_sp;
    r.dyoff = b * g.s.c_out * g.out_sp + pf;
    r.xoff = b * g.s.c_in * g.in_sp;
    const Pos3 p = unflat(pf, g.s.out);
    for (int d = 0; d < 3; ++d) r.h[d] = p.v[d] * g.s.stride[d] - g.s.pad[d];
    return r;
  }
  PG_DEVICE Row row(int64_t grp, int64_t m) const { return Row{(grp * g.cog + m) * g.out_sp}; }
  PG_DEVICE Col col(int64_t grp, int64_t n) const {
    Col c;
    c.off = (grp * g.cig + n / g.k_sp) * g.in_sp;
    const Pos3 t = unflat(n % g.k_sp, g.s.k);
    for (int d = 0; d < 3; ++d) c.e[d] = t.v[d] * g.s.dilation[d];
    return c;
  }
  template <typename T>
  PG_DEVICE T a(const T* dy, const Row& r, const KInfo& k) const {
    return dy[k.dyoff + r.off];
  }
  template <typename T>
  PG_DEVICE T b(const T* x, const KInfo& k, const Col& c) const {
    const int64_t q = in_offset(g.s, k.h, c.e);
    return q < 0 ? T(0) : x[k.xoff + c.off + q];
  }
  template <typename T>
  PG_DEVICE void store(T* dw, int64_t grp, int64_t m, int64_t n, T v) const {
    dw[(grp * g.cog + m) * N() + n] = v;
  }
};

// C (M x N per group) = A (M x K) B (K x N), A and B gathered by the policy P. Grid: x over N
// tiles, y over M tiles, z over groups (each loops when there are more than the grid holds).
template <typename T, class P, int BM, int BN>
__global__ void __launch_bounds__(kGemmThreads) conv_gemm_kernel(P pol, const T* A, const T* B, T* C) {
  constexpr int TM = BM / 16, TN = BN / 16;
  constexpr int kARows = kGemmThreads / kBK;  // A rows loaded per pass (16)
  constexpr int kBRows = kGemmThreads / BN;   // B rows (k) loaded per pass
  static_assert(BM % 16 == 0 && BN % 16 == 0 && kBK % kBRows == 0, "tile shape");
  __shared__ T As[kBK][BM + 1];  // As[k][m] (+1: conflict-free transposed stores)
  __shared__ T Bs[kBK][BN];      // Bs[k][n]
  __shared__ typename P::KInfo ks[kBK];
  __shared__ bool kvalid[kBK];

  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t M = pol.M(), N = pol.N(), K = pol.K(), groups = pol.g.s.groups;
  const int64_t m_tiles = (M + BM - 1) / BM, n_tiles = (N + BN - 1) / BN;
  // This thread's loads: A rows tid/16 + 16*j at k = tid%16; B column tid%BN at k rows tid/BN + kBRows*j.
  const int a_k = tid % kBK, a_m = tid / kBK;
  const int b_n = tid % BN, b_k = tid / BN;

  for (int64_t grp = blockIdx.z; grp < groups; grp += gridDim.z)
    for (int64_t mt = blockIdx.y; mt < m_tiles; mt += gridDim.y)
      for (int64_t nt = blockIdx.x; nt < n_tiles; nt += gridDim.x) {
        const int64_t m0 = mt * BM, n0 = nt * BN;
        typename P::Row rows[TM] = {};
        bool row_ok[TM];
        for (int j = 0; j < TM; ++j) {
          const int64_t m = m0 + a_m + kARows * j;
          row_ok[j] = m < M;
          if (row_ok[j]) rows[j] = pol.row(grp, m);
        }
        const bool col_ok = n0 + b_n < N;
        typename P::Col col = {};
        if (col_ok) col = pol.col(grp, n0 + b_n);

        T acc[TM][TN];
        for (int r = 0; r < TM; ++r)
          for (int c = 0; c < TN; ++c) acc[r][c] = T(0);

        if (tid < kBK) {
          kvalid[tid] = tid < K;
          if (tid < K) ks[tid] = pol.kinfo(grp, tid);
        }
        __syncthreads();
        for (int64_t k0 = 0; k0 < K; k0 += kBK) {
          // Gather the A and B tiles of this K step.
          {
            const bool kv = kvalid[a_k];
            for (int j = 0; j < TM; ++j)
              As[a_k][a_m + kARows * j] = (kv && row_ok[j]) ? pol.a(A, rows[j], ks[a_k]) : T(0);
          }
          for (int j = 0; j < kBK / kBRows; ++j) {
            const int kk = b_k + kBRows * j;
            Bs[kk][b_n] = (col_ok && kvalid[kk]) ? pol.b(B, ks[kk], col) : T(0);
          }
          __syncthreads();
          for (int kk = 0; kk < kBK; ++kk) {
            T av[TM], bv[TN];
            for (int r = 0; r < TM; ++r) av[r] = As[kk][ty + 16 * r];
            for (int c = 0; c < TN; ++c) bv[c] = Bs[kk][tx + 16 * c];
            for (int r = 0; r < TM; ++r)
              for (int c = 0; c < TN; ++c) acc[r][c] += av[r] * bv[c];
          }
          // Nobody reads ks during the product: decompose the next K step now.
          if (tid < kBK) {
            const int64_t k = k0 + kBK + tid;
            kvalid[tid] = k < K;
            if (k < K) ks[tid] = pol.kinfo(grp, k);
          }
          __syncthreads();
        }
        for (int r = 0; r < TM; ++r) {
          const int64_t m = m0 + ty + 16 * r;
          if (m >= M) continue;
          for (int c = 0; c < TN; ++c) {
            const int64_t n = n0 + tx + 16 * c;
            if (n < N) pol.store(C, grp, m, n, acc[r][c]);
          }
        }
      }
}

template <typename T, class P, int BM, int BN>
void gemm_launch(const P& pol, const T* A, const T* B, T* C) {
  const int64_t m_tiles = (pol.M() + BM - 1) / BM, n_tiles = (pol.N() + BN - 1) / BN;
  const int64_t groups = pol.g.s.groups;
  const dim3 grid(static_cast<unsigned>(n_tiles < 2147483647 ? n_tiles : 2147483647),
                  static_cast<unsigned>(m_tiles < kMaxGridYZ ? m_tiles : kMaxGridYZ),
                  static_cast<unsigned>(groups < kMaxGridYZ ? groups : kMaxGridYZ));
  launch(grid, dim3(kGemmThreads), &conv_gemm_kernel<T, P, BM, BN>, pol, A, B, C);
}

// With fewer 64 x 64 tiles than this (over all groups), the GPU would sit mostly idle (small
// late layers, backward_weights whose K is the long dimension): 16 x 16 tiles give 16 times the
// blocks, at a lower arithmetic intensity.
// (Overridable at compile time so the tests can run every tile shape on small problems.)
#ifndef PG_CUDA_CONV_MIN_BLOCKS
#define PG_CUDA_CONV_MIN_BLOCKS 256
#endif
constexpr int64_t kMinBlocks = PG_CUDA_CONV_MIN_BLOCKS;

// Tiles of 16 along a dimension of at most 16 (depthwise and other thin problems) or when 64-wide
// tiles give too few blocks, else 64.
template <typename T, class P>
void gemm(const P& pol, const T* A, const T* B, T* C) {
  const int64_t M = pol.M(), N = pol.N(), groups = pol.g.s.groups;
  if (M <= 0 || N <= 0 || groups <= 0) return;
  // K == 0 is no special case: the kernel stores zeros.
  const bool few = ((M + 63) / 64) * ((N + 63) / 64) * groups < kMinBlocks;
  const bool small_m = few || M <= 16, small_n = few || N <= 16;
  if (small_m) {
    if (small_n) gemm_launch<T, P, 16, 16>(pol, A, B, C);
    else gemm_launch<T, P, 16, 64>(pol, A, B, C);
  } else {
    if (small_n) gemm_launch<T, P, 64, 16>(pol, A, B, C);
    else gemm_launch<T, P, 64, 64>(pol, A, B, C);
  }
}

template <typename T>
void forward(const ConvShape& s, const T* x, const T* w, T* y, void*) {
  gemm(FwdPolicy{make_geom(s)}, w, x, y);
}

template <typename T>
void backward_data(const ConvShape& s, const T* dy, const T* w, T* dx, void*) {
  gemm(BwdDataPolicy{make_geom(s)}, w, dy, dx);
}

template <typename T>
void backward_weights(const ConvShape& s, const T* x, const T* dy, T* dw, void*) {
  gemm(BwdWeightsPolicy{make_geom(s)}, dy, x, dw);
}

// ---- bias

constexpr int kBiasThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kBiasThreads)
    bias_forward_kernel(int64_t n, int64_t channels, int64_t spatial, const T* bias, T* y) {
  for (int64_t i = cuda::global_thread(); i < n; i += cuda::grid_threads())
    y[i] = static_cast<T>(static_cast<double>(y[i]) + static_cast<double>(bias[(i / spatial) % channels]));
}

template <typename T>
void bias_forward(int64_t batch, int64_t channels, int64_t spatial, const T* bias, T* y) {
  const int64_t n = batch * channels * spatial;
  if (batch <= 0 || channels <= 0 || spatial <= 0) return;
  launch(dim3(grid_for(n, kBiasThreads)), dim3(kBiasThreads), &bias_forward_kernel<T>, n, channels, spatial, bias,
         y);
}

// One block per channel; each thread sums a fixed strided subset of the channel's batch*spatial
// values (in double), then block_sum adds the partial sums in a fixed tree.
template <typename T>
__global__ void __launch_bounds__(kBiasThreads)
    bias_backward_kernel(int64_t batch, int64_t channels, int64_t spatial, const T* dy, T* db) {
  __shared__ double scratch[kBiasThreads];
  const int64_t m = batch * spatial;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    double acc = 0.0;
    if (spatial >= kBiasThreads) {
      for (int64_t b = 0; b < batch; ++b) {
        const T* r = dy + (b * channels + c) * spatial;
        for (int64_t p = threadIdx.x; p < spatial; p += kBiasThreads) acc += static_cast<double>(r[p]);
      }
    } else {
      for (int64_t i = threadIdx.x; i < m; i += kBiasThreads)
        acc += static_cast<double>(dy[((i / spatial) * channels + c) * spatial + i % spatial]);
    }
    acc = block_sum<kBiasThreads>(acc, scratch);
    if (threadIdx.x == 0) db[c] = static_cast<T>(acc);
  }
}

template <typename T>
void bias_backward(int64_t batch, int64_t channels, int64_t spatial, const T* dy, T* db) {
  if (channels <= 0) return;
  const unsigned blocks = static_cast<unsigned>(channels < kMaxGridYZ ? channels : kMaxGridYZ);
  if (spatial <= 0) batch = 0;  // db = 0 (and no division by spatial)
  launch(dim3(blocks), dim3(kBiasThreads), &bias_backward_kernel<T>, batch, channels, spatial, dy, db);
}

size_t no_workspace(const ConvShape&) { return 0; }

template <typename T>
constexpr ConvKernels<T> table() {
  return {&no_workspace,        &forward<T>,         &backward_data<T>, &backward_weights<T>,
          &bias_forward<T>,     &bias_backward<T>};
}

}  // namespace

const ConvKernels<float> conv_cuda_f32 = table<float>();
const ConvKernels<double> conv_cuda_f64 = table<double>();

}  // namespace portgrad::kernels
