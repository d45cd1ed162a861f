/// @brief Test hooks on `portgrad._core.kernels` for the convolution and pooling kernel families:
/// each runs exactly one ISA's variant ("scalar" = the reference, "avx2", or "active") on numpy
/// arrays, checked here at the door, with its workspace allocated here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/conv.h"
#include "kernels/pool.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace portgrad::python {
namespace {

using kernels::Isa;
using Dims = std::vector<int64_t>;

template <typename Table>
const Table& table(const Table* t, const Table& active, const std::string& isa) {
  if (isa == "active") return active;
  if (!t) throw ValueError(cat("kernel variant not available: ISA '", isa, "' is not built or not supported by this CPU"));
  return *t;
}

Isa parse_isa(const std::string& name) {
  if (name == "active") return Isa::Scalar;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (name == kernels::isa_name(isa)) return isa;
  throw ValueError(cat("unknown ISA '", name, "'; expected scalar, avx2, avx512 or active"));
}

template <typename T>
const kernels::ConvKernels<T>& conv_table(const std::string& isa) {
  return table(kernels::conv_kernels_for<T>(parse_isa(isa)), kernels::conv_kernels<T>(), isa);
}
template <typename T>
const kernels::PoolKernels<T>& pool_table(const std::string& isa) {
  return table(kernels::pool_kernels_for<T>(parse_isa(isa)), kernels::pool_kernels<T>(), isa);
}

bool is_f64(const py::array& a, const char* what) {
  if (!(a.flags() & py::array::c_style)) throw TypeError(cat(what, " must be C-contiguous"));
  if (a.dtype().is(py::dtype::of<float>())) return false;
  if (a.dtype().is(py::dtype::of<double>())) return true;
  throw TypeError(cat(what, " must be float32 or float64"));
}

void same_dtype(const py::array& a, bool f64, const char* what) {
  if (is_f64(a, what) != f64) throw TypeError(cat(what, " must have the dtype of the first array"));
}

void fill3(const Dims& v, int nd, int64_t* dst, const char* what) {
  if (static_cast<int>(v.size()) != nd) throw ValueError(cat(what, " must have ", nd, " entries"));
  for (int d = 0; d < nd; ++d) dst[3 - nd + d] = v[d];
}

void positive(const int64_t* v, const char* what) {
  for (int d = 0; d < 3; ++d)
    if (v[d] < 1) throw ValueError(cat(what, " must be positive"));
}

// A fresh NaN-filled result, or `out` (flat, writeable, at least n elements; only the first n are
// written: what guard tests check).
template <typename T>
py::array result(const std::vector<py::ssize_t>& shape, py::object out) {
  py::ssize_t n = 1;
  for (auto d : shape) n *= d;
  if (out.is_none()) {
    py::array_t<T> r(shape);
    T* p = r.mutable_data();
    for (py::ssize_t i = 0; i < n; ++i) p[i] = std::numeric_limits<T>::quiet_NaN();
    return std::move(r);
  }
  py::array o = out.cast<py::array>();
  if (!o.dtype().is(py::dtype::of<T>()) || !(o.flags() & py::array::c_style) || !o.writeable() || o.size() < n)
    throw ValueError(cat("out must be a writeable C-contiguous array of the same dtype with at least ", n, " elements"));
  return o;
}

struct Workspace {
  std::unique_ptr<unsigned char[]> mem;
  void* p = nullptr;
  explicit Workspace(size_t bytes) : mem(new unsigned char[bytes + 64]) {
    p = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(mem.get()) + 63) & ~uintptr_t(63));
  }
};

// The ConvShape of x (B, c_in, in...) and W (c_out, c_in/g, k...) and the output spatial size.
kernels::ConvShape conv_shape(const py::array& x, const py::array& w, int64_t groups, const Dims& stride,
                              const Dims& dilation, const Dims& pad, const Dims& out, bool x_is_output) {
  const int nd = static_cast<int>(x.ndim()) - 2;
  if (nd < 1 || nd > 3) throw ValueError("x must be (batch, channels, 1 to 3 spatial dimensions)");
  if (w.ndim() != nd + 2) throw ValueError("w must be (c_out, c_in/groups, kernel...) of the rank of x");
  if (groups < 1) throw ValueError("groups must be positive");
  kernels::ConvShape s;
  s.batch = x.shape(0);
  s.groups = groups;
  s.c_out = w.shape(0);
  s.c_in = w.shape(1) * groups;
  const int64_t x_channels = x.shape(1);
  if (x_is_output ? x_channels != s.c_out : x_channels != s.c_in)
    throw ValueError("the channels of the first array do not match w and groups");
  if (s.c_out % groups) throw ValueError("w.shape[0] must be divisible by groups");
  Dims sp(x.shape() + 2, x.shape() + x.ndim()), k(w.shape() + 2, w.shape() + w.ndim());
  fill3(x_is_output ? out : sp, nd, s.in, "in");
  fill3(x_is_output ? sp : out, nd, s.out, "out");
  fill3(k, nd, s.k, "kernel");
  fill3(stride, nd, s.stride, "stride");
  fill3(dilation, nd, s.dilation, "dilation");
  fill3(pad, nd, s.pad, "pad");
  positive(s.in, "in");
  positive(s.out, "out");
  positive(s.k, "kernel");
  positive(s.stride, "stride");
  positive(s.dilation, "dilation");
  for (int d = 0; d < 3; ++d)
    if (s.pad[d] < 0) throw ValueError("pad must be non-negative");
  return s;
}

std::vector<py::ssize_t> dims(std::initializer_list<int64_t> head, const int64_t* sp, int nd) {
  std::vector<py::ssize_t> r(head.begin(), head.end());
  for (int d = 3 - nd; d < 3; ++d) r.push_back(sp[d]);
  return r;
}

py::array conv_forward(const std::string& isa, const py::array& x, const py::array& w, int64_t groups, Dims stride,
                       Dims dilation, Dims pad, Dims out_spatial, py::object out) {
  const bool f64 = is_f64(x, "x");
  same_dtype(w, f64, "w");
  const auto s = conv_shape(x, w, groups, stride, dilation, pad, out_spatial, false);
  const int nd = static_cast<int>(x.ndim()) - 2;
  auto run = [&](auto t) {
    using T = decltype(t);
    const auto& k = conv_table<T>(isa);
    py::array y = result<T>(dims({s.batch, s.c_out}, s.out, nd), out);
    Workspace ws(k.workspace_bytes(s));
    k.forward(s, static_cast<const T*>(x.data()), static_cast<const T*>(w.data()), static_cast<T*>(y.mutable_data()), ws.p);
    return y;
  };
  return f64 ? run(double{}) : run(float{});
}

py::array conv_backward_data(const std::string& isa, const py::array& dy, const py::array& w, int64_t groups,
                             Dims stride, Dims dilation, Dims pad, Dims in_spatial, py::object out) {
  const bool f64 = is_f64(dy, "dy");
  same_dtype(w, f64, "w");
  const auto s = conv_shape(dy, w, groups, stride, dilation, pad, in_spatial, true);
  const int nd = static_cast<int>(dy.ndim()) - 2;
  auto run = [&](auto t) {
    using T = decltype(t);
    const auto& k = conv_table<T>(isa);
    py::array dx = result<T>(dims({s.batch, s.c_in}, s.in, nd), out);
    Workspace ws(k.workspace_bytes(s));
    k.backward_data(s, static_cast<const T*>(dy.data()), static_cast<const T*>(w.data()),
                    static_cast<T*>(dx.mutable_data()), ws.p);
    return dx;
  };
  return f64 ? run(double{}) : run(float{});
}

py::array conv_backward_weights(const std::string& isa, const py::array& x, const py::array& dy, int64_t groups,
                                Dims stride, Dims dilation, Dims pad, Dims kernel, py::object out) {
  const bool f64 = is_f64(x, "x");
  same_dtype(dy, f64, "dy");
  const int nd = static_cast<int>(x.ndim()) - 2;
  if (dy.ndim() != x.ndim() || dy.shape(0) != x.shape(0)) throw ValueError("dy must be (batch, c_out, out...)");
  if (groups < 1 || x.shape(1) % groups) throw ValueError("x's channels must be divisible by groups");
  std::vector<py::ssize_t> wshape{dy.shape(1), x.shape(1) / groups};
  for (auto kk : kernel) wshape.push_back(kk);
  if (static_cast<int>(kernel.size()) != nd) throw ValueError("kernel must have one entry per spatial dimension");
  auto run = [&](auto t) {
    using T = decltype(t);
    py::array_t<T> wdummy(wshape);
    Dims osp(dy.shape() + 2, dy.shape() + dy.ndim());
    const auto s = conv_shape(x, wdummy, groups, stride, dilation, pad, osp, false);
    const auto& k = conv_table<T>(isa);
    py::array dw = result<T>(wshape, out);
    Workspace ws(k.workspace_bytes(s));
    k.backward_weights(s, static_cast<const T*>(x.data()), static_cast<const T*>(dy.data()),
                       static_cast<T*>(dw.mutable_data()), ws.p);
    return dw;
  };
  return f64 ? run(double{}) : run(float{});
}

// y + bias[c] for y (B, C, spatial...), into a copy.
py::array conv_bias_forward(const std::string& isa, const py::array& y, const py::array& b) {
  const bool f64 = is_f64(y, "y");
  same_dtype(b, f64, "b");
  if (y.ndim() < 2 || b.ndim() != 1 || b.shape(0) != y.shape(1)) throw ValueError("y must be (B, C, ...) and b (C,)");
  const int64_t B = y.shape(0), C = y.shape(1), sp = (B * C != 0) ? y.size() / (B * C) : 0;
  auto run = [&](auto t) {
    using T = decltype(t);
    py::array r = py::array_t<T>(std::vector<py::ssize_t>(y.shape(), y.shape() + y.ndim()));
    std::copy(static_cast<const T*>(y.data()), static_cast<const T*>(y.data()) + y.size(), static_cast<T*>(r.mutable_data()));
    conv_table<T>(isa).bias_forward(B, C, sp, static_cast<const T*>(b.data()), static_cast<T*>(r.mutable_data()));
    return r;
  };
  return f64 ? run(double{}) : run(float{});
}

py::array conv_bias_backward(const std::string& isa, const py::array& dy) {
  const bool f64 = is_f64(dy, "dy");
  if (dy.ndim() < 2) throw ValueError("dy must be (B, C, ...)");
  const int64_t B = dy.shape(0), C = dy.shape(1), sp = (B * C != 0) ? dy.size() / (B * C) : 0;
  auto run = [&](auto t) {
    using T = decltype(t);
    py::array db = result<T>({C}, py::none());
    conv_table<T>(isa).bias_backward(B, C, sp, static_cast<const T*>(dy.data()), static_cast<T*>(db.mutable_data()));
    return db;
  };
  return f64 ? run(double{}) : run(float{});
}

kernels::PoolFn parse_pool(const std::string& f) {
  if (f == "Max") return kernels::PoolFn::Max;
  if (f == "Mean") return kernels::PoolFn::Mean;
  if (f == "Total") return kernels::PoolFn::Total;
  throw ValueError(cat("unknown pooling function '", f, "'; expected Max, Mean or Total"));
}

kernels::PoolShape pool_shape(const py::array& x, const Dims& kernel, const Dims& stride, const Dims& pad,
                              const Dims& out) {
  const int nd = static_cast<int>(x.ndim()) - 1;
  if (nd < 1 || nd > 3) throw ValueError("x must be (planes, 1 to 3 spatial dimensions)");
  kernels::PoolShape s;
  s.planes = x.shape(0);
  fill3(Dims(x.shape() + 1, x.shape() + x.ndim()), nd, s.in, "in");
  fill3(out, nd, s.out, "out");
  fill3(kernel, nd, s.k, "kernel");
  fill3(stride, nd, s.stride, "stride");
  fill3(pad, nd, s.pad, "pad");
  positive(s.in, "in");
  positive(s.out, "out");
  positive(s.k, "kernel");
  positive(s.stride, "stride");
  for (int d = 0; d < 3; ++d)
    if (s.pad[d] < 0) throw ValueError("pad must be non-negative");
  return s;
}

py::array pool_forward(const std::string& isa, const std::string& fn, const py::array& x, Dims kernel, Dims stride,
                       Dims pad, Dims out_spatial, py::object out) {
  const bool f64 = is_f64(x, "x");
  const auto s = pool_shape(x, kernel, stride, pad, out_spatial);
  const int nd = static_cast<int>(x.ndim()) - 1;
  auto run = [&](auto t) {
    using T = decltype(t);
    py::array y = result<T>(dims({s.planes}, s.out, nd), out);
    pool_table<T>(isa).forward(parse_pool(fn), s, static_cast<const T*>(x.data()), static_cast<T*>(y.mutable_data()));
    return y;
  };
  return f64 ? run(double{}) : run(float{});
}

py::array pool_backward(const std::string& isa, const std::string& fn, const py::array& x, const py::array& dy,
                        Dims kernel, Dims stride, Dims pad, py::object out) {
  const bool f64 = is_f64(x, "x");
  same_dtype(dy, f64, "dy");
  if (dy.ndim() != x.ndim() || dy.shape(0) != x.shape(0)) throw ValueError("dy must be (planes, out...)");
  const auto s = pool_shape(x, kernel, stride, pad, Dims(dy.shape() + 1, dy.shape() + dy.ndim()));
  auto run = [&](auto t) {
    using T = decltype(t);
    py::array dx = result<T>(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()), out);
    pool_table<T>(isa).backward(parse_pool(fn), s, static_cast<const T*>(x.data()), static_cast<const T*>(dy.data()),
                                static_cast<T*>(dx.mutable_data()));
    return dx;
  };
  return f64 ? run(double{}) : run(float{});
}

py::array pool_max_tangent(const std::string& isa, const py::array& x, const py::array& tx, Dims kernel, Dims stride,
                           Dims pad, Dims out_spatial, py::object out) {
  const bool f64 = is_f64(x, "x");
  same_dtype(tx, f64, "tx");
  if (tx.ndim() != x.ndim() || !std::equal(x.shape(), x.shape() + x.ndim(), tx.shape()))
    throw ValueError("tx must have x's shape");
  const auto s = pool_shape(x, kernel, stride, pad, out_spatial);
  const int nd = static_cast<int>(x.ndim()) - 1;
  auto run = [&](auto t) {
    using T = decltype(t);
    py::array ty = result<T>(dims({s.planes}, s.out, nd), out);
    pool_table<T>(isa).max_tangent(s, static_cast<const T*>(x.data()), static_cast<const T*>(tx.data()),
                                   static_cast<T*>(ty.mutable_data()));
    return ty;
  };
  return f64 ? run(double{}) : run(float{});
}

}  // namespace

void bind_conv_kernels(py::module_& k) {
  using py::arg;
  k.def("conv_forward", &conv_forward, arg("isa"), arg("x"), arg("w"), arg("groups"), arg("stride"), arg("dilation"),
        arg("pad"), arg("out_spatial"), arg("out") = py::none(), "y = conv(x, w) (no bias); pad = padding before.");
  k.def("conv_backward_data", &conv_backward_data, arg("isa"), arg("dy"), arg("w"), arg("groups"), arg("stride"),
        arg("dilation"), arg("pad"), arg("in_spatial"), arg("out") = py::none(), "dx = conv^T(dy, w).");
  k.def("conv_backward_weights", &conv_backward_weights, arg("isa"), arg("x"), arg("dy"), arg("groups"), arg("stride"),
        arg("dilation"), arg("pad"), arg("kernel"), arg("out") = py::none(), "dW, summed over the batch.");
  k.def("conv_bias_forward", &conv_bias_forward, arg("isa"), arg("y"), arg("b"), "y + b[c] (a copy).");
  k.def("conv_bias_backward", &conv_bias_backward, arg("isa"), arg("dy"), "db[c] = sum of dy over batch and space.");
  k.def("pool_forward", &pool_forward, arg("isa"), arg("function"), arg("x"), arg("kernel"), arg("stride"), arg("pad"),
        arg("out_spatial"), arg("out") = py::none(), "Pooling of x (planes, spatial...).");
  k.def("pool_backward", &pool_backward, arg("isa"), arg("function"), arg("x"), arg("dy"), arg("kernel"), arg("stride"),
        arg("pad"), arg("out") = py::none(), "dx of pooling.");
  k.def("pool_max_tangent", &pool_max_tangent, arg("isa"), arg("x"), arg("tx"), arg("kernel"), arg("stride"), arg("pad"),
        arg("out_spatial"), arg("out") = py::none(), "Forward mode of max pooling: tx at each window's first maximum.");
}

}  // namespace portgrad::python
