/// @brief AVX2+FMA loss kernels, fp32 and fp64 from one template: MSE, MAE, BCE and CE against
/// probabilities vectorised (tails by masked loads/stores); CE against class indices touches one
/// element per group and calls the reference.
/// BCE's log(max(1 - p, eps)) is computed as log1p(-p) (Kahan), so p near 0 keeps full accuracy.
#include <immintrin.h>

#include <limits>

#include "kernels/cpu/vecmath_avx2.h"
#include "kernels/loss.h"

namespace portgrad::kernels {
namespace {

template <typename V> inline V eps() {
  using S = typename VT<V>::S;
  return C<V>(static_cast<double>(std::numeric_limits<S>::epsilon()) *
              static_cast<double>(std::numeric_limits<S>::epsilon()));
}

// sum over i < n of g(a[i], b[i]) (masked lanes contribute 0).
template <typename V, typename G>
inline typename VT<V>::S reduce2(int64_t n, const typename VT<V>::S* a, const typename VT<V>::S* b, G g) {
  constexpr int W = VT<V>::W;
  V s0 = C<V>(0.0), s1 = C<V>(0.0);
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    s0 = add(s0, g(VT<V>::load(a + i), VT<V>::load(b + i)));
    s1 = add(s1, g(VT<V>::load(a + i + W), VT<V>::load(b + i + W)));
  }
  for (; i + W <= n; i += W) s0 = add(s0, g(VT<V>::load(a + i), VT<V>::load(b + i)));
  if (i < n) {
    const __m256i m = VT<V>::mask(n - i);
    s1 = add(s1, vand(g(VT<V>::mload(a + i, m), VT<V>::mload(b + i, m)), as_mask<V>(m)));
  }
  return VT<V>::hsum(add(s0, s1));
}

// out1[i] = g1(a[i], b[i]), out2[i] = g2(a[i], b[i]); a null output is skipped.
template <typename V, typename G1, typename G2>
inline void map2(int64_t n, const typename VT<V>::S* a, const typename VT<V>::S* b, typename VT<V>::S* o1,
                 typename VT<V>::S* o2, G1 g1, G2 g2) {
  constexpr int W = VT<V>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V va = VT<V>::load(a + i), vb = VT<V>::load(b + i);
    if (o1) VT<V>::store(o1 + i, g1(va, vb));
    if (o2) VT<V>::store(o2 + i, g2(va, vb));
  }
  if (i < n) {
    const __m256i m = VT<V>::mask(n - i);
    const V va = VT<V>::mload(a + i, m), vb = VT<V>::mload(b + i, m);
    if (o1) VT<V>::mstore(o1 + i, m, g1(va, vb));
    if (o2) VT<V>::mstore(o2 + i, m, g2(va, vb));
  }
}

template <typename S> inline S mean(S s, int64_t n) { return n > 0 ? s / static_cast<S>(n) : S(0); }

// log(max(p, eps)) and log(max(1 - p, eps)) (the latter as log1p(-p) while 1 - p >= eps).
template <typename V> inline V log_p(V p) { return vlog(vmax(eps<V>(), p)); }
template <typename V> inline V log_1mp(V p) {
  const V w = sub(C<V>(1.0), p);
  return blend(vlog1p(sub(C<V>(0.0), p)), vlog(eps<V>()), lt(w, eps<V>()));
}

template <typename V>
void mse_forward(int64_t batch, int64_t n, const typename VT<V>::S* x, const typename VT<V>::S* t,
                 typename VT<V>::S* loss) {
  for (int64_t b = 0; b < batch; ++b)
    loss[b] = mean(reduce2<V>(n, x + b * n, t + b * n, [](V a, V c) { const V d = sub(a, c); return mul(d, d); }), n);
}
template <typename V>
void mse_backward(int64_t batch, int64_t n, const typename VT<V>::S* x, const typename VT<V>::S* t,
                  const typename VT<V>::S* dloss, typename VT<V>::S* dx, typename VT<V>::S* dt) {
  using S = typename VT<V>::S;
  for (int64_t b = 0; b < batch; ++b) {
    const V k = C<V>(2.0 * static_cast<double>(dloss[b]) / static_cast<double>(n));
    map2<V>(n, x + b * n, t + b * n, dx ? dx + b * n : static_cast<S*>(nullptr), dt ? dt + b * n : static_cast<S*>(nullptr),
            [=](V a, V c) { return mul(k, sub(a, c)); }, [=](V a, V c) { return mul(k, sub(c, a)); });
  }
}

template <typename V> inline V sign_of(V d) {
  return vor(vand(gt(d, C<V>(0.0)), C<V>(1.0)), vand(lt(d, C<V>(0.0)), C<V>(-1.0)));
}
template <typename V>
void mae_forward(int64_t batch, int64_t n, const typename VT<V>::S* x, const typename VT<V>::S* t,
                 typename VT<V>::S* loss) {
  for (int64_t b = 0; b < batch; ++b)
    loss[b] = mean(reduce2<V>(n, x + b * n, t + b * n, [](V a, V c) { return vabs(sub(a, c)); }), n);
}
template <typename V>
void mae_backward(int64_t batch, int64_t n, const typename VT<V>::S* x, const typename VT<V>::S* t,
                  const typename VT<V>::S* dloss, typename VT<V>::S* dx, typename VT<V>::S* dt) {
  using S = typename VT<V>::S;
  for (int64_t b = 0; b < batch; ++b) {
    const V k = C<V>(static_cast<double>(dloss[b]) / static_cast<double>(n));
    map2<V>(n, x + b * n, t + b * n, dx ? dx + b * n : static_cast<S*>(nullptr), dt ? dt + b * n : static_cast<S*>(nullptr),
            [=](V a, V c) { return mul(k, sign_of(sub(a, c))); }, [=](V a, V c) { return mul(k, sign_of(sub(c, a))); });
  }
}

template <typename V>
void bce_forward(int64_t batch, int64_t n, const typename VT<V>::S* p, const typename VT<V>::S* t,
                 typename VT<V>::S* loss) {
  for (int64_t b = 0; b < batch; ++b)
    loss[b] = mean(reduce2<V>(n, p + b * n, t + b * n, [](V pp, V tt) {
                     // -(t log p + (1 - t) log(1 - p)) = -(lq + t (lp - lq))
                     const V lp = log_p(pp), lq = log_1mp(pp);
                     return sub(C<V>(0.0), fma(tt, sub(lp, lq), lq));
                   }), n);
}
template <typename V>
void bce_backward(int64_t batch, int64_t n, const typename VT<V>::S* p, const typename VT<V>::S* t,
                  const typename VT<V>::S* dloss, typename VT<V>::S* dp, typename VT<V>::S* dt) {
  using S = typename VT<V>::S;
  for (int64_t b = 0; b < batch; ++b) {
    const V k = C<V>(static_cast<double>(dloss[b]) / static_cast<double>(n));
    map2<V>(n, p + b * n, t + b * n, dp ? dp + b * n : static_cast<S*>(nullptr), dt ? dt + b * n : static_cast<S*>(nullptr),
            [=](V pp, V tt) {
              // k (-t / a + (1 - t) / c) = k ((1 - t) a - t c) / (a c), a = max(p, eps),
              // c = max(1 - p, eps); unclamped the numerator is p - t, free of cancellation.
              const V w = sub(C<V>(1.0), pp);
              const V a = vmax(eps<V>(), pp), c = vmax(eps<V>(), w);
              const V unclamped = vand(ge(pp, eps<V>()), ge(w, eps<V>()));
              const V num = blend(fms(sub(C<V>(1.0), tt), a, mul(tt, c)), sub(pp, tt), unclamped);
              return mul(k, div(num, mul(a, c)));
            },
            [=](V pp, V) {
              // k (log(1 - p) - log p); around p = 1/2 the two logs cancel, so there it is
              // k log1p((1 - 2p) / p), with 1 - 2p exact.
              const V mid = vand(gt(pp, C<V>(0.25)), lt(pp, C<V>(0.75)));
              const V near = vlog1p(div(fnma(C<V>(2.0), pp, C<V>(1.0)), pp));  // 1 - 2p: exact (Sterbenz)
              return mul(k, blend(sub(log_1mp(pp), log_p(pp)), near, mid));
            });
  }
}

template <typename V>
void ce_prob_forward(int64_t batch, int64_t groups, int64_t classes, const typename VT<V>::S* p,
                     const typename VT<V>::S* t, typename VT<V>::S* loss) {
  const int64_t m = groups * classes;
  for (int64_t b = 0; b < batch; ++b)
    loss[b] = mean(reduce2<V>(m, p + b * m, t + b * m, [](V pp, V tt) { return sub(C<V>(0.0), mul(tt, log_p(pp))); }),
                   groups);
}
template <typename V>
void ce_prob_backward(int64_t batch, int64_t groups, int64_t classes, const typename VT<V>::S* p,
                      const typename VT<V>::S* t, const typename VT<V>::S* dloss, typename VT<V>::S* dp,
                      typename VT<V>::S* dt) {
  using S = typename VT<V>::S;
  const int64_t m = groups * classes;
  for (int64_t b = 0; b < batch; ++b) {
    const V nk = C<V>(-static_cast<double>(dloss[b]) / static_cast<double>(groups));
    map2<V>(m, p + b * m, t + b * m, dp ? dp + b * m : static_cast<S*>(nullptr), dt ? dt + b * m : static_cast<S*>(nullptr),
            [=](V pp, V tt) { return mul(nk, div(tt, vmax(eps<V>(), pp))); },
            [=](V pp, V) { return mul(nk, log_p(pp)); });
  }
}

// Class-index CE touches one element per group: the reference's, looked up at call time (not
// copied at static initialisation, whose order across files is unspecified).
template <typename S> const LossKernels<S>& ref();
template <> const LossKernels<float>& ref<float>() { return loss_ref_f32; }
template <> const LossKernels<double>& ref<double>() { return loss_ref_f64; }
template <typename S>
void ce_index_forward(int64_t batch, int64_t groups, int64_t classes, const S* p, const int64_t* idx, S* loss) {
  ref<S>().ce_index_forward(batch, groups, classes, p, idx, loss);
}
template <typename S>
void ce_index_backward(int64_t batch, int64_t groups, int64_t classes, const S* p, const int64_t* idx,
                       const S* dloss, S* dp) {
  ref<S>().ce_index_backward(batch, groups, classes, p, idx, dloss, dp);
}

template <typename V>
constexpr LossKernels<typename VT<V>::S> make() {
  using S = typename VT<V>::S;
  return {&mse_forward<V>,     &mse_backward<V>,     &mae_forward<V>,       &mae_backward<V>,
          &bce_forward<V>,     &bce_backward<V>,     &ce_prob_forward<V>,   &ce_prob_backward<V>,
          &ce_index_forward<S>, &ce_index_backward<S>};
}

}  // namespace

const LossKernels<float> loss_avx2_f32 = make<__m256>();
const LossKernels<double> loss_avx2_f64 = make<__m256d>();

}  // namespace portgrad::kernels
