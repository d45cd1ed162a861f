/// @brief The kernels' persistent thread pool, team barrier, GEMM thread count and cache sizes.
#include "kernels/cpu/threadpool.h"

#include <cpuid.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/gemm.h"

namespace portgrad::kernels {
namespace {

int initial_threads() {
  if (const char* env = std::getenv("PORTGRAD_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return std::min(n, 256);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw >= 1 ? static_cast<int>(std::min(hw, 256u)) : 1;
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{initial_threads()};
  return n;
}

}  // namespace

int gemm_num_threads() { return thread_setting().load(std::memory_order_relaxed); }

void set_gemm_num_threads(int n) { thread_setting().store(std::clamp(n, 1, 256), std::memory_order_relaxed); }

}  // namespace portgrad::kernels

namespace portgrad::kernels::cpu {

inline void cpu_relax() { __builtin_ia32_pause(); }

// The threads of one job share a counter of claimed work items.
struct Team {
  int nt = 1;
  std::atomic<int64_t> next{0};
};

int64_t team_claim(Team* team, int64_t* local) {
  if (!team) return (*local)++;
  return team->next.fetch_add(1, std::memory_order_relaxed);
}

namespace {

// Workers wait for a new generation: spinning for a while after each job (back-to-back GEMMs
// are common), then on the condition variable.
class Pool {
 public:
  // Runs the job on nt threads if the pool is free; false when another job holds it.
  bool try_run(int nt, void (*fn)(void*, int, int, Team*), void* ctx) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    while (static_cast<int>(workers_.size()) < nt - 1) {
      const int id = static_cast<int>(workers_.size()) + 1;
      const unsigned now = generation_.load(std::memory_order_relaxed);  // a new worker waits for the next job
      workers_.emplace_back([this, id, now] { work(id, now); });
      workers_.back().detach();
    }
    const int nworkers = static_cast<int>(workers_.size());
    team_.nt = nt;
    team_.next.store(0, std::memory_order_relaxed);
    fn_ = fn;
    ctx_ = ctx;
    nt_ = nt;
    done_.store(0, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(m_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    fn(ctx, 0, nt, &team_);
    for (int spin = 0; done_.load(std::memory_order_acquire) < nworkers; ++spin) {
      if (spin < 4000) cpu_relax();
      else std::this_thread::yield();
    }
    return true;
  }

 private:
  void work(int id, unsigned seen) {
    for (;;) {
      unsigned g = generation_.load(std::memory_order_acquire);
      for (int spin = 0; g == seen && spin < 20000; ++spin) {
        cpu_relax();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        g = generation_.load(std::memory_order_acquire);
      }
      seen = g;
      if (id < nt_) fn_(ctx_, id, nt_, &team_);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  std::mutex busy_;  // held by the one running job
  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<unsigned> generation_{0};
  std::atomic<int> done_{0};
  void (*fn_)(void*, int, int, Team*) = nullptr;
  void* ctx_ = nullptr;
  int nt_ = 1;
  Team team_;
};

// A forked child has none of the parent's workers (and maybe a locked mutex): it abandons the
// parent's pool, unfreed, and starts its own on first use.
std::atomic<Pool*> g_pool{nullptr};
std::mutex g_pool_create;

void forget_pool_in_child() { g_pool.store(nullptr, std::memory_order_relaxed); }

Pool* pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return p;
  static const bool registered = [] { return pthread_atfork(nullptr, nullptr, &forget_pool_in_child) == 0; }();
  (void)registered;
  std::lock_guard<std::mutex> lock(g_pool_create);
  p = g_pool.load(std::memory_order_acquire);
  if (!p) {
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return p;
}

}  // namespace

int parallel_run(int nt, void (*fn)(void*, int, int, Team*), void* ctx) {
  if (nt > 1 && pool()->try_run(nt, fn, ctx)) return nt;
  fn(ctx, 0, 1, nullptr);
  return 1;
}

// ---------------------------------------------------------------------------------------------

namespace {

size_t from_sysconf(int name) {
  const long v = sysconf(name);
  return v > 0 ? static_cast<size_t>(v) : 0;
}

// cpuid leaf 4 (deterministic cache parameters; Intel, and AMD from Zen on): data or unified
// caches by level.
void from_cpuid(size_t* l1d, size_t* l2, size_t* l3) {
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d) || a < 4) return;
  for (unsigned i = 0; i < 16; ++i) {
    __cpuid_count(4, i, a, b, c, d);
    const unsigned type = a & 31, level = (a >> 5) & 7;
    if (type == 0) break;
    if (type == 2) continue;  // instruction cache
    const size_t size = size_t((b >> 22) + 1) * (((b >> 12) & 1023) + 1) * ((b & 4095) + 1) * (size_t(c) + 1);
    if (level == 1 && !*l1d) *l1d = size;
    if (level == 2 && !*l2) *l2 = size;
    if (level == 3 && !*l3) *l3 = size;
  }
}

CacheSizes detect_caches() {
  CacheSizes s{0, 0, 0};
#ifdef _SC_LEVEL1_DCACHE_SIZE
  s.l1d = from_sysconf(_SC_LEVEL1_DCACHE_SIZE);
  s.l2 = from_sysconf(_SC_LEVEL2_CACHE_SIZE);
  s.l3 = from_sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  from_cpuid(&s.l1d, &s.l2, &s.l3);
  // Sane ranges; implausible readings (some VMs report 0 or nonsense) fall back.
  if (s.l1d < (16u << 10) || s.l1d > (256u << 10)) s.l1d = 32u << 10;
  if (s.l2 < (128u << 10) || s.l2 > (64u << 20)) s.l2 = 512u << 10;
  if (s.l3 < s.l2 || s.l3 > (1024u << 20)) s.l3 = std::max<size_t>(8u << 20, s.l2);
  return s;
}

struct Arenas {
  void* p[2] = {nullptr, nullptr};
  size_t size[2] = {0, 0};
  ~Arenas() {
    for (void* q : p) std::free(q);
  }
};

}  // namespace

const CacheSizes& cache_sizes() {
  static const CacheSizes s = detect_caches();
  return s;
}

void* thread_arena(int slot, size_t bytes) {
  thread_local Arenas arenas;
  if (arenas.size[slot] < bytes) {
    std::free(arenas.p[slot]);
    // Large arenas (a packed panel of B is megabytes) go on transparent huge pages where the
    // kernel allows it: fewer TLB misses while the micro-kernel streams them.
    const size_t huge = size_t(2) << 20;
    const size_t align = bytes >= huge / 2 ? huge : 64;
    const size_t rounded = (bytes + align - 1) & ~(align - 1);
    arenas.p[slot] = std::aligned_alloc(align, rounded);
    if (!arenas.p[slot]) {
      std::fprintf(stderr, "portgrad: out of memory for a %zu-byte kernel arena\n", rounded);
      std::abort();
    }
#ifdef MADV_HUGEPAGE
    if (align == huge) madvise(arenas.p[slot], rounded, MADV_HUGEPAGE);
#endif
    arenas.size[slot] = rounded;
  }
  return arenas.p[slot];
}

}  // namespace portgrad::kernels::cpu
