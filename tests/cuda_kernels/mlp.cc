// Emulator test of the CUDA fused-MLP table against the reference (kernels/mlp.h): random depths,
// widths on and off the thread grid's multiples, every elementwise function, batches on and off the
// tile size (and more tiles than blocks), every combination of requested results; guard values after
// every output, bit-identical repeats, and shapes too big for a block. Run by tests/test_cuda_kernels.py.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/tables.h"
#include "runtime_stubs.h"

using namespace portgrad::kernels;

static int g_fail = 0, g_checks = 0;
static std::mt19937_64 rng(7);
constexpr int kGuard = 4;
constexpr double kCanary = -98765.4321;

double normal() { return std::normal_distribution<double>(0, 1)(rng); }
int pick(const std::vector<int>& v) { return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)]; }

template <typename T>
struct Buf {  // n values, then canaries
  std::vector<T> v;
  explicit Buf(int64_t n, double scale = 0) : v(size_t(n) + kGuard, T(kCanary)) {
    if (scale > 0)
      for (int64_t i = 0; i < n; ++i) v[i] = T(scale * normal());
  }
  T* p() { return v.data(); }
};

// got against want over n values; tolerance relative to the array's largest magnitude.
template <typename T>
void compare(const std::string& what, const Buf<T>& got, const Buf<T>& want, int64_t n) {
  ++g_checks;
  double scale = 0;
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(double(want.v[i]))) scale = std::max(scale, std::fabs(double(want.v[i])));
  const double tol = (sizeof(T) == 4 ? 3e-5 : 1e-12) * std::max(scale, 1e-30);
  int bad = 0;
  for (int64_t i = 0; i < n + kGuard; ++i) {
    const double g = got.v[i], w = want.v[i];
    const bool ok = i >= n ? g == double(T(kCanary))
                           : std::isnan(w) ? std::isnan(g) : std::isinf(w) ? g == w : std::fabs(g - w) <= tol;
    if (!ok && bad++ < 4)
      std::printf("  FAIL %s [%lld]%s: got %.10g want %.10g (tol %.3g)\n", what.c_str(), (long long)i,
                  i >= n ? " (guard)" : "", g, w, tol);
  }
  if (bad) ++g_fail;
}

template <typename T>
const MlpKernels<T>& cuda_table() {
  if constexpr (sizeof(T) == 4) return mlp_cuda_f32;
  else return mlp_cuda_f64;
}
template <typename T>
const MlpKernels<T>& ref_table() {
  if constexpr (sizeof(T) == 4) return mlp_ref_f32;
  else return mlp_ref_f64;
}

// One call of each table on the same random net and data; every requested result compared.
template <typename T>
void check(const MlpShape& s, int64_t batch, bool want_y, bool imposed, bool want_dx, unsigned grads_mask,
           std::vector<bool> biases, const std::string& name) {
  const int L = s.layers;
  std::vector<Buf<T>> W, b;
  for (int l = 0; l < L; ++l) {
    W.emplace_back(int64_t(s.dims[l + 1]) * s.dims[l], 1.0 / std::sqrt(double(s.dims[l])));
    b.emplace_back(s.dims[l + 1], 0.3);
  }
  Buf<T> x(batch * s.dims[0], 1.0), dy(batch * s.dims[L], 1.0);
  auto run = [&](const MlpKernels<T>& k, std::vector<Buf<T>>& outs) {
    MlpArgs<T> a;
    a.shape = s;
    a.batch = batch;
    a.x = x.p();
    for (int l = 0; l < L; ++l) {
      a.weight[l] = W[l].p();
      a.bias[l] = biases[l] ? b[l].p() : nullptr;
    }
    outs.clear();
    outs.emplace_back(batch * s.dims[L]);  // y
    outs.emplace_back(batch * s.dims[0]);  // dx
    for (int l = 0; l < L; ++l) {
      outs.emplace_back(int64_t(s.dims[l + 1]) * s.dims[l]);
      outs.emplace_back(s.dims[l + 1]);
    }
    if (want_y) a.y = outs[0].p();
    a.dy = imposed ? dy.p() : nullptr;
    if (want_dx) a.dx = outs[1].p();
    for (int l = 0; l < L; ++l) {
      if (grads_mask >> (2 * l) & 1) a.dweight[l] = outs[2 + 2 * l].p();
      if (grads_mask >> (2 * l + 1) & 1 && biases[l]) a.dbias[l] = outs[3 + 2 * l].p();
    }
    const size_t ws = k.workspace_bytes(s, batch);
    std::vector<unsigned char> workspace(ws == SIZE_MAX ? 0 : ws + 1, 0xFF);
    a.workspace = workspace.data();
    k.run(a);
  };
  std::vector<Buf<T>> got, want, again;
  run(ref_table<T>(), want);
  run(cuda_table<T>(), got);
  run(cuda_table<T>(), again);
  const std::string tag = std::string(sizeof(T) == 4 ? "f32 " : "f64 ") + name + " batch " + std::to_string(batch);
  compare(tag + " y", got[0], want[0], want_y ? batch * s.dims[L] : 0);
  compare(tag + " dx", got[1], want[1], want_dx ? batch * s.dims[0] : 0);
  for (int l = 0; l < L; ++l) {
    const bool w = grads_mask >> (2 * l) & 1, bb = (grads_mask >> (2 * l + 1) & 1) && biases[l];
    compare(tag + " dW" + std::to_string(l), got[2 + 2 * l], want[2 + 2 * l], w ? int64_t(s.dims[l + 1]) * s.dims[l] : 0);
    compare(tag + " db" + std::to_string(l), got[3 + 2 * l], want[3 + 2 * l], bb ? s.dims[l + 1] : 0);
  }
  ++g_checks;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(got[i].v.data(), again[i].v.data(), got[i].v.size() * sizeof(T)) != 0) {
      std::printf("  FAIL %s: a second run differs (result %zu)\n", tag.c_str(), i);
      ++g_fail;
      break;
    }
}

MlpShape random_shape(int layers, const std::vector<int>& widths, bool smooth) {
  static const UnaryFn kSmooth[] = {UnaryFn::Tanh, UnaryFn::LogisticSigmoid, UnaryFn::GELU, UnaryFn::Sin,
                                    UnaryFn::SoftPlus, UnaryFn::Swish, UnaryFn::Ramp, UnaryFn::Count};
  MlpShape s;
  s.layers = layers;
  for (int l = 0; l <= layers; ++l) s.dims[l] = pick(widths);
  for (int l = 0; l < layers; ++l)
    s.act[l] = smooth ? kSmooth[std::uniform_int_distribution<int>(0, 7)(rng)]
                      : static_cast<UnaryFn>(std::uniform_int_distribution<int>(0, int(UnaryFn::Count))(rng));
  return s;
}

template <typename T>
void run_all() {
  const std::vector<int> widths = {1, 2, 3, 15, 16, 17, 31, 33, 64, 65, 100, 128};
  const std::vector<int64_t> batches = {0, 1, 15, 16, 17, 63, 64, 65, 200, 777};
  for (int trial = 0; trial < 28; ++trial) {
    MlpShape s = random_shape(1 + trial % 5, widths, trial % 7 != 6);
    std::vector<bool> biases(s.layers);
    for (int l = 0; l < s.layers; ++l) biases[l] = (trial + l) % 4 != 3;
    const int64_t batch = batches[trial % batches.size()];
    const int mode = trial % 4;  // forward; everything; input gradient alone; array gradients alone
    s.backward = mode != 0;
    const unsigned all = (1u << (2 * s.layers)) - 1;
    const unsigned grads = mode == 1 ? all : mode == 3 ? (trial % 8 == 3 ? 0x5u & all : all) : 0;
    s.param_grads = grads != 0;
    if (cuda_table<T>().workspace_bytes(s, batch) == SIZE_MAX) continue;  // checked below
    check<T>(s, batch, mode <= 1, trial % 3 == 0, mode == 1 || mode == 2, grads, biases, "trial " + std::to_string(trial));
  }
  // Every elementwise function, on a layer that is not the last and on the last one.
  for (int f = 0; f <= int(UnaryFn::Count); ++f) {
    MlpShape s;
    s.layers = 2;
    s.dims[0] = 5, s.dims[1] = 20, s.dims[2] = 3;
    s.act[0] = s.act[1] = static_cast<UnaryFn>(f);
    s.backward = s.param_grads = true;
    check<T>(s, 70, true, true, true, 0xF, {true, true}, std::string("function ") + (f < int(UnaryFn::Count) ? unary_name(UnaryFn(f)) : "none"));
  }
  // 128 units a layer, as deep as one block holds all the weights and a backward pass (float: two
  // layers; double: one), with every result, over several tiles per block.
  MlpShape s;
  s.layers = sizeof(T) == 4 ? 2 : 1;
  for (int l = 0; l <= s.layers; ++l) s.dims[l] = 128;
  for (int l = 0; l < s.layers; ++l) s.act[l] = UnaryFn::Tanh;
  s.backward = true;
  if (cuda_table<T>().workspace_bytes(s, 500) == SIZE_MAX) {
    std::printf("  FAIL %s: the 128-wide shape does not fit a block\n", sizeof(T) == 4 ? "f32" : "f64");
    ++g_fail;
  } else {
    s.param_grads = true;
    check<T>(s, 500, true, false, true, (1u << (2 * s.layers)) - 1, std::vector<bool>(s.layers, true), "128 wide");
  }
  // Too big for one block: workspace_bytes says so, and run() reports an error instead of running.
  MlpShape big;
  big.layers = 8;
  for (int l = 0; l <= 8; ++l) big.dims[l] = 128;
  big.backward = big.param_grads = true;
  ++g_checks;
  if (cuda_table<T>().workspace_bytes(big, 10) != SIZE_MAX) {
    std::printf("  FAIL: 8 layers of 128 should not fit one block\n");
    ++g_fail;
  }
  portgrad::cuda_test::expect_error = true;
  const int before = portgrad::cuda_test::errors_noted;
  MlpArgs<T> a;
  a.shape = big;
  a.batch = 10;
  cuda_table<T>().run(a);
  portgrad::cuda_test::expect_error = false;
  ++g_checks;
  if (portgrad::cuda_test::errors_noted != before + 1) {
    std::printf("  FAIL: a shape too big for a block ran without an error\n");
    ++g_fail;
  }
}

int main() {
  run_all<float>();
  run_all<double>();
  if (g_fail) {
    std::printf("FAIL mlp: %d of %d checks failed\n", g_fail, g_checks);
    return 1;
  }
  std::printf("PASS mlp: %d checks\n", g_checks);
  return 0;
}
