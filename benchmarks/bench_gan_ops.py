"""CPU timings of bias_act, group_norm_silu and info_nce_loss vs their eager PyTorch
equivalents (the `fastgen bench` cases), robust to a shared machine: providers are interleaved
round by round, each round times a batch of calls, and the table reports the median over rounds
of wall time per call and of process CPU time per call (CPU time counts only this process's
work, so other tenants' load affects it much less than wall time).

    python benchmarks/bench_gan_ops.py [--rounds 7] [--op bias_act,group_norm_silu,info_nce_loss]
"""
import argparse
import statistics
import time

import torch

import fastgen
from fastgen.bench import cases  # noqa: F401  (registers the cases)
from fastgen.bench.harness import CASES, _fixed_grad_outputs, _returning_tuple, _step


def measure(fn, calls):
    w, c = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - w) / calls * 1e3, (time.process_time() - c) / calls * 1e3


def run(op, rounds):
    case = CASES[op]
    rows = []
    for shape in case.shapes:
        for mode in case.modes:
            inputs = case.make_inputs(shape, torch.float32, "cpu", requires_grad=(mode == "fwd+bwd"))
            providers = {"eager": _returning_tuple(case.reference),
                         "fastgen-cpu": _returning_tuple(lambda **kw: case.fastgen("cpu", **kw))}
            grads = _fixed_grad_outputs(providers["eager"](**inputs), "cpu") if mode == "fwd+bwd" else ()
            calls = {}
            for name, fn in providers.items():
                step = lambda fn=fn: _step(fn, inputs, mode, case.grad_inputs, grads)  # noqa: E731
                step()
                t0 = time.perf_counter()
                step()
                calls[name] = (step, max(1, int(0.3 / max(1e-4, time.perf_counter() - t0))))
            times = {name: [] for name in providers}
            for _ in range(rounds):
                for name, (step, n) in calls.items():
                    times[name].append(measure(step, n))
            wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
            cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
            rows.append((op, mode, "x".join(map(str, shape)), wall, cpu))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--op", default="bias_act,group_norm_silu,info_nce_loss")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fastgen CPU SIMD "
          f"{fastgen._ext.CPU_SIMD}")
    print(f"{'op':<16} {'mode':<8} {'shape':<14} {'eager ms':>10} {'fastgen ms':>11} {'wall x':>7} "
          f"{'eager cpu':>10} {'fastgen cpu':>12} {'cpu x':>6}")
    for op in a.op.split(","):
        for op_, mode, shape, wall, cpu in run(op, a.rounds):
            print(f"{op_:<16} {mode:<8} {shape:<14} {wall['eager']:>10.3f} {wall['fastgen-cpu']:>11.3f} "
                  f"{wall['eager'] / wall['fastgen-cpu']:>6.2f}x {cpu['eager']:>10.3f} "
                  f"{cpu['fastgen-cpu']:>12.3f} {cpu['eager'] / cpu['fastgen-cpu']:>5.2f}x", flush=True)
