// Checks lt_plan (the cuBLASLt operand mapping) by running a column-major GEMM with exactly the
// layouts it returns (what cuBLASLt would compute) against the reference.
// lt_plan is internal to gemm.cu (an anonymous namespace): this driver compiles gemm.cu into itself.
// Run by tests/test_cuda_kernels.py.
#include "kernels/cuda/gemm.cu"
#include <cstdio>
#include <random>
#include <vector>
using namespace portgrad::kernels;
static double at(const double* p, const LtOperand& o, int64_t r, int64_t c) {  // op(X)(r, c)
  return o.trans ? p[c + r * o.ld] : p[r + c * o.ld];
}
int main() {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-1, 1);
  int planned = 0, refused = 0, bad = 0;
  const int64_t dims[] = {1, 2, 5, 9};
  for (int64_t m : dims) for (int64_t n : dims) for (int64_t k : dims)
  for (int am = 0; am < 4; ++am) for (int bm = 0; bm < 4; ++bm) for (int cpad = 0; cpad < 2; ++cpad) {
    auto strides = [&](int mode, int64_t R, int64_t C, int64_t& rs, int64_t& cs) {
      if (mode == 0) { cs = 1; rs = C + 2; } else if (mode == 1) { rs = 1; cs = R + 1; }
      else if (mode == 2) { rs = 1; cs = 1; } else { rs = 2; cs = 2 * R + 3; }
    };
    int64_t rsa, csa, rsb, csb; strides(am, m, k, rsa, csa); strides(bm, k, n, rsb, csb);
    const int64_t ldc = cpad ? n + 4 : n;
    if (am == 2 && !(m == 1 || k == 1)) continue;  // (1,1) only as a legal view of a vector
    if (bm == 2 && !(k == 1 || n == 1)) continue;
    std::vector<double> A(4000), B(4000), C(4000, 0.0), Cr(4000, 0.0);
    for (auto& v : A) v = u(rng);
    for (auto& v : B) v = u(rng);
    LtOperand la, lb, lc;
    if (!lt_plan(m, n, k, rsa, csa, rsb, csb, ldc, &la, &lb, &lc)) { ++refused; if (am < 2 && bm < 2) { std::printf("refused plain case m%ld n%ld k%ld am%d bm%d\n", (long)m, (long)n, (long)k, am, bm); ++bad; } continue; }
    ++planned;
    // shapes: op(A_cub) n x k, op(B_cub) k x m, C' n x m
    const uint64_t ar = la.trans ? la.cols : la.rows, ac = la.trans ? la.rows : la.cols;
    const uint64_t br = lb.trans ? lb.cols : lb.rows, bc = lb.trans ? lb.rows : lb.cols;
    if (ar != uint64_t(n) || ac != uint64_t(k) || br != uint64_t(k) || bc != uint64_t(m) || lc.rows != uint64_t(n) || lc.cols != uint64_t(m)) { ++bad; std::printf("shape\n"); continue; }
    if (la.ld < int64_t(la.rows) || lb.ld < int64_t(lb.rows) || lc.ld < int64_t(lc.rows) || la.ld < 1) { ++bad; std::printf("ld\n"); continue; }
    for (int64_t c = 0; c < m; ++c) for (int64_t r = 0; r < n; ++r) {
      double s = 0; for (int64_t p = 0; p < k; ++p) s += at(B.data(), la, r, p) * at(A.data(), lb, p, c);
      C[r + c * lc.ld] = s;
    }
    gemm_ref_f64.gemm(m, n, k, 1.0, A.data(), rsa, csa, B.data(), rsb, csb, 0.0, Cr.data(), ldc);
    for (size_t e = 0; e < C.size(); ++e) if (std::fabs(C[e] - Cr[e]) > 1e-12) { ++bad; std::printf("value m%ld n%ld k%ld am%d bm%d\n", (long)m, (long)n, (long)k, am, bm); break; }
  }
  std::printf("planned %d, refused %d, bad %d\n", planned, refused, bad);
  if (bad || planned == 0) { std::printf("FAIL gemm_ltplan: %d bad of %d planned\n", bad, planned); return 1; }
  std::printf("PASS gemm_ltplan: %d planned, %d refused\n", planned, refused);
  return 0;
}
