/// @brief The CUDA device runtime: a non-blocking stream per (host thread, device), a caching
/// allocator per device (freed blocks are kept for reuse, so a plan rebuilt with the same shapes
/// costs no cudaMalloc), copies, CUDA graphs, and the first launch error of each thread.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "cuda/runtime.h"
#include "kernels/cuda/common.cuh"

namespace portgrad::cuda {

const char* const kBackendName = "CUDA";

namespace {

constexpr int kMaxDevices = 64;
thread_local int current = 0;
thread_local cudaStream_t streams[kMaxDevices] = {};
thread_local std::string first_error;
thread_local std::string reported;

const char* status(cudaError_t e) {
  if (e == cudaSuccess) return nullptr;
  cudaGetLastError();  // clear a non-sticky error so later calls are not blamed for it
  return cudaGetErrorString(e);
}

// Blocks are rounded up (512 B granules below 1 MiB, 2 MiB granules above) so sizes repeat and
// cached blocks fit later requests; a cached block serves a request at most twice smaller.
size_t rounded(size_t bytes) {
  if (bytes <= (size_t(1) << 20)) return (bytes + 511) / 512 * 512 + (bytes == 0 ? 512 : 0);
  const size_t g = size_t(2) << 20;
  return (bytes + g - 1) / g * g;
}

struct Pool {
  std::multimap<size_t, void*> cached;  // size -> block
  size_t in_use = 0, cached_bytes = 0;
};
std::mutex pool_mu;
Pool pools[kMaxDevices];
std::unordered_map<void*, std::pair<int, size_t>> owners;  // block -> (device, size)

}  // namespace

cudaStream_t current_stream() {
  cudaStream_t& s = streams[current];
  if (!s && cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
    note_error("cannot create a CUDA stream");
    s = nullptr;
  }
  return s;
}

void note_error(const char* what) {
  if (first_error.empty()) first_error = what;
}

int device_count(const char** why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = cudaGetErrorString(e);
    cudaGetLastError();
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device is visible";
  return n > kMaxDevices ? kMaxDevices : n;
}

const char* device_name(int device) {
  static std::mutex mu;
  static std::string names[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) return "";
  std::lock_guard<std::mutex> lock(mu);
  if (names[device].empty()) {
    cudaDeviceProp p;
    names[device] = cudaGetDeviceProperties(&p, device) == cudaSuccess ? p.name : "unknown CUDA device";
  }
  return names[device].c_str();
}

const char* set_device(int device) {
  if (device < 0 || device >= kMaxDevices) return "invalid device ordinal";
  if (const char* e = status(cudaSetDevice(device))) return e;
  current = device;
  return nullptr;
}

int current_device() { return current; }

namespace {
struct DeviceFacts {
  int multiprocessors = 0;
  size_t shared_per_block = 0, shared_per_multiprocessor = 0;
};
const DeviceFacts& device_facts() {
  static std::mutex mu;
  static DeviceFacts facts[kMaxDevices];
  std::lock_guard<std::mutex> lock(mu);
  DeviceFacts& f = facts[current];
  if (f.multiprocessors == 0) {
    int sms = 0, block = 0, sm = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, current) != cudaSuccess ||
        cudaDeviceGetAttribute(&block, cudaDevAttrMaxSharedMemoryPerBlockOptin, current) != cudaSuccess ||
        cudaDeviceGetAttribute(&sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, current) != cudaSuccess) {
      cudaGetLastError();
      return f;  // all zero: kernels sized by these choose their plain paths
    }
    f = {sms, size_t(block), size_t(sm)};
  }
  return f;
}
}  // namespace

int multiprocessor_count() { return device_facts().multiprocessors; }
size_t max_shared_per_block() { return device_facts().shared_per_block; }
size_t shared_per_multiprocessor() { return device_facts().shared_per_multiprocessor; }

bool allow_shared(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return true;
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, size_t> allowed;  // (device, kernel) -> bytes
  std::lock_guard<std::mutex> lock(mu);
  size_t& now = allowed[{current, kernel}];
  if (now >= bytes) return true;
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e != cudaSuccess) {
    note_error(cudaGetErrorString(e));
    cudaGetLastError();
    return false;
  }
  now = bytes;
  return true;
}

const char* alloc(size_t bytes, void** out) {
  const size_t size = rounded(bytes);
  {
    std::lock_guard<std::mutex> lock(pool_mu);
    Pool& p = pools[current];
    auto it = p.cached.lower_bound(size);
    if (it != p.cached.end() && it->first <= 2 * size) {
      *out = it->second;
      p.in_use += it->first;
      p.cached_bytes -= it->first;
      p.cached.erase(it);
      return nullptr;
    }
  }
  void* ptr = nullptr;
  cudaError_t e = cudaMalloc(&ptr, size);
  if (e == cudaErrorMemoryAllocation) {  // give the cached blocks back, then try once more
    cudaGetLastError();
    empty_cache();
    e = cudaMalloc(&ptr, size);
  }
  if (const char* msg = status(e)) return msg;
  std::lock_guard<std::mutex> lock(pool_mu);
  owners[ptr] = {current, size};
  pools[current].in_use += size;
  *out = ptr;
  return nullptr;
}

// Callers free only memory no queued work uses any more (the engine synchronises after each call).
void free(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(pool_mu);
  auto it = owners.find(ptr);
  if (it == owners.end()) return;
  Pool& p = pools[it->second.first];
  p.cached.emplace(it->second.second, ptr);
  p.in_use -= it->second.second;
  p.cached_bytes += it->second.second;
}

void empty_cache() {
  std::lock_guard<std::mutex> lock(pool_mu);
  int device = 0;
  cudaGetDevice(&device);
  for (int d = 0; d < kMaxDevices; ++d) {
    Pool& p = pools[d];
    if (p.cached.empty()) continue;
    cudaSetDevice(d);
    for (auto& [size, ptr] : p.cached) {
      cudaFree(ptr);
      owners.erase(ptr);
    }
    p.cached.clear();
    p.cached_bytes = 0;
  }
  cudaSetDevice(device);
}

size_t memory_in_use() {
  std::lock_guard<std::mutex> lock(pool_mu);
  size_t n = 0;
  for (const Pool& p : pools) n += p.in_use;
  return n;
}

size_t memory_cached() {
  std::lock_guard<std::mutex> lock(pool_mu);
  size_t n = 0;
  for (const Pool& p : pools) n += p.cached_bytes;
  return n;
}

const char* copy(void* dst, const void* src, size_t bytes, CopyKind kind) {
  if (bytes == 0) return nullptr;
  const cudaMemcpyKind k = kind == CopyKind::HostToDevice   ? cudaMemcpyHostToDevice
                           : kind == CopyKind::DeviceToHost ? cudaMemcpyDeviceToHost
                                                            : cudaMemcpyDeviceToDevice;
  cudaStream_t s = current_stream();
  if (const char* e = status(cudaMemcpyAsync(dst, src, bytes, k, s))) return e;
  if (kind == CopyKind::DeviceToHost) return status(cudaStreamSynchronize(s));  // the caller reads it next
  return nullptr;
}

const char* synchronize() {
  if (const char* e = status(cudaStreamSynchronize(current_stream()))) return e;
  if (first_error.empty()) return nullptr;
  reported = first_error;
  first_error.clear();
  return reported.c_str();
}

int pointer_device(const void* p) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? a.device : -1;
}

const char* capture_begin() {
  return status(cudaStreamBeginCapture(current_stream(), cudaStreamCaptureModeThreadLocal));
}

const char* capture_end(void** graph) {
  *graph = nullptr;
  cudaGraph_t g = nullptr;
  const cudaError_t e = cudaStreamEndCapture(current_stream(), &g);
  if (e != cudaSuccess || !first_error.empty()) {
    // A failed capture launched nothing: its launch errors must not be reported by the direct run
    // the engine does instead.
    if (g) cudaGraphDestroy(g);
    reported = e != cudaSuccess ? status(e) : first_error;
    first_error.clear();
    return reported.c_str();
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ie = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  if (const char* msg = status(ie)) return msg;
  *graph = exec;
  return nullptr;
}

const char* graph_launch(void* graph) {
  return status(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), current_stream()));
}

void graph_destroy(void* graph) { cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)); }

int64_t* result_slot() {
  static std::mutex mu;
  static int64_t* slots[kMaxDevices] = {};
  std::lock_guard<std::mutex> lock(mu);
  if (!slots[current]) {
    void* p = nullptr;
    if (cudaMalloc(&p, 8) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    slots[current] = static_cast<int64_t*>(p);
  }
  return slots[current];
}

}  // namespace portgrad::cuda
