/// @brief DLPack's C ABI (https://dmlc.github.io/dlpack/latest/c_api.html), the unversioned form
/// every producer and consumer accepts: a PyCapsule named "dltensor" holding a DLManagedTensor.
/// The engine reads GPU arrays through it; the GPU modules' DeviceArray exports through it.
#pragma once
#include <cstdint>

namespace portgrad::dlpack {

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null: C-contiguous
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

constexpr int32_t kDLCPU = 1, kDLCUDA = 2, kDLCUDAManaged = 13;
constexpr uint8_t kDLInt = 0, kDLFloat = 2;

}  // namespace portgrad::dlpack
