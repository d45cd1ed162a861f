// Check of a CPU GEMM table against the reference GEMM on awkward sizes, strides, epilogues,
// prologues, pre-packed B and thread counts; run by tests/test_gemm_avx512_emulated.py.
// -DGEMM_UNDER_TEST=avx512 (the default) checks gemm_avx512_f32/f64, linked from gemm_avx512.cc
// compiled through the SIMDe prelude (gemm_avx512_simde.cc); -DGEMM_UNDER_TEST=avx2 checks
// gemm_avx2_f32/f64, so the driver itself is proven on any AVX2 machine.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/unary.h"

#include "../kernel_checks/gemm_check.h"

#ifndef GEMM_UNDER_TEST
#define GEMM_UNDER_TEST avx512
#endif
#define PG_JOIN(a, b) PG_JOIN_(a, b)
#define PG_JOIN_(a, b) a##b
#define PG_STR(a) PG_STR_(a)
#define PG_STR_(a) #a
#define UNDER_TEST_NAME "gemm_" PG_STR(GEMM_UNDER_TEST)

namespace portgrad::kernels {  // (again: harmless where gemm.h declares them)
extern const GemmKernels<float> PG_JOIN(PG_JOIN(gemm_, GEMM_UNDER_TEST), _f32);
extern const GemmKernels<double> PG_JOIN(PG_JOIN(gemm_, GEMM_UNDER_TEST), _f64);
}  // namespace portgrad::kernels

using namespace portgrad::kernels;
using namespace portgrad::kernels::gemm_check;
static std::mt19937_64 rng(42);
static long g_checks = 0, g_fail = 0, g_cases = 0;

template <typename T> const GemmKernels<T>& tab();
template <> const GemmKernels<float>& tab<float>() { return PG_JOIN(PG_JOIN(gemm_, GEMM_UNDER_TEST), _f32); }
template <> const GemmKernels<double>& tab<double>() { return PG_JOIN(PG_JOIN(gemm_, GEMM_UNDER_TEST), _f64); }
// The unary kernels the table under test runs (its prologue's dz is theirs, gemm.h): the AVX2
// ones, for the AVX-512 table as well (there is no AVX-512 unary table).
template <typename T> const UnaryKernels<T>& uact();
template <> const UnaryKernels<float>& uact<float>() { return unary_avx2_f32; }
template <> const UnaryKernels<double>& uact<double>() { return unary_avx2_f64; }

// The product's bound also grows with k (the rounding of a k-term sum), which matters past k ~ 80
// in fp32.
template <typename T> constexpr double eps() { return std::numeric_limits<T>::epsilon(); }
template <typename T> double tol(int64_t k) { return std::max(tol<T>(), (k + 3) * eps<T>()); }
template <typename T> T qnan() { return std::numeric_limits<T>::quiet_NaN(); }

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// The case running, for the fault handler: a read past an operand's guard page ends the run.
static char g_current[256] = "";
static void on_fault(int) {
  static const char msg[] = "\nFAIL: fault (guard page: a read or write outside an operand?) in case ";
  if (write(1, msg, sizeof msg - 1) && write(1, g_current, strnlen(g_current, sizeof g_current))) {}
  if (write(1, "\n", 1)) {}
  _exit(3);
}

#define FAIL(...) do { if (g_fail < 30) { std::printf(__VA_ARGS__); std::printf("\n"); } ++g_fail; } while (0)

// n elements between two inaccessible pages, the last (or first) element against one: reading
// past that end of an operand faults here, where a small slack would hide it. (AVX-512 masked
// loads never fault on masked-off lanes, and the SIMDe prelude keeps that.)
template <typename T>
class Guarded {
 public:
  Guarded() = default;
  Guarded(int64_t n, bool flush_end) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
    size_ = (bytes + page - 1) / page * page + 2 * page;
    void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { std::perror("mmap"); std::exit(2); }
    base_ = static_cast<char*>(p);
    mprotect(base_, page, PROT_NONE);
    mprotect(base_ + size_ - page, page, PROT_NONE);
    data_ = reinterpret_cast<T*>(flush_end ? base_ + size_ - page - bytes : base_ + page);
    n_ = std::max<int64_t>(n, 1);
    std::fill(data_, data_ + n_, qnan<T>());
  }
  Guarded(Guarded&& o) noexcept { *this = std::move(o); }
  Guarded& operator=(Guarded&& o) noexcept {
    std::swap(base_, o.base_), std::swap(size_, o.size_), std::swap(data_, o.data_), std::swap(n_, o.n_);
    return *this;
  }
  ~Guarded() { if (base_) munmap(base_, size_); }
  T* data() const { return data_; }
  int64_t size() const { return n_; }

 private:
  char* base_ = nullptr;
  size_t size_ = 0;
  T* data_ = nullptr;
  int64_t n_ = 0;
};

// Element (r, c) of an operand at ptr()[r*rs + c*cs]; the buffer spans exactly the elements
// addressed, padding between them is NaN (a kernel that adds padding into a result shows it).
template <typename T>
struct Operand {
  Guarded<T> buf;
  int64_t R = 0, Cc = 0, off = 0, rs = 0, cs = 0;
  T* ptr() const { return buf.data() + off; }
  T& at(int64_t r, int64_t c) const { return ptr()[r * rs + c * cs]; }
};

// mode: 0 row-major (padded), 1 transposed (column-major), 2 general (non-unit both),
// 3 negative strides (as tests/cuda_kernels/gemm.cc)
template <typename T>
Operand<T> layout(int64_t R, int64_t Cc, int mode) {
  Operand<T> o;
  o.R = R, o.Cc = Cc;
  if (mode == 0) o.cs = 1, o.rs = Cc + 3;
  else if (mode == 1) o.rs = 1, o.cs = R + 2;
  else if (mode == 2) o.cs = 3, o.rs = 3 * Cc + 5;
  else o.cs = -2, o.rs = -(2 * Cc + 1);
  int64_t lo = 0, hi = 0;
  if (R > 0 && Cc > 0) {
    lo = std::min<int64_t>(0, o.rs) * (R - 1) + std::min<int64_t>(0, o.cs) * (Cc - 1);
    hi = std::max<int64_t>(0, o.rs) * (R - 1) + std::max<int64_t>(0, o.cs) * (Cc - 1);
  }
  o.buf = Guarded<T>(hi - lo + 1, mode != 3);
  o.off = -lo;
  return o;
}

template <typename T>
Operand<T> make_operand(int64_t R, int64_t Cc, int mode, double lo = -1, double hi = 1) {
  Operand<T> o = layout<T>(R, Cc, mode);
  std::uniform_real_distribution<double> u(lo, hi);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < Cc; ++c) o.at(r, c) = T(u(rng));
  return o;
}

// One product and what to check on it.
struct Case {
  int64_t m, n, k;
  const char* tag;
  int amode = 0, bmode = 0;  // layouts (make_operand)
  double alpha = 1, beta = 0;
  bool bias = false;
  int unary = -1;            // UnaryFn of the epilogue, or -1
  int dmode = 0;             // 0 no D (activation into C), 1 D separate, 2 D == C
  bool rsums = false;
  int prologue = -1;         // UnaryFn of the operand prologue, or -1
  int entry = 1;             // 0 gemm, 1 gemm_ex, 2 pack_b + gemm_packed_b
  bool specials = false;     // NaN and +-inf in A and B
  bool packed_bits = false;  // also: pack_b + gemm_packed_b gives gemm_ex's bits
  bool thread_bits = false;  // also: 1, 2 and 3 threads give the same bits
};

Case mk(int64_t m, int64_t n, int64_t k, const char* tag) {
  Case c{};
  c.m = m, c.n = n, c.k = k, c.tag = tag;
  return c;
}

template <typename T>
struct Out {
  std::vector<T> C, D, rs;
};

// A buffer from packed_b_bytes, 64-byte aligned, with guard bytes past the end.
struct PackedBuf {
  std::vector<unsigned char> raw;
  unsigned char* data;
  size_t bytes;
  static constexpr size_t kGuard = 64;
  explicit PackedBuf(size_t b) : raw(b + 64 + kGuard, 0xA5), bytes(b) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(raw.data());
    data = raw.data() + ((64 - p % 64) % 64);
  }
  bool guard_ok() const {
    for (size_t i = 0; i < kGuard; ++i)
      if (data[bytes + i] != 0xA5) return false;
    return true;
  }
};

template <typename T>
void run_case(const Case& cs) {
  ++g_cases;
  const int64_t m = cs.m, n = cs.n, k = cs.k;
  std::snprintf(g_current, sizeof g_current, "[%s] %s m=%ld n=%ld k=%ld modes %d%d entry %d", cs.tag,
                sizeof(T) == 4 ? "f32" : "f64", (long)m, (long)n, (long)k, cs.amode, cs.bmode, cs.entry);
  const T alpha = T(cs.alpha), beta = T(cs.beta);
  const bool pro = cs.prologue >= 0;
  const UnaryFn pf = pro ? static_cast<UnaryFn>(cs.prologue) : UnaryFn::Count;
  Operand<T> A = make_operand<T>(m, k, cs.amode), B = make_operand<T>(k, n, cs.bmode);
  if (cs.specials) {
    const T inf = std::numeric_limits<T>::infinity();
    const T sp[] = {qnan<T>(), inf, -inf};
    for (int s = 0; s < 3 && m > 0 && k > 0; ++s) A.at((s * 7) % m, (s * 5 + 1) % k) = sp[s];
    for (int s = 0; s < 3 && n > 0 && k > 0; ++s) B.at((s * 3 + 2) % k, (s * 11) % n) = sp[2 - s];
  }
  // Prologue operands: z (inside the domain of Log and Sqrt) and y = f(z), laid out as A.
  Operand<T> Z, Y;
  if (pro) {
    const bool pos = pf == UnaryFn::Log || pf == UnaryFn::Sqrt;
    Z = make_operand<T>(m, k, cs.amode, pos ? 0.25 : -4, pos ? 3 : 4);
    Y = layout<T>(m, k, cs.amode);
    uref<T>().forward(pf, Z.buf.size(), Z.buf.data(), Y.buf.data());  // padding: f(NaN) = NaN
  }
  // op(A) as the reference reads it, and its distance to what the unary kernels under test give.
  std::vector<double> a_ref(m * k), a_err(m * k, 0.0);
  const double pro_atol = pro ? act_atol<T>(cs.prologue) : 0.0, act_atol_u = cs.unary >= 0 ? act_atol<T>(cs.unary) : 0.0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t p = 0; p < k; ++p) {
      T a = A.at(i, p);
      if (pro) {
        T act;
        uref<T>().backward(pf, 1, &Z.at(i, p), &Y.at(i, p), &A.at(i, p), &a);
        uact<T>().backward(pf, 1, &Z.at(i, p), &Y.at(i, p), &A.at(i, p), &act);
        a_err[i * k + p] = 2 * std::max(std::fabs(double(act) - double(a)), act_tol<T>() * std::fabs(double(a))) +
                           pro_atol * std::fabs(double(A.at(i, p)));
      }
      a_ref[i * k + p] = a;
    }
  std::uniform_real_distribution<double> u(-1, 1);
  Guarded<T> bias(n, true);
  for (int64_t j = 0; j < n; ++j) bias.data()[j] = T(u(rng));

  // Outputs inside guards: C and D padded (ldc, ldd) with sentinels before, between and after.
  const int64_t ldc = n + 3, ldd = n + 5, front = 7, back = 17;
  Out<T> init;
  init.C.assign(front + m * ldc + back, sentinel<T>());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) init.C[front + i * ldc + j] = beta == T(0) ? qnan<T>() : T(u(rng));
  init.D.assign(front + m * ldd + back, sentinel<T>());
  init.rs.assign(front + m + back, sentinel<T>());
  auto in_c = [&](int64_t e, int64_t ld) { e -= front; return e >= 0 && e / ld < m && e % ld < n; };

  auto epilogue = [&](Out<T>& o, bool separate_d) {
    GemmEpilogue<T> e;
    if (cs.bias) e.bias = bias.data();
    if (cs.unary >= 0) e.unary = static_cast<UnaryFn>(cs.unary);
    if (cs.dmode == 1 || separate_d) e.D = o.D.data() + front, e.ldd = ldd;
    else if (cs.dmode == 2) e.D = o.C.data() + front, e.ldd = ldc;
    if (cs.rsums) e.row_sums = o.rs.data() + front;
    if (pro) e.a_derivative = pf, e.a_x = Z.ptr(), e.a_y = Y.ptr();
    return e;
  };
  auto run = [&](int entry, bool separate_d) {
    Out<T> o = init;
    const GemmEpilogue<T> e = epilogue(o, separate_d);
    T* C = o.C.data() + front;
    if (entry == 0) {
      tab<T>().gemm(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, C, ldc);
    } else if (entry == 1) {
      tab<T>().gemm_ex(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, C, ldc, e);
    } else {
      PackedBuf P(tab<T>().packed_b_bytes(k, n));
      tab<T>().pack_b(k, n, B.ptr(), B.rs, B.cs, P.data);
      ++g_checks;
      if (!P.guard_ok()) FAIL("[%s] pack_b wrote past packed_b_bytes(%ld, %ld)", cs.tag, (long)k, (long)n);
      const std::vector<unsigned char> before(P.data, P.data + P.bytes);
      tab<T>().gemm_packed_b(m, n, k, alpha, A.ptr(), A.rs, A.cs, P.data, beta, C, ldc, e);
      ++g_checks;
      if (!std::equal(before.begin(), before.end(), P.data)) FAIL("[%s] gemm_packed_b changed the packed B", cs.tag);
    }
    return o;
  };

  Out<T> got;
  if (cs.thread_bits) {
    const int saved = gemm_num_threads();
    set_gemm_num_threads(1);
    got = run(cs.entry, false);
    for (int nt : {2, 3}) {
      set_gemm_num_threads(nt);
      const Out<T> other = run(cs.entry, false);
      ++g_checks;
      if (!same_bits(got.C, other.C) || !same_bits(got.D, other.D) || !same_bits(got.rs, other.rs))
        FAIL("[%s] 1 and %d threads differ: m=%ld n=%ld k=%ld entry %d", cs.tag, nt, (long)m, (long)n, (long)k, cs.entry);
    }
    set_gemm_num_threads(saved);
  } else {
    got = run(cs.entry, false);
  }
  if (cs.packed_bits) {
    const Out<T> other = run(cs.entry == 2 ? 1 : 2, false);
    ++g_checks;
    if (!same_bits(got.C, other.C) || !same_bits(got.D, other.D) || !same_bits(got.rs, other.rs))
      FAIL("[%s] gemm_packed_b and gemm_ex differ: m=%ld n=%ld k=%ld", cs.tag, (long)m, (long)n, (long)k);
  }

  // The reference, and both pre-activation C's (the kernel's: rerun with D separate when the
  // activation overwrote C; that in-place result must then be the separate D, bit for bit).
  Out<T> want = init;
  ref_tab<T>().gemm_ex(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, want.C.data() + front, ldc,
                       epilogue(want, false));
  std::vector<T> pre = got.C, want_pre = want.C;
  if (cs.unary >= 0 && cs.dmode != 1) {
    const Out<T> sep = run(cs.entry, true);
    pre = sep.C;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        ++g_checks;
        if (!same_bits(got.C[front + i * ldc + j], sep.D[front + i * ldd + j]))
          FAIL("[%s] in-place activation differs from separate D at %ld,%ld", cs.tag, (long)i, (long)j);
      }
    Out<T> w = init;
    ref_tab<T>().gemm_ex(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, w.C.data() + front, ldc,
                         epilogue(w, true));
    want_pre = w.C;
  }
  // C before the activation: within tol * (sum |alpha a b| + |beta c| + |bias|), plus what the
  // prologue's dz may differ by.
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0, ds = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double b = std::fabs(double(B.at(p, j)));
        s += std::fabs(a_ref[i * k + p]) * b;
        ds += a_err[i * k + p] * b;
      }
      const int64_t e = front + i * ldc + j;
      const double c0 = beta != T(0) ? std::fabs(double(beta) * double(init.C[e])) : 0.0;
      const double scale = std::fabs(double(alpha)) * s + c0 + (cs.bias ? std::fabs(double(bias.data()[j])) : 0.0);
      ++g_checks;
      if (!close_num<T>(pre[e], want_pre[e], tol<T>(k) * scale + std::fabs(double(alpha)) * ds + 1e-300))
        FAIL("[%s] C mismatch %ld,%ld m=%ld n=%ld k=%ld modes %d%d got %.17g want %.17g scale %g", cs.tag, (long)i, (long)j,
             (long)m, (long)n, (long)k, cs.amode, cs.bmode, double(pre[e]), double(want_pre[e]), scale);
    }
  // The activation against the reference unary of the kernel's own pre-activation C.
  if (cs.unary >= 0) {
    const std::vector<T>& out = cs.dmode == 1 ? got.D : got.C;
    const int64_t ld = cs.dmode == 1 ? ldd : ldc;
    std::vector<T> f(std::max<int64_t>(n, 1));
    for (int64_t i = 0; i < m; ++i) {
      if (n > 0) uref<T>().forward(static_cast<UnaryFn>(cs.unary), n, pre.data() + front + i * ldc, f.data());
      for (int64_t j = 0; j < n; ++j) {
        ++g_checks;
        const double w = f[j], g = out[front + i * ld + j];
        if (!close_num<T>(g, w, act_tol<T>() * std::fabs(w) + act_atol_u))
          FAIL("[%s] act %s mismatch at %ld,%ld x=%.17g got %.17g want %.17g", cs.tag,
               unary_name(static_cast<UnaryFn>(cs.unary)), (long)i, (long)j, double(pre[front + i * ldc + j]), g, w);
      }
    }
  }
  // Nothing written outside C's m x n elements, D's (when separate) or row_sums' m.
  for (int64_t e = 0; e < (int64_t)init.C.size(); ++e) {
    if (in_c(e, ldc)) continue;
    ++g_checks;
    if (!same_bits(got.C[e], init.C[e])) FAIL("[%s] C guard/padding touched at %ld", cs.tag, (long)(e - front));
  }
  for (int64_t e = 0; e < (int64_t)init.D.size(); ++e) {
    if (cs.dmode == 1 && cs.unary >= 0 && in_c(e, ldd)) continue;
    ++g_checks;
    if (!same_bits(got.D[e], init.D[e])) FAIL("[%s] D guard/padding touched at %ld", cs.tag, (long)(e - front));
  }
  for (int64_t e = 0; e < (int64_t)init.rs.size(); ++e) {
    const int64_t i = e - front;
    ++g_checks;
    if (cs.rsums && i >= 0 && i < m) {
      double s = 0, ds = 0;
      for (int64_t p = 0; p < k; ++p) s += std::fabs(a_ref[i * k + p]), ds += a_err[i * k + p];
      if (!close_num<T>(got.rs[e], want.rs[e], tol<T>(k) * s + ds + 1e-300))
        FAIL("[%s] row_sums mismatch %ld m=%ld k=%ld got %.17g want %.17g", cs.tag, (long)i, (long)m, (long)k,
             double(got.rs[e]), double(want.rs[e]));
    } else if (!same_bits(got.rs[e], init.rs[e])) {
      FAIL("[%s] row_sums guard touched at %ld", cs.tag, (long)i);
    }
  }
}

// Activations on chosen values (kinks, +-inf, NaN, large): k == 0, beta == 1, so C = C0 exactly.
template <typename T>
void special_values() {
  const T inf = std::numeric_limits<T>::infinity(), nan = qnan<T>();
  std::vector<T> vals = {-inf, inf, nan, T(0), T(-0.0), T(1), T(-1), T(3), T(-3), T(2.5), T(-2.5), T(40), T(41), T(-40),
                         T(-41), T(100), T(-100), T(1e30), T(-1e30), T(1e-30), T(-1e-30), T(0.5), T(-0.5), T(20), T(-20),
                         T(88), T(-88), T(710), T(-710), T(1e-3), T(-1e-3), T(7.25), T(-7.25), T(1.0000001), T(-0.9999999)};
  const int64_t m = 3, n = static_cast<int64_t>(vals.size()), ldc = n + 2;
  for (int f = 0; f < static_cast<int>(UnaryFn::Count); ++f) {
    std::vector<T> C(m * ldc + 8, sentinel<T>());
    for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = vals[(j + i * 7) % n];
    std::vector<T> D(C.size(), sentinel<T>());
    GemmEpilogue<T> e;
    e.unary = static_cast<UnaryFn>(f), e.D = D.data(), e.ldd = ldc;
    T dummy = T(1);
    tab<T>().gemm_ex(m, n, 0, T(1), &dummy, 1, 1, &dummy, 1, 1, T(1), C.data(), ldc, e);
    std::vector<T> want(n);
    for (int64_t i = 0; i < m; ++i) {
      uref<T>().forward(static_cast<UnaryFn>(f), n, C.data() + i * ldc, want.data());
      for (int64_t j = 0; j < n; ++j) {
        ++g_checks;
        const double x = C[i * ldc + j], g = D[i * ldc + j], w = want[j];
        bool ok = close_num<T>(g, w, act_tol<T>() * std::fabs(w) + act_atol<T>(f));
        if (ok && w == 0 && g == 0 && std::signbit(w) != std::signbit(g)) ok = false;
        if (!ok) FAIL("special %s(%s) x=%.17g got %.17g want %.17g", unary_name(static_cast<UnaryFn>(f)),
                      sizeof(T) == 4 ? "f32" : "f64", x, g, w);
      }
    }
  }
}

constexpr int kFns = static_cast<int>(UnaryFn::Count);

template <typename T>
void suite() {
  const auto t0 = std::chrono::steady_clock::now();
  const char* tn = sizeof(T) == 4 ? "f32" : "f64";
  std::uniform_int_distribution<int> mode(0, 3), coin(0, 1), fn(0, kFns - 1);
  int idx = 0;
  // A case in one of four flavours: plain (through gemm, gemm_ex or pack_b + gemm_packed_b),
  // an epilogue through gemm_ex or packed B, or a prologue (A stored along k or along m).
  auto flavoured = [&](int64_t m, int64_t n, int64_t k, const char* tag) {
    Case c = mk(m, n, k, tag);
    c.amode = idx % 4, c.bmode = (idx / 4) % 4;
    switch (idx % 4) {
      case 0: c.entry = (idx / 4) % 3; break;
      case 1: case 2:
        c.entry = idx % 4;
        c.bias = true, c.unary = fn(rng), c.dmode = (idx / 4) % 3, c.rsums = true, c.beta = 0.5;
        break;
      default:
        c.entry = 1 + (idx / 4) % 2;
        c.amode = (idx / 4) % 2, c.prologue = fn(rng), c.rsums = coin(rng);
    }
    ++idx;
    run_case<T>(c);
  };
  // Each dimension through 1..41 (past 32 + 1, the widest fp32 tile) with the others fixed at
  // awkward sizes, then combinations around the tile edges.
  for (int64_t d = 1; d <= 41; ++d) {
    flavoured(d, 37, 29, "sweep-m");
    flavoured(27, d, 29, "sweep-n");
    flavoured(27, 37, d, "sweep-k");
  }
  const int64_t edges[] = {1, 2, 3, 5, 7, 8, 11, 12, 13, 15, 16, 17, 23, 24, 25, 31, 32, 33, 47, 48, 49, 63, 64, 65};
  std::uniform_int_distribution<int> pick(0, static_cast<int>(std::size(edges)) - 1);
  for (int it = 0; it < 80; ++it) flavoured(edges[pick(rng)], edges[pick(rng)], edges[pick(rng)], "edges");
  // Primes; every layout pair; tall, skinny and GEMV shapes; k across the cache blocks (kc is
  // 128..1024), m across mc, n across nc (up to 8192 columns).
  const int64_t pr[] = {7, 13, 31, 67, 127};
  for (int64_t m : pr) for (int64_t n : pr) for (int64_t k : {13, 131}) flavoured(m, n, k, "primes");
  for (int am = 0; am < 4; ++am)
    for (int bm = 0; bm < 4; ++bm) {
      Case c = mk(67, 45, 29, "layouts");
      c.amode = am, c.bmode = bm, c.rsums = true, c.bias = true, c.entry = 1 + (am + bm) % 2;
      run_case<T>(c);
    }
  const int64_t shapes[][3] = {{1037, 3, 17}, {3, 1037, 17}, {1037, 5, 3}, {5, 1037, 3}, {3, 5, 1037}, {1, 1037, 70},
                               {1037, 1, 70}, {1, 1, 1037}, {1, 300, 1}, {300, 1, 1}, {1, 1, 1}, {1, 70, 300},
                               {70, 1, 300}, {2, 129, 67}, {129, 2, 67}, {40, 50, 1100}, {19, 33, 257},
                               {1037, 67, 150}, {70, 1100, 130}, {5, 8300, 40}, {3, 2100, 513}};
  for (const auto& s : shapes)
    for (int v = 0; v < 4; ++v) {
      if (s[0] * s[1] * s[2] > 3000000 && v > 1) continue;  // the big ones twice
      flavoured(s[0], s[1], s[2], "shapes");
    }
  // alpha/beta, with NaN and inf in the operands (alpha == 0 still reads A and B: gemm.h)
  const double ab[][2] = {{1, 0}, {1, 1}, {-2, 0.5}, {0, 1}, {0, 0}, {0.3, -1}};
  for (auto& v : ab)
    for (int e = 0; e < 3; ++e) {
      Case c = mk(33, 45, 17, "alpha-beta");
      c.alpha = v[0], c.beta = v[1], c.entry = e, c.amode = e, c.bmode = 3 - e;
      run_case<T>(c);
      c.tag = "alpha-beta-epi", c.entry = 1 + e % 2, c.bias = true, c.rsums = true, c.unary = fn(rng), c.dmode = e;
      run_case<T>(c);
      c = mk(45, 33, 70, "specials");
      c.alpha = v[0], c.beta = v[1], c.entry = e, c.amode = e + 1, c.bmode = 2 - e, c.specials = true;
      c.rsums = e > 0;
      run_case<T>(c);
    }
  // k == 0 (C = beta * C, row sums 0) and empty problems
  for (auto& v : ab)
    for (int e = 0; e < 3; ++e) {
      Case c = mk(17, 23, 0, "k0");
      c.alpha = v[0], c.beta = v[1], c.entry = e;
      run_case<T>(c);
      c.tag = "k0-epi", c.entry = 1 + e % 2, c.bias = true, c.unary = (int)UnaryFn::Tanh, c.dmode = e, c.rsums = true;
      run_case<T>(c);
      c.tag = "k0-prologue", c.unary = -1, c.prologue = (int)UnaryFn::Tanh, c.amode = e % 2;
      run_case<T>(c);
    }
  for (int e = 0; e < 3; ++e) {
    const int64_t empty[][3] = {{0, 5, 7}, {5, 0, 7}, {0, 0, 0}, {0, 5, 0}, {5, 0, 0}};
    for (const auto& s : empty) {
      Case c = mk(s[0], s[1], s[2], "empty");
      c.entry = e;
      run_case<T>(c);
      if (e == 0) continue;
      c.tag = "empty-epi", c.bias = true, c.unary = 0, c.dmode = 1, c.rsums = true;
      run_case<T>(c);
      c.tag = "empty-prologue", c.unary = -1, c.prologue = 0;
      run_case<T>(c);
    }
  }
  // Every activation with D none / separate / equal to C, and every prologue with A stored
  // along k, along m, or neither, with and without row sums, through gemm_ex and packed B.
  for (int f = 0; f < kFns; ++f)
    for (int dm = 0; dm < 3; ++dm) {
      Case c = mk(37, 66, 21, unary_name(static_cast<UnaryFn>(f)));
      c.amode = f % 4, c.bmode = (f + dm) % 4, c.alpha = 1.25, c.beta = dm == 1 ? 0 : 0.5;
      c.bias = (f + dm) % 2 == 0, c.unary = f, c.dmode = dm, c.rsums = dm == 2, c.entry = 1 + (f + dm) % 2;
      run_case<T>(c);
    }
  for (int f = 0; f < kFns; ++f)
    for (int am = 0; am < 4; ++am)
      for (int rs = 0; rs < 2; ++rs) {
        Case c = mk(29 + 6 * am, 45, 70 + 20 * rs, unary_name(static_cast<UnaryFn>(f)));
        c.prologue = f, c.amode = am, c.bmode = mode(rng), c.rsums = rs, c.entry = 1 + (f + am + rs) % 2;
        c.beta = rs ? 0.0 : 1.0, c.bias = am % 2, c.unary = am % 2 && rs ? (int)UnaryFn::Ramp : -1, c.dmode = 1;
        run_case<T>(c);
      }
  special_values<T>();
  // pack_b + gemm_packed_b against gemm_ex, bit for bit (tests/test_kernels_gemm.py's sizes and
  // more epilogues), on products that take the packed path.
  const int64_t psz[][3] = {{37, 45, 129}, {64, 70, 300}, {8, 200, 33}, {64, 300, 70}};
  for (const auto& s : psz)
    for (int t = 0; t < 4; ++t) {
      Case c = mk(s[0], s[1], s[2], "packed-bits");
      c.amode = t % 2, c.bmode = t / 2, c.alpha = 0.5, c.bias = true, c.unary = (int)UnaryFn::Tanh, c.packed_bits = true;
      run_case<T>(c);
      c.tag = "packed-bits-epi", c.beta = 1.5, c.unary = (int)UnaryFn::GELU, c.dmode = 1, c.rsums = true;
      c.amode = 2 + t % 2, c.bmode = 3 - t / 2;
      run_case<T>(c);
      c.tag = "packed-bits-prologue", c.amode = t % 2, c.bias = false, c.unary = -1, c.beta = 0;
      c.prologue = t < 2 ? (int)UnaryFn::Tanh : (int)UnaryFn::GELU;
      run_case<T>(c);
    }
  // 1, 2 and 3 threads, bit for bit, on products big enough to be split (128^3 multiply-adds):
  // square-ish, tall (rows split) and wide (columns split).
  const int64_t tsz[][3] = {{200, 260, 190}, {1031, 67, 40}, {13, 1200, 200}};
  for (const auto& s : tsz)
    for (int v = 0; v < 4; ++v) {
      Case c = mk(s[0], s[1], s[2], "threads");
      c.thread_bits = true, c.amode = v, c.bmode = (v + 1) % 4, c.entry = v == 0 ? 0 : v == 3 ? 2 : 1;
      if (v == 1 || v == 3) c.bias = true, c.unary = (int)UnaryFn::Tanh, c.dmode = v == 1 ? 1 : 2, c.rsums = true, c.beta = 0.5;
      if (v == 2) c.prologue = (int)UnaryFn::GELU, c.amode = 1, c.rsums = true;
      run_case<T>(c);
    }
  std::printf("== %s: %ld cases so far, %.1f s\n", tn, g_cases,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// The threads cases prove nothing if nothing ran on a second thread: the pool's workers are
// persistent, so the process must have more than one thread by now.
static void check_threads_used() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("Threads:", 0) == 0) {
      ++g_checks;
      if (std::atoi(line.c_str() + 8) < 2) FAIL("no product ran on a second thread (%s)", line.c_str());
    }
}

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);  // failures printed before a fault are not lost
  signal(SIGSEGV, on_fault);
  signal(SIGBUS, on_fault);
  suite<float>();
  suite<double>();
  check_threads_used();
  std::printf("cases %ld, checks %ld, failures %ld\n", g_cases, g_checks, g_fail);
  if (g_fail) {
    std::printf("FAIL " UNDER_TEST_NAME ": %ld of %ld checks failed\n", g_fail, g_checks);
    return 1;
  }
  std::printf("PASS " UNDER_TEST_NAME ": %ld cases, %ld checks\n", g_cases, g_checks);
  return 0;
}
