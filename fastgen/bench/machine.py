"""What the machine is doing while `fastgen bench` measures: other processes' CPU use, the load
average, a calibration loop, and the ceilings (memory-copy bandwidth, matmul FLOP/s) that the
`% roofline` column is measured against.

Other processes' CPU use is read from /proc/stat (whole machine) minus /proc/self/stat (this
process and its threads), so it covers exactly the interval a measurement ran in and does not
lag like the load average. Off Linux it is None and only the load average is used.
"""
import os
import statistics
import time

import torch

# A measurement group (the providers of one case, shape and mode, timed round-robin) during
# which other processes used more than this fraction of the machine's CPU time is `noisy`. The
# spread alone does not reveal a busy machine: with 2 torch threads on 2 cores, an OpenMP region
# waits at its barrier for whichever thread the scheduler took away, in steps of the 4 ms
# scheduler tick, and it does so every call. Measured on this project's 2-core EPYC with other
# jobs taking 48-67% of the CPU: add_noise eager fwd 24.07 ms (IQR 1%) while its fwd+bwd took
# 0.51 ms, vq_nearest eager 140 ms (IQR 5%), bias_act fwd+bwd eager 76 ms (IQR 8%; 0.26 ms in
# another run).
# 15% of the machine is 0.3 of a core here: a threshold chosen below that regime, not fitted.
OTHERS_BUSY_THRESHOLD = 0.15
# Warn at start when the 1-minute load average exceeds this many runnable tasks per core.
LOAD_PER_CORE_THRESHOLD = 0.5
# ... or when a fixed single-threaded loop's slowest of 7 runs is this much slower than its fastest.
CALIBRATION_SPREAD_THRESHOLD = 1.3


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _machine_ticks():
    """(total ticks, busy ticks) over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(ticks)
    return total, total - ticks[3] - ticks[4]


def _self_ticks():
    """User + system ticks of this process (all threads) and its waited-for children."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])  # utime stime cutime cstime


class OthersCpu:
    """Context manager: `.fraction` is the share of the machine's CPU time that other processes
    used while the block ran (None where /proc is unavailable)."""

    def __enter__(self):
        self.fraction = None
        try:
            self._start = (_machine_ticks(), _self_ticks())
        except (OSError, ValueError, IndexError):
            self._start = None
        return self

    def __exit__(self, *exc):
        if self._start is None:
            return False
        try:
            (total1, busy1), self1 = _machine_ticks(), _self_ticks()
        except (OSError, ValueError, IndexError):
            return False
        (total0, busy0), self0 = self._start
        if total1 - total0 >= 10:  # under ~50 ms of ticks the fraction is meaningless
            others = (busy1 - busy0) - (self1 - self0)
            self.fraction = min(1.0, max(0.0, others / (total1 - total0)))
        return False


def others_cpu_now(seconds=0.3):
    """Share of the machine's CPU other processes use over the next `seconds` (we sleep)."""
    with OthersCpu() as o:
        time.sleep(seconds)
    return o.fraction


def calibration_spread(repeats=7):
    """Slowest / fastest of `repeats` runs of a fixed ~5 ms single-threaded Python loop. On a
    quiet machine this is ~1.0-1.1; a scheduler that keeps taking the core away makes it jump."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = 0
        for i in range(100_000):
            s += i * i
        times.append(time.perf_counter() - t0)
    return max(times) / min(times)


def busy_report():
    """(facts dict, list of warning strings) about the machine right now."""
    facts = {"cores": cores(), "load_avg": load_average(), "others_cpu": others_cpu_now(),
             "calibration_spread": calibration_spread(), "threads": torch.get_num_threads()}
    warnings = []
    if facts["load_avg"] is not None and facts["load_avg"] > LOAD_PER_CORE_THRESHOLD * facts["cores"]:
        warnings.append(f"load average {facts['load_avg']:.2f} on {facts['cores']} cores")
    if facts["others_cpu"] is not None and facts["others_cpu"] > OTHERS_BUSY_THRESHOLD:
        warnings.append(f"other processes use {facts['others_cpu']:.0%} of the CPU")
    if facts["calibration_spread"] > CALIBRATION_SPREAD_THRESHOLD:
        warnings.append(f"a fixed calibration loop varied {facts['calibration_spread']:.2f}x between runs")
    return facts, warnings


def median_seconds(fn, device, repeats=5):
    """Median wall time of `fn` over `repeats` calls after one warm-up, synchronizing CUDA."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, nbytes=None):
    """Measured memory-copy bandwidth in bytes/s (read + write) of a buffer far larger than the
    caches: the ceiling for a memory-bound op on this device, measured in the same run."""
    nbytes = nbytes or (1 << 30 if device == "cuda" else 64 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / seconds


def matmul_flops(device, dtype=torch.float32, n=None):
    """Measured FLOP/s of an n x n matmul in `dtype`: the compute ceiling in the same run."""
    n = n or (8192 if device == "cuda" else 1024)
    if device == "cpu" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # CPU half matmuls are not the peak the ops are held to
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device)
    return 2 * n ** 3 / seconds
