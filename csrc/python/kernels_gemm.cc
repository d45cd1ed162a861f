/// @brief Test hooks on `portgrad._core.kernels` that call one GEMM or vector kernel variant directly.
///
/// Every hook names its variant by ISA ("scalar" is the reference, "avx2", "avx512", or "active"
/// for the one the engine uses), works in place on numpy arrays without copying, and checks
/// dtypes, shapes and strides at the door so a kernel never sees a bad argument.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "core/errors.h"
#include "kernels/gemm.h"
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

template <typename T>
void gemm_hook(const std::string& isa, const py::array& A, const py::array& B, py::array& C,
               double alpha, double beta, bool trans_a, bool trans_b) {
  const auto& table = gemm_table<T>(isa);
  // A is (m, k) as stored, or (k, m) when trans_a; likewise B is (k, n) or (n, k).
  int64_t m = A.shape(0), k = A.shape(1), rsa = elem_stride(A, "A", 0), csa = elem_stride(A, "A", 1);
  if (trans_a) std::swap(m, k), std::swap(rsa, csa);
  int64_t kb = B.shape(0), n = B.shape(1), rsb = elem_stride(B, "B", 0), csb = elem_stride(B, "B", 1);
  if (trans_b) std::swap(kb, n), std::swap(rsb, csb);
  if (kb != k)
    throw ValueError(cat("inner dimensions differ: op(A) is ", m, "x", k, " but op(B) is ", kb,
                         "x", n));
  if (C.shape(0) != m || C.shape(1) != n)
    throw ValueError(cat("'C' has shape (", C.shape(0), ", ", C.shape(1), "); expected (", m,
                         ", ", n, ") = op(A) @ op(B)"));
  const int64_t ldc = elem_stride(C, "C", 0), cs = elem_stride(C, "C", 1);
  if (m > 0 && n > 1 && cs != 1)
    throw ValueError("'C' must have unit column stride (a row-major array or a column slice of one)");
  if (m > 1 && n > 0 && ldc < n)
    throw ValueError(cat("'C' rows overlap: row stride ", ldc, " < n = ", n));
  table.gemm(m, n, k, static_cast<T>(alpha), static_cast<const T*>(A.data()), rsa, csa,
             static_cast<const T*>(B.data()), rsb, csb, static_cast<T>(beta),
             static_cast<T*>(C.mutable_data()), ldc);
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
        if (f64) gemm_hook<double>(isa, A, B, C, alpha, beta, trans_a, trans_b);
        else gemm_hook<float>(isa, A, B, C, alpha, beta, trans_a, trans_b);
      },
      py::arg("isa"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("alpha") = 1.0,
      py::arg("beta") = 0.0, py::arg("trans_a") = false, py::arg("trans_b") = false,
      "C = alpha * op(A) @ op(B) + beta * C in place with the named ISA's kernel. A and B may be "
      "any strided 2-D views; op() transposes when trans_a/trans_b (via strides, no copy). C may "
      "be a column slice of a wider array (ldc > n); columns past n are never touched.");

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
}

}  // namespace portgrad::python
