// Emulator test of the CUDA unary/softmax/loss/vector tables against the references; run by
// tests/test_cuda_kernels.py.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>
#include <functional>

#include "kernels/cuda/tables.h"

#include "runtime_stubs.h"  // current_stream, note_error

using namespace portgrad::kernels;

static int g_fail = 0, g_checks = 0;
static std::mt19937_64 rng(42);
static const double INF = std::numeric_limits<double>::infinity();
static const double QNAN = std::numeric_limits<double>::quiet_NaN();

template <typename T> double rtol() { static const double f = getenv("STRICT") ? 0.1 : 1.0; return f * (sizeof(T) == 4 ? 1e-5 : 1e-12); }
template <typename T> const char* tn() { return sizeof(T) == 4 ? "f32" : "f64"; }

double unif(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); }
double normal(double s = 1) { return std::normal_distribution<double>(0, s)(rng); }

template <typename T>
std::vector<T> rand_vec(int64_t n, double a, double b) {
  std::vector<T> v(n);
  for (auto& e : v) e = T(unif(a, b));
  return v;
}

constexpr int64_t kGuard = 5;
constexpr double kCanary = 12345.678;

// Buffer with canaries after n elements.
template <typename T>
std::vector<T> with_guard(const std::vector<T>& v) {
  std::vector<T> r(v);
  for (int i = 0; i < kGuard; ++i) r.push_back(T(kCanary));
  return r;
}

// got vs want over n elements (and canaries after them in got); tol = rtol*(|want| + scale[i]) + atol.
template <typename T>
bool compare(const std::string& what, const std::vector<T>& got, const std::vector<T>& want, int64_t n,
             const std::vector<double>* scale = nullptr, double atol = 0.0) {
  ++g_checks;
  int bad = 0;
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = got[i], w = want[i];
    bool ok;
    if (std::isnan(w)) ok = std::isnan(g);
    else if (std::isinf(w)) ok = g == w;
    else {
      double sc = scale ? (*scale)[i] : 0.0;
      if (std::isnan(sc)) sc = 0.0;
      // absolute floor around the smallest normal number: denormal results carry absolute error
      const double tol = rtol<T>() * (std::fabs(w) + sc) + atol + (sizeof(T) == 4 ? 2e-38 : 3e-308);
      const double err = std::fabs(g - w);
      ok = g == w || err <= tol;  // false for NaN g
      if (tol > 0 && err / tol > worst) worst = err / tol;
    }
    if (!ok) {
      if (bad < 5)
        std::printf("  FAIL %s [%lld]: got %.17g want %.17g\n", what.c_str(), (long long)i, g, w);
      ++bad;
    }
  }
  for (int64_t i = n; i < (int64_t)got.size() && i < n + kGuard; ++i)
    if (got[i] != T(kCanary)) {
      if (bad < 5) std::printf("  FAIL %s: canary [%lld] overwritten\n", what.c_str(), (long long)i);
      ++bad;
    }
  if (bad) {
    std::printf("FAIL %s: %d bad of %lld\n", what.c_str(), bad, (long long)n);
    ++g_fail;
  }
  return bad == 0;
}

// ------------------------------------------------------------------ unary
template <typename T>
std::vector<T> unary_inputs(int64_t n, int variant) {
  static const double specials[] = {INF, -INF, QNAN, 0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 40.0, 41.0,
                                    -40.0, 100.0, -100.0, 1e-30, -1e-30, 0.5, -1.2784645, 20, -20, 9.5, 88.0, 1e4};
  std::vector<T> x(n);
  for (int64_t i = 0; i < n; ++i) {
    if (variant == 0) x[i] = T(unif(-6, 6));
    else if (variant == 1) x[i] = T(unif(0, 50));
    else x[i] = T(normal(1.5));
  }
  const int ns = sizeof(specials) / sizeof(specials[0]);
  for (int64_t i = 0; i < n; i += 3) x[i] = T(specials[(i / 3 + variant) % ns]);
  return x;
}

template <typename T>
void test_unary() {
  const UnaryKernels<T>& cu = sizeof(T) == 4 ? (const UnaryKernels<T>&)unary_cuda_f32 : (const UnaryKernels<T>&)unary_cuda_f64;
  const UnaryKernels<T>& rf = sizeof(T) == 4 ? (const UnaryKernels<T>&)unary_ref_f32 : (const UnaryKernels<T>&)unary_ref_f64;
  const int64_t sizes[] = {0, 1, 7, 17, 255, 256, 257, 1000, 2053};
  for (int fi = 0; fi < (int)UnaryFn::Count; ++fi) {
    const UnaryFn f = (UnaryFn)fi;
    for (int64_t n : sizes)
      for (int variant = 0; variant < 3; ++variant) {
        const std::string tag = std::string(tn<T>()) + " " + unary_name(f) + " n=" + std::to_string(n) + " v" +
                                std::to_string(variant);
        const std::vector<T> x = unary_inputs<T>(n, variant);
        std::vector<T> want(n);
        rf.forward(f, n, x.data(), want.data());
        // out of place
        std::vector<T> y = with_guard(std::vector<T>(n, T(-7)));
        cu.forward(f, n, x.data(), y.data());
        compare(tag + " fwd", y, want, n);
        // in place
        std::vector<T> xy = with_guard(x);
        cu.forward(f, n, xy.data(), xy.data());
        compare(tag + " fwd inplace", xy, want, n);
        // backward
        const std::vector<T> dy = rand_vec<T>(n, -2, 2);
        std::vector<T> dwant(n);
        rf.backward(f, n, x.data(), want.data(), dy.data(), dwant.data());
        // cancellation in f' (Swish, GELU, Mish cross 0): allow an error relative to |dy| (1 + |x|)
        std::vector<double> sc(n);
        for (int64_t i = 0; i < n; ++i) sc[i] = std::fabs((double)dy[i]) * (1.0 + std::fabs((double)x[i]));
        std::vector<T> dx = with_guard(std::vector<T>(n, T(-7)));
        cu.backward(f, n, x.data(), want.data(), dy.data(), dx.data());
        compare(tag + " bwd", dx, dwant, n, &sc);
        std::vector<T> dd = with_guard(dy);
        cu.backward(f, n, x.data(), want.data(), dd.data(), dd.data());
        compare(tag + " bwd dx==dy", dd, dwant, n, &sc);
      }
  }
}

// ------------------------------------------------------------------ softmax
template <typename T>
void test_softmax() {
  const SoftmaxKernels<T>& cu = sizeof(T) == 4 ? (const SoftmaxKernels<T>&)softmax_cuda_f32 : (const SoftmaxKernels<T>&)softmax_cuda_f64;
  const SoftmaxKernels<T>& rf = sizeof(T) == 4 ? (const SoftmaxKernels<T>&)softmax_ref_f32 : (const SoftmaxKernels<T>&)softmax_ref_f64;
  const int64_t shapes[][2] = {{0, 5}, {5, 0}, {1, 1}, {3, 1}, {1, 300}, {5, 1025}, {7, 3}, {17, 4}, {17, 5},
                               {9, 16}, {9, 17}, {33, 64}, {4, 65}, {2, 256}, {3, 257}, {1000, 5}, {300, 2}, {2, 3000}};
  for (auto& sh : shapes) {
    const int64_t rows = sh[0], cols = sh[1], n = rows * cols;
    const std::string tag = std::string(tn<T>()) + " softmax " + std::to_string(rows) + "x" + std::to_string(cols);
    std::vector<T> x(n);
    for (auto& e : x) e = T(normal(3));
    // special rows (when there are enough): -inf entries, a NaN, all -inf, a +inf, a huge offset
    if (rows >= 3 && cols >= 2) {
      x[0 * cols + 1] = T(-INF);
      x[1 * cols + cols - 1] = T(QNAN);
      for (int64_t c = 0; c < cols; ++c) x[2 * cols + c] = T(-INF);
    }
    if (rows >= 5 && cols >= 1) {
      x[3 * cols] = T(INF);
      for (int64_t c = 0; c < cols; ++c) x[4 * cols + c] += T(1000);
    }
    for (int lg = 0; lg < 2; ++lg) {
      auto fwd = lg ? cu.log_forward : cu.forward;
      auto rfwd = lg ? rf.log_forward : rf.forward;
      auto bwd = lg ? cu.log_backward : cu.backward;
      auto rbwd = lg ? rf.log_backward : rf.backward;
      const std::string t2 = tag + (lg ? " log" : "");
      std::vector<T> want(n);
      rfwd(rows, cols, x.data(), want.data());
      // scale: |x - max| for log-softmax (cancellation of (x-m) - log s)
      std::vector<double> sc(n, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        double mx = 0;
        for (int64_t c = 0; c < cols; ++c) mx = std::fmax(mx, std::fabs((double)want[r * cols + c]));
        for (int64_t c = 0; c < cols; ++c) sc[r * cols + c] = lg ? mx + 1 : 0;
      }
      std::vector<T> y = with_guard(std::vector<T>(n, T(-7)));
      fwd(rows, cols, x.data(), y.data());
      compare(t2 + " fwd", y, want, n, &sc);
      std::vector<T> xy = with_guard(x);
      fwd(rows, cols, xy.data(), xy.data());
      compare(t2 + " fwd inplace", xy, want, n, &sc);
      // backward from the reference output (finite rows only matter; NaN rows must stay NaN)
      std::vector<T> dy(n);
      for (auto& e : dy) e = T(normal(1));
      std::vector<T> dwant(n);
      rbwd(rows, cols, want.data(), dy.data(), dwant.data());
      std::vector<double> bsc(n, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const double yy = lg ? std::exp((double)want[r * cols + c]) : (double)want[r * cols + c];
          s += std::fabs((double)dy[r * cols + c]) * (lg ? 1.0 : std::fabs(yy));
        }
        for (int64_t c = 0; c < cols; ++c) {
          const double yy = lg ? std::exp((double)want[r * cols + c]) : (double)want[r * cols + c];
          bsc[r * cols + c] = lg ? std::fabs((double)dy[r * cols + c]) + std::fabs(yy) * s
                                 : std::fabs(yy) * (std::fabs((double)dy[r * cols + c]) + s);
        }
      }
      std::vector<T> dx = with_guard(std::vector<T>(n, T(-7)));
      bwd(rows, cols, want.data(), dy.data(), dx.data());
      compare(t2 + " bwd", dx, dwant, n, &bsc);
      std::vector<T> dd = with_guard(dy);
      bwd(rows, cols, want.data(), dd.data(), dd.data());
      compare(t2 + " bwd dx==dy", dd, dwant, n, &bsc);
    }
  }
}

template <typename T>
void test_softmax_masked() {
  const SoftmaxKernels<T>& cu = sizeof(T) == 4 ? (const SoftmaxKernels<T>&)softmax_cuda_f32 : (const SoftmaxKernels<T>&)softmax_cuda_f64;
  const SoftmaxKernels<T>& rf = sizeof(T) == 4 ? (const SoftmaxKernels<T>&)softmax_ref_f32 : (const SoftmaxKernels<T>&)softmax_ref_f64;
  const int64_t shapes[][4] = {{0, 2, 2, 2}, {1, 1, 1, 1}, {2, 3, 4, 5}, {3, 1, 7, 9}, {2, 2, 3, 17}, {1, 4, 2, 300}};
  for (auto& sh : shapes) {
    const int64_t b = sh[0], h = sh[1], m = sh[2], n = sh[3], total = b * h * m * n;
    const std::string tag = std::string(tn<T>()) + " softmax masked " + std::to_string(b) + "x" + std::to_string(h) +
                            "x" + std::to_string(m) + "x" + std::to_string(n);
    std::vector<T> x(total), mask(b * m * n);
    for (auto& e : x) e = T(normal(3));
    for (auto& e : mask) e = T(unif(0, 1) < 0.6 ? 1 : 0);
    if (b && m > 1)
      for (int64_t j = 0; j < n; ++j) mask[1 * n + j] = T(0);  // example 0's query 1 sees nothing
    std::vector<T> want(total);
    rf.masked_forward(b, h, m, n, x.data(), mask.data(), want.data());
    std::vector<T> y = with_guard(std::vector<T>(total, T(-7)));
    cu.masked_forward(b, h, m, n, x.data(), mask.data(), y.data());
    compare(tag, y, want, total);
    std::vector<T> xy = with_guard(x);
    cu.masked_forward(b, h, m, n, xy.data(), mask.data(), xy.data());
    compare(tag + " inplace", xy, want, total);
    // the backward's tangent, on the masked weights (rows of b*h*m, n columns)
    const int64_t rows = b * h * m;
    std::vector<T> ty(total), dy(total), tdy(total), tw(total);
    for (auto* v : {&ty, &dy, &tdy}) for (auto& e : *v) e = T(normal(1));
    rf.backward_tangent(rows, n, want.data(), ty.data(), dy.data(), tdy.data(), tw.data());
    std::vector<double> sc(total);
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < n; ++c)
        s += std::fabs((double)dy[r * n + c]) + std::fabs((double)ty[r * n + c]) + std::fabs((double)tdy[r * n + c]);
      for (int64_t c = 0; c < n; ++c) sc[r * n + c] = s;
    }
    std::vector<T> got = with_guard(std::vector<T>(total, T(-7)));
    cu.backward_tangent(rows, n, want.data(), ty.data(), dy.data(), tdy.data(), got.data());
    compare(tag + " backward tangent", got, tw, total, &sc);
    std::vector<T> inplace = with_guard(tdy);
    cu.backward_tangent(rows, n, want.data(), ty.data(), dy.data(), inplace.data(), inplace.data());
    compare(tag + " backward tangent tdx==tdy", inplace, tw, total, &sc);
  }
}

// ------------------------------------------------------------------ loss
template <typename T>
void fill_prob(std::vector<T>& p) {
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] = T(unif(0.01, 0.99));
    if (i % 11 == 3) p[i] = T(0);
    if (i % 13 == 5) p[i] = T(1);
    if (i % 17 == 7) p[i] = T(1e-20);
  }
}

template <typename T>
void check_grad_pair(const std::string& tag, int64_t total,
                     const std::function<void(T*, T*)>& cu, const std::function<void(T*, T*)>& rf,
                     const std::vector<double>* sc0 = nullptr, const std::vector<double>* sc1 = nullptr) {
  std::vector<T> wa(total), wb(total);
  rf(wa.data(), wb.data());
  // both, first only, second only, none
  for (int mode = 0; mode < 4; ++mode) {
    std::vector<T> a = with_guard(std::vector<T>(total, T(kCanary))), b = with_guard(std::vector<T>(total, T(kCanary)));
    cu(mode == 0 || mode == 1 ? a.data() : nullptr, mode == 0 || mode == 2 ? b.data() : nullptr);
    const std::vector<T> canaries(total, T(kCanary));
    compare(tag + " grad0 mode" + std::to_string(mode), a, (mode == 0 || mode == 1) ? wa : canaries, total, sc0);
    compare(tag + " grad1 mode" + std::to_string(mode), b, (mode == 0 || mode == 2) ? wb : canaries, total, sc1);
  }
}

template <typename T>
void test_loss() {
  const LossKernels<T>& cu = sizeof(T) == 4 ? (const LossKernels<T>&)loss_cuda_f32 : (const LossKernels<T>&)loss_cuda_f64;
  const LossKernels<T>& rf = sizeof(T) == 4 ? (const LossKernels<T>&)loss_ref_f32 : (const LossKernels<T>&)loss_ref_f64;
  const int64_t shapes[][2] = {{0, 5}, {3, 0}, {1, 1}, {3, 1}, {3, 7}, {5, 17}, {2, 255}, {2, 256}, {2, 257},
                               {3, 1000}, {1000, 3}, {1, 300}, {5, 1025}, {70, 16}, {9, 64}, {9, 65}};
  for (auto& sh : shapes) {
    const int64_t batch = sh[0], n = sh[1], total = batch * n;
    const std::string tag = std::string(tn<T>()) + " loss " + std::to_string(batch) + "x" + std::to_string(n);
    std::vector<T> x(total), t(total), p(total), tp(total), dloss(batch);
    for (int64_t i = 0; i < total; ++i) {
      x[i] = T(normal(2));
      t[i] = (i % 5 == 2) ? x[i] : T(normal(2));  // some exact ties (sign 0)
      tp[i] = (i % 3 == 0) ? T(i % 2) : T(unif(0, 1));
    }
    fill_prob(p);
    for (auto& d : dloss) d = T(normal(1));
    // forward
    struct F { const char* name; void (*c)(int64_t, int64_t, const T*, const T*, T*); void (*r)(int64_t, int64_t, const T*, const T*, T*); bool prob; };
    const F fs[] = {{"mse", cu.mse_forward, rf.mse_forward, false}, {"mae", cu.mae_forward, rf.mae_forward, false},
                    {"bce", cu.bce_forward, rf.bce_forward, true}};
    for (const F& f : fs) {
      const T* a = f.prob ? p.data() : x.data();
      const T* b = f.prob ? tp.data() : t.data();
      std::vector<T> want(batch), got = with_guard(std::vector<T>(batch, T(-7)));
      f.r(batch, n, a, b, want.data());
      f.c(batch, n, a, b, got.data());
      compare(tag + " " + f.name + " fwd", got, want, batch);
    }
    struct B { const char* name; void (*c)(int64_t, int64_t, const T*, const T*, const T*, T*, T*); void (*r)(int64_t, int64_t, const T*, const T*, const T*, T*, T*); bool prob; };
    const B bs[] = {{"mse", cu.mse_backward, rf.mse_backward, false}, {"mae", cu.mae_backward, rf.mae_backward, false},
                    {"bce", cu.bce_backward, rf.bce_backward, true}};
    // BCE's reference formula cancels (-t/a + (1-t)/c, log a - log c): allow its own rounding.
    std::vector<double> s0(total), s1(total);
    for (int64_t j = 0; j < total; ++j) {
      const double k = std::fabs((double)dloss[j / n] / n), pj = p[j], tj = tp[j];
      const double e = sizeof(T) == 4 ? 0x1p-46 : 0x1p-104;
      const double aa = std::max(pj, e), cc = std::max(1 - pj, e);
      s0[j] = k * (tj / aa + (1 - tj) / cc);
      s1[j] = k * (std::fabs(std::log(aa)) + std::fabs(std::log(cc)));
    }
    for (const B& f : bs) {
      const T* a = f.prob ? p.data() : x.data();
      const T* b = f.prob ? tp.data() : t.data();
      check_grad_pair<T>(tag + " " + f.name + " bwd", total,
                         [&](T* g0, T* g1) { f.c(batch, n, a, b, dloss.data(), g0, g1); },
                         [&](T* g0, T* g1) { f.r(batch, n, a, b, dloss.data(), g0, g1); },
                         f.prob ? &s0 : nullptr, f.prob ? &s1 : nullptr);
    }
  }
  // cross-entropy: batch, groups, classes
  const int64_t ce_shapes[][3] = {{0, 2, 3}, {2, 0, 3}, {2, 3, 0}, {1, 1, 1}, {2, 3, 5}, {4, 1, 300}, {3, 2, 1025},
                                  {5, 7, 17}, {1000, 1, 3}, {3, 100, 10}, {2, 1, 257}, {6, 5, 64}};
  for (auto& sh : ce_shapes) {
    const int64_t batch = sh[0], groups = sh[1], classes = sh[2], total = batch * groups * classes;
    const std::string tag = std::string(tn<T>()) + " ce " + std::to_string(batch) + "x" + std::to_string(groups) + "x" +
                            std::to_string(classes);
    std::vector<T> p(total), t(total), dloss(batch);
    fill_prob(p);
    for (auto& e : t) e = T(unif(0, 1));
    for (auto& d : dloss) d = T(normal(1));
    std::vector<int64_t> idx(batch * groups);
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = classes > 0 ? int64_t(rng() % classes) : 0;
    if (classes > 0 && !idx.empty()) p[idx[0]] = T(0);  // clamped log at the chosen class
    {
      std::vector<T> want(batch), got = with_guard(std::vector<T>(batch, T(-7)));
      rf.ce_prob_forward(batch, groups, classes, p.data(), t.data(), want.data());
      cu.ce_prob_forward(batch, groups, classes, p.data(), t.data(), got.data());
      compare(tag + " ce_prob fwd", got, want, batch);
    }
    check_grad_pair<T>(tag + " ce_prob bwd", total,
                       [&](T* g0, T* g1) { cu.ce_prob_backward(batch, groups, classes, p.data(), t.data(), dloss.data(), g0, g1); },
                       [&](T* g0, T* g1) { rf.ce_prob_backward(batch, groups, classes, p.data(), t.data(), dloss.data(), g0, g1); });
    if (classes > 0 || groups == 0 || batch == 0) {
      std::vector<T> want(batch), got = with_guard(std::vector<T>(batch, T(-7)));
      rf.ce_index_forward(batch, groups, classes, p.data(), idx.data(), want.data());
      cu.ce_index_forward(batch, groups, classes, p.data(), idx.data(), got.data());
      compare(tag + " ce_index fwd", got, want, batch);
      std::vector<T> dwant(total), dgot = with_guard(std::vector<T>(total, T(-7)));
      rf.ce_index_backward(batch, groups, classes, p.data(), idx.data(), dloss.data(), dwant.data());
      cu.ce_index_backward(batch, groups, classes, p.data(), idx.data(), dloss.data(), dgot.data());
      compare(tag + " ce_index bwd", dgot, dwant, total);
      cu.ce_index_backward(batch, groups, classes, p.data(), idx.data(), dloss.data(), nullptr);  // must not crash
    }
  }
}

// ------------------------------------------------------------------ vector
template <typename T>
void test_vector() {
  const VectorKernels<T>& cu = sizeof(T) == 4 ? (const VectorKernels<T>&)vector_cuda_f32 : (const VectorKernels<T>&)vector_cuda_f64;
  const VectorKernels<T>& rf = sizeof(T) == 4 ? (const VectorKernels<T>&)vector_ref_f32 : (const VectorKernels<T>&)vector_ref_f64;
  const int64_t shapes[][2] = {{0, 5}, {5, 0}, {0, 0}, {1, 1}, {3, 1}, {1, 300}, {5, 1025}, {7, 3}, {1000, 1},
                               {257, 7}, {33, 8}, {100, 9}, {3, 256}, {2, 257}, {600, 40}, {1, 3000}};
  for (auto& sh : shapes) {
    const int64_t rows = sh[0], cols = sh[1], n = rows * cols;
    const std::string tag = std::string(tn<T>()) + " vec " + std::to_string(rows) + "x" + std::to_string(cols);
    std::vector<T> x(n), b(cols);
    for (auto& e : x) e = T(normal(1));
    for (auto& e : b) e = T(normal(1));
    {
      std::vector<T> want(x), got = with_guard(x);
      rf.add_row_vector(rows, cols, b.data(), want.data());
      cu.add_row_vector(rows, cols, b.data(), got.data());
      compare(tag + " add_row_vector", got, want, n);
    }
    const double betas[] = {0.0, 1.0, 0.5, -2.0};
    for (double beta : betas) {
      // wide rows cost seconds per call in the emulator: there, only beta 0 (out not read) and a general beta
      if (cols >= 1000 && (beta == 1.0 || beta == 0.5)) continue;
      std::vector<T> out0(cols);
      for (auto& e : out0) e = beta == 0 ? T(QNAN) : T(normal(1));
      std::vector<T> want(out0), got = with_guard(out0);
      rf.sum_rows(rows, cols, x.data(), T(beta), want.data());
      cu.sum_rows(rows, cols, x.data(), T(beta), got.data());
      std::vector<double> sc(cols, 0.0);
      for (int64_t j = 0; j < cols; ++j) {
        for (int64_t i = 0; i < rows; ++i) sc[j] += std::fabs((double)x[i * cols + j]);
        if (beta != 0) sc[j] += std::fabs(beta * (double)out0[j]);
      }
      compare(tag + " sum_rows beta=" + std::to_string(beta), got, want, cols, &sc);
    }
  }
  const int64_t sizes[] = {0, 1, 7, 17, 255, 256, 257, 1000, 20011};
  for (int64_t n : sizes)
    for (double alpha : {0.0, 1.0, -0.3, 2.5}) {
      const std::string tag = std::string(tn<T>()) + " axpy n=" + std::to_string(n) + " a=" + std::to_string(alpha);
      std::vector<T> x(n), y(n);
      for (auto& e : x) e = T(normal(1));
      for (auto& e : y) e = T(normal(1));
      std::vector<T> want(y), got = with_guard(y);
      rf.axpy(n, T(alpha), x.data(), want.data());
      cu.axpy(n, T(alpha), x.data(), got.data());
      std::vector<double> sc(n);
      for (int64_t i = 0; i < n; ++i) sc[i] = std::fabs((double)y[i]) + std::fabs(alpha * (double)x[i]);
      compare(tag, got, want, n, &sc);
      std::vector<T> xx(x), wself(x);
      rf.axpy(n, T(alpha), xx.data(), wself.data());
      std::vector<T> gself = with_guard(x);
      cu.axpy(n, T(alpha), gself.data(), gself.data());
      compare(tag + " x==y", gself, wself, n);
    }
  const int64_t outer_shapes[][3] = {{0, 3, 5}, {1, 1, 1}, {3, 0, 4}, {3, 7, 9}, {5, 17, 8}, {4, 1, 33}, {6, 65, 31}};
  for (const auto& s : outer_shapes) {
    const int64_t batch = s[0], m = s[1], n = s[2];
    const std::string tag = std::string(tn<T>()) + " outer " + std::to_string(batch) + "x" + std::to_string(m) + "x" +
                            std::to_string(n);
    std::vector<T> u(batch * m), v(batch * n), out(batch * m * n, T(QNAN));
    for (auto& e : u) e = T(normal(1));
    for (auto& e : v) e = T(normal(1));
    std::vector<T> want(out), got = with_guard(out);
    rf.outer(batch, m, n, u.data(), v.data(), want.data());
    cu.outer(batch, m, n, u.data(), v.data(), got.data());
    compare(tag, got, want, batch * m * n);
  }
  const int64_t row_shapes[][2] = {{0, 5}, {1, 1}, {3, 0}, {3, 7}, {8, 33}, {2, 1000}};
  for (const auto& s : row_shapes) {
    const int64_t rows = s[0], cols = s[1];
    const std::string tag = std::string(tn<T>()) + " multiply_rows " + std::to_string(rows) + "x" + std::to_string(cols);
    std::vector<T> d(cols), x(rows * cols), out(rows * cols, T(QNAN));
    for (auto& e : d) e = T(normal(1));
    for (auto& e : x) e = T(normal(1));
    std::vector<T> want(out), got = with_guard(out);
    rf.multiply_rows(rows, cols, d.data(), x.data(), want.data());
    cu.multiply_rows(rows, cols, d.data(), x.data(), got.data());
    compare(tag, got, want, rows * cols);
  }
}

// Optimiser steps: the CUDA kernel against the reference over several steps (both use
// kernels/optim_step.h; the device may fuse multiply-adds, so within a few ulps).
template <typename T>
void test_optim() {
  const OptimKernels<T>& cu = sizeof(T) == 4 ? (const OptimKernels<T>&)optim_cuda_f32 : (const OptimKernels<T>&)optim_cuda_f64;
  const OptimKernels<T>& rf = sizeof(T) == 4 ? (const OptimKernels<T>&)optim_ref_f32 : (const OptimKernels<T>&)optim_ref_f64;
  const int64_t sizes[] = {0, 1, 7, 257, 3001};
  for (int64_t n : sizes)
    for (int method = 0; method < 3; ++method) {
      const std::string tag = std::string(tn<T>()) + " optim " + std::to_string(method) + " n=" + std::to_string(n);
      OptimStep s;
      s.lr = 0.01, s.momentum = 0.9, s.clip = method == 1 ? 0.5 : 0.0, s.l2 = method == 2 ? 1e-3 : 0.0;
      s.weight_decay = 1e-2, s.rho = 0.9, s.scale = 0.5;
      std::vector<T> w(n), a(n, T(0)), b(n, T(0));
      for (auto& e : w) e = T(normal(1));
      std::vector<T> w2(w), a2(a), b2(b);
      for (int t = 1; t <= 3; ++t) {
        std::vector<T> g(n);
        for (auto& e : g) e = T(normal(2));
        s.c1 = 1 - std::pow(s.beta1, t), s.c2 = 1 - std::pow(s.beta2, t);
        if (method == 0) rf.sgd(n, s, g.data(), w.data(), a.data()), cu.sgd(n, s, g.data(), w2.data(), a2.data());
        if (method == 1)
          rf.adam(n, s, g.data(), w.data(), a.data(), b.data()), cu.adam(n, s, g.data(), w2.data(), a2.data(), b2.data());
        if (method == 2) rf.rmsprop(n, s, g.data(), w.data(), a.data()), cu.rmsprop(n, s, g.data(), w2.data(), a2.data());
      }
      std::vector<double> scale(n, 1.0);
      compare(tag + " w", w2, w, n, &scale);
      compare(tag + " state", a2, a, n, &scale);
      if (method == 1) compare(tag + " second moment", b2, b, n, &scale);
      std::vector<T> avg(w), avg2(w);
      rf.moving_average(n, 0.9, 1.5, a.data(), avg.data());
      cu.moving_average(n, 0.9, 1.5, a.data(), avg2.data());
      compare(tag + " moving average", avg2, avg, n, &scale);
    }
}

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  if (only.empty() || only == "unary") { test_unary<float>(); test_unary<double>(); }
  if (only.empty() || only == "softmax") {
    test_softmax<float>();
    test_softmax<double>();
    test_softmax_masked<float>();
    test_softmax_masked<double>();
  }
  if (only.empty() || only == "loss") { test_loss<float>(); test_loss<double>(); }
  if (only.empty() || only == "vector") { test_vector<float>(); test_vector<double>(); }
  if (only.empty() || only == "optim") { test_optim<float>(); test_optim<double>(); }
  std::printf("%d checks, %d failed\n", g_checks, g_fail);
  if (g_fail) { std::printf("FAIL elementwise: %d of %d checks failed\n", g_fail, g_checks); return 1; }
  std::printf("PASS elementwise: %d checks\n", g_checks);
  return 0;
}
