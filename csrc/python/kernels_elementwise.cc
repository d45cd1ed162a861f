/// @brief Test hooks on `portgrad._core.kernels` for the unary, softmax and loss kernel families:
/// each runs exactly one ISA's variant on numpy arrays (checked here, at the door).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/errors.h"
#include "kernels/loss.h"
#include "kernels/softmax.h"
#include "kernels/unary.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace portgrad::python {
namespace {

using kernels::Isa;

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (name == kernels::isa_name(isa)) return isa;
  throw ValueError(cat("unknown ISA '", name, "'; expected scalar, avx2 or avx512"));
}

template <typename T> bool ready(const kernels::UnaryKernels<T>& t) { return t.forward && t.backward; }
template <typename T> bool ready(const kernels::SoftmaxKernels<T>& t) { return t.forward && t.backward; }
template <typename T> bool ready(const kernels::LossKernels<T>& t) { return t.mse_forward && t.ce_index_backward; }

// The table of exactly one ISA; a table not built (null) or still empty is "not available".
template <typename Table>
const Table& need(const Table* t, const std::string& isa) {
  if (!t || !ready(*t))
    throw ValueError(cat("kernel variant not available: ISA '", isa,
                         "' is not built for this family or not supported by this CPU"));
  return *t;
}

enum class Dt { F32, F64 };

Dt float_dtype(const py::array& a, const char* what) {
  if (!(a.flags() & py::array::c_style))
    throw TypeError(cat(what, " must be C-contiguous; pass np.ascontiguousarray(", what, ")"));
  if (a.dtype().is(py::dtype::of<float>())) return Dt::F32;
  if (a.dtype().is(py::dtype::of<double>())) return Dt::F64;
  throw TypeError(cat(what, " must be float32 or float64, got ", std::string(py::str(a.dtype()))));
}

void same(const py::array& a, Dt dt, const char* what, py::ssize_t size) {
  if (float_dtype(a, what) != dt) throw TypeError(cat(what, " must have the dtype of x"));
  if (a.size() != size) throw ValueError(cat(what, " must have ", size, " elements, got ", a.size()));
}

template <typename T>
T* ptr(py::array& a) { return static_cast<T*>(a.mutable_data()); }
template <typename T>
const T* cptr(const py::array& a) { return static_cast<const T*>(a.data()); }

// A fresh output of the given shape, filled with NaN so that an element the kernel forgot shows.
template <typename T>
py::array fresh(const std::vector<py::ssize_t>& shape) {
  py::array_t<T> out(shape);
  T* d = out.mutable_data();
  for (py::ssize_t i = 0; i < out.size(); ++i) d[i] = std::numeric_limits<T>::quiet_NaN();
  return std::move(out);
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

kernels::UnaryFn parse_unary(const std::string& name) {
  kernels::UnaryFn f;
  if (!kernels::unary_from_name(name, &f)) throw ValueError(cat("unknown elementwise function '", name, "'"));
  return f;
}

// Output: a fresh array like x, or `out` (same dtype, at least x.size elements, written only in
// its first x.size elements: what guard tests check).
py::array output_for(const py::array& x, Dt dt, py::object out) {
  if (out.is_none()) return dt == Dt::F32 ? fresh<float>(shape_of(x)) : fresh<double>(shape_of(x));
  py::array o = out.cast<py::array>();
  if (float_dtype(o, "out") != dt) throw TypeError("out must have the dtype of x");
  if (o.size() < x.size()) throw ValueError(cat("out must have at least ", x.size(), " elements"));
  if (!o.writeable()) throw ValueError("out must be writeable");
  return o;
}

py::array unary_forward(const std::string& isa, const std::string& name, const py::array& x, py::object out) {
  const auto f = parse_unary(name);
  const Dt dt = float_dtype(x, "x");
  py::array y = output_for(x, dt, out);
  const int64_t n = x.size();
  if (dt == Dt::F32)
    need(kernels::unary_kernels_for<float>(parse_isa(isa)), isa).forward(f, n, cptr<float>(x), ptr<float>(y));
  else
    need(kernels::unary_kernels_for<double>(parse_isa(isa)), isa).forward(f, n, cptr<double>(x), ptr<double>(y));
  return y;
}

py::array unary_backward(const std::string& isa, const std::string& name, const py::array& x,
                         const py::array& y, const py::array& dy, py::object out) {
  const auto f = parse_unary(name);
  const Dt dt = float_dtype(x, "x");
  same(y, dt, "y", x.size());
  same(dy, dt, "dy", x.size());
  py::array dx = output_for(x, dt, out);
  const int64_t n = x.size();
  if (dt == Dt::F32)
    need(kernels::unary_kernels_for<float>(parse_isa(isa)), isa)
        .backward(f, n, cptr<float>(x), cptr<float>(y), cptr<float>(dy), ptr<float>(dx));
  else
    need(kernels::unary_kernels_for<double>(parse_isa(isa)), isa)
        .backward(f, n, cptr<double>(x), cptr<double>(y), cptr<double>(dy), ptr<double>(dx));
  return dx;
}

py::array unary_second(const std::string& isa, const std::string& name, const py::array& x, const py::array& y,
                       const py::array& a, const py::array& b, py::object out) {
  const auto f = parse_unary(name);
  const Dt dt = float_dtype(x, "x");
  same(y, dt, "y", x.size());
  same(a, dt, "a", x.size());
  same(b, dt, "b", x.size());
  py::array o = output_for(x, dt, out);
  const int64_t n = x.size();
  if (dt == Dt::F32)
    need(kernels::unary_kernels_for<float>(parse_isa(isa)), isa)
        .second(f, n, cptr<float>(x), cptr<float>(y), cptr<float>(a), cptr<float>(b), ptr<float>(o));
  else
    need(kernels::unary_kernels_for<double>(parse_isa(isa)), isa)
        .second(f, n, cptr<double>(x), cptr<double>(y), cptr<double>(a), cptr<double>(b), ptr<double>(o));
  return o;
}

void need_2d(const py::array& a, const char* what) {
  if (a.ndim() != 2) throw ValueError(cat(what, " must be 2-D (rows, cols), got ", a.ndim(), "-D"));
}

py::array softmax_forward(const std::string& isa, const py::array& x) {
  need_2d(x, "x");
  const Dt dt = float_dtype(x, "x");
  const int64_t rows = x.shape(0), cols = x.shape(1);
  if (dt == Dt::F32) {
    py::array y = fresh<float>(shape_of(x));
    need(kernels::softmax_kernels_for<float>(parse_isa(isa)), isa).forward(rows, cols, cptr<float>(x), ptr<float>(y));
    return y;
  }
  py::array y = fresh<double>(shape_of(x));
  need(kernels::softmax_kernels_for<double>(parse_isa(isa)), isa).forward(rows, cols, cptr<double>(x), ptr<double>(y));
  return y;
}

py::array softmax_backward(const std::string& isa, const py::array& y, const py::array& dy) {
  need_2d(y, "y");
  const Dt dt = float_dtype(y, "y");
  same(dy, dt, "dy", y.size());
  const int64_t rows = y.shape(0), cols = y.shape(1);
  if (dt == Dt::F32) {
    py::array dx = fresh<float>(shape_of(y));
    need(kernels::softmax_kernels_for<float>(parse_isa(isa)), isa)
        .backward(rows, cols, cptr<float>(y), cptr<float>(dy), ptr<float>(dx));
    return dx;
  }
  py::array dx = fresh<double>(shape_of(y));
  need(kernels::softmax_kernels_for<double>(parse_isa(isa)), isa)
      .backward(rows, cols, cptr<double>(y), cptr<double>(dy), ptr<double>(dx));
  return dx;
}

// The softmax backward's tangent of 2-D (rows, cols) y, ty, dy, tdy.
py::array softmax_backward_tangent(const std::string& isa, const py::array& y, const py::array& ty, const py::array& dy,
                                   const py::array& tdy) {
  need_2d(y, "y");
  const Dt dt = float_dtype(y, "y");
  same(ty, dt, "ty", y.size());
  same(dy, dt, "dy", y.size());
  same(tdy, dt, "tdy", y.size());
  const int64_t rows = y.shape(0), cols = y.shape(1);
  auto run = [&](auto t) {
    using T = decltype(t);
    py::array out = fresh<T>(shape_of(y));
    need(kernels::softmax_kernels_for<T>(parse_isa(isa)), isa)
        .backward_tangent(rows, cols, cptr<T>(y), cptr<T>(ty), cptr<T>(dy), cptr<T>(tdy), ptr<T>(out));
    return out;
  };
  return dt == Dt::F32 ? run(float()) : run(double());
}

// x (batch, heads, m, n), mask (batch, m, n) -> the masked softmax of x's rows.
py::array softmax_masked(const std::string& isa, const py::array& x, const py::array& mask) {
  if (x.ndim() != 4 || mask.ndim() != 3 || mask.shape(0) != x.shape(0) || mask.shape(1) != x.shape(2) ||
      mask.shape(2) != x.shape(3))
    throw ValueError("softmax_masked takes x (batch, heads, m, n) and mask (batch, m, n)");
  const Dt dt = float_dtype(x, "x");
  same(mask, dt, "mask", mask.size());
  const int64_t b = x.shape(0), h = x.shape(1), m = x.shape(2), n = x.shape(3);
  auto run = [&](auto t) {
    using T = decltype(t);
    py::array y = fresh<T>(shape_of(x));
    need(kernels::softmax_kernels_for<T>(parse_isa(isa)), isa).masked_forward(b, h, m, n, cptr<T>(x), cptr<T>(mask),
                                                                               ptr<T>(y));
    return y;
  };
  return dt == Dt::F32 ? run(float()) : run(double());
}

// Loss kinds: "mse", "mae", "bce" take p, t of shape (batch, n); "ce_prob" p, t of shape
// (batch, groups, classes); "ce_index" p of shape (batch, groups, classes) and int64 t of shape
// (batch, groups).
struct LossShape {
  int64_t batch = 0, a = 0, b = 0;  // (batch, n) or (batch, groups, classes)
  bool index = false;
};

LossShape loss_shape(const std::string& kind, const py::array& p, const py::array& t, Dt dt) {
  LossShape s;
  if (kind == "mse" || kind == "mae" || kind == "bce") {
    need_2d(p, "p");
    same(t, dt, "t", p.size());
    s.batch = p.shape(0);
    s.a = p.shape(1);
    return s;
  }
  if (kind != "ce_prob" && kind != "ce_index")
    throw ValueError(cat("unknown loss kind '", kind, "'; expected mse, mae, bce, ce_prob or ce_index"));
  if (p.ndim() != 3) throw ValueError("p must be 3-D (batch, groups, classes)");
  s.batch = p.shape(0);
  s.a = p.shape(1);
  s.b = p.shape(2);
  if (kind == "ce_prob") {
    same(t, dt, "t", p.size());
    return s;
  }
  s.index = true;
  if (!t.dtype().is(py::dtype::of<int64_t>()) || !(t.flags() & py::array::c_style))
    throw TypeError("class indices must be a C-contiguous int64 array");
  if (t.size() != s.batch * s.a) throw ValueError("class indices must have shape (batch, groups)");
  const int64_t* idx = cptr<int64_t>(t);
  for (py::ssize_t i = 0; i < t.size(); ++i)
    if (idx[i] < 0 || idx[i] >= s.b) throw IndexError(cat("class index ", idx[i], " out of range [0, ", s.b, ")"));
  return s;
}

template <typename T>
py::array loss_forward_t(const kernels::LossKernels<T>& k, const std::string& kind, const LossShape& s,
                         const py::array& p, const py::array& t) {
  py::array loss = fresh<T>({static_cast<py::ssize_t>(s.batch)});
  T* l = ptr<T>(loss);
  if (kind == "mse") k.mse_forward(s.batch, s.a, cptr<T>(p), cptr<T>(t), l);
  else if (kind == "mae") k.mae_forward(s.batch, s.a, cptr<T>(p), cptr<T>(t), l);
  else if (kind == "bce") k.bce_forward(s.batch, s.a, cptr<T>(p), cptr<T>(t), l);
  else if (kind == "ce_prob") k.ce_prob_forward(s.batch, s.a, s.b, cptr<T>(p), cptr<T>(t), l);
  else k.ce_index_forward(s.batch, s.a, s.b, cptr<T>(p), cptr<int64_t>(t), l);
  return loss;
}

template <typename T>
py::tuple loss_backward_t(const kernels::LossKernels<T>& k, const std::string& kind, const LossShape& s,
                          const py::array& p, const py::array& t, const py::array& dloss, bool want_dp,
                          bool want_dt) {
  py::object dp_obj = py::none(), dt_obj = py::none();
  T* dp = nullptr;
  T* dt = nullptr;
  if (want_dp) {
    py::array a = fresh<T>(shape_of(p));
    dp = ptr<T>(a);
    dp_obj = a;
  }
  if (want_dt && !s.index) {
    py::array a = fresh<T>(shape_of(p));
    dt = ptr<T>(a);
    dt_obj = a;
  }
  const T* dl = cptr<T>(dloss);
  if (kind == "mse") k.mse_backward(s.batch, s.a, cptr<T>(p), cptr<T>(t), dl, dp, dt);
  else if (kind == "mae") k.mae_backward(s.batch, s.a, cptr<T>(p), cptr<T>(t), dl, dp, dt);
  else if (kind == "bce") k.bce_backward(s.batch, s.a, cptr<T>(p), cptr<T>(t), dl, dp, dt);
  else if (kind == "ce_prob") k.ce_prob_backward(s.batch, s.a, s.b, cptr<T>(p), cptr<T>(t), dl, dp, dt);
  else k.ce_index_backward(s.batch, s.a, s.b, cptr<T>(p), cptr<int64_t>(t), dl, dp);
  return py::make_tuple(dp_obj, dt_obj);
}

py::array loss_forward(const std::string& isa, const std::string& kind, const py::array& p, const py::array& t) {
  const Dt dt = float_dtype(p, "p");
  const LossShape s = loss_shape(kind, p, t, dt);
  if (dt == Dt::F32) return loss_forward_t(need(kernels::loss_kernels_for<float>(parse_isa(isa)), isa), kind, s, p, t);
  return loss_forward_t(need(kernels::loss_kernels_for<double>(parse_isa(isa)), isa), kind, s, p, t);
}

py::tuple loss_backward(const std::string& isa, const std::string& kind, const py::array& p, const py::array& t,
                        const py::array& dloss, bool want_dp, bool want_dt) {
  const Dt dt = float_dtype(p, "p");
  const LossShape s = loss_shape(kind, p, t, dt);
  same(dloss, dt, "dloss", s.batch);
  if (dt == Dt::F32)
    return loss_backward_t(need(kernels::loss_kernels_for<float>(parse_isa(isa)), isa), kind, s, p, t, dloss,
                           want_dp, want_dt);
  return loss_backward_t(need(kernels::loss_kernels_for<double>(parse_isa(isa)), isa), kind, s, p, t, dloss,
                         want_dp, want_dt);
}

}  // namespace

void bind_elementwise_kernels(py::module_& k) {
  py::list names;
  for (int i = 0; i < static_cast<int>(kernels::UnaryFn::Count); ++i)
    names.append(kernels::unary_name(static_cast<kernels::UnaryFn>(i)));
  k.attr("unary_names") = py::tuple(names);
  k.def("unary_forward", &unary_forward, py::arg("isa"), py::arg("name"), py::arg("x"), py::arg("out") = py::none(),
        "y = f(x) with exactly the named ISA's kernel; `out`, if given, receives y in its first x.size elements.");
  k.def("unary_backward", &unary_backward, py::arg("isa"), py::arg("name"), py::arg("x"), py::arg("y"),
        py::arg("dy"), py::arg("out") = py::none(), "dx = dy * f'(x) with exactly the named ISA's kernel.");
  k.def("unary_second", &unary_second, py::arg("isa"), py::arg("name"), py::arg("x"), py::arg("y"), py::arg("a"),
        py::arg("b"), py::arg("out") = py::none(), "a * b * f''(x) (y = f(x)) with exactly the named ISA's kernel.");
  k.def("softmax_forward", &softmax_forward, py::arg("isa"), py::arg("x"), "Softmax over the last axis of a 2-D array.");
  k.def("softmax_backward_tangent", &softmax_backward_tangent, py::arg("isa"), py::arg("y"), py::arg("ty"),
        py::arg("dy"), py::arg("tdy"), "The tangent of the softmax backward along (ty, tdy), row by row.");
  k.def("softmax_masked", &softmax_masked, py::arg("isa"), py::arg("x"), py::arg("mask"),
        "The masked softmax of x (batch, heads, m, n) under mask (batch, m, n).");
  k.def("softmax_backward", &softmax_backward, py::arg("isa"), py::arg("y"), py::arg("dy"),
        "dx = y * (dy - sum(dy * y)) row by row.");
  k.def("loss_forward", &loss_forward, py::arg("isa"), py::arg("kind"), py::arg("p"), py::arg("t"),
        "Per-example losses; kind is mse, mae, bce (p, t: (batch, n)), ce_prob (p, t: (batch, groups, classes)) "
        "or ce_index (p: (batch, groups, classes), t: int64 (batch, groups)).");
  k.def("loss_backward", &loss_backward, py::arg("isa"), py::arg("kind"), py::arg("p"), py::arg("t"),
        py::arg("dloss"), py::arg("want_dp") = true, py::arg("want_dt") = true,
        "(dp, dt) of the per-example losses; a gradient not asked for is passed to the kernel as null and "
        "returned as None (dt is always None for ce_index).");
}

}  // namespace portgrad::python
