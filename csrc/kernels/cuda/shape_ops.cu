/// @brief CUDA tensor-op kernels (strided copy, broadcast binary operations forward and backward,
/// reductions over axes and their backward) with the semantics of kernels/ref/shape_ops_ref.cc.
///
/// The host launchers copy the (host) dims/strides arrays by value into a kernel-argument struct,
/// after coalescing them (size-1 dims dropped, adjacent dims merged where every operand allows; the
/// row-major order of the elements is unchanged). Each element decomposes its flat index into a
/// multi-index by div/mod over the dims, in 32-bit arithmetic when the element count allows it.
///
/// Arithmetic is in double for both element types, rounded once to T, as in the reference: the
/// copies, Max/Min and the +, -, *, / of float32 are then bit-identical to it, the rest within an
/// ulp or two of the device's pow/log.
///
/// Reductions: one output per thread, reduced element by element in row-major order (the order of
/// the reference, so float64 Sum is bit-identical to it), or, for long reductions over a contiguous
/// axis or few outputs, one output per block: thread t takes r = t, t + B, t + 2B, ... in order,
/// then a fixed shared-memory tree combines the threads. Max/Min keep the first r of the maximum in
/// both schemes (ties go to the smaller r), so they match the reference exactly. Every result is a
/// function of the geometry alone: deterministic run to run.
#include "kernels/binary_second.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

namespace portgrad::kernels {
namespace {

using cuda::global_thread;
using cuda::grid_for;
using cuda::grid_threads;
using cuda::launch;

constexpr unsigned kThreads = 256;     // threads per block of every launch here
constexpr unsigned kBlockThreads = 256;  // threads of a block that reduces one output (power of two)

// ------------------------------------------------------------------------------------- geometry

// A view of rank <= kMaxShapeRank with the strides of N operands, passed by value to a kernel.
template <int N>
struct Geo {
  int rank;
  int64_t dims[kMaxShapeRank];
  int64_t strides[N][kMaxShapeRank];
};

// Fills g with the coalesced geometry of (rank, dims, st) and returns the element count (1 for
// rank 0; 0 when a dim is empty, g then rank 0). Host code: dims and st are host memory.
template <int N>
int64_t make_geo(int rank, const int64_t* dims, const int64_t* const (&st)[N], Geo<N>& g) {
  g = Geo<N>{};
  int64_t count = 1;
  for (int k = 0; k < rank; ++k) {
    if (dims[k] <= 0) return 0;
    count *= dims[k];
  }
  int r = 0;
  for (int k = 0; k < rank; ++k) {
    if (dims[k] == 1) continue;
    bool merge = r > 0;
    for (int n = 0; n < N && merge; ++n) merge = g.strides[n][r - 1] == st[n][k] * dims[k];
    if (merge) {
      g.dims[r - 1] *= dims[k];
      for (int n = 0; n < N; ++n) g.strides[n][r - 1] = st[n][k];
      continue;
    }
    g.dims[r] = dims[k];
    for (int n = 0; n < N; ++n) g.strides[n][r] = st[n][k];
    ++r;
  }
  g.rank = r;
  return count;
}

// off[n] = offset under operand n's strides of the multi-index whose row-major flat index over
// the first `rank` dims of g is i. I: the (unsigned) type of the division.
template <typename I, int N>
PG_DEVICE void offsets(I i, const Geo<N>& g, int rank, int64_t (&off)[N]) {
  for (int n = 0; n < N; ++n) off[n] = 0;
  for (int k = rank - 1; k >= 0; --k) {
    const I d = static_cast<I>(g.dims[k]);
    const I q = i / d;
    const int64_t r = static_cast<int64_t>(i - q * d);
    for (int n = 0; n < N; ++n) off[n] += r * g.strides[n][k];
    i = q;
  }
}

// Whether flat indices below n fit the 32-bit division.
bool small(int64_t n) { return n <= int64_t(0xffffffffu); }

// ------------------------------------------------------------------------------------- copy

template <typename T, typename I>
__global__ void __launch_bounds__(kThreads) copy_k(Geo<2> g, int64_t n, const T* src, T* dst) {
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    int64_t o[2];
    offsets<I>(static_cast<I>(e), g, g.rank, o);
    dst[o[1]] = src[o[0]];
  }
}

template <typename T>
void copy(int rank, const int64_t* dims, const T* src, const int64_t* ss, T* dst, const int64_t* ds) {
  const int64_t* const st[2] = {ss, ds};
  Geo<2> g;
  const int64_t n = make_geo<2>(rank, dims, st, g);
  if (n == 0) return;
  const dim3 grid(grid_for(n, kThreads)), block(kThreads);
  if (small(n)) launch(grid, block, &copy_k<T, uint32_t>, g, n, src, dst);
  else launch(grid, block, &copy_k<T, uint64_t>, g, n, src, dst);
}

// ------------------------------------------------------------------------------------- binary

constexpr int kPlus = int(BinaryFn::Plus), kSubtract = int(BinaryFn::Subtract), kTimes = int(BinaryFn::Times),
              kDivide = int(BinaryFn::Divide), kPower = int(BinaryFn::Power), kMax = int(BinaryFn::Max),
              kMin = int(BinaryFn::Min), kGreater = int(BinaryFn::Greater), kGreaterEqual = int(BinaryFn::GreaterEqual),
              kLess = int(BinaryFn::Less), kLessEqual = int(BinaryFn::LessEqual), kEqual = int(BinaryFn::Equal),
              kMod = int(BinaryFn::Mod), kFMod = int(BinaryFn::FMod);

// The remainder of a / b (returned) and the quotient (in q), truncated (C's fmod, exact) or floored
// (the remainder takes b's sign): the reference's rule.
PG_DEVICE double remainder_quotient(double a, double b, bool floored, double& q) {
  double r = cuda::math::fmod(a, b);
  q = cuda::math::rint((a - r) / b);
  if (floored && r != 0 && (r < 0) != (b < 0)) {
    r += b;
    q -= 1;
  }
  return r;
}

template <int F>
PG_DEVICE double apply(double a, double b) {
  using namespace cuda::math;
  if constexpr (F == kPlus) return a + b;
  else if constexpr (F == kSubtract) return a - b;
  else if constexpr (F == kTimes) return a * b;
  else if constexpr (F == kDivide) return a / b;
  else if constexpr (F == kPower) return cuda::math::pow(a, b);
  // NaN in either operand gives NaN (a + b), as PyTorch's maximum/minimum do.
  else if constexpr (F == kMax) return (is_nan(a) || is_nan(b)) ? a + b : a >= b ? a : b;
  else if constexpr (F == kMin) return (is_nan(a) || is_nan(b)) ? a + b : a <= b ? a : b;
  else if constexpr (F == kGreater) return a > b ? 1.0 : 0.0;
  else if constexpr (F == kGreaterEqual) return a >= b ? 1.0 : 0.0;
  else if constexpr (F == kLess) return a < b ? 1.0 : 0.0;
  else if constexpr (F == kLessEqual) return a <= b ? 1.0 : 0.0;
  else if constexpr (F == kMod || F == kFMod) {
    double q;
    return remainder_quotient(a, b, F == kMod, q);
  } else return a == b ? 1.0 : 0.0;  // Equal
}

// (df/da, df/db) at (a, b), with the conventions of the header.
template <int F>
PG_DEVICE void partials(double a, double b, double& da, double& db) {
  if constexpr (F == kPlus) { da = 1; db = 1; }
  else if constexpr (F == kSubtract) { da = 1; db = -1; }
  else if constexpr (F == kTimes) { da = b; db = a; }
  else if constexpr (F == kDivide) { da = 1 / b; db = -a / (b * b); }
  else if constexpr (F == kPower) {
    da = b == 0 ? 0.0 : b * cuda::math::pow(a, b - 1);
    db = (a == 0 && b >= 0) ? 0.0 : cuda::math::pow(a, b) * cuda::math::log(a);
  } else if constexpr (F == kMax) { da = a >= b ? 1 : 0; db = a >= b ? 0 : 1; }
  else if constexpr (F == kMin) { da = a <= b ? 1 : 0; db = a <= b ? 0 : 1; }
  else if constexpr (F == kMod || F == kFMod) {
    double q;
    remainder_quotient(a, b, F == kMod, q);
    da = 1;
    db = -q;
  } else { da = 0; db = 0; }  // the comparisons: steps
}

// Each thread reads its operands before it writes y[e], and no other thread touches a[e] or b[e]
// when they alias y (the header allows that only for an operand C-contiguous over dims).
template <typename T, int F, typename I>
__global__ void __launch_bounds__(kThreads)
    binary_forward_k(Geo<2> g, int64_t n, const T* a, const T* b, T* y) {
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    int64_t o[2];
    offsets<I>(static_cast<I>(e), g, g.rank, o);
    y[e] = static_cast<T>(apply<F>(static_cast<double>(a[o[0]]), static_cast<double>(b[o[1]])));
  }
}

template <typename T, int F, typename I>
__global__ void __launch_bounds__(kThreads)
    binary_backward_k(Geo<2> g, int64_t n, const T* a, const T* b, const T* dy, T* ga, T* gb) {
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    int64_t o[2];
    offsets<I>(static_cast<I>(e), g, g.rank, o);
    double da, db;
    partials<F>(static_cast<double>(a[o[0]]), static_cast<double>(b[o[1]]), da, db);
    const double d = static_cast<double>(dy[e]);
    if (ga) ga[e] = static_cast<T>(d * da);
    if (gb) gb[e] = static_cast<T>(d * db);
  }
}

template <typename T, int F>
void forward_as(const Geo<2>& g, int64_t n, const T* a, const T* b, T* y) {
  const dim3 grid(grid_for(n, kThreads)), block(kThreads);
  if (small(n)) launch(grid, block, &binary_forward_k<T, F, uint32_t>, g, n, a, b, y);
  else launch(grid, block, &binary_forward_k<T, F, uint64_t>, g, n, a, b, y);
}

template <typename T, int F>
void backward_as(const Geo<2>& g, int64_t n, const T* a, const T* b, const T* dy, T* ga, T* gb) {
  const dim3 grid(grid_for(n, kThreads)), block(kThreads);
  if (small(n)) launch(grid, block, &binary_backward_k<T, F, uint32_t>, g, n, a, b, dy, ga, gb);
  else launch(grid, block, &binary_backward_k<T, F, uint64_t>, g, n, a, b, dy, ga, gb);
}

template <typename T>
void binary_forward(BinaryFn f, int rank, const int64_t* dims, const T* a, const int64_t* as, const T* b,
                    const int64_t* bs, T* y) {
  const int64_t* const st[2] = {as, bs};
  Geo<2> g;
  const int64_t n = make_geo<2>(rank, dims, st, g);
  if (n == 0) return;
  switch (f) {
    case BinaryFn::Plus: return forward_as<T, kPlus>(g, n, a, b, y);
    case BinaryFn::Subtract: return forward_as<T, kSubtract>(g, n, a, b, y);
    case BinaryFn::Times: return forward_as<T, kTimes>(g, n, a, b, y);
    case BinaryFn::Divide: return forward_as<T, kDivide>(g, n, a, b, y);
    case BinaryFn::Power: return forward_as<T, kPower>(g, n, a, b, y);
    case BinaryFn::Max: return forward_as<T, kMax>(g, n, a, b, y);
    case BinaryFn::Min: return forward_as<T, kMin>(g, n, a, b, y);
    case BinaryFn::Greater: return forward_as<T, kGreater>(g, n, a, b, y);
    case BinaryFn::GreaterEqual: return forward_as<T, kGreaterEqual>(g, n, a, b, y);
    case BinaryFn::Less: return forward_as<T, kLess>(g, n, a, b, y);
    case BinaryFn::LessEqual: return forward_as<T, kLessEqual>(g, n, a, b, y);
    case BinaryFn::Equal: return forward_as<T, kEqual>(g, n, a, b, y);
    case BinaryFn::Mod: return forward_as<T, kMod>(g, n, a, b, y);
    case BinaryFn::FMod: return forward_as<T, kFMod>(g, n, a, b, y);
    default: cuda::note_error("shape binary_forward: unknown BinaryFn");
  }
}

template <typename T>
void binary_backward(BinaryFn f, int rank, const int64_t* dims, const T* a, const int64_t* as, const T* b,
                     const int64_t* bs, const T* dy, T* ga, T* gb) {
  if (!ga && !gb) return;
  const int64_t* const st[2] = {as, bs};
  Geo<2> g;
  const int64_t n = make_geo<2>(rank, dims, st, g);
  if (n == 0) return;
  switch (f) {
    case BinaryFn::Plus: return backward_as<T, kPlus>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Subtract: return backward_as<T, kSubtract>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Times: return backward_as<T, kTimes>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Divide: return backward_as<T, kDivide>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Power: return backward_as<T, kPower>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Max: return backward_as<T, kMax>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Min: return backward_as<T, kMin>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Greater: return backward_as<T, kGreater>(g, n, a, b, dy, ga, gb);
    case BinaryFn::GreaterEqual: return backward_as<T, kGreaterEqual>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Less: return backward_as<T, kLess>(g, n, a, b, dy, ga, gb);
    case BinaryFn::LessEqual: return backward_as<T, kLessEqual>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Equal: return backward_as<T, kEqual>(g, n, a, b, dy, ga, gb);
    case BinaryFn::Mod: return backward_as<T, kMod>(g, n, a, b, dy, ga, gb);
    case BinaryFn::FMod: return backward_as<T, kFMod>(g, n, a, b, dy, ga, gb);
    default: cuda::note_error("shape binary_backward: unknown BinaryFn");
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    binary_second_k(BinaryFn f, int64_t n, const T* a, const T* b, const T* dy, const T* ta, const T* tb, T* ga,
                    T* gb) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) binary_second_at(f, i, a, b, dy, ta, tb, ga, gb);
}

template <typename T>
void binary_second(BinaryFn f, int64_t n, const T* a, const T* b, const T* dy, const T* ta, const T* tb, T* ga,
                   T* gb) {
  if (n <= 0 || (!ga && !gb)) return;
  launch(dim3(grid_for(n, kThreads)), dim3(kThreads), &binary_second_k<T>, f, n, a, b, dy, ta, tb, ga, gb);
}

// ------------------------------------------------------------------------------------- reduce

constexpr int kSum = int(ReduceOp::Sum), kMean = int(ReduceOp::Mean), kRMax = int(ReduceOp::Max),
              kRMin = int(ReduceOp::Min);

// The kept and reduced geometry of a reduction (one operand each: x's strides).
struct RGeo {
  Geo<1> kept, red;
  int64_t nk, nr;  // element counts of kept and red
};

// Max/Min step of the reference: v replaces acc when it is beyond it, or NaN (so the first
// maximum stays, and a NaN wins).
template <int OP>
PG_DEVICE bool beyond(double v, double acc) {
  if constexpr (OP == kRMax) return v > acc || cuda::math::is_nan(v);
  else return v < acc || cuda::math::is_nan(v);
}

template <int OP>
PG_DEVICE double initial() {
  if constexpr (OP == kRMax) return -INFINITY;
  else if constexpr (OP == kRMin) return INFINITY;
  else return 0.0;
}

// Calls f(offset, r) for r = 0 .. nr-1 in row-major order over the reduced dims: the innermost dim
// is walked by adding its stride, the outer ones are decomposed once per row.
template <typename F>
PG_DEVICE void for_each_reduced(const Geo<1>& rg, int64_t nr, F&& f) {
  const int rank = rg.rank;
  const int64_t inner = rank > 0 ? rg.dims[rank - 1] : 1;
  const int64_t step = rank > 0 ? rg.strides[0][rank - 1] : 0;
  const int64_t outer = nr / inner;
  int64_t r = 0;
  for (int64_t o = 0; o < outer; ++o) {
    int64_t off[1];
    offsets<uint64_t>(static_cast<uint64_t>(o), rg, rank - 1 > 0 ? rank - 1 : 0, off);
    for (int64_t j = 0; j < inner; ++j, ++r) f(off[0] + j * step, r);
  }
}

// One output per thread, reduced in the reference's order.
template <typename T, int OP, typename I>
__global__ void __launch_bounds__(kThreads) reduce_thread_k(RGeo g, const T* x, T* y) {
  for (int64_t k = global_thread(); k < g.nk; k += grid_threads()) {
    int64_t ko[1];
    offsets<I>(static_cast<I>(k), g.kept, g.kept.rank, ko);
    const T* xk = x + ko[0];
    double acc = initial<OP>();
    for_each_reduced(g.red, g.nr, [&](int64_t off, int64_t) {
      const double v = static_cast<double>(xk[off]);
      if constexpr (OP == kSum || OP == kMean) acc += v;
      else if (beyond<OP>(v, acc)) acc = v;
    });
    y[k] = static_cast<T>(OP == kMean ? acc / static_cast<double>(g.nr) : acc);
  }
}

// The extremum of the block's (value, r) pairs with the reference's outcome: a NaN wins; otherwise
// the value beyond the other, ties to the smaller r. Returned to every thread.
template <int OP>
PG_DEVICE double block_extremum(double v, int64_t r, double* sv, int64_t* sr) {
  const unsigned t = threadIdx.x;
  sv[t] = v;
  sr[t] = r;
  __syncthreads();
  for (unsigned s = kBlockThreads / 2; s > 0; s /= 2) {
    if (t < s) {
      const double a = sv[t], b = sv[t + s];
      const int64_t ra = sr[t], rb = sr[t + s];
      const bool take_b = cuda::math::is_nan(a) ? false
                          : cuda::math::is_nan(b) ? true
                          : (a == b ? rb < ra : beyond<OP>(b, a));
      if (take_b) {
        sv[t] = b;
        sr[t] = rb;
      }
    }
    __syncthreads();
  }
  const double m = sv[0];
  __syncthreads();
  return m;
}

// The smallest r over the block, returned to every thread.
PG_DEVICE int64_t block_min_index(int64_t r, int64_t* sr) {
  const unsigned t = threadIdx.x;
  sr[t] = r;
  __syncthreads();
  for (unsigned s = kBlockThreads / 2; s > 0; s /= 2) {
    if (t < s && sr[t + s] < sr[t]) sr[t] = sr[t + s];
    __syncthreads();
  }
  const int64_t m = sr[0];
  __syncthreads();
  return m;
}

constexpr int64_t kNoIndex = INT64_MAX;

// One output per block: thread t reduces r = t, t + B, ... in order, then a fixed tree.
template <typename T, int OP, typename I>
__global__ void __launch_bounds__(kBlockThreads) reduce_block_k(RGeo g, const T* x, T* y) {
  __shared__ double sv[kBlockThreads];
  __shared__ int64_t sr[kBlockThreads];
  for (int64_t k = blockIdx.x; k < g.nk; k += gridDim.x) {
    int64_t ko[1];
    offsets<I>(static_cast<I>(k), g.kept, g.kept.rank, ko);
    const T* xk = x + ko[0];
    double acc = initial<OP>();
    int64_t at = kNoIndex;
    for (int64_t r = threadIdx.x; r < g.nr; r += kBlockThreads) {
      int64_t ro[1];
      offsets<I>(static_cast<I>(r), g.red, g.red.rank, ro);
      const double v = static_cast<double>(xk[ro[0]]);
      if constexpr (OP == kSum || OP == kMean) {
        acc += v;
      } else if (beyond<OP>(v, acc)) {
        acc = v;
        at = r;
      }
    }
    double total;
    if constexpr (OP == kSum || OP == kMean) total = cuda::block_sum<kBlockThreads>(acc, sv);
    else total = block_extremum<OP>(acc, at, sv, sr);
    if (threadIdx.x == 0) y[k] = static_cast<T>(OP == kMean ? total / static_cast<double>(g.nr) : total);
  }
}

// Builds the geometry of a reduction; false when there is no output.
bool make_rgeo(int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd, const int64_t* rs,
               RGeo& g) {
  const int64_t* const kst[1] = {ks};
  const int64_t* const rst[1] = {rs};
  g.nk = make_geo<1>(kr, kd, kst, g.kept);
  g.nr = make_geo<1>(rr, rd, rst, g.red);
  return g.nk > 0;
}

// Whether to give each output a block: long reductions whose innermost reduced axis is contiguous
// (the block reads it coalesced), or long ones with too few outputs to fill the GPU by threads.
bool by_block(const RGeo& g) {
  if (g.nr < int64_t(kBlockThreads)) return false;
  const int rr = g.red.rank;
  const int64_t s = rr > 0 ? g.red.strides[0][rr - 1] : 0;
  return s == 1 || s == -1 || g.nk < 2048;
}

template <typename T, int OP>
void reduce_as(const RGeo& g, const T* x, T* y) {
  const bool i32 = small(g.nk) && small(g.nr);
  if (by_block(g)) {
    const dim3 grid(unsigned(g.nk < 65535 ? g.nk : 65535)), block(kBlockThreads);
    if (i32) launch(grid, block, &reduce_block_k<T, OP, uint32_t>, g, x, y);
    else launch(grid, block, &reduce_block_k<T, OP, uint64_t>, g, x, y);
  } else {
    const dim3 grid(grid_for(g.nk, kThreads)), block(kThreads);
    if (i32) launch(grid, block, &reduce_thread_k<T, OP, uint32_t>, g, x, y);
    else launch(grid, block, &reduce_thread_k<T, OP, uint64_t>, g, x, y);
  }
}

template <typename T>
void reduce(ReduceOp op, int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd,
            const int64_t* rs, const T* x, T* y) {
  RGeo g;
  if (!make_rgeo(kr, kd, ks, rr, rd, rs, g)) return;
  switch (op) {
    case ReduceOp::Sum: return reduce_as<T, kSum>(g, x, y);
    case ReduceOp::Mean: return reduce_as<T, kMean>(g, x, y);
    case ReduceOp::Max: return reduce_as<T, kRMax>(g, x, y);
    case ReduceOp::Min: return reduce_as<T, kRMin>(g, x, y);
    default: cuda::note_error("shape reduce: unknown ReduceOp");
  }
}

// ------------------------------------------------------------------------------------- reduce backward

// Sum/Mean: dx = g at every (k, r), one element per thread; the flat index runs over r fastest,
// or over k fastest when that is the coalesced order of x (r_outer).
template <typename T, int OP, typename I>
__global__ void __launch_bounds__(kThreads) spread_k(RGeo g, bool r_outer, const T* dy, T* dx) {
  const int64_t n = g.nk * g.nr;
  const I nk = static_cast<I>(g.nk), nr = static_cast<I>(g.nr);
  for (int64_t e = global_thread(); e < n; e += grid_threads()) {
    const I i = static_cast<I>(e);
    I k, r;
    if (r_outer) {
      r = i / nk;
      k = i - r * nk;
    } else {
      k = i / nr;
      r = i - k * nr;
    }
    int64_t ko[1], ro[1];
    offsets<I>(k, g.kept, g.kept.rank, ko);
    offsets<I>(r, g.red, g.red.rank, ro);
    T v = dy[k];
    if constexpr (OP == kMean) v = static_cast<T>(static_cast<double>(v) / static_cast<double>(g.nr));
    dx[ko[0] + ro[0]] = v;
  }
}

template <typename T>
PG_DEVICE bool matches(T v, T m) {
  return v == m || (cuda::math::is_nan(v) && cuda::math::is_nan(m));
}

// Max/Min, one output per thread: dy[k] at the first r where x equals y[k], 0 elsewhere.
template <typename T, typename I>
__global__ void __launch_bounds__(kThreads) arg_thread_k(RGeo g, const T* x, const T* y, const T* dy, T* dx) {
  for (int64_t k = global_thread(); k < g.nk; k += grid_threads()) {
    int64_t ko[1];
    offsets<I>(static_cast<I>(k), g.kept, g.kept.rank, ko);
    const T* xk = x + ko[0];
    T* dxk = dx + ko[0];
    const T m = y[k], d = dy[k];
    bool found = false;
    for_each_reduced(g.red, g.nr, [&](int64_t off, int64_t) {
      if (!found && matches(xk[off], m)) {
        dxk[off] = d;
        found = true;
      } else {
        dxk[off] = T(0);
      }
    });
  }
}

// Max/Min, one output per block: the first match of each thread's r = t, t + B, ..., the smallest
// of them over the block, then every thread writes its positions.
template <typename T, typename I>
__global__ void __launch_bounds__(kBlockThreads) arg_block_k(RGeo g, const T* x, const T* y, const T* dy, T* dx) {
  __shared__ int64_t sr[kBlockThreads];
  for (int64_t k = blockIdx.x; k < g.nk; k += gridDim.x) {
    int64_t ko[1];
    offsets<I>(static_cast<I>(k), g.kept, g.kept.rank, ko);
    const T* xk = x + ko[0];
    T* dxk = dx + ko[0];
    const T m = y[k], d = dy[k];
    int64_t first = kNoIndex;
    for (int64_t r = threadIdx.x; r < g.nr; r += kBlockThreads) {
      int64_t ro[1];
      offsets<I>(static_cast<I>(r), g.red, g.red.rank, ro);
      if (matches(xk[ro[0]], m)) {
        first = r;
        break;
      }
    }
    first = block_min_index(first, sr);
    for (int64_t r = threadIdx.x; r < g.nr; r += kBlockThreads) {
      int64_t ro[1];
      offsets<I>(static_cast<I>(r), g.red, g.red.rank, ro);
      dxk[ro[0]] = r == first ? d : T(0);
    }
  }
}

template <typename T>
void reduce_backward(ReduceOp op, int kr, const int64_t* kd, const int64_t* ks, int rr, const int64_t* rd,
                     const int64_t* rs, const T* x, const T* y, const T* dy, T* dx) {
  RGeo g;
  if (!make_rgeo(kr, kd, ks, rr, rd, rs, g) || g.nr == 0) return;
  const bool i32 = small(g.nk) && small(g.nr) && small(g.nk * g.nr);
  if (op == ReduceOp::Sum || op == ReduceOp::Mean) {
    const int64_t n = g.nk * g.nr;
    // k fastest when x's innermost stride is on a kept axis and not on a reduced one.
    const int64_t sk = g.kept.rank > 0 ? g.kept.strides[0][g.kept.rank - 1] : 0;
    const int64_t sr = g.red.rank > 0 ? g.red.strides[0][g.red.rank - 1] : 0;
    const bool r_outer = (sk == 1 || sk == -1) && !(sr == 1 || sr == -1);
    const dim3 grid(grid_for(n, kThreads)), block(kThreads);
    if (op == ReduceOp::Sum) {
      if (i32) launch(grid, block, &spread_k<T, kSum, uint32_t>, g, r_outer, dy, dx);
      else launch(grid, block, &spread_k<T, kSum, uint64_t>, g, r_outer, dy, dx);
    } else {
      if (i32) launch(grid, block, &spread_k<T, kMean, uint32_t>, g, r_outer, dy, dx);
      else launch(grid, block, &spread_k<T, kMean, uint64_t>, g, r_outer, dy, dx);
    }
  } else if (op == ReduceOp::Max || op == ReduceOp::Min) {
    if (by_block(g)) {
      const dim3 grid(unsigned(g.nk < 65535 ? g.nk : 65535)), block(kBlockThreads);
      if (i32) launch(grid, block, &arg_block_k<T, uint32_t>, g, x, y, dy, dx);
      else launch(grid, block, &arg_block_k<T, uint64_t>, g, x, y, dy, dx);
    } else {
      const dim3 grid(grid_for(g.nk, kThreads)), block(kThreads);
      if (i32) launch(grid, block, &arg_thread_k<T, uint32_t>, g, x, y, dy, dx);
      else launch(grid, block, &arg_thread_k<T, uint64_t>, g, x, y, dy, dx);
    }
  } else {
    cuda::note_error("shape reduce_backward: unknown ReduceOp");
  }
}

}  // namespace

const ShapeKernels<float> shape_cuda_f32{&copy<float>, &binary_forward<float>, &binary_backward<float>,
                                         &binary_second<float>, &reduce<float>, &reduce_backward<float>};
const ShapeKernels<double> shape_cuda_f64{&copy<double>, &binary_forward<double>, &binary_backward<double>,
                                          &binary_second<double>, &reduce<double>, &reduce_backward<double>};

}  // namespace portgrad::kernels
