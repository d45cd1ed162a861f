/// @brief Test hooks on `portgrad._core.kernels` that call one GEMM or vector kernel variant directly.
///
/// Every hook names its variant by ISA ("scalar" is the reference, "avx2", "avx512", or "active"
/// for the one the engine uses), works in place on numpy arrays without copying, and checks
/// dtypes, shapes and strides at the door so a kernel never sees a bad argument.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/errors.h"
#include "kernels/gemm.h"
#include "kernels/optim.h"
#include "kernels/recurrent.h"
#include <cstdlib>
#include <cstring>
#include <memory>
#include "kernels/vector.h"
#include "python/bindings.h"

namespace py = pybind11;

namespace portgrad::python {
namespace {

using kernels::Isa;

// The ISA named by `name`; false for "active" (the variant the engine would use).
bool parse_isa(const std::string& name, Isa* isa) {
  if (name == "active") return false;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (name == kernels::isa_name(i)) {
      *isa = i;
      return true;
    }
  throw ValueError(cat("unknown ISA '", name, "'; expected scalar, avx2, avx512 or active"));
}

template <typename Table>
const Table& require(const Table* t, const std::string& isa, const char* family, const char* dtype) {
  if (!t)
    throw ValueError(cat(family, " variant not available: isa '", isa, "' for ", dtype,
                         " is not built or not supported by this CPU; check "
                         "portgrad._core.isa_supported('", isa, "')"));
  return *t;
}

template <typename T> const char* dtype_name();
template <> const char* dtype_name<float>() { return "float32"; }
template <> const char* dtype_name<double>() { return "float64"; }

template <typename T>
const kernels::RecurrentKernels<T>& recurrent_table(const std::string& isa) {
  Isa i;
  if (!parse_isa(isa, &i)) return kernels::recurrent_kernels<T>();
  return require(kernels::recurrent_kernels_for<T>(i), isa, "recurrent", dtype_name<T>());
}


template <typename T>
const kernels::GemmKernels<T>& gemm_table(const std::string& isa) {
  Isa i;
  if (!parse_isa(isa, &i)) return kernels::gemm_kernels<T>();
  return require(kernels::gemm_kernels_for<T>(i), isa, "gemm", dtype_name<T>());
}

template <typename T>
const kernels::VectorKernels<T>& vector_table(const std::string& isa) {
  Isa i;
  if (!parse_isa(isa, &i)) return kernels::vector_kernels<T>();
  return require(kernels::vector_kernels_for<T>(i), isa, "vector", dtype_name<T>());
}

template <typename T>
const kernels::OptimKernels<T>& optim_table(const std::string& isa) {
  Isa i;
  if (!parse_isa(isa, &i)) return kernels::optim_kernels<T>();
  return require(kernels::optim_kernels_for<T>(i), isa, "optim", dtype_name<T>());
}

template <typename T>
void optim_hook(const std::string& isa, const std::string& method, const kernels::OptimStep& s, py::array grad,
                py::array w, py::array a, py::object b) {
  const auto& t = optim_table<T>(isa);
  const int64_t n = w.size();
  auto data = [](py::array& x) { return static_cast<T*>(x.mutable_data()); };
  const T* g = static_cast<const T*>(grad.data());
  if (method == "SGD") return t.sgd(n, s, g, data(w), data(a));
  if (method == "RMSProp") return t.rmsprop(n, s, g, data(w), data(a));
  if (method != "ADAM") throw ValueError(cat("unknown method '", method, "'; expected SGD, ADAM or RMSProp"));
  if (b.is_none()) throw ValueError("ADAM needs two state arrays (first and second moments)");
  py::array bb = b.cast<py::array>();
  t.adam(n, s, g, data(w), data(a), data(bb));
}

// The float dtype shared by every array: float32 -> false, float64 -> true.
bool is_f64(std::initializer_list<std::pair<const char*, const py::array*>> arrays) {
  const bool f32 = py::isinstance<py::array_t<float>>(*arrays.begin()->second);
  const bool f64 = py::isinstance<py::array_t<double>>(*arrays.begin()->second);
  if (!f32 && !f64)
    throw TypeError(cat("'", arrays.begin()->first, "' has dtype ",
                        py::str(arrays.begin()->second->dtype()).cast<std::string>(),
                        "; expected float32 or float64 (native byte order)"));
  for (const auto& [name, a] : arrays) {
    const bool same = f64 ? py::isinstance<py::array_t<double>>(*a) : py::isinstance<py::array_t<float>>(*a);
    if (!same)
      throw TypeError(cat("'", name, "' has dtype ", py::str(a->dtype()).cast<std::string>(),
                          "; expected ", f64 ? "float64" : "float32", " like '",
                          arrays.begin()->first, "' (no implicit conversion)"));
  }
  return f64;
}

void require_ndim(const py::array& a, const char* name, py::ssize_t ndim) {
  if (a.ndim() != ndim)
    throw ValueError(cat("'", name, "' must be ", ndim, "-D; got ", a.ndim(), "-D"));
}

// Stride of dimension d in elements; numpy strides must be whole elements.
int64_t elem_stride(const py::array& a, const char* name, py::ssize_t d) {
  const py::ssize_t s = a.strides(d), size = a.itemsize();
  if (s % size != 0)
    throw ValueError(cat("'", name, "' has a stride of ", s, " bytes along axis ", d,
                         ", not a multiple of its item size ", size, "; pass a copy"));
  return static_cast<int64_t>(s / size);
}

void require_writable(const py::array& a, const char* name) {
  if (!a.writeable()) throw ValueError(cat("'", name, "' is read-only; the kernel writes it in place"));
}

void require_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style))
    throw ValueError(cat("'", name, "' must be C-contiguous (the kernel has no strides); pass "
                         "np.ascontiguousarray(", name, ") or a contiguous view"));
}

// op(A) (m x k), op(B) (k x n) and C (m x n) as the kernels see them, checked.
struct GemmShape {
  int64_t m, n, k, rsa, csa, rsb, csb, ldc;
};

void check_c(const py::array& C, const char* name, int64_t m, int64_t n, int64_t* ld) {
  if (C.shape(0) != m || C.shape(1) != n)
    throw ValueError(cat("'", name, "' has shape (", C.shape(0), ", ", C.shape(1), "); expected (", m,
                         ", ", n, ") = op(A) @ op(B)"));
  const int64_t rs = elem_stride(C, name, 0), cs = elem_stride(C, name, 1);
  if (m > 0 && n > 1 && cs != 1)
    throw ValueError(cat("'", name, "' must have unit column stride (a row-major array or a column slice of one)"));
  if (m > 1 && n > 0 && rs < n)
    throw ValueError(cat("'", name, "' rows overlap: row stride ", rs, " < n = ", n));
  *ld = rs;
}

GemmShape gemm_shape(const py::array& A, const py::array* B, int64_t packed_n, const py::array& C,
                     bool trans_a, bool trans_b) {
  GemmShape s{};
  // A is (m, k) as stored, or (k, m) when trans_a; likewise B is (k, n) or (n, k).
  s.m = A.shape(0), s.k = A.shape(1), s.rsa = elem_stride(A, "A", 0), s.csa = elem_stride(A, "A", 1);
  if (trans_a) std::swap(s.m, s.k), std::swap(s.rsa, s.csa);
  if (B) {
    int64_t kb = B->shape(0);
    s.n = B->shape(1), s.rsb = elem_stride(*B, "B", 0), s.csb = elem_stride(*B, "B", 1);
    if (trans_b) std::swap(kb, s.n), std::swap(s.rsb, s.csb);
    if (kb != s.k)
      throw ValueError(cat("inner dimensions differ: op(A) is ", s.m, "x", s.k, " but op(B) is ", kb,
                           "x", s.n));
  } else {
    s.n = packed_n;
  }
  check_c(C, "C", s.m, s.n, &s.ldc);
  return s;
}

bool overlaps(const py::array& x, const py::array& y) {
  if (x.size() == 0 || y.size() == 0) return false;
  auto span = [](const py::array& a) {
    const char* lo = static_cast<const char*>(a.data());
    const char* hi = lo;
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
      const py::ssize_t ext = (a.shape(d) - 1) * a.strides(d);
      (ext < 0 ? lo : hi) += ext;
    }
    return std::make_pair(lo, hi + a.itemsize());
  };
  const auto [xl, xh] = span(x);
  const auto [yl, yh] = span(y);
  return xl < yh && yl < xh;
}

// The epilogue arguments, checked against the product's shape; arrays must share C's dtype.
template <typename T>
kernels::GemmEpilogue<T> make_epilogue(const GemmShape& s, const py::array& C, const py::object& bias,
                                       const py::object& unary, const py::object& D,
                                       const py::object& row_sums, const py::array& A,
                                       const py::object& prologue, const py::object& scale) {
  kernels::GemmEpilogue<T> e;
  auto same_dtype = [&](const py::array& a, const char* name) {
    if (!py::isinstance<py::array_t<T>>(a))
      throw TypeError(cat("'", name, "' has dtype ", py::str(a.dtype()).cast<std::string>(), "; expected ",
                          dtype_name<T>(), " like 'C'"));
  };
  if (!bias.is_none()) {
    const py::array b = bias.cast<py::array>();
    same_dtype(b, "bias"), require_ndim(b, "bias", 1), require_contiguous(b, "bias");
    if (b.shape(0) != s.n)
      throw ValueError(cat("'bias' has ", b.shape(0), " entries; expected one per column of C (", s.n, ")"));
    e.bias = static_cast<const T*>(b.data());
  }
  if (!unary.is_none()) {
    const std::string name = unary.cast<std::string>();
    if (!kernels::unary_from_name(name, &e.unary))
      throw ValueError(cat("unknown elementwise function '", name, "'"));
  }
  if (!scale.is_none()) {  // S (period x n): D = C * S[i % period]
    if (!unary.is_none()) throw ValueError("'scale' and 'unary' exclude each other; pass one");
    const py::array x = scale.cast<py::array>();
    same_dtype(x, "scale");
    if (x.ndim() != 2 || x.shape(0) < 1 || x.shape(1) != s.n || x.strides(1) != py::ssize_t(sizeof(T)) ||
        x.strides(0) % py::ssize_t(sizeof(T)) != 0)
      throw ValueError(cat("'scale' must be (period, ", s.n, ") with contiguous rows"));
    if (overlaps(x, C)) throw ValueError("'scale' overlaps 'C'; pass a separate array");
    e.scale = static_cast<const T*>(x.data());
    e.lds = x.strides(0) / py::ssize_t(sizeof(T));
    e.scale_period = x.shape(0);
  }
  if (e.has_activation()) {
    if (D.is_none()) {
      e.D = static_cast<T*>(const_cast<void*>(C.data()));
      e.ldd = s.ldc;
    } else {
      py::array d = D.cast<py::array>();
      same_dtype(d, "D"), require_ndim(d, "D", 2), require_writable(d, "D");
      check_c(d, "D", s.m, s.n, &e.ldd);
      const bool is_c = d.data() == C.data() && e.ldd == s.ldc;
      if (!is_c && overlaps(d, C))
        throw ValueError("'D' overlaps 'C' without being the same view; pass D=C (or None) or a separate array");
      if (e.scale && overlaps(d, scale.cast<py::array>()))
        throw ValueError("'D' overlaps 'scale'; pass a separate array");
      e.D = static_cast<T*>(d.mutable_data());
    }
  } else if (!D.is_none()) {
    throw ValueError("'D' is given without 'unary' or 'scale'; name what to write into D");
  }
  if (!row_sums.is_none()) {
    py::array r = row_sums.cast<py::array>();
    same_dtype(r, "row_sums"), require_ndim(r, "row_sums", 1), require_contiguous(r, "row_sums");
    require_writable(r, "row_sums");
    if (r.shape(0) != s.m)
      throw ValueError(cat("'row_sums' has ", r.shape(0), " entries; expected one per row of C (", s.m, ")"));
    if (overlaps(r, C)) throw ValueError("'row_sums' overlaps 'C'; pass a separate array");
    e.row_sums = static_cast<T*>(r.mutable_data());
  }
  if (!prologue.is_none()) {  // (name, Z, Y): op(A) read as A * f'(Z), Y = f(Z); Z, Y laid out like A
    const py::tuple t = prologue.cast<py::tuple>();
    if (t.size() != 3) throw ValueError("'prologue' must be (function name, Z, Y) with Z and Y shaped like A");
    const std::string name = t[0].cast<std::string>();
    if (!kernels::unary_from_name(name, &e.a_derivative))
      throw ValueError(cat("unknown elementwise function '", name, "'"));
    const T* xy[2];
    const char* names[2] = {"Z", "Y"};
    for (int q = 0; q < 2; ++q) {
      const py::array z = t[q + 1].cast<py::array>();
      same_dtype(z, names[q]);
      if (z.ndim() != 2 || z.shape(0) != A.shape(0) || z.shape(1) != A.shape(1) || z.strides(0) != A.strides(0) ||
          z.strides(1) != A.strides(1))
        throw ValueError(cat("prologue '", names[q], "' must have A's shape and strides"));
      if (overlaps(z, C)) throw ValueError(cat("prologue '", names[q], "' overlaps 'C'; pass a separate array"));
      xy[q] = static_cast<const T*>(z.data());
    }
    e.a_x = xy[0], e.a_y = xy[1];
  }
  return e;
}

template <typename T>
void gemm_hook(const std::string& isa, const py::array& A, const py::array& B, py::array& C,
               double alpha, double beta, bool trans_a, bool trans_b, const py::object& bias,
               const py::object& unary, const py::object& D, const py::object& row_sums,
               const py::object& prologue, const py::object& scale, bool ex) {
  const auto& table = gemm_table<T>(isa);
  const GemmShape s = gemm_shape(A, &B, 0, C, trans_a, trans_b);
  const auto epi = make_epilogue<T>(s, C, bias, unary, D, row_sums, A, prologue, scale);
  const T* a = static_cast<const T*>(A.data());
  const T* b = static_cast<const T*>(B.data());
  T* c = static_cast<T*>(C.mutable_data());
  py::gil_scoped_release nogil;
  if (ex)
    table.gemm_ex(s.m, s.n, s.k, static_cast<T>(alpha), a, s.rsa, s.csa, b, s.rsb, s.csb,
                  static_cast<T>(beta), c, s.ldc, epi);
  else
    table.gemm(s.m, s.n, s.k, static_cast<T>(alpha), a, s.rsa, s.csa, b, s.rsb, s.csb,
               static_cast<T>(beta), c, s.ldc);
}

// A numpy uint8 array of `bytes` bytes whose data is 64-byte aligned (a view into a larger one).
py::array aligned_bytes(size_t bytes) {
  py::array_t<uint8_t> raw(static_cast<py::ssize_t>(bytes + 64));
  const auto addr = reinterpret_cast<uintptr_t>(raw.data());
  const py::ssize_t off = static_cast<py::ssize_t>((64 - addr % 64) % 64);
  return raw[py::slice(off, off + static_cast<py::ssize_t>(bytes), 1)].cast<py::array>();
}

template <typename T>
py::array pack_b_hook(const std::string& isa, const py::array& B, bool trans_b) {
  const auto& table = gemm_table<T>(isa);
  int64_t k = B.shape(0), n = B.shape(1), rsb = elem_stride(B, "B", 0), csb = elem_stride(B, "B", 1);
  if (trans_b) std::swap(k, n), std::swap(rsb, csb);
  py::array out = aligned_bytes(table.packed_b_bytes(k, n));
  void* dst = out.mutable_data();
  const T* b = static_cast<const T*>(B.data());
  py::gil_scoped_release nogil;
  table.pack_b(k, n, b, rsb, csb, dst);
  return out;
}

template <typename T>
void gemm_packed_b_hook(const std::string& isa, const py::array& A, const py::array& packed, py::array& C,
                        double alpha, double beta, bool trans_a, const py::object& bias,
                        const py::object& unary, const py::object& D, const py::object& row_sums,
                        const py::object& prologue, const py::object& scale) {
  const auto& table = gemm_table<T>(isa);
  const GemmShape s = gemm_shape(A, nullptr, C.shape(1), C, trans_a, false);
  const size_t need = table.packed_b_bytes(s.k, s.n);
  if (!(packed.flags() & py::array::c_style) || packed.itemsize() != 1 || static_cast<size_t>(packed.size()) != need)
    throw ValueError(cat("'packed' must be the contiguous uint8 array that pack_b made for a ", s.k, "x", s.n,
                         " ", dtype_name<T>(), " B with isa '", isa, "' (", need, " bytes); got ",
                         packed.size() * packed.itemsize(), " bytes"));
  if (need > 0 && reinterpret_cast<uintptr_t>(packed.data()) % 64 != 0)
    throw ValueError("'packed' must be 64-byte aligned, as pack_b returns it");
  const auto epi = make_epilogue<T>(s, C, bias, unary, D, row_sums, A, prologue, scale);
  const T* a = static_cast<const T*>(A.data());
  const void* p = packed.data();
  T* c = static_cast<T*>(C.mutable_data());
  py::gil_scoped_release nogil;
  table.gemm_packed_b(s.m, s.n, s.k, static_cast<T>(alpha), a, s.rsa, s.csa, p, static_cast<T>(beta), c,
                      s.ldc, epi);
}

// The recurrent cells (kernels/recurrent.h) on 2-D arrays whose rows may be strided (gate arrays
// and sequences viewed one step at a time) and whose columns are contiguous: op names the kernel,
// the arrays come in the kernel's order (None for an absent ds2), every shape is checked.
template <typename T>
void recurrent_hook(const std::string& isa, const std::string& op, const py::list& args) {
  const auto& t = recurrent_table<T>(isa);
  static const char* const kOps[] = {"lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "lstm_jvp", "gru_jvp"};
  if (std::find(std::begin(kOps), std::end(kOps), op) == std::end(kOps))
    throw ValueError(cat("unknown recurrent kernel '", op, "'; expected lstm_forward, lstm_backward, gru_forward, "
                         "gru_backward, lstm_jvp or gru_jvp"));
  if (args.empty()) throw ValueError(cat("'", op, "' needs its arrays"));
  const py::array first = args[0].cast<py::array>();
  const bool lstm = op.rfind("lstm", 0) == 0;
  const int64_t B = first.shape(0), G = lstm ? 4 : 3;
  if (first.ndim() != 2 || first.shape(1) % G != 0) throw ValueError(cat("'", op, "': the first array must be (batch, ", G, " n)"));
  const int64_t n = first.shape(1) / G;
  struct View {
    T* p;
    int64_t ld;
  };
  std::vector<py::array> keep;
  auto view = [&](size_t i, int64_t cols, bool dense, bool write) -> View {
    if (i >= args.size()) throw ValueError(cat("'", op, "' needs more arrays: argument ", i, " is missing"));
    if (args[i].is_none()) return {nullptr, 0};
    py::array a = args[i].cast<py::array>();
    const std::string name = cat("argument ", i);
    if (!py::isinstance<py::array_t<T>>(a)) throw TypeError(cat("'", op, "' ", name, ": expected ", dtype_name<T>()));
    if (a.ndim() != 2 || a.shape(0) != B || a.shape(1) != cols)
      throw ValueError(cat("'", op, "' ", name, ": expected shape (", B, ", ", cols, ")"));
    if (a.strides(1) != py::ssize_t(sizeof(T)) || a.strides(0) % py::ssize_t(sizeof(T)) != 0 || a.strides(0) < 0 ||
        (dense && a.strides(0) != py::ssize_t(cols * sizeof(T))))
      throw ValueError(cat("'", op, "' ", name, dense ? ": must be C-contiguous" : ": rows must be contiguous"));
    if (write) require_writable(a, name.c_str());
    keep.push_back(a);
    return {static_cast<T*>(a.mutable_data()), a.strides(0) / py::ssize_t(sizeof(T))};
  };
  const int64_t gn = G * n;
  if (op == "lstm_forward") {
    const View g = view(0, gn, false, true), cp = view(1, n, true, false), c = view(2, n, true, true), s = view(3, n, false, true);
    t.lstm_forward(B, n, g.p, g.ld, cp.p, c.p, s.p, s.ld);
  } else if (op == "lstm_backward") {
    const View a = view(0, gn, false, false), cp = view(1, n, true, false), c = view(2, n, true, false);
    const View ds = view(3, n, false, false), ds2 = view(4, n, true, false), dc = view(5, n, true, true);
    const View dg = view(6, gn, false, true);
    t.lstm_backward(B, n, a.p, a.ld, cp.p, c.p, ds.p, ds.ld, ds2.p, dc.p, dg.p, dg.ld);
  } else if (op == "gru_forward") {
    const View g = view(0, gn, false, true), h = view(1, n, true, false), sp = view(2, n, false, false);
    const View s = view(3, n, false, true);
    t.gru_forward(B, n, g.p, g.ld, h.p, sp.p, sp.ld, s.p, s.ld);
  } else if (op == "gru_backward") {
    const View a = view(0, gn, false, false), h = view(1, n, true, false), sp = view(2, n, false, false);
    const View ds = view(3, n, false, false), ds2 = view(4, n, true, false), dg = view(5, gn, false, true);
    const View dh = view(6, n, true, true), dp = view(7, n, true, true);
    t.gru_backward(B, n, a.p, a.ld, h.p, sp.p, sp.ld, ds.p, ds.ld, ds2.p, dg.p, dg.ld, dh.p, dp.p);
  } else if (op == "lstm_jvp") {
    const View a = view(0, gn, false, false), cp = view(1, n, true, false), c = view(2, n, true, false);
    const View tg = view(3, gn, false, false), tc = view(4, n, true, true), ts = view(5, n, false, true);
    t.lstm_jvp(B, n, a.p, a.ld, cp.p, c.p, tg.p, tg.ld, tc.p, ts.p, ts.ld);
  } else if (op == "gru_jvp") {
    const View a = view(0, gn, false, false), h = view(1, n, true, false), th = view(2, n, true, false);
    const View sp = view(3, n, false, false), tp = view(4, n, false, false), tg = view(5, gn, false, false);
    const View ts = view(6, n, false, true);
    if (sp.ld != tp.ld) throw ValueError(cat("'", op, "': s_prev and ts_prev must share a row stride"));
    t.gru_jvp(B, n, a.p, a.ld, h.p, th.p, sp.p, tp.p, sp.ld, tg.p, tg.ld, ts.p, ts.ld);
  }
}

// lstm_sequence (kernels/recurrent.h) on C-contiguous arrays: w (4n, n), z (batch, time, 4n), s0
// and c0 (batch, n); packed: W^T packed by the same ISA's GEMM first. Returns (activated gates, c
// (time, batch, n), s (batch, time, n)).
template <typename T>
py::tuple lstm_sequence_hook(const std::string& isa, const py::array& w, const py::array& z, const py::array& s0,
                             const py::array& c0, bool packed) {
  for (const auto* a : {&w, &z, &s0, &c0})
    if (!py::isinstance<py::array_t<T>>(*a) || !(a->flags() & py::array::c_style))
      throw TypeError(cat("lstm_sequence: every array must be C-contiguous ", dtype_name<T>()));
  if (z.ndim() != 3 || w.ndim() != 2 || s0.ndim() != 2 || c0.ndim() != 2)
    throw ValueError("lstm_sequence takes w (4n, n), z (batch, time, 4n), s0 and c0 (batch, n)");
  const int64_t B = z.shape(0), time = z.shape(1), n = w.shape(1);
  if (w.shape(0) != 4 * n || z.shape(2) != 4 * n || s0.shape(0) != B || s0.shape(1) != n || c0.shape(0) != B ||
      c0.shape(1) != n)
    throw ValueError("lstm_sequence: shapes do not agree (w (4n, n), z (batch, time, 4n), s0 and c0 (batch, n))");
  const auto& gemm = gemm_table<T>(isa);
  const auto& cells = recurrent_table<T>(isa);
  py::array_t<T> g({B, time, 4 * n}), c({time, B, n}), s({B, time, n});
  std::memcpy(g.mutable_data(), z.data(), size_t(B * time * 4 * n) * sizeof(T));
  const T* wp = static_cast<const T*>(w.data());
  std::unique_ptr<void, void (*)(void*)> pack(nullptr, std::free);
  if (packed) {
    const size_t bytes = gemm.packed_b_bytes(n, 4 * n);
    if (bytes) {
      pack.reset(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
      if (!pack) throw std::bad_alloc();
      gemm.pack_b(n, 4 * n, wp, 1, n, pack.get());
    }
  }
  {
    py::gil_scoped_release nogil;
    cells.lstm_sequence(gemm, B, time, n, wp, pack.get(), static_cast<const T*>(s0.data()),
                        static_cast<const T*>(c0.data()), g.mutable_data(), c.mutable_data(), s.mutable_data());
  }
  return py::make_tuple(g, c, s);
}

void bind_recurrent_kernels(py::module_& k) {
  k.def(
      "lstm_sequence",
      [](const std::string& isa, py::array w, py::array z, py::array s0, py::array c0, bool packed) {
        if (py::isinstance<py::array_t<double>>(w)) return lstm_sequence_hook<double>(isa, w, z, s0, c0, packed);
        return lstm_sequence_hook<float>(isa, w, z, s0, c0, packed);
      },
      py::arg("isa"), py::arg("w"), py::arg("z"), py::arg("s0"), py::arg("c0"), py::arg("packed") = true,
      "The LSTM through every step (kernels/recurrent.h lstm_sequence): (gates, c (time, batch, n), s (batch, "
      "time, n)) from w (4n, n), z (batch, time, 4n), s0 and c0 (batch, n).");
  k.def(
      "recurrent",
      [](const std::string& isa, const std::string& op, py::list args) {
        if (!args.empty() && py::isinstance<py::array_t<double>>(args[0])) recurrent_hook<double>(isa, op, args);
        else recurrent_hook<float>(isa, op, args);
      },
      py::arg("isa"), py::arg("op"), py::arg("args"),
      "One recurrent cell kernel (kernels/recurrent.h) by name: lstm_forward, lstm_backward, gru_forward, "
      "gru_backward, lstm_jvp, gru_jvp; args in the kernel's order, 2-D arrays (None for an absent ds2).");
}

}  // namespace

void bind_gemm_kernels(py::module_& k) {
  k.def(
      "gemm",
      [](const std::string& isa, py::array A, py::array B, py::array C, double alpha, double beta,
         bool trans_a, bool trans_b) {
        const bool f64 = is_f64({{"A", &A}, {"B", &B}, {"C", &C}});
        require_ndim(A, "A", 2), require_ndim(B, "B", 2), require_ndim(C, "C", 2);
        require_writable(C, "C");
        const py::object none = py::none();
        if (f64) gemm_hook<double>(isa, A, B, C, alpha, beta, trans_a, trans_b, none, none, none, none, none, none, false);
        else gemm_hook<float>(isa, A, B, C, alpha, beta, trans_a, trans_b, none, none, none, none, none, none, false);
      },
      py::arg("isa"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("alpha") = 1.0,
      py::arg("beta") = 0.0, py::arg("trans_a") = false, py::arg("trans_b") = false,
      "C = alpha * op(A) @ op(B) + beta * C in place with the named ISA's kernel. A and B may be "
      "any strided 2-D views; op() transposes when trans_a/trans_b (via strides, no copy). C may "
      "be a column slice of a wider array (ldc > n); columns past n are never touched.");

  k.def(
      "gemm_ex",
      [](const std::string& isa, py::array A, py::array B, py::array C, double alpha, double beta,
         bool trans_a, bool trans_b, py::object bias, py::object unary, py::object D, py::object row_sums,
         py::object prologue, py::object scale) {
        const bool f64 = is_f64({{"A", &A}, {"B", &B}, {"C", &C}});
        require_ndim(A, "A", 2), require_ndim(B, "B", 2), require_ndim(C, "C", 2);
        require_writable(C, "C");
        if (f64) gemm_hook<double>(isa, A, B, C, alpha, beta, trans_a, trans_b, bias, unary, D, row_sums, prologue, scale, true);
        else gemm_hook<float>(isa, A, B, C, alpha, beta, trans_a, trans_b, bias, unary, D, row_sums, prologue, scale, true);
      },
      py::arg("isa"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("alpha") = 1.0,
      py::arg("beta") = 0.0, py::arg("trans_a") = false, py::arg("trans_b") = false,
      py::arg("bias") = py::none(), py::arg("unary") = py::none(), py::arg("D") = py::none(),
      py::arg("row_sums") = py::none(), py::arg("prologue") = py::none(), py::arg("scale") = py::none(),
      "gemm, then the epilogue: C += bias (per column); if `unary` (a function name), D = f(C) "
      "(D=None writes f(C) into C); row_sums[i] = sum_p op(A)[i, p]. prologue=(name, Z, Y) with Z, Y "
      "of A's shape and strides reads A as A * f'(Z) (Y = f(Z)), in the product and the row sums. "
      "scale=S of shape (period, n): D[i] = C[i] * S[i % period] (D=None: into C).");

  k.def(
      "pack_b",
      [](const std::string& isa, py::array B, bool trans_b) {
        require_ndim(B, "B", 2);
        if (py::isinstance<py::array_t<double>>(B)) return pack_b_hook<double>(isa, B, trans_b);
        if (py::isinstance<py::array_t<float>>(B)) return pack_b_hook<float>(isa, B, trans_b);
        throw TypeError(cat("'B' has dtype ", py::str(B.dtype()).cast<std::string>(), "; expected float32 or float64"));
      },
      py::arg("isa"), py::arg("B"), py::arg("trans_b") = false,
      "op(B) packed by the named ISA's pack_b: a 64-byte aligned uint8 array for gemm_packed_b.");

  k.def(
      "gemm_packed_b",
      [](const std::string& isa, py::array A, py::array packed, py::array C, double alpha, double beta,
         bool trans_a, py::object bias, py::object unary, py::object D, py::object row_sums, py::object prologue,
         py::object scale) {
        const bool f64 = is_f64({{"A", &A}, {"C", &C}});
        require_ndim(A, "A", 2), require_ndim(C, "C", 2);
        require_writable(C, "C");
        if (f64)
          gemm_packed_b_hook<double>(isa, A, packed, C, alpha, beta, trans_a, bias, unary, D, row_sums, prologue, scale);
        else gemm_packed_b_hook<float>(isa, A, packed, C, alpha, beta, trans_a, bias, unary, D, row_sums, prologue, scale);
      },
      py::arg("isa"), py::arg("A"), py::arg("packed"), py::arg("C"), py::arg("alpha") = 1.0,
      py::arg("beta") = 0.0, py::arg("trans_a") = false, py::arg("bias") = py::none(),
      py::arg("unary") = py::none(), py::arg("D") = py::none(), py::arg("row_sums") = py::none(),
      py::arg("prologue") = py::none(), py::arg("scale") = py::none(),
      "gemm_ex with B from pack_b (same ISA and dtype); n is C's column count.");

  k.def("num_threads", &kernels::gemm_num_threads, "Threads used by large GEMMs.");
  k.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw ValueError(cat("set_num_threads needs n >= 1; got ", n));
        kernels::set_gemm_num_threads(n);
      },
      py::arg("n"), "Set the threads used by large GEMMs (results do not depend on it).");

  k.def(
      "add_row_vector",
      [](const std::string& isa, py::array b, py::array y) {
        const bool f64 = is_f64({{"b", &b}, {"y", &y}});
        require_ndim(b, "b", 1), require_ndim(y, "y", 2);
        require_contiguous(b, "b"), require_contiguous(y, "y"), require_writable(y, "y");
        if (b.shape(0) != y.shape(1))
          throw ValueError(cat("'b' has ", b.shape(0), " entries; expected one per column of 'y' (", y.shape(1), ")"));
        if (f64) vector_table<double>(isa).add_row_vector(y.shape(0), y.shape(1), static_cast<const double*>(b.data()), static_cast<double*>(y.mutable_data()));
        else vector_table<float>(isa).add_row_vector(y.shape(0), y.shape(1), static_cast<const float*>(b.data()), static_cast<float*>(y.mutable_data()));
      },
      py::arg("isa"), py::arg("b"), py::arg("y"), "y[i, j] += b[j] in place.");

  k.def(
      "sum_rows",
      [](const std::string& isa, py::array x, double beta, py::array out) {
        const bool f64 = is_f64({{"x", &x}, {"out", &out}});
        require_ndim(x, "x", 2), require_ndim(out, "out", 1);
        require_contiguous(x, "x"), require_contiguous(out, "out"), require_writable(out, "out");
        if (out.shape(0) != x.shape(1))
          throw ValueError(cat("'out' has ", out.shape(0), " entries; expected one per column of 'x' (", x.shape(1), ")"));
        if (f64) vector_table<double>(isa).sum_rows(x.shape(0), x.shape(1), static_cast<const double*>(x.data()), beta, static_cast<double*>(out.mutable_data()));
        else vector_table<float>(isa).sum_rows(x.shape(0), x.shape(1), static_cast<const float*>(x.data()), static_cast<float>(beta), static_cast<float*>(out.mutable_data()));
      },
      py::arg("isa"), py::arg("x"), py::arg("beta"), py::arg("out"),
      "out[j] = beta * out[j] + sum_i x[i, j] in place (beta == 0 does not read out).");

  k.def(
      "axpy",
      [](const std::string& isa, double alpha, py::array x, py::array y) {
        const bool f64 = is_f64({{"x", &x}, {"y", &y}});
        require_ndim(x, "x", 1), require_ndim(y, "y", 1);
        require_contiguous(x, "x"), require_contiguous(y, "y"), require_writable(y, "y");
        if (x.shape(0) != y.shape(0))
          throw ValueError(cat("'x' has ", x.shape(0), " entries but 'y' has ", y.shape(0)));
        if (f64) vector_table<double>(isa).axpy(x.shape(0), alpha, static_cast<const double*>(x.data()), static_cast<double*>(y.mutable_data()));
        else vector_table<float>(isa).axpy(x.shape(0), static_cast<float>(alpha), static_cast<const float*>(x.data()), static_cast<float*>(y.mutable_data()));
      },
      py::arg("isa"), py::arg("alpha"), py::arg("x"), py::arg("y"), "y += alpha * x in place.");

  k.def(
      "outer",
      [](const std::string& isa, py::array u, py::array v, py::array out) {
        const bool f64 = is_f64({{"u", &u}, {"v", &v}, {"out", &out}});
        require_ndim(u, "u", 2), require_ndim(v, "v", 2), require_ndim(out, "out", 3);
        require_contiguous(u, "u"), require_contiguous(v, "v"), require_contiguous(out, "out");
        require_writable(out, "out");
        if (v.shape(0) != u.shape(0) || out.shape(0) != u.shape(0) || out.shape(1) != u.shape(1) ||
            out.shape(2) != v.shape(1))
          throw ValueError(cat("'u' (", u.shape(0), ", ", u.shape(1), ") and 'v' (", v.shape(0), ", ", v.shape(1),
                               ") need the same batch and 'out' of shape (batch, u columns, v columns); given 'out' (",
                               out.shape(0), ", ", out.shape(1), ", ", out.shape(2), ")"));
        if (f64) vector_table<double>(isa).outer(u.shape(0), u.shape(1), v.shape(1), static_cast<const double*>(u.data()), static_cast<const double*>(v.data()), static_cast<double*>(out.mutable_data()));
        else vector_table<float>(isa).outer(u.shape(0), u.shape(1), v.shape(1), static_cast<const float*>(u.data()), static_cast<const float*>(v.data()), static_cast<float*>(out.mutable_data()));
      },
      py::arg("isa"), py::arg("u"), py::arg("v"), py::arg("out"),
      "out[b, i, j] = u[b, i] * v[b, j] (a batch of outer products).");

  k.def(
      "optim_step",
      [](const std::string& isa, const std::string& method, py::array grad, py::array w, py::array a, py::object b,
         double lr, double scale, double clip, double l2, double momentum, double beta1, double beta2, double eps,
         double weight_decay, double c1, double c2, double rho) {
        std::vector<std::pair<const char*, const py::array*>> arrays{{"w", &w}, {"grad", &grad}, {"a", &a}};
        py::array bb;
        if (!b.is_none()) {
          bb = b.cast<py::array>();
          arrays.push_back({"b", &bb});
        }
        const bool f64 = is_f64({arrays[0], arrays[1], arrays[2]});
        if (!b.is_none() && !(f64 ? py::isinstance<py::array_t<double>>(bb) : py::isinstance<py::array_t<float>>(bb)))
          throw TypeError("'b' must have the dtype of 'w'");
        for (auto& [name, x] : arrays) {
          require_ndim(*x, name, 1), require_contiguous(*x, name);
          if (x->shape(0) != w.shape(0)) throw ValueError(cat("'", name, "' has ", x->shape(0), " entries; 'w' has ", w.shape(0)));
        }
        require_writable(w, "w"), require_writable(a, "a");
        if (!b.is_none()) require_writable(bb, "b");
        kernels::OptimStep s;
        s.lr = lr, s.scale = scale, s.clip = clip, s.l2 = l2, s.momentum = momentum, s.beta1 = beta1, s.beta2 = beta2;
        s.eps = eps, s.weight_decay = weight_decay, s.c1 = c1, s.c2 = c2, s.rho = rho;
        if (f64) optim_hook<double>(isa, method, s, grad, w, a, b);
        else optim_hook<float>(isa, method, s, grad, w, a, b);
      },
      py::arg("isa"), py::arg("method"), py::arg("grad"), py::arg("w"), py::arg("a"), py::arg("b") = py::none(),
      py::arg("lr") = 0.001, py::arg("scale") = 1.0, py::arg("clip") = 0.0, py::arg("l2") = 0.0,
      py::arg("momentum") = 0.0, py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8,
      py::arg("weight_decay") = 0.0, py::arg("c1") = 1.0, py::arg("c2") = 1.0, py::arg("rho") = 0.99,
      "One optimiser step (kernels/optim.h) in place: w and the state a (SGD: velocity; RMSProp: mean square; "
      "ADAM: first moment, b the second).");

  k.def(
      "moving_average",
      [](const std::string& isa, double momentum, double scale, py::array x, py::array avg) {
        const bool f64 = is_f64({{"x", &x}, {"avg", &avg}});
        require_ndim(x, "x", 1), require_ndim(avg, "avg", 1);
        require_contiguous(x, "x"), require_contiguous(avg, "avg"), require_writable(avg, "avg");
        if (x.shape(0) != avg.shape(0)) throw ValueError(cat("'x' has ", x.shape(0), " entries but 'avg' has ", avg.shape(0)));
        if (f64) optim_table<double>(isa).moving_average(x.shape(0), momentum, scale, static_cast<const double*>(x.data()), static_cast<double*>(avg.mutable_data()));
        else optim_table<float>(isa).moving_average(x.shape(0), momentum, scale, static_cast<const float*>(x.data()), static_cast<float*>(avg.mutable_data()));
      },
      py::arg("isa"), py::arg("momentum"), py::arg("scale"), py::arg("x"), py::arg("avg"),
      "avg = momentum avg + ((1 - momentum) scale) x in place.");

  k.def(
      "multiply_rows",
      [](const std::string& isa, py::array d, py::array x, py::array y) {
        const bool f64 = is_f64({{"d", &d}, {"x", &x}, {"y", &y}});
        require_ndim(d, "d", 1), require_ndim(x, "x", 2), require_ndim(y, "y", 2);
        require_contiguous(d, "d"), require_contiguous(x, "x"), require_contiguous(y, "y"), require_writable(y, "y");
        if (d.shape(0) != x.shape(1) || y.shape(0) != x.shape(0) || y.shape(1) != x.shape(1))
          throw ValueError(cat("'d' needs one entry per column of 'x' and 'y' the shape of 'x'; given d (", d.shape(0),
                               "), x (", x.shape(0), ", ", x.shape(1), "), y (", y.shape(0), ", ", y.shape(1), ")"));
        if (f64) vector_table<double>(isa).multiply_rows(x.shape(0), x.shape(1), static_cast<const double*>(d.data()), static_cast<const double*>(x.data()), static_cast<double*>(y.mutable_data()));
        else vector_table<float>(isa).multiply_rows(x.shape(0), x.shape(1), static_cast<const float*>(d.data()), static_cast<const float*>(x.data()), static_cast<float*>(y.mutable_data()));
      },
      py::arg("isa"), py::arg("d"), py::arg("x"), py::arg("y"), "y[i, j] = x[i, j] * d[j] (y may be x).");
  bind_recurrent_kernels(k);

  k.def(
      "gemm_batched",
      [](const std::string& isa, py::array A, py::array B, py::array C, double alpha, double beta) {
        // 4-D arrays (outer, inner, rows, cols) with any element-multiple strides: the batch's two
        // levels and each product's row and column strides as the arrays have them.
        const bool f64 = is_f64({{"A", &A}, {"B", &B}, {"C", &C}});
        require_ndim(A, "A", 4), require_ndim(B, "B", 4), require_ndim(C, "C", 4), require_writable(C, "C");
        for (int d = 0; d < 2; ++d)
          if (A.shape(d) != C.shape(d) || B.shape(d) != C.shape(d))
            throw ValueError("A, B and C need the same two batch axes");
        if (A.shape(2) != C.shape(2) || B.shape(3) != C.shape(3) || A.shape(3) != B.shape(2))
          throw ValueError(cat("shapes do not multiply: A (.., ", A.shape(2), ", ", A.shape(3), "), B (.., ", B.shape(2),
                               ", ", B.shape(3), "), C (.., ", C.shape(2), ", ", C.shape(3), ")"));
        if (C.strides(3) != C.itemsize() || overlaps(C, A) || overlaps(C, B))
          throw ValueError("C must have contiguous rows and not overlap A or B");
        auto st = [](const py::array& a, int d) { return int64_t(a.strides(d) / a.itemsize()); };
        kernels::GemmBatch bt;
        bt.count = C.shape(0) * C.shape(1), bt.inner = C.shape(1);
        bt.outer_a = st(A, 0), bt.inner_a = st(A, 1), bt.outer_b = st(B, 0), bt.inner_b = st(B, 1);
        bt.outer_c = st(C, 0), bt.inner_c = st(C, 1);
        const int64_t m = C.shape(2), n = C.shape(3), kk = A.shape(3);
        auto run = [&](auto t) {
          using T = decltype(t);
          gemm_table<T>(isa).gemm_batched(bt, m, n, kk, T(alpha), static_cast<const T*>(A.data()), st(A, 2), st(A, 3),
                                          static_cast<const T*>(B.data()), st(B, 2), st(B, 3), T(beta),
                                          static_cast<T*>(C.mutable_data()), st(C, 2));
        };
        if (f64) run(double{});
        else run(float{});
      },
      py::arg("isa"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("alpha") = 1.0, py::arg("beta") = 0.0,
      "C[o, i] = alpha A[o, i] @ B[o, i] + beta C[o, i] for every (o, i) of the batch, in one batched call.");
}

}  // namespace portgrad::python
