"""CPU work of the flow ops and of a whole Glow training step, fastgen vs eager, measured as
process CPU time (time.process_time) as well as wall time: on a shared machine the wall clock
also counts the time other processes hold the cores, the CPU time only this process's work.

    python benchmarks/flows_cpu_time.py [--threads 1] [--repeats 7]
"""
import argparse
import statistics
import time

import torch

import fastgen
from fastgen.models import DataSpec, get_model
from fastgen.ops import reference


def measure(fn, repeats):
    for _ in range(2):
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3


def fwd_bwd(fn, inputs, grads):
    def run():
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.grad(outs, [t for t in inputs if t.requires_grad], grads[:len(outs)])
    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []

    x, t, r = (torch.randn(64, 32, 32, 32, requires_grad=True) for _ in range(3))
    g = (torch.randn(64, 32, 32, 32), torch.randn(64))
    for name, fn in (("eager", lambda a, b, c: reference.affine_coupling(a, b, c, "sigmoid")),
                     ("fastgen-cpu", lambda a, b, c: fastgen.ops.affine_coupling(a, b, c, "sigmoid", backend="cpu"))):
        rows.append(("affine_coupling fwd+bwd 64x32x32x32 sigmoid", name, *measure(fwd_bwd(fn, (x, t, r), g), args.repeats)))

    x = torch.randn(64, 64, 32, 32, requires_grad=True)
    loc, ls = torch.randn(64, requires_grad=True), (0.1 * torch.randn(64)).requires_grad_()
    g = (torch.randn(64, 64, 32, 32), torch.randn(64))
    for name, fn in (("eager", reference.actnorm),
                     ("fastgen-cpu", lambda a, b, c: fastgen.ops.actnorm(a, b, c, backend="cpu"))):
        rows.append(("actnorm fwd+bwd 64x64x32x32", name, *measure(fwd_bwd(fn, (x, loc, ls), g), args.repeats)))

    z, ld = torch.randn(64, 3, 64, 64, requires_grad=True), torch.randn(64, requires_grad=True)
    g = (torch.randn(64),)
    for name, fn in (("eager", lambda a, b: reference.flow_nll(a, b, "gaussian", 256)),
                     ("fastgen-cpu", lambda a, b: fastgen.ops.flow_nll(a, b, "gaussian", 256, backend="cpu"))):
        rows.append(("flow_nll fwd+bwd 64x3x64x64 bpd", name, *measure(fwd_bwd(fn, (z, ld), g), args.repeats)))

    # a whole Glow training step on 16x16 shapes: the same model on the reference ops vs fastgen's
    model = get_model("glow")(DataSpec("shapes", "image", (3, 16, 16), 4), hidden=64, steps=4)
    batch = torch.rand(32, 3, 16, 16)
    model(batch)  # ActNorm init outside the timing
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for name, backend in (("eager", "reference"), ("fastgen-cpu", "cpu")):
        with fastgen.use_backend(backend):
            rows.append(("glow training step 32x3x16x16 (2 levels x 4 steps)", name, *measure(step, args.repeats)))

    print(f"threads={args.threads} torch={torch.__version__} simd={fastgen._ext.CPU_SIMD}")
    print(f"{'case':<52} {'provider':<12} {'cpu ms':>9} {'wall ms':>9} {'cpu speedup':>12}")
    base = {}
    for case, name, cpu, wall in rows:
        base.setdefault(case, cpu)
        print(f"{case:<52} {name:<12} {cpu:9.2f} {wall:9.2f} {base[case] / cpu:11.2f}x")


if __name__ == "__main__":
    main()
