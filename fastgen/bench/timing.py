"""Timing the providers of one (case, shape, mode) group, side by side.

CPU: `torch.utils.benchmark.Timer` per provider (it pins torch's intra-op thread count for the
measurement and returns a `Measurement`). Each provider is calibrated to a block of calls of
about BLOCK_S, then the providers are timed ROUND-ROBIN, one block each per round, for at least
MIN_ROUNDS rounds and about GROUP_BUDGET_S: a burst of load from another process then hits every
provider of the group alike instead of one of them, and the per-block times give each provider a
median and an interquartile range (IQR). This is `blocked_autorange`'s method (blocks of
calls, median of blocks), interleaved across providers; `blocked_autorange` itself times one
statement to completion before the next, so a burst of load lands on whichever ran then.

GPU: one method for every provider of a group. `do_bench_cudagraph` (CUDA graph replay: device
time, no launch overhead) when any provider's first estimate is under CUDAGRAPH_BELOW_MS, else
`triton.testing.do_bench` (quantiles 25/50/75 over its repeats). Deciding per provider made the
first H200 table compare graph-replayed rows with host-bound ones: eager ddim_step at 4x4x64x64
"took" 334 us (its Python and five launches, timed by do_bench) against 1.6 us for torch.compile
(replayed), and a slow Python wrapper hid the same way. A provider that cannot be captured (a
host sync) falls back to do_bench, and its timer says so. Providers are again visited
round-robin.
"""
import statistics
import time

import torch
from torch.utils.benchmark import Measurement, Timer
from torch.utils.benchmark.utils.common import set_torch_threads

BLOCK_S = 0.01          # calls per block: about 10 ms of work (1 call for slower ops)
MIN_ROUNDS = 7          # the IQR of fewer than ~7 blocks says little
MAX_ROUNDS = 40
GROUP_BUDGET_S = 1.0    # per group, all providers together (after MIN_ROUNDS)
QUICK_GROUP_BUDGET_S = 0.5
# On a busy machine a call calibrated at 20 us can take 4-12 ms (a preempted OpenMP thread), so
# a block planned at 10 ms took seconds and a --quick run 4-12 minutes. A block that overruns
# BLOCK_OVERRUN x its plan shrinks for the next rounds, and a group stops after
# max(HARD_CAP_X * budget, 2 s) with at least MIN_ROUNDS_CAPPED rounds (such a row has fewer
# samples and is in any case flagged noisy by the busy-machine check).
BLOCK_OVERRUN = 4.0
HARD_CAP_X = 4.0
MIN_ROUNDS_CAPPED = 3
CUDAGRAPH_BELOW_MS = 0.1


def _quartiles(times):
    if len(times) == 1:
        return times[0], times[0], times[0]
    q = statistics.quantiles(times, n=4, method="inclusive")
    return q[0], statistics.median(times), q[2]


def _stats(times_s, number, timer_name, measurement=None):
    q25, med, q75 = _quartiles(sorted(times_s))
    if measurement is not None:  # torch's own median of the blocks (the same number)
        med = measurement.median
    return {"time_ms": med * 1e3, "q25_ms": q25 * 1e3, "q75_ms": q75 * 1e3,
            "iqr_pct": 100 * (q75 - q25) / med if med > 0 else 0.0,
            "samples": len(times_s), "calls_per_sample": number, "timer": timer_name}


def _block(timer, number):
    """Seconds for `number` calls. Timer.timeit(n) first runs max(n // 100, 2) warm-up calls,
    which would triple the cost of every 1-call block of a slow op; the providers are warmed up
    once before the rounds instead, so the rounds use the Timer's un-warmed inner loop."""
    inner = getattr(timer, "_timeit", None)
    return inner(number) if inner is not None else timer.timeit(number).raw_times[0]


def time_cpu_group(calls, *, threads=None, budget_s=GROUP_BUDGET_S, block_s=BLOCK_S,
                   min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS):
    """{name: stats} for {name: callable()}: medians and quartiles in ms of per-call time, from
    blocks of calls timed round-robin across the providers."""
    threads = threads or torch.get_num_threads()
    with set_torch_threads(threads):
        return _time_cpu_group(calls, threads, budget_s, block_s, min_rounds, max_rounds)


def _time_cpu_group(calls, threads, budget_s, block_s, min_rounds, max_rounds):
    timers = {name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=name)
              for name, fn in calls.items()}
    number = {}
    for name, timer in timers.items():  # warm-up, then calls per block from the median of 3
        timer.timeit(1)
        one = sorted(_block(timer, 1) for _ in range(3))[1]
        n = max(1, min(100_000, int(block_s / max(one, 1e-7))))
        probe = min(n, 10)  # a short block checks the estimate before a long one trusts it
        per_call = _block(timer, probe) / probe
        number[name] = max(1, min(n, int(block_s / max(per_call, 1e-7))))
    per_call = {name: [] for name in timers}  # per-call time of each block
    used = {name: number[name] for name in timers}
    names = list(timers)
    start = time.perf_counter()
    hard_cap = max(HARD_CAP_X * budget_s, 2.0)
    for r in range(max_rounds):
        # rotate the order each round: no provider always runs right after the same neighbour
        for name in names[r % len(names):] + names[:r % len(names)]:
            block = _block(timers[name], number[name])
            per_call[name].append(block / number[name])
            used[name] = number[name]
            if block > BLOCK_OVERRUN * block_s and number[name] > 1:  # calibrated in a quiet moment
                number[name] = max(1, int(number[name] * block_s / block))
        elapsed = time.perf_counter() - start
        if r + 1 >= min_rounds and elapsed >= budget_s:
            break
        if r + 1 >= min(min_rounds, MIN_ROUNDS_CAPPED) and elapsed >= hard_cap:
            break
    out = {}
    for name, timer in timers.items():
        # blocks may differ in length after an overrun: the Measurement holds per-call times
        m = Measurement(number_per_run=1, raw_times=per_call[name], task_spec=timer._task_spec)
        out[name] = _stats(m.times, used[name], "torch.utils.benchmark.Timer round-robin", m)
    return out


def time_gpu_group(calls, *, rounds=3, testing=None):
    """{name: stats} on CUDA: do_bench quartiles, or do_bench_cudagraph for microsecond ops;
    `rounds` round-robin passes, each provider's quartiles from its pass with the median median
    (do_bench already repeats internally; the passes interleave providers in time)."""
    if testing is None:
        import triton.testing as testing
    estimate = {name: testing.do_bench(fn, warmup=5, rep=20, return_mode="median") for name, fn in calls.items()}
    graphs = min(estimate.values(), default=0.0) < CUDAGRAPH_BELOW_MS  # the whole group, or none of it
    passes = {name: [] for name in calls}
    how = {}
    for _ in range(rounds):
        for name, fn in calls.items():
            q = None
            if graphs:
                try:
                    q = testing.do_bench_cudagraph(fn, rep=50, quantiles=[0.25, 0.5, 0.75])
                    how[name] = "triton do_bench_cudagraph"
                except Exception as exc:  # e.g. a provider that syncs the host: not capturable
                    how[name] = f"triton do_bench (CUDA graph capture failed: {type(exc).__name__})"
            if q is None:
                q = testing.do_bench(fn, warmup=10, rep=100, quantiles=[0.25, 0.5, 0.75])
                how.setdefault(name, "triton do_bench")
            passes[name].append(tuple(float(x) for x in q))
    out = {}
    for name, qs in passes.items():
        q25, med, q75 = sorted(qs, key=lambda q: q[1])[len(qs) // 2]
        out[name] = {"time_ms": med, "q25_ms": q25, "q75_ms": q75,
                     "iqr_pct": 100 * (q75 - q25) / med if med > 0 else 0.0,
                     "samples": len(qs), "calls_per_sample": None, "timer": how[name]}
    return out
