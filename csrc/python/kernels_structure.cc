/// @brief Test hooks on `portgrad._core.kernels` for the shape kernels (strided copy, broadcast
/// binary operations, reductions) and log-softmax: each runs exactly one ISA's variant on flat
/// numpy arrays, with the geometry (dims, element strides, offsets) checked at the door so that no
/// kernel reads or writes outside its arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/errors.h"
#include "kernels/shape_ops.h"
#include "kernels/softmax.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace portgrad::python {
namespace {

using kernels::BinaryFn;
using kernels::Isa;
using kernels::ReduceOp;
using Ints = std::vector<int64_t>;

Isa parse_isa(const std::string& name) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (name == kernels::isa_name(isa)) return isa;
  throw ValueError(cat("unknown ISA '", name, "'; expected scalar, avx2 or avx512"));
}

template <typename T>
const kernels::ShapeKernels<T>& shape_table(const std::string& isa) {
  const auto* t = kernels::shape_kernels_for<T>(parse_isa(isa));
  if (!t) throw ValueError(cat("kernel variant not available: ISA '", isa, "' is not built or not supported"));
  return *t;
}
template <typename T>
const kernels::SoftmaxKernels<T>& softmax_table(const std::string& isa) {
  const auto* t = kernels::softmax_kernels_for<T>(parse_isa(isa));
  if (!t || !t->log_forward) throw ValueError(cat("kernel variant not available: ISA '", isa, "'"));
  return *t;
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

template <typename T>
py::array fresh(py::ssize_t n) {
  py::array_t<T> out(n);
  T* d = out.mutable_data();
  for (py::ssize_t i = 0; i < n; ++i) d[i] = std::numeric_limits<T>::quiet_NaN();
  return std::move(out);
}

int64_t count(const Ints& dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) throw ValueError("negative dimension");
    n *= d;
  }
  return n;
}

// Every element the geometry reaches from `offset` lies in [0, size).
void check_reach(const Ints& dims, const Ints& strides, int64_t offset, int64_t size, const char* what) {
  if (dims.size() != strides.size()) throw ValueError(cat(what, ": one stride per dimension is needed"));
  if (dims.size() > size_t(kernels::kMaxShapeRank)) throw ValueError(cat(what, ": rank above ", kernels::kMaxShapeRank));
  if (count(dims) == 0) return;
  int64_t lo = offset, hi = offset;
  for (size_t k = 0; k < dims.size(); ++k) {
    const int64_t span = (dims[k] - 1) * strides[k];
    (span < 0 ? lo : hi) += span;
  }
  if (lo < 0 || hi >= size) throw ValueError(cat(what, ": the geometry reaches outside the array"));
}

BinaryFn parse_binary(const std::string& name) {
  for (int i = 0; i < int(BinaryFn::Count); ++i)
    if (name == kernels::kBinaryFnNames[i]) return static_cast<BinaryFn>(i);
  throw ValueError(cat("unknown binary function '", name, "'"));
}

ReduceOp parse_reduce(const std::string& name) {
  if (name == "Sum") return ReduceOp::Sum;
  if (name == "Mean") return ReduceOp::Mean;
  if (name == "Max") return ReduceOp::Max;
  if (name == "Min") return ReduceOp::Min;
  throw ValueError(cat("unknown reduction '", name, "'; expected Sum, Mean, Max or Min"));
}

template <typename T> const T* cp(const py::array& a, int64_t off = 0) { return static_cast<const T*>(a.data()) + off; }
template <typename T> T* mp(py::array& a, int64_t off = 0) { return static_cast<T*>(a.mutable_data()) + off; }

void shape_copy(const std::string& isa, const Ints& dims, const py::array& src, int64_t src_offset, const Ints& ss,
                py::array dst, int64_t dst_offset, const Ints& ds) {
  const bool f64 = is_f64(src, "src");
  same_dtype(dst, f64, "dst");
  if (!dst.writeable()) throw ValueError("dst must be writeable");
  check_reach(dims, ss, src_offset, src.size(), "src");
  check_reach(dims, ds, dst_offset, dst.size(), "dst");
  const int r = int(dims.size());
  if (f64) shape_table<double>(isa).copy(r, dims.data(), cp<double>(src, src_offset), ss.data(), mp<double>(dst, dst_offset), ds.data());
  else shape_table<float>(isa).copy(r, dims.data(), cp<float>(src, src_offset), ss.data(), mp<float>(dst, dst_offset), ds.data());
}

py::array binary_forward(const std::string& isa, const std::string& name, const Ints& dims, const py::array& a,
                         const Ints& as, const py::array& b, const Ints& bs) {
  const BinaryFn f = parse_binary(name);
  const bool f64 = is_f64(a, "a");
  same_dtype(b, f64, "b");
  check_reach(dims, as, 0, a.size(), "a");
  check_reach(dims, bs, 0, b.size(), "b");
  const int r = int(dims.size());
  if (f64) {
    py::array y = fresh<double>(count(dims));
    shape_table<double>(isa).binary_forward(f, r, dims.data(), cp<double>(a), as.data(), cp<double>(b), bs.data(), mp<double>(y));
    return y;
  }
  py::array y = fresh<float>(count(dims));
  shape_table<float>(isa).binary_forward(f, r, dims.data(), cp<float>(a), as.data(), cp<float>(b), bs.data(), mp<float>(y));
  return y;
}

template <typename T>
py::tuple binary_backward_t(const std::string& isa, BinaryFn f, const Ints& dims, const py::array& a, const Ints& as,
                            const py::array& b, const Ints& bs, const py::array& dy, bool want_a, bool want_b) {
  const int64_t n = count(dims);
  py::object ga_o = py::none(), gb_o = py::none();
  T* ga = nullptr;
  T* gb = nullptr;
  if (want_a) {
    py::array x = fresh<T>(n);
    ga = mp<T>(x);
    ga_o = x;
  }
  if (want_b) {
    py::array x = fresh<T>(n);
    gb = mp<T>(x);
    gb_o = x;
  }
  shape_table<T>(isa).binary_backward(f, int(dims.size()), dims.data(), cp<T>(a), as.data(), cp<T>(b), bs.data(),
                                      cp<T>(dy), ga, gb);
  return py::make_tuple(ga_o, gb_o);
}

py::tuple binary_backward(const std::string& isa, const std::string& name, const Ints& dims, const py::array& a,
                          const Ints& as, const py::array& b, const Ints& bs, const py::array& dy, bool want_a,
                          bool want_b) {
  const BinaryFn f = parse_binary(name);
  const bool f64 = is_f64(a, "a");
  same_dtype(b, f64, "b");
  same_dtype(dy, f64, "dy");
  check_reach(dims, as, 0, a.size(), "a");
  check_reach(dims, bs, 0, b.size(), "b");
  if (dy.size() != count(dims)) throw ValueError("dy must have one element per output");
  if (f64) return binary_backward_t<double>(isa, f, dims, a, as, b, bs, dy, want_a, want_b);
  return binary_backward_t<float>(isa, f, dims, a, as, b, bs, dy, want_a, want_b);
}

template <typename T>
py::tuple binary_second_t(const std::string& isa, BinaryFn f, const py::array& a, const py::array& b,
                          const py::array& dy, const py::array& ta, const py::array& tb) {
  const int64_t n = a.size();
  py::array ga = fresh<T>(n), gb = fresh<T>(n);
  shape_table<T>(isa).binary_second(f, n, cp<T>(a), cp<T>(b), cp<T>(dy), cp<T>(ta), cp<T>(tb), mp<T>(ga), mp<T>(gb));
  return py::make_tuple(ga, gb);
}

py::tuple binary_second(const std::string& isa, const std::string& name, const py::array& a, const py::array& b,
                        const py::array& dy, const py::array& ta, const py::array& tb) {
  const BinaryFn f = parse_binary(name);
  const bool f64 = is_f64(a, "a");
  for (const auto& [x, what] : {std::pair{&b, "b"}, {&dy, "dy"}, {&ta, "ta"}, {&tb, "tb"}}) {
    same_dtype(*x, f64, what);
    if (x->size() != a.size()) throw ValueError(std::string(what) + " must have as many elements as a");
  }
  if (f64) return binary_second_t<double>(isa, f, a, b, dy, ta, tb);
  return binary_second_t<float>(isa, f, a, b, dy, ta, tb);
}

void check_reduce(const Ints& kd, const Ints& ks, const Ints& rd, const Ints& rs, const py::array& x) {
  Ints d = kd, s = ks;
  d.insert(d.end(), rd.begin(), rd.end());
  s.insert(s.end(), rs.begin(), rs.end());
  if (kd.size() != ks.size() || rd.size() != rs.size()) throw ValueError("one stride per dimension is needed");
  check_reach(d, s, 0, x.size(), "x");
}

py::array reduce(const std::string& isa, const std::string& op_name, const Ints& kd, const Ints& ks, const Ints& rd,
                 const Ints& rs, const py::array& x) {
  const ReduceOp op = parse_reduce(op_name);
  const bool f64 = is_f64(x, "x");
  check_reduce(kd, ks, rd, rs, x);
  const int kr = int(kd.size()), rr = int(rd.size());
  if (f64) {
    py::array y = fresh<double>(count(kd));
    shape_table<double>(isa).reduce(op, kr, kd.data(), ks.data(), rr, rd.data(), rs.data(), cp<double>(x), mp<double>(y));
    return y;
  }
  py::array y = fresh<float>(count(kd));
  shape_table<float>(isa).reduce(op, kr, kd.data(), ks.data(), rr, rd.data(), rs.data(), cp<float>(x), mp<float>(y));
  return y;
}

py::array reduce_backward(const std::string& isa, const std::string& op_name, const Ints& kd, const Ints& ks,
                          const Ints& rd, const Ints& rs, const py::array& x, const py::array& y, const py::array& dy) {
  const ReduceOp op = parse_reduce(op_name);
  const bool f64 = is_f64(x, "x");
  same_dtype(y, f64, "y");
  same_dtype(dy, f64, "dy");
  check_reduce(kd, ks, rd, rs, x);
  if (y.size() != count(kd) || dy.size() != count(kd)) throw ValueError("y and dy need one element per kept index");
  const int kr = int(kd.size()), rr = int(rd.size());
  if (f64) {
    py::array dx = fresh<double>(x.size());
    shape_table<double>(isa).reduce_backward(op, kr, kd.data(), ks.data(), rr, rd.data(), rs.data(), cp<double>(x),
                                             cp<double>(y), cp<double>(dy), mp<double>(dx));
    return dx;
  }
  py::array dx = fresh<float>(x.size());
  shape_table<float>(isa).reduce_backward(op, kr, kd.data(), ks.data(), rr, rd.data(), rs.data(), cp<float>(x),
                                          cp<float>(y), cp<float>(dy), mp<float>(dx));
  return dx;
}

void need_2d(const py::array& a, const char* what) {
  if (a.ndim() != 2) throw ValueError(cat(what, " must be 2-D (rows, cols), got ", a.ndim(), "-D"));
}

py::array log_softmax_forward(const std::string& isa, const py::array& x) {
  need_2d(x, "x");
  const bool f64 = is_f64(x, "x");
  const int64_t rows = x.shape(0), cols = x.shape(1);
  if (f64) {
    py::array y = fresh<double>(x.size()).reshape({rows, cols});
    softmax_table<double>(isa).log_forward(rows, cols, cp<double>(x), mp<double>(y));
    return y;
  }
  py::array y = fresh<float>(x.size()).reshape({rows, cols});
  softmax_table<float>(isa).log_forward(rows, cols, cp<float>(x), mp<float>(y));
  return y;
}

py::array log_softmax_backward(const std::string& isa, const py::array& y, const py::array& dy) {
  need_2d(y, "y");
  const bool f64 = is_f64(y, "y");
  same_dtype(dy, f64, "dy");
  if (dy.size() != y.size()) throw ValueError("dy must have the size of y");
  const int64_t rows = y.shape(0), cols = y.shape(1);
  if (f64) {
    py::array dx = fresh<double>(y.size()).reshape({rows, cols});
    softmax_table<double>(isa).log_backward(rows, cols, cp<double>(y), cp<double>(dy), mp<double>(dx));
    return dx;
  }
  py::array dx = fresh<float>(y.size()).reshape({rows, cols});
  softmax_table<float>(isa).log_backward(rows, cols, cp<float>(y), cp<float>(dy), mp<float>(dx));
  return dx;
}

}  // namespace

void bind_structure_kernels(py::module_& k) {
  k.def("shape_copy", &shape_copy, py::arg("isa"), py::arg("dims"), py::arg("src"), py::arg("src_offset"),
        py::arg("src_strides"), py::arg("dst"), py::arg("dst_offset"), py::arg("dst_strides"),
        "Strided N-D copy between flat arrays (element offsets and strides), in place into dst.");
  k.def("shape_binary_forward", &binary_forward, py::arg("isa"), py::arg("f"), py::arg("dims"), py::arg("a"),
        py::arg("a_strides"), py::arg("b"), py::arg("b_strides"),
        "y = f(a, b) over dims (flat, C order), a and b read at the given element strides (0 = broadcast).");
  k.def("shape_binary_backward", &binary_backward, py::arg("isa"), py::arg("f"), py::arg("dims"), py::arg("a"),
        py::arg("a_strides"), py::arg("b"), py::arg("b_strides"), py::arg("dy"), py::arg("want_a") = true,
        py::arg("want_b") = true, "(ga, gb) = dy * (df/da, df/db) over the full output (None where not wanted).");
  k.def("shape_binary_second", &binary_second, py::arg("isa"), py::arg("f"), py::arg("a"), py::arg("b"), py::arg("dy"),
        py::arg("ta"), py::arg("tb"),
        "(ga, gb): dy (faa ta + fab tb) and dy (fab ta + fbb tb), the second partials of f over flat operands");
  k.def("shape_reduce", &reduce, py::arg("isa"), py::arg("op"), py::arg("kept_dims"), py::arg("kept_strides"),
        py::arg("red_dims"), py::arg("red_strides"), py::arg("x"), "Reduction of flat x over the reduced geometry.");
  k.def("shape_reduce_backward", &reduce_backward, py::arg("isa"), py::arg("op"), py::arg("kept_dims"),
        py::arg("kept_strides"), py::arg("red_dims"), py::arg("red_strides"), py::arg("x"), py::arg("y"),
        py::arg("dy"), "dx of a reduction (NaN where the geometry does not reach).");
  k.def("log_softmax_forward", &log_softmax_forward, py::arg("isa"), py::arg("x"), "Log-softmax over the last axis.");
  k.def("log_softmax_backward", &log_softmax_backward, py::arg("isa"), py::arg("y"), py::arg("dy"),
        "dx = dy - exp(y) * sum(dy), row by row.");
}

}  // namespace portgrad::python
