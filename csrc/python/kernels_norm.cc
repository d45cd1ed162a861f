/// @brief Test hooks on `portgrad._core.kernels` for the norm (batch/layer normalisation, dropout)
/// and embed families: each runs exactly one ISA's variant ("scalar" is the reference). Outputs are
/// made here, filled with NaN (an element the kernel forgets shows) and followed by guard values
/// that the hook checks after the call (a write past the end raises).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/embed.h"
#include "kernels/norm.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace portgrad::python {
namespace {

using kernels::Isa;

Isa isa_of(const std::string& name) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (name == kernels::isa_name(isa)) return isa;
  throw ValueError(cat("unknown ISA '", name, "'; expected scalar, avx2 or avx512"));
}

template <typename Table>
const Table& need(const Table* t, const std::string& isa) {
  if (!t) throw ValueError(cat("kernel variant not available: ISA '", isa, "' is not built or not supported"));
  return *t;
}
template <typename T> const kernels::NormKernels<T>& norm_table(const std::string& isa) {
  return need(kernels::norm_kernels_for<T>(isa_of(isa)), isa);
}
template <typename T> const kernels::EmbedKernels<T>& embed_table(const std::string& isa) {
  return need(kernels::embed_kernels_for<T>(isa_of(isa)), isa);
}

// Calls f(T{}) for the float dtype of x.
template <typename F>
auto by_dtype(const py::array& x, F&& f) {
  if (!(x.flags() & py::array::c_style)) throw TypeError("arrays must be C-contiguous");
  if (x.dtype().is(py::dtype::of<float>())) return f(float{});
  if (x.dtype().is(py::dtype::of<double>())) return f(double{});
  throw TypeError(cat("arrays must be float32 or float64, got ", std::string(py::str(x.dtype()))));
}

// An input of x's dtype with exactly n elements.
template <typename T>
const T* in(const py::array& a, py::ssize_t n, const char* what) {
  if (!a.dtype().is(py::dtype::of<T>()) || !(a.flags() & py::array::c_style))
    throw TypeError(cat(what, " must be a C-contiguous array of the dtype of x"));
  if (a.size() != n) throw ValueError(cat(what, " must have ", n, " elements, got ", a.size()));
  return static_cast<const T*>(a.data());
}

constexpr py::ssize_t kGuard = 9;

// An output of n elements (NaN) followed by guard values.
template <typename T>
struct Out {
  py::array_t<T> buf;
  py::ssize_t n;
  std::vector<py::ssize_t> shape;
  static constexpr T guard() { return T(-12345.5); }
  Out(std::vector<py::ssize_t> shp) : buf(size_of(shp) + kGuard), n(size_of(shp)), shape(std::move(shp)) {
    T* d = buf.mutable_data();
    for (py::ssize_t i = 0; i < n; ++i) d[i] = std::numeric_limits<T>::quiet_NaN();
    for (py::ssize_t i = n; i < n + kGuard; ++i) d[i] = guard();
  }
  static py::ssize_t size_of(const std::vector<py::ssize_t>& s) {
    py::ssize_t n = 1;
    for (auto d : s) n *= d;
    return n;
  }
  T* ptr() { return buf.mutable_data(); }
  py::array result(const char* what) {
    const T* d = buf.data();
    for (py::ssize_t i = n; i < n + kGuard; ++i)
      if (std::memcmp(&d[i], &(const T&)guard(), sizeof(T)) != 0)
        throw ValueError(cat("kernel wrote past the end of ", what));
    py::array_t<T> r(shape);
    std::memcpy(r.mutable_data(), d, size_t(n) * sizeof(T));
    return std::move(r);
  }
};

void need_rank(const py::array& x, int rank, const char* what) {
  if (x.ndim() != rank) throw ValueError(cat(what, " must have ", rank, " dimensions, got ", x.ndim()));
}

py::tuple channel_moments(const std::string& isa, const py::array& x) {
  need_rank(x, 3, "x (batch, channels, spatial)");
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    const auto B = x.shape(0), C = x.shape(1), S = x.shape(2);
    Out<T> mean({C}), var({C});
    norm_table<T>(isa).channel_moments(B, C, S, static_cast<const T*>(x.data()), mean.ptr(), var.ptr());
    return py::make_tuple(mean.result("mean"), var.result("var"));
  });
}

py::array inv_std(const std::string& isa, const py::array& var, double eps) {
  return by_dtype(var, [&](auto t) {
    using T = decltype(t);
    Out<T> r({var.size()});
    norm_table<T>(isa).inv_std(var.size(), static_cast<const T*>(var.data()), eps, r.ptr());
    return r.result("invstd");
  });
}

py::array channel_forward(const std::string& isa, const py::array& x, const py::array& mean, const py::array& invstd,
                          const py::array& gamma, const py::array& beta) {
  need_rank(x, 3, "x (batch, channels, spatial)");
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    const auto B = x.shape(0), C = x.shape(1), S = x.shape(2);
    Out<T> y({B, C, S});
    norm_table<T>(isa).channel_forward(B, C, S, static_cast<const T*>(x.data()), in<T>(mean, C, "mean"),
                                       in<T>(invstd, C, "invstd"), in<T>(gamma, C, "gamma"), in<T>(beta, C, "beta"),
                                       y.ptr());
    return y.result("y");
  });
}

py::tuple channel_backward(const std::string& isa, const py::array& x, const py::array& dy, const py::array& mean,
                           const py::array& invstd, const py::array& gamma, bool batch_stats, bool want_dx,
                           bool want_dgamma, bool want_dbeta) {
  need_rank(x, 3, "x (batch, channels, spatial)");
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    const auto B = x.shape(0), C = x.shape(1), S = x.shape(2);
    Out<T> dx({B, C, S}), dg({C}), db({C});
    norm_table<T>(isa).channel_backward(B, C, S, static_cast<const T*>(x.data()), in<T>(dy, x.size(), "dy"),
                                        in<T>(mean, C, "mean"), in<T>(invstd, C, "invstd"), in<T>(gamma, C, "gamma"),
                                        batch_stats, want_dx ? dx.ptr() : nullptr, want_dgamma ? dg.ptr() : nullptr,
                                        want_dbeta ? db.ptr() : nullptr);
    py::object none = py::none();
    return py::make_tuple(want_dx ? py::object(dx.result("dx")) : none,
                          want_dgamma ? py::object(dg.result("dgamma")) : none,
                          want_dbeta ? py::object(db.result("dbeta")) : none);
  });
}

py::tuple running_update(const std::string& isa, double momentum, int64_t m, const py::array& mean,
                         const py::array& var, const py::array& rmean, const py::array& rvar) {
  return by_dtype(mean, [&](auto t) {
    using T = decltype(t);
    const auto C = mean.size();
    Out<T> rm({C}), rv({C});
    std::memcpy(rm.ptr(), in<T>(rmean, C, "running_mean"), size_t(C) * sizeof(T));
    std::memcpy(rv.ptr(), in<T>(rvar, C, "running_var"), size_t(C) * sizeof(T));
    norm_table<T>(isa).running_update(C, momentum, m, static_cast<const T*>(mean.data()), in<T>(var, C, "var"),
                                      rm.ptr(), rv.ptr());
    return py::make_tuple(rm.result("running_mean"), rv.result("running_var"));
  });
}

py::tuple row_forward(const std::string& isa, const py::array& x, const py::array& gamma, const py::array& beta,
                      bool per_element, double eps) {
  need_rank(x, 3, "x (batch, rows, cols)");
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    const auto B = x.shape(0), R = x.shape(1), N = x.shape(2);
    const auto P = per_element ? R * N : R;
    Out<T> y({B, R, N}), mean({B, R}), invstd({B, R});
    norm_table<T>(isa).row_forward(B, R, N, per_element, eps, static_cast<const T*>(x.data()),
                                   in<T>(gamma, P, "gamma"), in<T>(beta, P, "beta"), y.ptr(), mean.ptr(),
                                   invstd.ptr());
    return py::make_tuple(y.result("y"), mean.result("mean"), invstd.result("invstd"));
  });
}

py::tuple row_backward(const std::string& isa, const py::array& x, const py::array& dy, const py::array& mean,
                       const py::array& invstd, const py::array& gamma, bool per_element, bool want_dx,
                       bool want_dgamma, bool want_dbeta) {
  need_rank(x, 3, "x (batch, rows, cols)");
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    const auto B = x.shape(0), R = x.shape(1), N = x.shape(2);
    const auto P = per_element ? R * N : R;
    Out<T> dx({B, R, N}), dg({P}), db({P});
    norm_table<T>(isa).row_backward(B, R, N, per_element, static_cast<const T*>(x.data()), in<T>(dy, x.size(), "dy"),
                                    in<T>(mean, B * R, "mean"), in<T>(invstd, B * R, "invstd"),
                                    in<T>(gamma, P, "gamma"), want_dx ? dx.ptr() : nullptr,
                                    want_dgamma ? dg.ptr() : nullptr, want_dbeta ? db.ptr() : nullptr);
    py::object none = py::none();
    return py::make_tuple(want_dx ? py::object(dx.result("dx")) : none,
                          want_dgamma ? py::object(dg.result("dgamma")) : none,
                          want_dbeta ? py::object(db.result("dbeta")) : none);
  });
}

py::array dropout(const std::string& isa, const py::array& x, double p, uint64_t key) {
  if (!(p >= 0 && p < 1)) throw ValueError("p must be in [0, 1)");
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    Out<T> y(shape);
    norm_table<T>(isa).dropout(x.size(), p, key, static_cast<const T*>(x.data()), y.ptr());
    return y.result("y");
  });
}

py::array_t<int64_t> indices(const py::array& idx, int64_t rows) {
  auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(idx);
  if (!a) throw TypeError("idx must be an integer array");
  for (py::ssize_t i = 0; i < a.size(); ++i)
    if (a.data()[i] < 0 || a.data()[i] >= rows) throw IndexError(cat("index ", a.data()[i], " out of range"));
  return a;
}

py::array embed_gather(const std::string& isa, const py::array& idx, const py::array& W) {
  need_rank(W, 2, "W (rows, size)");
  return by_dtype(W, [&](auto t) {
    using T = decltype(t);
    const auto ix = indices(idx, W.shape(0));
    Out<T> y({ix.size(), W.shape(1)});
    embed_table<T>(isa).gather(ix.size(), W.shape(1), ix.data(), static_cast<const T*>(W.data()), y.ptr());
    return y.result("y");
  });
}

py::array embed_scatter_add(const std::string& isa, const py::array& idx, const py::array& dy, int64_t rows) {
  need_rank(dy, 2, "dy (n, size)");
  return by_dtype(dy, [&](auto t) {
    using T = decltype(t);
    const auto ix = indices(idx, rows);
    if (ix.size() != dy.shape(0)) throw ValueError("dy must have one row per index");
    Out<T> dW({rows, dy.shape(1)});
    embed_table<T>(isa).scatter_add(ix.size(), rows, dy.shape(1), ix.data(), static_cast<const T*>(dy.data()),
                                    dW.ptr());
    return dW.result("dW");
  });
}

}  // namespace

void bind_norm_kernels(py::module_& k) {
  k.def("norm_channel_moments", &channel_moments, py::arg("isa"), py::arg("x"),
        "(mean, biased var) per channel of x (batch, channels, spatial)");
  k.def("norm_inv_std", &inv_std, py::arg("isa"), py::arg("var"), py::arg("eps"));
  k.def("norm_channel_forward", &channel_forward, py::arg("isa"), py::arg("x"), py::arg("mean"), py::arg("invstd"),
        py::arg("gamma"), py::arg("beta"));
  k.def("norm_channel_backward", &channel_backward, py::arg("isa"), py::arg("x"), py::arg("dy"), py::arg("mean"),
        py::arg("invstd"), py::arg("gamma"), py::arg("batch_stats"), py::arg("want_dx") = true,
        py::arg("want_dgamma") = true, py::arg("want_dbeta") = true, "(dx, dgamma, dbeta); None where not wanted");
  k.def("norm_running_update", &running_update, py::arg("isa"), py::arg("momentum"), py::arg("m"), py::arg("mean"),
        py::arg("var"), py::arg("running_mean"), py::arg("running_var"), "the updated (running_mean, running_var)");
  k.def("norm_row_forward", &row_forward, py::arg("isa"), py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("per_element"), py::arg("eps"), "(y, mean, invstd) of x (batch, rows, cols)");
  k.def("norm_row_backward", &row_backward, py::arg("isa"), py::arg("x"), py::arg("dy"), py::arg("mean"),
        py::arg("invstd"), py::arg("gamma"), py::arg("per_element"), py::arg("want_dx") = true,
        py::arg("want_dgamma") = true, py::arg("want_dbeta") = true);
  k.def("norm_dropout", &dropout, py::arg("isa"), py::arg("x"), py::arg("p"), py::arg("key"));
  k.def("dropout_key", [](uint64_t seed, uint64_t salt) { return kernels::dropout_rng::key(seed, salt); },
        py::arg("seed"), py::arg("salt"));
  k.def("dropout_bits", [](uint64_t key, uint64_t i) { return kernels::dropout_rng::bits(key, i); }, py::arg("key"),
        py::arg("i"));
  k.def("embed_gather", &embed_gather, py::arg("isa"), py::arg("idx"), py::arg("W"));
  k.def("embed_scatter_add", &embed_scatter_add, py::arg("isa"), py::arg("idx"), py::arg("dy"), py::arg("rows"));
}

}  // namespace portgrad::python
