/// @brief Shapes, element types, devices and the Tensor handle (owning or borrowed storage).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace portgrad {

enum class DType : uint8_t { F32 = 0, F64 = 1, I64 = 2 };
enum class Device : uint8_t { CPU = 0, GPU = 1 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 8; }
const char* dtype_name(DType t);

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
// "(3, 4)", "()" for a scalar: how error messages print shapes.
std::string shape_str(const Shape& s);
Shape shape_concat(const Shape& a, const Shape& b);

// A view of a dense, C-contiguous array. Storage is owned through `owner` (which may be empty
// for borrowed memory the caller keeps alive).
struct Tensor {
  Shape shape;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  void* data = nullptr;
  std::shared_ptr<void> owner;

  int64_t numel() const { return shape_numel(shape); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }

  static Tensor empty(const Shape& shape, DType dtype);                 // owning, uninitialised
  static Tensor zeros(const Shape& shape, DType dtype);                 // owning, zero-filled
  static Tensor borrow(void* data, const Shape& shape, DType dtype);    // non-owning
};

// Counts every buffer the engine allocates, so tests can check that a cached plan allocates nothing.
uint64_t allocation_count();

}  // namespace portgrad
