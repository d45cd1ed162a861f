// CUDA shape_ops/embed kernels (emulator) vs the reference; run by tests/test_cuda_kernels.py.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"

#include "runtime_stubs.h"  // current_stream, note_error
using namespace portgrad::kernels;

static std::mt19937_64 rng(42);
static long n_checks = 0, n_fail = 0, n_values = 0, n_inexact = 0;
static double worst_rel[2] = {0, 0};
static std::map<std::string, long> inexact_by;

template <typename T> bool same_bits(T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }

template <typename T>
void compare(const std::string& what, const std::vector<T>& ref, const std::vector<T>& got, bool exact,
             const std::vector<T>* scale = nullptr) {
  ++n_checks;
  const double tol = sizeof(T) == 8 ? 1e-12 : 1e-5;
  int bad = 0;
  if (ref.size() != got.size()) { std::printf("FAIL size %s\n", what.c_str()); ++n_fail; return; }
  for (size_t i = 0; i < ref.size(); ++i) {
    ++n_values;
    const T r = ref[i], g = got[i];
    if (std::isnan(r) && std::isnan(g)) continue;
    if (same_bits(r, g)) continue;
    ++n_inexact;
    inexact_by[what.substr(0, what.find(' ', what.find(' ') + 1))]++;
    bool ok = false;
    if (!exact && std::isfinite(r) && std::isfinite(g)) {
      const double d = std::fabs(double(r) - double(g));
      double s = std::max(std::fabs(double(r)), std::fabs(double(g)));
      const double rel = s == 0 ? 0 : d / s;
      worst_rel[sizeof(T) == 8] = std::max(worst_rel[sizeof(T) == 8], rel);
      if (scale) s = std::max(s, std::fabs(double((*scale)[i])));
      ok = d <= tol * s || d < 1e-300;
    }
    if (!ok) {
      if (bad < 5) std::printf("FAIL %s [%zu]: ref %.17g got %.17g\n", what.c_str(), i, double(r), double(g));
      ++bad;
    }
  }
  if (bad) ++n_fail;
}

// A random view over dims: strides and offset into a buffer of `size` elements.
struct View { std::vector<int64_t> st; int64_t off = 0, size = 1; };
enum Mode { Contig, Perm, Neg, Bcast, Mixed, Step };
View make_view(const std::vector<int64_t>& d, Mode mode) {
  const int r = int(d.size());
  View v; v.st.assign(r, 0);
  std::vector<int> order(r);
  for (int i = 0; i < r; ++i) order[i] = i;
  if (mode == Perm || mode == Mixed || mode == Neg) std::shuffle(order.begin(), order.end(), rng);
  int64_t s = (mode == Step || mode == Mixed) ? 2 : 1;
  for (int j = r - 1; j >= 0; --j) {
    const int ax = order[j];
    const bool zero = (mode == Bcast || mode == Mixed) && (rng() % 3 == 0);
    if (zero) { v.st[ax] = 0; continue; }
    v.st[ax] = s;
    s *= d[ax] + ((mode == Step && rng() % 2) ? 1 : 0);
  }
  int64_t lo = 0, hi = 0;
  for (int k = 0; k < r; ++k) {
    if ((mode == Neg || mode == Mixed) && rng() % 2) v.st[k] = -v.st[k];
    if (d[k] > 0) { if (v.st[k] < 0) lo += v.st[k] * (d[k] - 1); else hi += v.st[k] * (d[k] - 1); }
  }
  v.off = -lo + 2;  // two guard elements each side
  v.size = hi - lo + 5;
  return v;
}
View contiguous(const std::vector<int64_t>& d) { return make_view(d, Contig); }

enum Values { Normal, Ints, Pow, WithNaN, ZerosNeg, ZerosPos };
template <typename T> std::vector<T> values(int64_t n, Values kind) {
  std::vector<T> v(n);
  std::normal_distribution<double> nd(0, 1);
  for (auto& x : v) {
    switch (kind) {
      case Normal: x = T(nd(rng) * std::exp(nd(rng) * 2)); break;
      case Ints: { static const double c[] = {-2, -1, -0.0, 0, 1, 2}; x = T(c[rng() % 6]); break; }
      case Pow: { static const double c[] = {0, -0.0, 1, -1, 2, -2, 0.5, -1.5, 2.5, 3, 1.75, -3}; x = T(c[rng() % 12]); break; }
      case ZerosNeg: { static const double c[] = {-0.0, 0.0, -1}; x = T(c[rng() % 3]); break; }
      case ZerosPos: { static const double c[] = {-0.0, 0.0, 1}; x = T(c[rng() % 3]); break; }
      case WithNaN: x = (rng() % 7 == 0) ? T(NAN) : T(double(int(rng() % 5)) - 2); break;
    }
  }
  return v;
}

template <typename T> const ShapeKernels<T>& ref();
template <> const ShapeKernels<float>& ref() { return shape_ref_f32; }
template <> const ShapeKernels<double>& ref() { return shape_ref_f64; }
template <typename T> const ShapeKernels<T>& gpu();
template <> const ShapeKernels<float>& gpu() { return shape_cuda_f32; }
template <> const ShapeKernels<double>& gpu() { return shape_cuda_f64; }
template <typename T> const EmbedKernels<T>& eref();
template <> const EmbedKernels<float>& eref() { return embed_ref_f32; }
template <> const EmbedKernels<double>& eref() { return embed_ref_f64; }
template <typename T> const EmbedKernels<T>& egpu();
template <> const EmbedKernels<float>& egpu() { return embed_cuda_f32; }
template <> const EmbedKernels<double>& egpu() { return embed_cuda_f64; }

std::string dstr(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (auto x : d) s += std::to_string(x) + ",";
  return s + ")";
}
const char* tname(float) { return "f32"; }
const char* tname(double) { return "f64"; }
int64_t count(const std::vector<int64_t>& d) { int64_t n = 1; for (auto x : d) n *= x; return n; }

std::vector<std::vector<int64_t>> shapes() {
  return {{}, {1}, {7}, {17}, {257}, {1, 1}, {7, 17}, {17, 7}, {257, 3}, {3, 257}, {1, 257},
          {2, 7, 3}, {7, 1, 17}, {3, 5, 17}, {2, 3, 1, 5, 7}, {2, 2, 3, 2, 5}, {0}, {3, 0, 2}, {1, 1, 1, 1, 1, 7},
          {300, 9}, {2, 3, 4, 5, 6, 2, 2}};
}

// ------------------------------------------------------------------ copy
template <typename T> void test_copy() {
  const Mode modes[] = {Contig, Perm, Neg, Bcast, Mixed, Step};
  for (auto& d : shapes())
    for (Mode ms : modes)
      for (Mode md : {Contig, Perm, Neg, Step}) {
        View s = make_view(d, ms), t = make_view(d, md);
        auto src = values<T>(s.size, Normal);
        std::vector<T> r(t.size, T(7.5)), g(t.size, T(7.5));
        ref<T>().copy(int(d.size()), d.data(), src.data() + s.off, s.st.data(), r.data() + t.off, t.st.data());
        gpu<T>().copy(int(d.size()), d.data(), src.data() + s.off, s.st.data(), g.data() + t.off, t.st.data());
        compare(std::string("copy ") + tname(T()) + dstr(d), r, g, true);
      }
}

// ------------------------------------------------------------------ binary
template <typename T> void test_binary() {
  const Mode modes[] = {Contig, Perm, Neg, Bcast, Mixed};
  for (int fi = 0; fi < int(BinaryFn::Count); ++fi) {
    const BinaryFn f = BinaryFn(fi);
    const bool cmp = f == BinaryFn::Max || f == BinaryFn::Min;
    // arithmetic in double rounded once, as the ref: exact except where the device's pow/log differ
    const bool ex_fwd = f != BinaryFn::Power;
    const bool ex_bwd = f != BinaryFn::Power;
    const auto all = shapes();
    for (int si = 0; si < int(all.size()); ++si)
      for (int ia = 0; ia < 5; ++ia)
        for (int ib = 0; ib < 5; ++ib) {
          // five of the 25 mode pairs, every mode once for a and once for b, rotating over the
          // shapes and functions (all pairs are run; a fifth of them per shape, for the emulator's speed)
          if ((ia + 2 * ib + si + fi) % 5 != 0) continue;
          const auto& d = all[si];
          const Mode ma = modes[ia], mb = modes[ib];
          const int rank = int(d.size());
          const int64_t n = count(d);
          View va = make_view(d, ma), vb = make_view(d, mb);
          const Values kind = f == BinaryFn::Power ? Pow : cmp ? (rng() % 2 ? Ints : WithNaN)
                              : (rng() % 4 == 0 ? Ints : Normal);
          auto a = values<T>(va.size, kind), b = values<T>(vb.size, kind);
          auto dy = values<T>(n, Normal);
          const std::string tag = std::string(tname(T())) + " f" + std::to_string(fi) + dstr(d);
          std::vector<T> r(n, T(-9)), g(n, T(-9));
          ref<T>().binary_forward(f, rank, d.data(), a.data() + va.off, va.st.data(), b.data() + vb.off, vb.st.data(), r.data());
          gpu<T>().binary_forward(f, rank, d.data(), a.data() + va.off, va.st.data(), b.data() + vb.off, vb.st.data(), g.data());
          compare("fwd " + tag, r, g, ex_fwd);
          for (int which = 0; which < 3; ++which) {  // both, only ga, only gb
            std::vector<T> rga(n, T(-9)), rgb(n, T(-9)), gga(n, T(-9)), ggb(n, T(-9));
            T* pr[2] = {which != 2 ? rga.data() : nullptr, which != 1 ? rgb.data() : nullptr};
            T* pg[2] = {which != 2 ? gga.data() : nullptr, which != 1 ? ggb.data() : nullptr};
            ref<T>().binary_backward(f, rank, d.data(), a.data() + va.off, va.st.data(), b.data() + vb.off, vb.st.data(), dy.data(), pr[0], pr[1]);
            gpu<T>().binary_backward(f, rank, d.data(), a.data() + va.off, va.st.data(), b.data() + vb.off, vb.st.data(), dy.data(), pg[0], pg[1]);
            compare("bwd ga " + tag, rga, gga, ex_bwd);
            compare("bwd gb " + tag, rgb, ggb, ex_bwd);
          }
        }
    // aliasing: y == a (a contiguous), y == b (b contiguous), ga == dy
    for (auto& d : shapes()) {
      const int rank = int(d.size());
      const int64_t n = count(d);
      View vc = contiguous(d), vb = make_view(d, Mixed);
      const Values kind = f == BinaryFn::Power ? Pow : Normal;
      auto a = values<T>(vc.size, kind), b = values<T>(vb.size, kind);
      const std::string tag = std::string(tname(T())) + " f" + std::to_string(fi) + dstr(d);
      std::vector<T> r(n);
      ref<T>().binary_forward(f, rank, d.data(), a.data() + vc.off, vc.st.data(), b.data() + vb.off, vb.st.data(), r.data());
      std::vector<T> ya = a;
      gpu<T>().binary_forward(f, rank, d.data(), ya.data() + vc.off, vc.st.data(), b.data() + vb.off, vb.st.data(), ya.data() + vc.off);
      compare("fwd alias-y=a " + tag, r, std::vector<T>(ya.begin() + vc.off, ya.begin() + vc.off + n), ex_fwd);
      std::vector<T> r2(n);
      ref<T>().binary_forward(f, rank, d.data(), b.data() + vb.off, vb.st.data(), a.data() + vc.off, vc.st.data(), r2.data());
      std::vector<T> yb = a;
      gpu<T>().binary_forward(f, rank, d.data(), b.data() + vb.off, vb.st.data(), yb.data() + vc.off, vc.st.data(), yb.data() + vc.off);
      compare("fwd alias-y=b " + tag, r2, std::vector<T>(yb.begin() + vc.off, yb.begin() + vc.off + n), ex_fwd);
      auto dy = values<T>(n, Normal);
      std::vector<T> rga(n), rgb(n), ggb(n);
      ref<T>().binary_backward(f, rank, d.data(), a.data() + vc.off, vc.st.data(), b.data() + vb.off, vb.st.data(), dy.data(), rga.data(), rgb.data());
      std::vector<T> dyg = dy;
      gpu<T>().binary_backward(f, rank, d.data(), a.data() + vc.off, vc.st.data(), b.data() + vb.off, vb.st.data(), dyg.data(), dyg.data(), ggb.data());
      compare("bwd alias-ga=dy " + tag, rga, dyg, ex_bwd);
      compare("bwd alias-gb " + tag, rgb, ggb, ex_bwd);
    }
  }
}

// ------------------------------------------------------------------ binary second order
// Flat operands: the second partials times the tangents and dy, both outputs, then each alone.
template <typename T> void test_binary_second() {
  for (BinaryFn f : {BinaryFn::Times, BinaryFn::Divide, BinaryFn::Power}) {
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(255), int64_t(257), int64_t(5000)}) {
      const Values kind = f == BinaryFn::Power ? Pow : Normal;
      auto a = values<T>(n, kind), b = values<T>(n, kind);
      auto dy = values<T>(n, Normal), ta = values<T>(n, Normal), tb = values<T>(n, Normal);
      const std::string tag = std::string(tname(T())) + " f" + std::to_string(int(f)) + " n" + std::to_string(n);
      for (int which = 0; which < 3; ++which) {  // both, only ga, only gb
        std::vector<T> rga(n, T(-9)), rgb(n, T(-9)), gga(n, T(-9)), ggb(n, T(-9));
        T* pr[2] = {which != 2 ? rga.data() : nullptr, which != 1 ? rgb.data() : nullptr};
        T* pg[2] = {which != 2 ? gga.data() : nullptr, which != 1 ? ggb.data() : nullptr};
        ref<T>().binary_second(f, n, a.data(), b.data(), dy.data(), ta.data(), tb.data(), pr[0], pr[1]);
        gpu<T>().binary_second(f, n, a.data(), b.data(), dy.data(), ta.data(), tb.data(), pg[0], pg[1]);
        compare("second ga " + tag, rga, gga, f != BinaryFn::Power);
        compare("second gb " + tag, rgb, ggb, f != BinaryFn::Power);
      }
    }
  }
}

// ------------------------------------------------------------------ reduce
struct RCase { std::vector<int64_t> dims; std::vector<int> red; };  // red: axes reduced, in this order
template <typename T> void test_reduce() {
  std::vector<RCase> cases = {
      {{}, {}}, {{7}, {}}, {{7}, {0}}, {{257}, {0}}, {{1}, {0}}, {{17, 7}, {1}}, {{17, 7}, {0}},
      {{3, 257}, {1}}, {{257, 3}, {0}}, {{3, 257}, {0}}, {{2, 3, 4}, {2, 0}}, {{2, 3, 4}, {0, 1, 2}},
      {{5, 7, 3}, {1}}, {{2, 3, 1, 5, 7}, {1, 3}}, {{2, 3, 2, 5, 7}, {4, 0, 2}}, {{300, 9}, {0}},
      {{9, 300}, {1}}, {{2100, 3}, {1}}, {{260, 2100}, {0}}, {{3, 0, 2}, {1}}, {{3, 0, 2}, {0}}, {{4, 5}, {0, 1}},
      {{1000, 5}, {0}}, {{5, 1000}, {0, 1}}, {{17, 17, 3}, {0, 1}}, {{2, 1030}, {1}}, {{3, 2, 600}, {2, 1}},
      {{2, 3, 2, 3, 2}, {4, 2, 0}}};
  const ReduceOp ops[] = {ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min};
  const Mode modes[] = {Contig, Perm, Neg, Step, Bcast, Mixed};
  // Trimmed to the emulator's speed (tests/test_cuda_kernels.py runs this in every test run): Sum
  // and Max with Normal values in every mode; every other (op, kind) pair in one mode per case,
  // rotating over the cases. The large case (long strided reductions, >= 2048 outputs: the
  // thread-per-output path) only in the modes that keep it there, with Normal values and NaNs,
  // the backward of Max/Min only (Sum/Mean's backward is the same spread as in the other cases).
  for (int ci = 0; ci < int(cases.size()); ++ci) {
    const RCase& c = cases[ci];
    const bool big = count(c.dims) > 100000;
    for (int mi = 0; mi < 6; ++mi) {
      const Mode m = modes[mi];
      if (big && m != Contig && m != Step) continue;
      for (ReduceOp op : ops)
        for (Values kind : {Normal, Ints, WithNaN, ZerosNeg, ZerosPos}) {
          if ((kind == ZerosNeg || kind == ZerosPos) && (op == ReduceOp::Sum || op == ReduceOp::Mean)) continue;
          if (big ? kind != Normal && kind != WithNaN
                  : !(kind == Normal && (op == ReduceOp::Sum || op == ReduceOp::Max)) &&
                        (mi + ci + int(op) + int(kind)) % 6 != 0)
            continue;
          const int R = int(c.dims.size());
          View v = make_view(c.dims, m);
          std::vector<int64_t> kd, ks, rd, rs;
          std::vector<bool> isred(R, false);
          for (int ax : c.red) { isred[ax] = true; rd.push_back(c.dims[ax]); rs.push_back(v.st[ax]); }
          for (int ax = 0; ax < R; ++ax) if (!isred[ax]) { kd.push_back(c.dims[ax]); ks.push_back(v.st[ax]); }
          const int64_t nk = count(kd);
          auto x = values<T>(v.size, kind);
          std::vector<T> ry(nk, T(-9)), gy(nk, T(-9));
          const T* px = x.data() + v.off;
          ref<T>().reduce(op, int(kd.size()), kd.data(), ks.data(), int(rd.size()), rd.data(), rs.data(), px, ry.data());
          gpu<T>().reduce(op, int(kd.size()), kd.data(), ks.data(), int(rd.size()), rd.data(), rs.data(), px, gy.data());
          const std::string tag = std::string(tname(T())) + " op" + std::to_string(int(op)) + dstr(c.dims) + " mode" +
                                  std::to_string(int(m)) + " kind" + std::to_string(int(kind));
          const bool cmp = op == ReduceOp::Max || op == ReduceOp::Min;
          // scale of a sum: the same reduction of |x| (its condition number times the result)
          std::vector<T> ax(x.size()), scale(nk);
          for (size_t i = 0; i < x.size(); ++i) ax[i] = std::fabs(x[i]);
          if (!cmp) ref<T>().reduce(op, int(kd.size()), kd.data(), ks.data(), int(rd.size()), rd.data(), rs.data(), ax.data() + v.off, scale.data());
          compare("reduce " + tag, ry, gy, cmp, cmp ? nullptr : &scale);
          if (m == Bcast || m == Mixed) continue;  // backward needs distinct positions
          if (big && !cmp) continue;
          auto dy = values<T>(nk, Normal);
          std::vector<T> rdx(v.size, T(5.25)), gdx(v.size, T(5.25));
          ref<T>().reduce_backward(op, int(kd.size()), kd.data(), ks.data(), int(rd.size()), rd.data(), rs.data(), px, ry.data(), dy.data(), rdx.data() + v.off);
          gpu<T>().reduce_backward(op, int(kd.size()), kd.data(), ks.data(), int(rd.size()), rd.data(), rs.data(), px, ry.data(), dy.data(), gdx.data() + v.off);
          compare("reduce_backward " + tag, rdx, gdx, true);
        }
    }
  }
}

// ------------------------------------------------------------------ embedding
template <typename T> void test_embed() {
  struct E { int64_t n, rows, size; };
  const E cases[] = {{0, 3, 4}, {0, 0, 4}, {5, 3, 0}, {1, 1, 1}, {7, 3, 7}, {17, 5, 17}, {40, 7, 257},
                     {257, 17, 1}, {300, 40000, 7}, {1000, 20, 3}, {64, 2, 129}, {500, 70000, 2}, {2000, 3, 5}};
  for (auto c : cases) {
    std::vector<int64_t> idx(c.n);
    const int64_t hot = std::min<int64_t>(c.rows, 3);
    for (auto& i : idx) i = c.rows ? int64_t(rng() % (rng() % 2 ? hot : c.rows)) : 0;
    if (c.rows > 2 && c.n > 4) { idx[1] = idx[0]; idx[3] = c.rows - 1; idx[2] = idx[0]; }
    auto W = values<T>(c.rows * c.size, Normal);
    auto dy = values<T>(c.n * c.size, Normal);
    const std::string tag = std::string(tname(T())) + " n" + std::to_string(c.n) + " rows" + std::to_string(c.rows) + " size" + std::to_string(c.size);
    if (c.rows > 0) {
      std::vector<T> ry(c.n * c.size, T(-1)), gy(c.n * c.size, T(-1));
      eref<T>().gather(c.n, c.size, idx.data(), W.data(), ry.data());
      egpu<T>().gather(c.n, c.size, idx.data(), W.data(), gy.data());
      compare("gather " + tag, ry, gy, true);
    }
    std::vector<T> rdw(c.rows * c.size, T(3)), gdw(c.rows * c.size, T(3));
    eref<T>().scatter_add(c.n, c.rows, c.size, idx.data(), dy.data(), rdw.data());
    egpu<T>().scatter_add(c.n, c.rows, c.size, idx.data(), dy.data(), gdw.data());
    compare("scatter_add " + tag, rdw, gdw, true);
  }
}

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  if (only.empty() || only == "copy") { test_copy<float>(); test_copy<double>(); std::printf("copy done\n"); }
  if (only.empty() || only == "binary") { test_binary<float>(); test_binary<double>(); std::printf("binary done\n"); }
  if (only.empty() || only == "second") { test_binary_second<float>(); test_binary_second<double>(); std::printf("second done\n"); }
  if (only.empty() || only == "reduce") { test_reduce<float>(); test_reduce<double>(); std::printf("reduce done\n"); }
  if (only.empty() || only == "embed") { test_embed<float>(); test_embed<double>(); std::printf("embed done\n"); }
  std::printf("checks %ld, failed %ld, values %ld, not bit-identical %ld, worst rel f32 %.3g f64 %.3g\n", n_checks,
              n_fail, n_values, n_inexact, worst_rel[0], worst_rel[1]);
  for (auto& kv : inexact_by) std::printf("  not bit-identical: %-40s %ld\n", kv.first.c_str(), kv.second);
  if (n_fail) { std::printf("FAIL shape: %ld of %ld checks failed\n", n_fail, n_checks); return 1; }
  std::printf("PASS shape: %ld checks\n", n_checks);
  return 0;
}
