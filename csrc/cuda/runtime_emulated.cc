/// @brief The emulated device runtime: "device memory" is host memory mapped inaccessible except
/// while an emulated kernel or copy runs, so engine code that touches device memory directly
/// faults here as it would on a GPU. Devices: PORTGRAD_GPU_EMULATOR=n (default 1) of them.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <functional>
#include <vector>

#include "cuda/runtime.h"
#include "kernels/cuda/emulator.h"

namespace portgrad::cuda {

const char* const kBackendName = "emulator";

namespace {

struct Allocation {
  size_t bytes;    // mapped (whole pages)
  int device;
};
std::map<uintptr_t, Allocation>& allocations() {  // by start address; guarded by launch_mutex()
  static std::map<uintptr_t, Allocation> m;
  return m;
}
size_t in_use = 0;
thread_local int current = 0;
thread_local std::string first_error;

void protect_all(bool open) {
  for (const auto& [start, a] : allocations())
    mprotect(reinterpret_cast<void*>(start), a.bytes, open ? PROT_READ | PROT_WRITE : PROT_NONE);
}

const std::map<uintptr_t, Allocation>::value_type* find(const void* p) {
  auto& m = allocations();
  auto it = m.upper_bound(reinterpret_cast<uintptr_t>(p));
  if (it == m.begin()) return nullptr;
  --it;
  return reinterpret_cast<uintptr_t>(p) < it->first + it->second.bytes ? &*it : nullptr;
}

struct Init {
  Init() { emulator::set_launch_hook(protect_all); }
} init;

}  // namespace

cudaStream_t current_stream() { return nullptr; }
void note_error(const char* what) {
  if (first_error.empty()) first_error = what;
}

int device_count(const char** why) {
  const char* e = std::getenv("PORTGRAD_GPU_EMULATOR");
  const int n = e ? std::atoi(e) : 1;
  return n < 1 ? 1 : n > 8 ? 8 : n;
}

const char* device_name(int device) { return "portgrad CPU emulator of a CUDA device"; }

const char* set_device(int device) {
  if (device < 0 || device >= device_count(nullptr)) return "invalid device ordinal";
  current = device;
  return nullptr;
}
int current_device() { return current; }

// An H100-like budget of shared memory, and few multiprocessors, so that kernels with a grid of
// one block per multiprocessor loop over several pieces of work each, as they do on a big batch.
int multiprocessor_count() { return 3; }
size_t max_shared_per_block() { return 227 * 1024; }
size_t shared_per_multiprocessor() { return 228 * 1024; }

const char* alloc(size_t bytes, void** out) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t mapped = (bytes + page - 1) / page * page + page;  // never 0 bytes
  void* p = mmap(nullptr, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return "out of memory";
  std::lock_guard<std::mutex> lock(emulator::launch_mutex());
  allocations()[reinterpret_cast<uintptr_t>(p)] = {mapped, current};
  in_use += mapped;
  *out = p;
  return nullptr;
}

void free(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(emulator::launch_mutex());
  auto it = allocations().find(reinterpret_cast<uintptr_t>(p));
  if (it == allocations().end()) return;
  munmap(p, it->second.bytes);
  in_use -= it->second.bytes;
  allocations().erase(it);
}

const char* copy(void* dst, const void* src, size_t bytes, CopyKind kind) {
  if (bytes == 0) return nullptr;
  if (emulator::recording()) {  // only device-to-device copies belong in a graph
    if (kind != CopyKind::DeviceToDevice) return "a host copy cannot be captured in a graph";
    emulator::record([=] {
      if (const char* e = copy(dst, src, bytes, kind)) note_error(e);
    });
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(emulator::launch_mutex());
  const bool dst_dev = find(dst) != nullptr, src_dev = find(src) != nullptr;
  const bool want_dst = kind != CopyKind::DeviceToHost, want_src = kind != CopyKind::HostToDevice;
  if (dst_dev != want_dst || src_dev != want_src) return "invalid argument (a copy's pointers are not where its kind says)";
  protect_all(true);
  std::memmove(dst, src, bytes);
  protect_all(false);
  return nullptr;
}

const char* synchronize() {
  if (first_error.empty()) return nullptr;
  static thread_local std::string reported;
  reported = first_error;
  first_error.clear();
  return reported.c_str();
}

int pointer_device(const void* p) {
  std::lock_guard<std::mutex> lock(emulator::launch_mutex());
  const auto* a = find(p);
  return a ? a->second.device : -1;
}

// Graphs: the launches and copies of a capture are recorded and replayed in order.
using Graph = std::vector<std::function<void()>>;
const char* capture_begin() {
  if (emulator::recording()) return "a capture is already under way on this thread";
  emulator::begin_recording();
  return nullptr;
}
const char* capture_end(void** graph) {
  *graph = new Graph(emulator::end_recording());
  return nullptr;
}
const char* graph_launch(void* graph) {
  for (auto& work : *static_cast<Graph*>(graph)) work();
  return nullptr;
}
void graph_destroy(void* graph) { delete static_cast<Graph*>(graph); }

int64_t* result_slot() {
  static int64_t* slots[8] = {};
  if (!slots[current]) {
    void* p = nullptr;
    if (alloc(8, &p)) return nullptr;
    slots[current] = static_cast<int64_t*>(p);
  }
  return slots[current];
}

size_t memory_in_use() {
  std::lock_guard<std::mutex> lock(emulator::launch_mutex());
  return in_use;
}
size_t memory_cached() { return 0; }
void empty_cache() {}

}  // namespace portgrad::cuda
