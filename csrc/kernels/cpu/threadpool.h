/// @brief A small persistent thread pool for the CPU kernels (no OpenMP), work claiming, the
/// GEMM thread count, and the CPU's data-cache sizes.
///
/// One parallel job runs at a time: a caller that finds the pool busy (another Python thread in
/// another GEMM) runs its job alone on its own thread instead of waiting. Everything with atomics
/// or locks lives in threadpool.cc (no ISA flags), so ISA files include only these declarations.
#pragma once
#include <cstddef>
#include <cstdint>

namespace portgrad::kernels::cpu {

struct Team;  // the threads of one running job; opaque

// fn(ctx, tid, nt, team) for tid in [0, nt) on nt threads, the caller being tid 0; returns once
// all have finished. When the pool is busy, or nt <= 1, runs fn(ctx, 0, 1, nullptr) on the caller
// alone, so fn must derive its partition from the nt it receives. Returns the nt it ran with.
int parallel_run(int nt, void (*fn)(void* ctx, int tid, int nt, Team* team), void* ctx);

// Work sharing without waiting: each call returns the next unclaimed index of the job (0, 1, ...),
// over all the team's threads; with a null team, (*local)++ (the caller alone).
int64_t team_claim(Team* team, int64_t* local);

// f(lo, hi) over [0, n) in blocks of `block` elements claimed by up to `nt` threads, or at once on
// the caller when nt <= 1 or n is under `min_parallel`. For elementwise work, where the blocks
// change no bit of the result.
template <typename F>
void for_blocks(int nt, int64_t n, int64_t block, int64_t min_parallel, const F& f) {
  const int64_t blocks = (n + block - 1) / block;
  if (nt > blocks) nt = int(blocks);
  if (nt <= 1 || n < min_parallel) return f(int64_t(0), n);
  struct Job {
    int64_t n, block;
    const F* f;
  } job{n, block, &f};
  auto body = [](void* ctx, int, int, Team* team) {
    const Job& j = *static_cast<const Job*>(ctx);
    int64_t local = 0;
    for (int64_t b = team_claim(team, &local); b * j.block < j.n; b = team_claim(team, &local))
      (*j.f)(b * j.block, b * j.block + j.block < j.n ? b * j.block + j.block : j.n);
  };
  parallel_run(nt, body, &job);
}

// L1 data, L2 and L3 sizes in bytes (sysconf, then cpuid leaf 4, then 32 KiB / 512 KiB / 8 MiB).
// L2 and L3 are as seen by one core; read once.
struct CacheSizes {
  size_t l1d, l2, l3;
};
const CacheSizes& cache_sizes();

// This thread's scratch arena number `slot` (0 or 1), 64-byte aligned, at least `bytes` long.
// Allocated at the thread's first request (and again only if a later one asks for more, which
// the fixed GEMM block sizes make at most once per element type); freed when the thread exits.
// Never null: aborts when out of memory, because kernels cannot throw.
void* thread_arena(int slot, size_t bytes);

}  // namespace portgrad::kernels::cpu
