/// @brief Tensor storage and shape helpers.
#include "core/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

namespace portgrad {

static std::atomic<uint64_t> g_allocations{0};
uint64_t allocation_count() { return g_allocations.load(std::memory_order_relaxed); }

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::I64: return "int64";
  }
  return "?";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ", ";
    r += std::to_string(s[i]);
  }
  if (s.size() == 1) r += ",";
  return r + ")";
}

Shape shape_concat(const Shape& a, const Shape& b) {
  Shape r = a;
  r.insert(r.end(), b.begin(), b.end());
  return r;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  // 64-byte alignment: whole cache lines, and aligned loads for every SIMD width we use.
  size_t bytes = (std::max<size_t>(t.nbytes(), 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  t.owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data = p;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.data, 0, t.nbytes());
  return t;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype) {
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  t.data = data;
  return t;
}

}  // namespace portgrad
