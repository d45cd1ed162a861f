// Check of csrc/kernels/cuda/gemm.cu (emulator mode) against the reference GEMM; run by
// tests/test_cuda_kernels.py.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"
#include "kernels/gemm.h"
#include "kernels/unary.h"

#include "runtime_stubs.h"
#include "../kernel_checks/gemm_check.h"

static int& g_errors_noted = portgrad::cuda_test::errors_noted;
static bool& g_expect_error = portgrad::cuda_test::expect_error;

using namespace portgrad::kernels;
using namespace portgrad::kernels::gemm_check;
static std::mt19937_64 rng(42);
static long g_checks = 0, g_fail = 0, g_cases = 0;

template <typename T> const GemmKernels<T>& cuda_tab();
template <> const GemmKernels<float>& cuda_tab<float>() { return gemm_cuda_f32; }
template <> const GemmKernels<double>& cuda_tab<double>() { return gemm_cuda_f64; }
// Layout of an operand: element (r, c) at base + r*rs + c*cs in a buffer `buf` (guarded).
template <typename T>
struct Operand {
  std::vector<T> buf;
  int64_t off = 0, rs = 0, cs = 0;
  const T* ptr() const { return buf.data() + off; }
  T at(int64_t r, int64_t c) const { return buf[off + r * rs + c * cs]; }
};

// mode: 0 row-major, 1 transposed (column-major), 2 general (non-unit both), 3 negative strides
template <typename T>
Operand<T> make_operand(int64_t R, int64_t Cc, int mode) {
  Operand<T> o;
  std::uniform_real_distribution<double> u(-1, 1);
  int64_t span;
  if (mode == 0) { o.cs = 1; o.rs = Cc + 3; span = R * o.rs; }
  else if (mode == 1) { o.rs = 1; o.cs = R + 2; span = Cc * o.cs; }
  else if (mode == 2) { o.cs = 3; o.rs = 3 * Cc + 5; span = R * o.rs + 8; }
  else { o.cs = -2; o.rs = -(2 * Cc + 1); span = R * (-o.rs) + 8; }
  o.buf.resize(span + 16);
  for (auto& v : o.buf) v = T(u(rng));
  if (mode == 3) o.off = span - 1; else o.off = 0;
  return o;
}

#define FAIL(...) do { if (g_fail < 30) { std::printf(__VA_ARGS__); std::printf("\n"); } ++g_fail; } while (0)

// dmode: 0 no D (unary into C), 1 D separate, 2 D == C
template <typename T>
void run_case(int64_t m, int64_t n, int64_t k, int amode, int bmode, T alpha, T beta, bool use_bias,
              int unary, int dmode, bool rsums, const char* tag) {
  ++g_cases;
  Operand<T> A = make_operand<T>(m, k, amode);
  Operand<T> B = make_operand<T>(k, n, bmode);
  std::uniform_real_distribution<double> u(-1, 1);
  const int64_t ldc = n + 3, ldd = n + 5, guard = 17;
  std::vector<T> C0(m * ldc + guard);
  for (auto& v : C0) v = T(u(rng));
  for (int64_t i = 0; i < m; ++i) for (int64_t j = n; j < ldc; ++j) C0[i * ldc + j] = sentinel<T>();
  for (int64_t g = 0; g < guard; ++g) C0[m * ldc + g] = sentinel<T>();
  if (beta == T(0)) for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) C0[i * ldc + j] = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> bias(n + 4);
  for (auto& v : bias) v = T(u(rng));
  std::vector<T> D0(m * ldd + guard, sentinel<T>());
  std::vector<T> rs0(m + 5, sentinel<T>());

  auto make_epi = [&](T* C, T* D, T* rs) {
    GemmEpilogue<T> e;
    if (use_bias) e.bias = bias.data();
    if (unary >= 0) e.unary = static_cast<UnaryFn>(unary);
    if (dmode == 1) { e.D = D; e.ldd = ldd; }
    if (dmode == 2) { e.D = C; e.ldd = ldc; }
    if (rsums) e.row_sums = rs;
    return e;
  };
  // reference
  std::vector<T> Cr = C0, Dr = D0, rsr = rs0;
  GemmEpilogue<T> er = make_epi(Cr.data(), Dr.data(), rsr.data());
  ref_tab<T>().gemm_ex(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, Cr.data(), ldc, er);
  // kernel
  std::vector<T> Cg = C0, Dg = D0, rsg = rs0;
  GemmEpilogue<T> eg = make_epi(Cg.data(), Dg.data(), rsg.data());
  if (unary < 0 && !use_bias && !rsums && dmode == 0 && (m + n + k) % 2 == 0)
    cuda_tab<T>().gemm(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, Cg.data(), ldc);
  else
    cuda_tab<T>().gemm_ex(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, Cg.data(), ldc, eg);

  // The pre-activation C of the kernel: when the activation overwrote C, rerun with D separate.
  std::vector<T> Cpre = Cg;
  const bool act_in_c = unary >= 0 && dmode != 1;
  if (act_in_c) {
    std::vector<T> C2 = C0, D2 = D0, rs2 = rs0;
    GemmEpilogue<T> e2 = make_epi(C2.data(), D2.data(), rs2.data());
    e2.D = D2.data(); e2.ldd = ldd;
    cuda_tab<T>().gemm_ex(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, C2.data(), ldc, e2);
    Cpre = C2;
    // D == C result must equal, bit for bit, the separate D of the same product.
    for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) {
      ++g_checks;
      if (!same_bits(Cg[i * ldc + j], D2[i * ldd + j])) FAIL("[%s] in-place activation differs from separate D at %ld,%ld", tag, (long)i, (long)j);
    }
  }
  // C (pre-activation) against the reference value, bounded by sum |alpha a b| + |beta c| + |bias|.
  std::vector<T> Cref_pre = Cr;
  if (act_in_c) {  // reference pre-activation: rerun reference without unary
    std::vector<T> C3 = C0, rs3 = rs0; GemmEpilogue<T> e3; if (use_bias) e3.bias = bias.data();
    ref_tab<T>().gemm_ex(m, n, k, alpha, A.ptr(), A.rs, A.cs, B.ptr(), B.rs, B.cs, beta, C3.data(), ldc, e3);
    Cref_pre = C3;
  }
  for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int64_t p = 0; p < k; ++p) s += std::fabs(double(A.at(i, p)) * double(B.at(p, j)));
    double scale = std::fabs(double(alpha)) * s + (beta != T(0) ? std::fabs(double(beta) * double(C0[i * ldc + j])) : 0.0) + (use_bias ? std::fabs(double(bias[j])) : 0.0);
    ++g_checks;
    if (!close_num<T>(Cpre[i * ldc + j], Cref_pre[i * ldc + j], tol<T>() * scale + 1e-300))
      FAIL("[%s] C mismatch %ld,%ld m=%ld n=%ld k=%ld got %.17g want %.17g scale %g", tag, (long)i, (long)j, (long)m, (long)n, (long)k, double(Cpre[i * ldc + j]), double(Cref_pre[i * ldc + j]), scale);
  }
  // activation output against the reference unary of the kernel's own pre-activation C
  if (unary >= 0) {
    const T* Dout = dmode == 1 ? Dg.data() : Cg.data();
    const int64_t ld = dmode == 1 ? ldd : ldc;
    std::vector<T> want(n > 0 ? n : 1);
    for (int64_t i = 0; i < m; ++i) {
      if (n > 0) uref<T>().forward(static_cast<UnaryFn>(unary), n, Cpre.data() + i * ldc, want.data());
      for (int64_t j = 0; j < n; ++j) {
        ++g_checks;
        const double w = want[j], g = Dout[i * ld + j];
        if (!close_num<T>(g, w, act_tol<T>() * std::fabs(w) + act_atol<T>(unary)))
          FAIL("[%s] act %s mismatch at %ld,%ld x=%.17g got %.17g want %.17g", tag, unary_name(static_cast<UnaryFn>(unary)), (long)i, (long)j, double(Cpre[i * ldc + j]), g, w);
      }
    }
  }
  // untouched: padding columns and guards of C, all of D outside the written region
  for (int64_t e = 0; e < (int64_t)C0.size(); ++e) {
    const int64_t i = e / ldc, j = e % ldc;
    if (i < m && j < n) continue;
    ++g_checks;
    if (!same_bits(Cg[e], C0[e])) FAIL("[%s] C guard/padding touched at %ld", tag, (long)e);
  }
  for (int64_t e = 0; e < (int64_t)D0.size(); ++e) {
    const int64_t i = e / ldd, j = e % ldd;
    if (dmode == 1 && unary >= 0 && i < m && j < n) continue;
    ++g_checks;
    if (!same_bits(Dg[e], D0[e])) FAIL("[%s] D guard/padding touched at %ld", tag, (long)e);
  }
  // row sums
  for (int64_t i = 0; i < (int64_t)rs0.size(); ++i) {
    ++g_checks;
    if (rsums && i < m) {
      double s = 0; for (int64_t p = 0; p < k; ++p) s += std::fabs(double(A.at(i, p)));
      if (!close_num<T>(rsg[i], rsr[i], tol<T>() * s + 1e-300)) FAIL("[%s] row_sums mismatch %ld got %.17g want %.17g", tag, (long)i, double(rsg[i]), double(rsr[i]));
    } else if (!same_bits(rsg[i], rs0[i])) FAIL("[%s] row_sums guard touched at %ld", tag, (long)i);
  }
}

// Activations on chosen values (kinks, +-inf, NaN, large): k == 0, beta == 1, so C = C0 exactly.
template <typename T>
void special_values() {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> vals = {-inf, inf, nan, T(0), T(-0.0), T(1), T(-1), T(3), T(-3), T(2.5), T(-2.5), T(40), T(41), T(-40),
                         T(-41), T(100), T(-100), T(1e30), T(-1e30), T(1e-30), T(-1e-30), T(0.5), T(-0.5), T(20), T(-20),
                         T(88), T(-88), T(710), T(-710), T(1e-3), T(-1e-3), T(7.25), T(-7.25), T(1.0000001), T(-0.9999999)};
  const int64_t m = 3, n = static_cast<int64_t>(vals.size()), ldc = n + 2;
  for (int f = 0; f < static_cast<int>(UnaryFn::Count); ++f) {
    std::vector<T> C(m * ldc + 8, sentinel<T>());
    for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = vals[(j + i * 7) % n];
    std::vector<T> D(C.size(), sentinel<T>());
    GemmEpilogue<T> e; e.unary = static_cast<UnaryFn>(f); e.D = D.data(); e.ldd = ldc;
    T dummy = T(1);
    cuda_tab<T>().gemm_ex(m, n, 0, T(1), &dummy, 1, 1, &dummy, 1, 1, T(1), C.data(), ldc, e);
    std::vector<T> want(n);
    for (int64_t i = 0; i < m; ++i) {
      uref<T>().forward(static_cast<UnaryFn>(f), n, C.data() + i * ldc, want.data());
      for (int64_t j = 0; j < n; ++j) {
        ++g_checks;
        const double x = C[i * ldc + j], g = D[i * ldc + j], w = want[j];
        bool ok = close_num<T>(g, w, act_tol<T>() * std::fabs(w) + act_atol<T>(f));
        if (ok && w == 0 && g == 0 && std::signbit(w) != std::signbit(g)) ok = false;
        if (!ok) FAIL("special %s(%s) x=%.17g got %.17g want %.17g", unary_name(static_cast<UnaryFn>(f)), sizeof(T) == 4 ? "f32" : "f64", x, g, w);
      }
    }
  }
}

// The scale epilogue (D = C * S[i % period]), D separate and D == C: the product's own bits (the
// same kernel without the epilogue) times S.
template <typename T>
void scale_epilogue() {
  const int64_t m = 37, n = 66, k = 21, period = 10, lds = n + 3;
  std::uniform_real_distribution<double> u(-2, 2);
  std::vector<T> A(m * k), B(k * n), bias(n), S(period * lds);
  for (auto* v : {&A, &B, &bias, &S}) for (auto& e : *v) e = T(u(rng));
  GemmEpilogue<T> plain;
  plain.bias = bias.data();
  std::vector<T> Cp(m * n);
  cuda_tab<T>().gemm_ex(m, n, k, T(1), A.data(), k, 1, B.data(), n, 1, T(0), Cp.data(), n, plain);
  for (int dm = 1; dm <= 2; ++dm) {
    std::vector<T> C(m * n, sentinel<T>()), D(m * n, sentinel<T>());
    GemmEpilogue<T> e = plain;
    e.scale = S.data(), e.lds = lds, e.scale_period = period;
    e.D = dm == 1 ? D.data() : C.data(), e.ldd = n;
    cuda_tab<T>().gemm_ex(m, n, k, T(1), A.data(), k, 1, B.data(), n, 1, T(0), C.data(), n, e);
    const std::vector<T>& got = dm == 1 ? D : C;
    ++g_cases;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        ++g_checks;
        const T want = Cp[i * n + j] * S[i % period * lds + j];
        if (!same_bits(got[i * n + j], want))
          FAIL("[scale D%d] mismatch at %ld,%ld got %.17g want %.17g", dm, (long)i, (long)j, double(got[i * n + j]), double(want));
        if (dm == 1 && !same_bits(C[i * n + j], Cp[i * n + j])) FAIL("[scale] C is not the product at %ld,%ld", (long)i, (long)j);
      }
  }
}

// gemm_batched (one launch, the batch on grid.z): every product bit for bit gemm's, with the
// two-level offsets of attention's [examples, heads] layout, and the C between products untouched.
template <typename T>
void batched() {
  std::uniform_real_distribution<double> u(-1, 1);
  const int64_t shapes[][3] = {{5, 7, 3}, {17, 33, 16}, {64, 65, 9}, {1, 1, 1}};
  for (auto& sh : shapes) {
    const int64_t m = sh[0], n = sh[1], k = sh[2], outer = 3, inner = 4, count = outer * inner;
    GemmBatch bt;
    bt.count = count, bt.inner = inner;
    bt.inner_a = k, bt.outer_a = inner * m * k + 5;  // rows of length k, per product m x k (+ a gap)
    bt.inner_b = n, bt.outer_b = inner * k * n + 3;
    bt.inner_c = n, bt.outer_c = inner * m * n + 7;
    const int64_t lda = inner * k, ldb = inner * n, ldc = inner * n;  // products interleaved by rows
    std::vector<T> A(outer * bt.outer_a + m * lda), B(outer * bt.outer_b + k * ldb);
    for (auto& e : A) e = T(u(rng));
    for (auto& e : B) e = T(u(rng));
    std::vector<T> C(outer * bt.outer_c + m * ldc, sentinel<T>()), W = C;
    cuda_tab<T>().gemm_batched(bt, m, n, k, T(1.5), A.data(), lda, 1, B.data(), ldb, 1, T(0), C.data(), ldc);
    for (int64_t i = 0; i < count; ++i)
      cuda_tab<T>().gemm(m, n, k, T(1.5), A.data() + bt.a(i), lda, 1, B.data() + bt.b(i), ldb, 1, T(0),
                         W.data() + bt.c(i), ldc);
    ++g_cases;
    for (size_t e = 0; e < C.size(); ++e) {
      ++g_checks;
      if (!same_bits(C[e], W[e])) {
        FAIL("[batched %ldx%ldx%ld] element %zu: got %.17g want %.17g", (long)m, (long)n, (long)k, e, double(C[e]),
             double(W[e]));
        break;
      }
    }
  }
}

template <typename T>
void suite() {
  const char* tn = sizeof(T) == 4 ? "f32" : "f64";
  std::printf("== %s\n", tn);
  // sweep sizes 1..65 sampled, all transposes, plain gemm/gemm_ex
  std::vector<int64_t> sz = {1, 2, 3, 4, 5, 8, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65};
  std::uniform_int_distribution<int> pick(0, (int)sz.size() - 1), mode(0, 3), coin(0, 1);
  for (int it = 0; it < 60; ++it) {
    int64_t m = sz[pick(rng)], n = sz[pick(rng)], k = sz[pick(rng)];
    run_case<T>(m, n, k, it % 4, (it / 4) % 4, T(1), T(0), false, -1, 0, false, "sweep");
  }
  // each dimension alone through 1..65 (others fixed)
  for (int64_t d = 1; d <= 65; d += (d < 18 ? 1 : 7)) {
    run_case<T>(d, 19, 9, 0, 0, T(1), T(0), false, -1, 0, false, "sweep-m");
    run_case<T>(9, d, 19, 1, 0, T(1), T(0), false, -1, 0, false, "sweep-n");
    run_case<T>(19, 9, d, 0, 1, T(1), T(0), false, -1, 0, false, "sweep-k");
  }
  // primes and combos, all transposes incl. general and negative strides
  const int64_t pr[] = {7, 13, 31, 67};
  for (int64_t m : pr) for (int64_t n : pr) for (int64_t k : {13, 67}) {
    const int am = mode(rng), bm = mode(rng);
    run_case<T>(m, n, k, am, bm, T(1.5), T(-0.75), coin(rng), -1, 0, coin(rng), "primes");
  }
  for (int am = 0; am < 4; ++am) for (int bm = 0; bm < 4; ++bm)
    run_case<T>(67, 31, 13, am, bm, T(1), T(0), false, -1, 0, true, "transposes");
  run_case<T>(130, 70, 300, 0, 1, T(1), T(0), true, (int)UnaryFn::GELU, 1, true, "big-NT");
  run_case<T>(130, 70, 300, 1, 0, T(0.5), T(2), false, -1, 0, false, "big-TN");
  run_case<T>(130, 70, 300, 2, 2, T(1), T(1), true, (int)UnaryFn::Ramp, 2, true, "big-general");
  // alpha/beta variants
  const T ab[][2] = {{T(1), T(0)}, {T(1), T(1)}, {T(-2), T(0.5)}, {T(0), T(1)}, {T(0), T(0)}, {T(0.3), T(-1)}};
  for (auto& v : ab) run_case<T>(33, 65, 17, 0, 0, v[0], v[1], false, -1, 0, false, "alpha-beta");
  for (auto& v : ab) run_case<T>(65, 17, 33, 1, 1, v[0], v[1], true, -1, 0, true, "alpha-beta-bias");
  // k == 0
  for (auto& v : ab) {
    run_case<T>(17, 23, 0, 0, 0, v[0], v[1], false, -1, 0, false, "k0");
    run_case<T>(17, 23, 0, 1, 1, v[0], v[1], true, (int)UnaryFn::Tanh, 1, true, "k0-epi");
  }
  // empty problems
  run_case<T>(0, 5, 7, 0, 0, T(1), T(0), true, 0, 1, true, "m0");
  run_case<T>(5, 0, 7, 0, 0, T(1), T(0), true, 0, 1, true, "n0");
  run_case<T>(0, 0, 0, 0, 0, T(1), T(1), false, -1, 0, false, "000");
  // every activation, D none / separate / equal
  for (int f = 0; f < (int)UnaryFn::Count; ++f)
    for (int dm = 0; dm < 3; ++dm)
      run_case<T>(37, 66, 21, f % 4, (f + dm) % 4, T(1.25), dm == 1 ? T(0) : T(0.5), (f + dm) % 2 == 0, f, dm, dm == 2, unary_name((UnaryFn)f));
  special_values<T>();
  scale_epilogue<T>();
  batched<T>();
  // packing interface
  ++g_checks;
  if (cuda_tab<T>().packed_b_bytes(16, 16) != 0) FAIL("packed_b_bytes != 0");
  cuda_tab<T>().pack_b(4, 4, nullptr, 4, 1, nullptr);
  g_expect_error = true;
  const int before = g_errors_noted;
  T dummy = 0;
  cuda_tab<T>().gemm_packed_b(1, 1, 1, T(1), &dummy, 1, 1, nullptr, T(0), &dummy, 1, GemmEpilogue<T>{});
  g_expect_error = false;
  ++g_checks;
  if (g_errors_noted != before + 1) FAIL("gemm_packed_b did not note an error");
}

int main() {
  suite<float>();
  suite<double>();
  std::printf("cases %ld, checks %ld, failures %ld\n", g_cases, g_checks, g_fail);
  if (g_fail) { std::printf("FAIL gemm: %ld of %ld checks failed\n", g_fail, g_checks); return 1; }
  std::printf("PASS gemm: %ld cases, %ld checks\n", g_cases, g_checks);
  return 0;
}
