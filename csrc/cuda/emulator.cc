/// @brief The GPU emulator's launch: blocks in turn, a block's threads as fibers switched at
/// __syncthreads (see kernels/cuda/emulator.h).
#include "kernels/cuda/emulator.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <vector>

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace portgrad::cuda::emulator {
namespace {

constexpr size_t kStackBytes = 64 * 1024;

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  dim3 idx;
  bool done = false, at_barrier = false;
};

struct Scheduler {
  ucontext_t main;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
};
thread_local Scheduler* sched = nullptr;

void fiber_entry() {
  Scheduler* s = sched;
  s->body(s->ctx);
  s->current->done = true;
  // Returning resumes uc_link (the scheduler).
}

void (*launch_hook)(bool) = nullptr;

}  // namespace

void set_launch_hook(void (*hook)(bool running)) { launch_hook = hook; }

namespace {
thread_local bool is_recording = false;
thread_local std::vector<std::function<void()>> recorded;
}  // namespace
bool recording() { return is_recording; }
void record(std::function<void()> work) { recorded.push_back(std::move(work)); }
void begin_recording() {
  recorded.clear();
  is_recording = true;
}
std::vector<std::function<void()>> end_recording() {
  is_recording = false;
  return std::move(recorded);
}

// Every launch of the process, one at a time: a block's static shared memory is one per kernel.
std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

void sync_threads() {
  Scheduler* s = sched;
  s->current->at_barrier = true;
  swapcontext(&s->current->ctx, &s->main);
}

namespace {
thread_local std::vector<unsigned char> shared_memory;
}  // namespace

void* dynamic_shared() { return shared_memory.data(); }

const char* run(dim3 grid, dim3 block, void (*body)(void*), void* ctx, size_t shared_bytes) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64)
    return "invalid block shape (a block has 1 to 1024 threads, z at most 64)";
  if (grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) return "invalid grid shape";
  std::lock_guard<std::mutex> lock(launch_mutex());
  struct Hook {
    Hook() { if (launch_hook) launch_hook(true); }
    ~Hook() { if (launch_hook) launch_hook(false); }
  } hook;
  thread_local Scheduler s;
  sched = &s;
  s.body = body;
  s.ctx = ctx;
  if (s.fibers.size() < threads) s.fibers.resize(threads);
  for (uint64_t i = 0; i < threads; ++i)
    if (!s.fibers[i].stack) s.fibers[i].stack.reset(new char[kStackBytes]);
  std::vector<unsigned> order(threads);
  for (unsigned i = 0; i < threads; ++i) order[i] = i;
  std::mt19937 rng(12345);  // a fixed shuffle: reproducible, and not the order a GPU would favour

  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        // Shared memory holds garbage at a block's start: NaN bytes, so a read before a write shows.
        shared_memory.assign(shared_bytes, 0xFF);
        for (unsigned i = 0; i < threads; ++i) {
          Fiber& f = s.fibers[i];
          f.idx = dim3(i % block.x, (i / block.x) % block.y, unsigned(i / (uint64_t(block.x) * block.y)));
          f.done = f.at_barrier = false;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = kStackBytes;
          f.ctx.uc_link = &s.main;
          makecontext(&f.ctx, fiber_entry, 0);
        }
        std::shuffle(order.begin(), order.end(), rng);
        for (;;) {
          unsigned done = 0, waiting = 0;
          for (unsigned i : order) {
            Fiber& f = s.fibers[i];
            if (f.done) {
              ++done;
              continue;
            }
            f.at_barrier = false;
            s.current = &f;
            threadIdx = f.idx;
            swapcontext(&s.main, &f.ctx);
            if (f.done) ++done;
            else ++waiting;
          }
          if (waiting == 0) break;
          if (done > 0) {
            sched = nullptr;
            return "__syncthreads reached by only some threads of a block (divergent barrier)";
          }
        }
      }
  sched = nullptr;
  return nullptr;
}

}  // namespace portgrad::cuda::emulator
