/// @brief Reference fused MLP: each row forward and backward in double precision (nothing rounded
/// between layers), parameter gradients summed over the rows in order. Its workspace holds the
/// double-precision activations and sums.
#include <algorithm>
#include <vector>

#include "kernels/mlp.h"

namespace portgrad::kernels {

namespace {

double apply(UnaryFn f, double z) {
  if (f == UnaryFn::Count) return z;
  double y;
  unary_ref_f64.forward(f, 1, &z, &y);
  return y;
}

double times_derivative(UnaryFn f, double z, double g) {
  if (f == UnaryFn::Count) return g;
  double y = apply(f, z), d;
  unary_ref_f64.backward(f, 1, &z, &y, &g, &d);
  return d;
}

template <typename T>
size_t mlp_ref_workspace(const MlpShape& s, int64_t) {
  return mlp_shape_valid(s) ? 0 : SIZE_MAX;
}

template <typename T>
void mlp_ref_run(const MlpArgs<T>& a) {
  const MlpShape& s = a.shape;
  const int L = s.layers;
  std::vector<std::vector<double>> h(L + 1), z(L);  // h[l]: input of layer l; z[l]: its pre-activation
  std::vector<std::vector<double>> dw(L), db(L);
  for (int l = 0; l < L; ++l) {
    dw[l].assign(size_t(s.dims[l + 1]) * s.dims[l], 0.0);
    db[l].assign(s.dims[l + 1], 0.0);
  }
  for (int64_t r = 0; r < a.batch; ++r) {
    h[0].assign(a.x + r * s.dims[0], a.x + (r + 1) * s.dims[0]);
    for (int l = 0; l < L; ++l) {
      const int n_in = s.dims[l], n_out = s.dims[l + 1];
      z[l].assign(n_out, 0.0);
      h[l + 1].assign(n_out, 0.0);
      for (int o = 0; o < n_out; ++o) {
        double acc = a.bias[l] ? double(a.bias[l][o]) : 0.0;
        for (int i = 0; i < n_in; ++i) acc += double(a.weight[l][size_t(o) * n_in + i]) * h[l][i];
        z[l][o] = acc;
        h[l + 1][o] = apply(s.act[l], acc);
      }
    }
    const int n_y = s.dims[L];
    if (a.y)
      for (int o = 0; o < n_y; ++o) a.y[r * n_y + o] = T(h[L][o]);
    if (!s.backward) continue;
    std::vector<double> g(n_y, 1.0);
    if (a.dy)
      for (int o = 0; o < n_y; ++o) g[o] = double(a.dy[r * n_y + o]);
    for (int l = L - 1; l >= 0; --l) {
      const int n_in = s.dims[l], n_out = s.dims[l + 1];
      for (int o = 0; o < n_out; ++o) g[o] = times_derivative(s.act[l], z[l][o], g[o]);  // dz
      for (int o = 0; o < n_out; ++o) {
        db[l][o] += g[o];
        for (int i = 0; i < n_in; ++i) dw[l][size_t(o) * n_in + i] += g[o] * h[l][i];
      }
      std::vector<double> prev(n_in, 0.0);
      for (int i = 0; i < n_in; ++i)
        for (int o = 0; o < n_out; ++o) prev[i] += g[o] * double(a.weight[l][size_t(o) * n_in + i]);
      g.swap(prev);
    }
    if (a.dx)
      for (int i = 0; i < s.dims[0]; ++i) a.dx[r * s.dims[0] + i] = T(g[i]);
  }
  if (!s.backward) return;
  for (int l = 0; l < L; ++l) {
    if (a.dweight[l]) std::transform(dw[l].begin(), dw[l].end(), a.dweight[l], [](double v) { return T(v); });
    if (a.dbias[l]) std::transform(db[l].begin(), db[l].end(), a.dbias[l], [](double v) { return T(v); });
  }
}

}  // namespace

const MlpKernels<float> mlp_ref_f32{&mlp_ref_workspace<float>, &mlp_ref_run<float>};
const MlpKernels<double> mlp_ref_f64{&mlp_ref_workspace<double>, &mlp_ref_run<double>};

}  // namespace portgrad::kernels
