// CUDA conv/pool/norm kernels (emulator mode) vs the reference kernels; run by
// tests/test_cuda_kernels.py.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>
#include <limits>
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

#include "runtime_stubs.h"  // current_stream, note_error

using namespace portgrad::kernels;
static int g_fail = 0, g_checks = 0;
static std::mt19937_64 rng(42);

template <typename T> std::vector<T> rnd(int64_t n, bool ties = false) {
  std::uniform_real_distribution<double> u(-1, 1);
  std::uniform_int_distribution<int> ui(0, 3);
  std::vector<T> v(n);
  for (auto& e : v) e = ties ? T(ui(rng)) : T(u(rng));
  return v;
}
template <typename T> std::vector<T> nanv(int64_t n) { return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN()); }
template <typename T> double tol() { return sizeof(T) == 4 ? 2e-5 : 1e-11; }

template <typename T>
void cmp(const std::string& what, const std::vector<T>& got, const std::vector<T>& ref, double scale = 1.0,
         bool exact = false) {
  ++g_checks;
  if (got.size() != ref.size()) { std::printf("FAIL %s size\n", what.c_str()); ++g_fail; return; }
  double worst = 0; size_t wi = 0; int bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], r = ref[i];
    double err;
    if (std::isnan(r) || std::isnan(g)) err = (std::isnan(r) && std::isnan(g)) ? 0 : INFINITY;
    else err = std::fabs(g - r) / std::max(scale, std::fabs(r));
    if (exact && !(g == r) && !(std::isnan(g) && std::isnan(r))) err = INFINITY;
    if (err > worst) { worst = err; wi = i; }
    if (err > (exact ? 0 : tol<T>())) ++bad;
  }
  if (bad) {
    ++g_fail;
    std::printf("FAIL %s (%s): %d bad of %zu, worst %g at %zu: got %.17g ref %.17g\n", what.c_str(),
                sizeof(T) == 4 ? "f32" : "f64", bad, got.size(), worst, wi, double(got[wi]), double(ref[wi]));
  }
}

// ---------------- conv
// ops: which products a case checks. The large cases skip the products whose tile shape and
// geometry the small cases already cover: in the emulator each costs seconds.
enum ConvOps : unsigned { kFwd = 1, kBwdData = 2, kBwdWeights = 4, kBiasBwd = 8, kAllOps = 15 };
struct CC { const char* name; int64_t batch, c_in, c_out, groups; int dims; int64_t in[3], k[3], st[3], dil[3], pb[3], pa[3]; unsigned ops = kAllOps; };

template <typename T>
void test_conv(const ConvKernels<T>& gk, const ConvKernels<T>& rk, const CC& c) {
  ConvShape s;
  s.batch = c.batch; s.c_in = c.c_in; s.c_out = c.c_out; s.groups = c.groups;
  for (int d = 0; d < 3; ++d) {
    const int dd = d - (3 - c.dims);
    if (dd < 0) continue;
    s.in[d] = c.in[dd]; s.k[d] = c.k[dd]; s.stride[d] = c.st[dd]; s.dilation[d] = c.dil[dd]; s.pad[d] = c.pb[dd];
    s.out[d] = (c.in[dd] + c.pb[dd] + c.pa[dd] - c.dil[dd] * (c.k[dd] - 1) - 1) / c.st[dd] + 1;
  }
  const int64_t in_sp = s.in[0] * s.in[1] * s.in[2], out_sp = s.out[0] * s.out[1] * s.out[2], k_sp = s.k[0] * s.k[1] * s.k[2];
  const int64_t nx = s.batch * s.c_in * in_sp, ny = s.batch * s.c_out * out_sp, nw = s.c_out * (s.c_in / s.groups) * k_sp;
  auto x = rnd<T>(nx), w = rnd<T>(nw), dy = rnd<T>(ny), bias = rnd<T>(s.c_out);
  std::string nm = std::string("conv ") + c.name;
  if (gk.workspace_bytes(s) != 0) { std::printf("FAIL workspace\n"); ++g_fail; }
  // scale for sums: the number of terms as magnitude reference
  const int64_t cig = s.c_in / s.groups, cog = s.c_out / s.groups;
  const double sf = std::sqrt(double(cig * k_sp)), sd = std::sqrt(double(cog * k_sp)), sw = std::sqrt(double(s.batch * out_sp));
  if (c.ops & kFwd) { auto yr = nanv<T>(ny), yg = nanv<T>(ny); rk.forward(s, x.data(), w.data(), yr.data(), nullptr);
    gk.forward(s, x.data(), w.data(), yg.data(), nullptr); cmp(nm + " forward", yg, yr, sf);
    auto y2 = yr; rk.bias_forward(s.batch, s.c_out, out_sp, bias.data(), yr.data());
    gk.bias_forward(s.batch, s.c_out, out_sp, bias.data(), y2.data()); cmp(nm + " bias_forward", y2, yr);
  }
  if (c.ops & kBwdData) { auto r = nanv<T>(nx), g = nanv<T>(nx); rk.backward_data(s, dy.data(), w.data(), r.data(), nullptr);
    gk.backward_data(s, dy.data(), w.data(), g.data(), nullptr); cmp(nm + " backward_data", g, r, sd); }
  if (c.ops & kBwdWeights) { auto r = nanv<T>(nw), g = nanv<T>(nw); rk.backward_weights(s, x.data(), dy.data(), r.data(), nullptr);
    gk.backward_weights(s, x.data(), dy.data(), g.data(), nullptr); cmp(nm + " backward_weights", g, r, sw); }
  if (c.ops & kBiasBwd) { auto r = nanv<T>(s.c_out), g = nanv<T>(s.c_out); rk.bias_backward(s.batch, s.c_out, out_sp, dy.data(), r.data());
    gk.bias_backward(s.batch, s.c_out, out_sp, dy.data(), g.data()); cmp(nm + " bias_backward", g, r); }
}

static const CC conv_cases[] = {
  // name, batch, cin, cout, groups, dims, in, k, stride, dil, pad_before, pad_after
  {"1d basic", 1, 1, 1, 1, 1, {7}, {3}, {1}, {1}, {0}, {0}},
  {"1d s2 d2 asym", 3, 3, 5, 1, 1, {13}, {3}, {2}, {2}, {2}, {1}},
  {"1d groups", 3, 6, 4, 2, 1, {11}, {4}, {3}, {1}, {1}, {3}},
  {"1d k>in pad", 1, 5, 3, 1, 1, {3}, {5}, {1}, {1}, {2}, {2}},
  {"2d basic", 1, 3, 5, 1, 2, {7, 9}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}},
  {"2d stride dil asym", 3, 5, 3, 1, 2, {9, 7}, {3, 2}, {2, 3}, {2, 1}, {0, 2}, {2, 1}},
  {"2d depthwise", 3, 5, 5, 5, 2, {7, 5}, {3, 3}, {1, 2}, {1, 1}, {1, 1}, {1, 0}},
  {"2d depthwise mult", 1, 3, 6, 3, 2, {6, 5}, {3, 2}, {2, 1}, {1, 2}, {1, 1}, {2, 1}},
  {"2d groups 3", 3, 6, 9, 3, 2, {5, 7}, {2, 3}, {1, 1}, {2, 1}, {1, 0}, {0, 1}},
  {"2d 1x1", 3, 5, 3, 1, 2, {5, 3}, {1, 1}, {1, 1}, {1, 1}, {0, 0}, {0, 0}},
  {"2d 1x1 s2", 1, 3, 5, 1, 2, {5, 7}, {1, 1}, {2, 2}, {1, 1}, {0, 0}, {0, 0}},
  {"2d stride>k", 3, 1, 5, 1, 2, {11, 10}, {2, 2}, {3, 3}, {1, 1}, {1, 0}, {0, 2}},
  {"2d big M", 1, 20, 70, 1, 2, {5, 5}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}},
  {"2d big K", 1, 40, 17, 1, 2, {4, 5}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}},
  {"2d big N", 3, 3, 3, 1, 2, {13, 11}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}},
  {"3d basic", 1, 3, 5, 1, 3, {5, 4, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}},
  {"3d mixed", 3, 5, 3, 1, 3, {5, 6, 7}, {3, 2, 3}, {2, 1, 3}, {1, 2, 1}, {1, 0, 2}, {2, 1, 0}},
  {"3d groups", 1, 4, 6, 2, 3, {4, 5, 3}, {2, 3, 1}, {1, 2, 1}, {2, 1, 1}, {1, 1, 0}, {0, 1, 1}},
  {"3d depthwise", 3, 3, 3, 3, 3, {3, 4, 5}, {3, 3, 3}, {1, 1, 2}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
  {"1d wgrad thin", 3, 1, 40, 1, 1, {20}, {3}, {1}, {1}, {1}, {0}},
  {"2d thin N", 1, 5, 40, 1, 2, {4, 4}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}},
  // big enough for 64-wide tiles under the default block threshold
  {"2d big fwd", 3, 3, 65, 1, 2, {48, 60}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, kFwd | kBiasBwd},
  {"2d big bwd-data", 3, 65, 3, 1, 2, {48, 60}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, kBwdData},
  {"1d big depthwise", 2, 300, 300, 300, 1, {70}, {3}, {1}, {1}, {1}, {1}, kFwd | kBwdData | kBwdWeights},
  {"2d big wgrad", 1, 70, 260, 1, 2, {3, 3}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, kBwdWeights | kBiasBwd},
};

// ---------------- pool
struct PC { const char* name; int64_t planes; int dims; int64_t in[3], k[3], st[3], pb[3], pa[3]; };
template <typename T>
void test_pool(const PoolKernels<T>& gk, const PoolKernels<T>& rk, const PC& c) {
  PoolShape s; s.planes = c.planes;
  for (int d = 0; d < 3; ++d) {
    const int dd = d - (3 - c.dims);
    if (dd < 0) continue;
    s.in[d] = c.in[dd]; s.k[d] = c.k[dd]; s.stride[d] = c.st[dd]; s.pad[d] = c.pb[dd];
    s.out[d] = (c.in[dd] + c.pb[dd] + c.pa[dd] - c.k[dd]) / c.st[dd] + 1;
  }
  const int64_t nx = s.planes * s.in[0] * s.in[1] * s.in[2], ny = s.planes * s.out[0] * s.out[1] * s.out[2];
  for (int ties = 0; ties < 2; ++ties) {
    auto x = rnd<T>(nx, ties), dy = rnd<T>(ny);
    for (PoolFn f : {PoolFn::Max, PoolFn::Mean, PoolFn::Total}) {
      std::string nm = std::string("pool ") + c.name + (ties ? " ties " : " ") + (f == PoolFn::Max ? "max" : f == PoolFn::Mean ? "mean" : "total");
      auto yr = nanv<T>(ny), yg = nanv<T>(ny);
      rk.forward(f, s, x.data(), yr.data()); gk.forward(f, s, x.data(), yg.data());
      cmp(nm + " forward", yg, yr, 1.0, f == PoolFn::Max);
      auto dr = nanv<T>(nx), dg = nanv<T>(nx);
      rk.backward(f, s, x.data(), dy.data(), dr.data()); gk.backward(f, s, x.data(), dy.data(), dg.data());
      cmp(nm + " backward", dg, dr);
    }
  }
}
static const PC pool_cases[] = {
  {"1d", 3, 1, {9}, {3}, {2}, {1}, {1}},
  {"1d allpad", 2, 1, {5}, {2}, {1}, {2}, {3}},
  {"2d", 3, 2, {7, 6}, {3, 2}, {2, 2}, {1, 0}, {1, 1}},
  {"2d overlap", 2, 2, {6, 7}, {3, 3}, {1, 1}, {1, 1}, {1, 1}},
  {"2d allpad", 2, 2, {4, 5}, {2, 3}, {2, 3}, {2, 3}, {2, 3}},
  {"2d stride>k", 3, 2, {9, 8}, {2, 2}, {3, 3}, {0, 1}, {1, 0}},
  {"3d", 2, 3, {5, 4, 6}, {2, 3, 2}, {2, 1, 2}, {1, 1, 0}, {0, 1, 1}},
  {"3d allpad", 1, 3, {3, 3, 3}, {2, 2, 2}, {2, 2, 2}, {2, 0, 2}, {2, 1, 0}},
  {"global", 3, 2, {5, 7}, {5, 7}, {1, 1}, {0, 0}, {0, 0}},
};

// ---------------- norm
template <typename T>
void test_bn(const NormKernels<T>& gk, const NormKernels<T>& rk, int64_t B, int64_t C, int64_t S) {
  std::string nm = "bn B" + std::to_string(B) + " C" + std::to_string(C) + " S" + std::to_string(S);
  const int64_t n = B * C * S;
  auto x = rnd<T>(n), dy = rnd<T>(n), gamma = rnd<T>(C), beta = rnd<T>(C);
  for (auto& v : x) v = T(3.0 + 2.0 * v);  // offset mean: two-pass matters
  auto mr = nanv<T>(C), vr = nanv<T>(C), mg = nanv<T>(C), vg = nanv<T>(C);
  rk.channel_moments(B, C, S, x.data(), mr.data(), vr.data());
  gk.channel_moments(B, C, S, x.data(), mg.data(), vg.data());
  cmp(nm + " mean", mg, mr); cmp(nm + " var", vg, vr);
  auto ir = nanv<T>(C), ig = nanv<T>(C);
  rk.inv_std(C, vr.data(), 1e-5, ir.data()); gk.inv_std(C, vr.data(), 1e-5, ig.data());
  cmp(nm + " inv_std", ig, ir);
  auto yr = nanv<T>(n), yg = nanv<T>(n);
  rk.channel_forward(B, C, S, x.data(), mr.data(), ir.data(), gamma.data(), beta.data(), yr.data());
  gk.channel_forward(B, C, S, x.data(), mr.data(), ir.data(), gamma.data(), beta.data(), yg.data());
  cmp(nm + " forward", yg, yr);
  { auto ya = x; gk.channel_forward(B, C, S, ya.data(), mr.data(), ir.data(), gamma.data(), beta.data(), ya.data());
    cmp(nm + " forward aliased", ya, yr); }
  for (int bs = 0; bs < 2; ++bs)
    for (int which = 0; which < 4; ++which) {
      // which: 0 all, 1 dx only, 2 dgamma+dbeta only, 3 dx+dbeta
      auto dxr = nanv<T>(n), dxg = nanv<T>(n), dgr = nanv<T>(C), dgg = nanv<T>(C), dbr = nanv<T>(C), dbg = nanv<T>(C);
      const bool wdx = which != 2, wdg = which == 0 || which == 2, wdb = which != 1;
      rk.channel_backward(B, C, S, x.data(), dy.data(), mr.data(), ir.data(), gamma.data(), bs, wdx ? dxr.data() : nullptr,
                          wdg ? dgr.data() : nullptr, wdb ? dbr.data() : nullptr);
      gk.channel_backward(B, C, S, x.data(), dy.data(), mr.data(), ir.data(), gamma.data(), bs, wdx ? dxg.data() : nullptr,
                          wdg ? dgg.data() : nullptr, wdb ? dbg.data() : nullptr);
      std::string k = nm + " backward bs" + std::to_string(bs) + " w" + std::to_string(which);
      cmp(k + " dx", dxg, dxr); cmp(k + " dgamma", dgg, dgr); cmp(k + " dbeta", dbg, dbr);
    }
  for (int bs = 0; bs < 2; ++bs) {  // dx aliasing dy
    auto dxr = nanv<T>(n), dgr = nanv<T>(C), dbr = nanv<T>(C), dgg = nanv<T>(C), dbg = nanv<T>(C);
    rk.channel_backward(B, C, S, x.data(), dy.data(), mr.data(), ir.data(), gamma.data(), bs, dxr.data(), dgr.data(), dbr.data());
    auto d = dy;
    gk.channel_backward(B, C, S, x.data(), d.data(), mr.data(), ir.data(), gamma.data(), bs, d.data(), dgg.data(), dbg.data());
    cmp(nm + " backward aliased dx", d, dxr); cmp(nm + " backward aliased dgamma", dgg, dgr);
  }
  auto rm = rnd<T>(C), rv = rnd<T>(C);
  for (auto& v : rv) v = std::fabs(v);
  auto rm2 = rm, rv2 = rv;
  rk.running_update(C, 0.9, B * S, mr.data(), vr.data(), rm.data(), rv.data());
  gk.running_update(C, 0.9, B * S, mr.data(), vr.data(), rm2.data(), rv2.data());
  cmp(nm + " running_mean", rm2, rm); cmp(nm + " running_var", rv2, rv);
}

template <typename T>
void test_ln(const NormKernels<T>& gk, const NormKernels<T>& rk, int64_t B, int64_t R, int64_t N, bool pe) {
  std::string nm = "ln B" + std::to_string(B) + " R" + std::to_string(R) + " N" + std::to_string(N) + (pe ? " per_elem" : " per_row");
  const int64_t n = B * R * N, P = pe ? R * N : R;
  auto x = rnd<T>(n), dy = rnd<T>(n), gamma = rnd<T>(P), beta = rnd<T>(P);
  for (auto& v : x) v = T(-2.0 + 1.5 * v);
  auto yr = nanv<T>(n), yg = nanv<T>(n), mr = nanv<T>(B * R), mg = nanv<T>(B * R), ir = nanv<T>(B * R), ig = nanv<T>(B * R);
  rk.row_forward(B, R, N, pe, 1e-5, x.data(), gamma.data(), beta.data(), yr.data(), mr.data(), ir.data());
  gk.row_forward(B, R, N, pe, 1e-5, x.data(), gamma.data(), beta.data(), yg.data(), mg.data(), ig.data());
  cmp(nm + " y", yg, yr); cmp(nm + " mean", mg, mr); cmp(nm + " invstd", ig, ir);
  for (int which = 0; which < 3; ++which) {
    auto dxr = nanv<T>(n), dxg = nanv<T>(n), dgr = nanv<T>(P), dgg = nanv<T>(P), dbr = nanv<T>(P), dbg = nanv<T>(P);
    const bool wdx = which != 2, wp = which != 1;
    rk.row_backward(B, R, N, pe, x.data(), dy.data(), mr.data(), ir.data(), gamma.data(), wdx ? dxr.data() : nullptr,
                    wp ? dgr.data() : nullptr, wp ? dbr.data() : nullptr);
    gk.row_backward(B, R, N, pe, x.data(), dy.data(), mr.data(), ir.data(), gamma.data(), wdx ? dxg.data() : nullptr,
                    wp ? dgg.data() : nullptr, wp ? dbg.data() : nullptr);
    std::string k = nm + " backward w" + std::to_string(which);
    cmp(k + " dx", dxg, dxr); cmp(k + " dgamma", dgg, dgr); cmp(k + " dbeta", dbg, dbr);
  }
}

template <typename T>
void test_dropout(const NormKernels<T>& gk, const NormKernels<T>& rk, int64_t n, double p, uint64_t key) {
  auto x = rnd<T>(n);
  auto yr = nanv<T>(n), yg = nanv<T>(n);
  rk.dropout(n, p, key, x.data(), yr.data());
  gk.dropout(n, p, key, x.data(), yg.data());
  cmp("dropout n" + std::to_string(n) + " p" + std::to_string(p), yg, yr, 1.0, true);
  auto ya = x; gk.dropout(n, p, key, ya.data(), ya.data());
  cmp("dropout aliased", ya, yr, 1.0, true);
}

template <typename T>
void run_all(const ConvKernels<T>& cg, const ConvKernels<T>& cr, const PoolKernels<T>& pg, const PoolKernels<T>& pr,
             const NormKernels<T>& ng, const NormKernels<T>& nr) {
  for (const auto& c : conv_cases) test_conv(cg, cr, c);
  for (const auto& c : pool_cases) test_pool(pg, pr, c);
  test_bn(ng, nr, 2, 3, 1);     // spatial 1, m = 2
  test_bn(ng, nr, 1, 2, 2);     // m = 2
  test_bn(ng, nr, 3, 5, 7);
  test_bn(ng, nr, 2, 3, 300);   // spatial >= 256
  test_bn(ng, nr, 700, 2, 1);   // many batch, spatial 1
  test_bn(ng, nr, 5, 4, 97);
  for (bool pe : {false, true}) {
    test_ln(ng, nr, 1, 1, 1, pe);
    test_ln(ng, nr, 3, 2, 7, pe);
    test_ln(ng, nr, 2, 3, 300, pe);
    test_ln(ng, nr, 3, 5, 64, pe);
    test_ln(ng, nr, 1, 4, 257, pe);
  }
  test_dropout(ng, nr, 1, 0.5, 123);
  test_dropout(ng, nr, 5000, 0.3, portgrad::kernels::dropout_rng::key(7, 11));
  test_dropout(ng, nr, 777, 0.0, 99);
  test_dropout(ng, nr, 1000, 0.9, 0xfedcba9876543210ULL);
  if (sizeof(T) == 4) test_dropout(ng, nr, (int64_t(4096) * 256) + 12345, 0.25, 77);  // grid-stride wrap
}

int main() {
  run_all<float>(conv_cuda_f32, conv_ref_f32, pool_cuda_f32, pool_ref_f32, norm_cuda_f32, norm_ref_f32);
  run_all<double>(conv_cuda_f64, conv_ref_f64, pool_cuda_f64, pool_ref_f64, norm_cuda_f64, norm_ref_f64);
  std::printf("%d checks, %d failures\n", g_checks, g_fail);
  if (g_fail) { std::printf("FAIL spatial: %d of %d checks failed\n", g_fail, g_checks); return 1; }
  std::printf("PASS spatial: %d checks\n", g_checks);
  return 0;
}
