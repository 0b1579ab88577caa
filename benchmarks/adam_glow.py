"""Glow training step with the for-loop Adam (torch's default on CPU before fastgen.train.adam)
against fastgen.train.adam (fused where torch supports the device, else foreach): step time
side by side in one process (interleaved rounds, median), and the loss curves of the same
short run (same initial weights, same batches) with each optimizer.

    python benchmarks/adam_glow.py [--steps 60] [--rounds 7] [--device cpu]
"""
import argparse
import copy
import statistics
import time

import torch

from fastgen import data as fdata
from fastgen.models import DataSpec, get_model
from fastgen.train import adam


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="steps of the loss-curve run")
    p.add_argument("--rounds", type=int, default=7, help="timing rounds (each: 20 steps per optimizer)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    holdout = fdata.make("shapes", split="test", seed=0, size=16, n=256)
    base = get_model("glow")(DataSpec.of(holdout)).to(a.device)
    n_tensors = sum(1 for _ in base.parameters())
    stream = fdata.stream("shapes", 32, seed=0, size=16, n=256)
    batches = [tuple(t.to(a.device) for t in next(stream)) for _ in range(max(a.steps, 20))]
    makers = {"for-loop": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False),
              "fastgen.train.adam": lambda ps: adam(ps, 1e-3)}
    runs = {}
    for name, make in makers.items():
        model = copy.deepcopy(base)
        opt = make(model.parameters())
        runs[name] = (model, opt)

    def step(model, opt, x, y):
        loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    # loss curves: same weights, same batches
    curves = {}
    for name, (model, opt) in runs.items():
        torch.manual_seed(1)
        curves[name] = [step(model, opt, *batches[i]) for i in range(a.steps)]
    # step time and optimizer.step() time, interleaved
    times = {n: [] for n in runs}
    opt_times = {n: [] for n in runs}
    for _ in range(a.rounds):
        for name, (model, opt) in runs.items():
            t0 = time.perf_counter()
            for i in range(20):
                step(model, opt, *batches[i])
            times[name].append((time.perf_counter() - t0) / 20)
            t0 = time.perf_counter()
            for _ in range(20):
                opt.step()  # the gradients of the last step, again: the optimizer alone
            opt_times[name].append((time.perf_counter() - t0) / 20)
    print(f"glow on shapes 16x16, batch 32, {n_tensors} parameter tensors, device {a.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"adam kind: {'fused' if runs['fastgen.train.adam'][1].defaults.get('fused') else 'foreach'}")
    for name in runs:
        print(f"{name:20s} step {1e3 * statistics.median(times[name]):7.2f} ms   "
              f"optimizer.step {1e3 * statistics.median(opt_times[name]):6.3f} ms")
    old, new = curves["for-loop"], curves["fastgen.train.adam"]
    diff = max(abs(x - y) for x, y in zip(old, new))
    print(f"loss curves over {a.steps} steps: max |old - new| = {diff:.3g}; "
          f"first {old[0]:.5f} / {new[0]:.5f}, last {old[-1]:.5f} / {new[-1]:.5f}")
    for i in range(0, a.steps, max(1, a.steps // 6)):
        print(f"  step {i + 1:3d}: {old[i]:.6f}  {new[i]:.6f}")


if __name__ == "__main__":
    main()
