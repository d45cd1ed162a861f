// CUDA recurrent cells (emulator) vs the reference table; run by tests/test_cuda_kernels.py. Every
// kernel on strided gate and state rows, state sizes across the thread blocks' edges, float32 and
// float64, with and without ds2.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/tables.h"
#include "runtime_stubs.h"

using namespace portgrad::kernels;

static std::mt19937_64 rng(7);
static long n_checks = 0, n_fail = 0;

template <typename T> const RecurrentKernels<T>& cuda_tab();
template <> const RecurrentKernels<float>& cuda_tab<float>() { return recurrent_cuda_f32; }
template <> const RecurrentKernels<double>& cuda_tab<double>() { return recurrent_cuda_f64; }
template <typename T> const RecurrentKernels<T>& ref_tab();
template <> const RecurrentKernels<float>& ref_tab<float>() { return recurrent_ref_f32; }
template <> const RecurrentKernels<double>& ref_tab<double>() { return recurrent_ref_f64; }

template <typename T>
std::vector<T> random(size_t n, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<T> v(n);
  for (auto& e : v) e = T(d(rng));
  return v;
}

template <typename T>
void compare(const char* what, int64_t B, int64_t n, const std::vector<T>& ref, const std::vector<T>& got) {
  const double tol = sizeof(T) == 8 ? 1e-12 : 2e-5;
  for (size_t i = 0; i < ref.size(); ++i) {
    ++n_checks;
    const double r = ref[i], g = got[i];
    if (!(std::fabs(r - g) <= tol * (1.0 + std::fabs(r)))) {
      if (n_fail < 20) std::printf("FAIL %s %s B=%ld n=%ld at %zu: got %.17g want %.17g\n", what, sizeof(T) == 8 ? "f64" : "f32",
                                   (long)B, (long)n, i, g, r);
      ++n_fail;
    }
  }
}

template <typename T>
void run(int64_t B, int64_t n, double scale, bool with_ds2) {
  const int64_t pad = 3, l4 = 4 * n + pad, l3 = 3 * n + pad, ls = n + pad;
  // LSTM forward, backward, jvp
  auto g = random<T>(B * l4, scale), cp = random<T>(B * n), s = random<T>(B * ls);
  auto g2 = g, s2 = s;
  std::vector<T> c(B * n), c2(B * n);
  ref_tab<T>().lstm_forward(B, n, g.data(), l4, cp.data(), c.data(), s.data(), ls);
  cuda_tab<T>().lstm_forward(B, n, g2.data(), l4, cp.data(), c2.data(), s2.data(), ls);
  compare("lstm_forward gates", B, n, g, g2), compare("lstm_forward c", B, n, c, c2), compare("lstm_forward s", B, n, s, s2);
  auto ds = random<T>(B * ls), ds2 = random<T>(B * n), dc = random<T>(B * n), dg = random<T>(B * l4);
  auto dcb = dc, dgb = dg;
  const T* d2 = with_ds2 ? ds2.data() : nullptr;
  ref_tab<T>().lstm_backward(B, n, g.data(), l4, cp.data(), c.data(), ds.data(), ls, d2, dc.data(), dg.data(), l4);
  cuda_tab<T>().lstm_backward(B, n, g.data(), l4, cp.data(), c.data(), ds.data(), ls, d2, dcb.data(), dgb.data(), l4);
  compare("lstm_backward dg", B, n, dg, dgb), compare("lstm_backward dc", B, n, dc, dcb);
  auto tg = random<T>(B * l4), tc = random<T>(B * n), ts = random<T>(B * ls);
  auto tcb = tc, tsb = ts;
  ref_tab<T>().lstm_jvp(B, n, g.data(), l4, cp.data(), c.data(), tg.data(), l4, tc.data(), ts.data(), ls);
  cuda_tab<T>().lstm_jvp(B, n, g.data(), l4, cp.data(), c.data(), tg.data(), l4, tcb.data(), tsb.data(), ls);
  compare("lstm_jvp tc", B, n, tc, tcb), compare("lstm_jvp ts", B, n, ts, tsb);
  // GRU forward, backward, jvp
  auto gg = random<T>(B * l3, scale), h = random<T>(B * n), sp = random<T>(B * ls), gs = random<T>(B * ls);
  auto gg2 = gg, gs2 = gs;
  ref_tab<T>().gru_forward(B, n, gg.data(), l3, h.data(), sp.data(), ls, gs.data(), ls);
  cuda_tab<T>().gru_forward(B, n, gg2.data(), l3, h.data(), sp.data(), ls, gs2.data(), ls);
  compare("gru_forward gates", B, n, gg, gg2), compare("gru_forward s", B, n, gs, gs2);
  std::vector<T> gdg(B * l3), gdg2(B * l3), dh(B * n), dh2(B * n), dp(B * n), dp2(B * n);
  ref_tab<T>().gru_backward(B, n, gg.data(), l3, h.data(), sp.data(), ls, ds.data(), ls, d2, gdg.data(), l3, dh.data(), dp.data());
  cuda_tab<T>().gru_backward(B, n, gg.data(), l3, h.data(), sp.data(), ls, ds.data(), ls, d2, gdg2.data(), l3, dh2.data(),
                             dp2.data());
  compare("gru_backward dg", B, n, gdg, gdg2), compare("gru_backward dh", B, n, dh, dh2);
  compare("gru_backward ds_prev", B, n, dp, dp2);
  auto th = random<T>(B * n), tp = random<T>(B * ls), gtg = random<T>(B * l3), gts = random<T>(B * ls);
  auto gts2 = gts;
  ref_tab<T>().gru_jvp(B, n, gg.data(), l3, h.data(), th.data(), sp.data(), tp.data(), ls, gtg.data(), l3, gts.data(), ls);
  cuda_tab<T>().gru_jvp(B, n, gg.data(), l3, h.data(), th.data(), sp.data(), tp.data(), ls, gtg.data(), l3, gts2.data(), ls);
  compare("gru_jvp ts", B, n, gts, gts2);
}

int main() {
  const int64_t sizes[][2] = {{1, 1}, {2, 7}, {3, 33}, {5, 129}, {17, 256}};
  for (const auto& sz : sizes)
    for (double scale : {1.0, 8.0})
      for (bool ds2 : {false, true}) {
        run<float>(sz[0], sz[1], scale, ds2);
        run<double>(sz[0], sz[1], scale, ds2);
      }
  if (n_fail) {
    std::printf("FAIL recurrent: %ld of %ld checks failed\n", n_fail, n_checks);
    return 1;
  }
  std::printf("PASS recurrent: %ld checks\n", n_checks);
  return 0;
}
