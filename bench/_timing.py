"""How both benchmark suites (run.py, gpu.py) time a call: warm-up, then batches of back-to-back
calls on pool inputs (cycled, so no call sees the previous call's input), medians and mins."""
import time

import numpy as np

BATCH_S = 2e-3           # a batch is a run of back-to-back calls lasting about this long
TINY_CALL_S = 100e-6     # calls shorter than this get at least TINY_MIN_BATCHES batches
TINY_MIN_BATCHES = 31
SIDE_BY_SIDE_BATCH_S = 20e-3  # a turn of time_side_by_side: long against the switch between peers
SIDE_BY_SIDE_SETTLE_S = 15e-3  # and a pause before each turn


def time_calls(fn, pool, repeat, min_time, warmup_s, *, min_warmup_calls=2, max_batches=2000, smoke=False):
    """Median and min of the per-call time over batches of back-to-back calls. Warm-up: at least
    min_warmup_calls calls and at least warmup_s of calls. smoke: as few calls as possible (2 warm-up
    calls, `repeat` single calls), for the GPU emulator."""
    P = len(pool)
    t_start = time.perf_counter_ns()
    calls = 0
    while calls < (2 if smoke else min_warmup_calls) or (time.perf_counter_ns() - t_start) < warmup_s * 1e9:
        fn(pool[calls % P])
        calls += 1
    per_call = (time.perf_counter_ns() - t_start) / calls / 1e9
    n = 1 if smoke else max(1, int(round(BATCH_S / max(per_call, 1e-9))))
    want = max(repeat, TINY_MIN_BATCHES) if per_call < TINY_CALL_S and not smoke else repeat
    per_batch = []
    offset = 0
    t_begin = time.perf_counter_ns()
    while len(per_batch) < want or ((time.perf_counter_ns() - t_begin) < min_time * 1e9
                                    and len(per_batch) < max_batches):
        seq = [pool[(offset + i) % P] for i in range(n)]
        offset += n
        t0 = time.perf_counter_ns()
        for x in seq:
            fn(x)
        t1 = time.perf_counter_ns()
        per_batch.append((t1 - t0) / n / 1e9)
    return {"median_s": float(np.median(per_batch)), "min_s": float(np.min(per_batch)),
            "calls_per_batch": n, "batches": len(per_batch), "warmup_calls": calls}


def time_side_by_side(fns, repeat, min_time, warmup_s, *, smoke=False):
    """{name: median per-call seconds} for {name: (fn, pool)}, with the peers' batches interleaved
    (a batch of each in turn, round after round): on a machine whose speed drifts over seconds (a
    shared cloud host), each peer then sees the same drift and the ratios stay honest. Each turn
    starts with a pause (the previous peer's threads may still spin: PyTorch's OpenMP workers burn
    ~10 ms of CPU after a call) and one untimed call (its data fill the caches), then times at
    least SIDE_BY_SIDE_BATCH_S of calls."""
    plan = {}
    for name, (fn, pool) in fns.items():
        warm = time_calls(fn, pool, 1, 0.0, warmup_s, smoke=smoke)
        per_call = warm["median_s"]
        n = 1 if smoke else max(1, int(round(SIDE_BY_SIDE_BATCH_S / max(per_call, 1e-9))))
        plan[name] = (fn, pool, n, [])
    t_begin = time.perf_counter_ns()
    offset = 0
    while True:
        for fn, pool, n, per_batch in plan.values():
            seq = [pool[(offset + i) % len(pool)] for i in range(n)]
            if not smoke:  # the previous peer's threads park (PyTorch's OpenMP spins ~10 ms after a call)
                time.sleep(SIDE_BY_SIDE_SETTLE_S)
                fn(seq[-1])
            t0 = time.perf_counter_ns()
            for x in seq:
                fn(x)
            per_batch.append((time.perf_counter_ns() - t0) / n / 1e9)
        offset += 1
        rounds = len(next(iter(plan.values()))[3])
        if rounds >= repeat and (smoke or (time.perf_counter_ns() - t_begin) >= min_time * 1e9 * len(plan)):
            break
    return {name: float(np.median(p[3])) for name, p in plan.items()}
