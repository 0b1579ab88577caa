"""CPU work of the flow ops and of a whole Glow training step, fastgen vs eager, measured as
process CPU time (time.process_time) as well as wall time: on a shared machine the wall clock
also counts the time other processes hold the cores, the CPU time only this process's work.

The Glow step runs four ways, interleaved round by round so drifts in machine speed hit all
alike (the table gives medians and the speedup column is against "eager"):
  eager        the same model with the flow ops replaced by their plain-PyTorch reference
               formulas (fastgen/ops/reference/flow.py), differentiated by autograd: what the model
               costs without fastgen;
  reference    the fastgen ops on their "reference" backend (`fastgen.use_backend("reference")`):
               the same formulas behind the op machinery (custom op, registered backward);
  fastgen-cpu  the fused C++ kernels;
  floor        the flow ops replaced by one cheap element-wise op each (wrong math, same
               graph shape): what the rest of the step (conditioner convs, Adam, data,
               squeeze/split glue) costs, i.e. the time no flow-op fusion can remove.

    python benchmarks/flows_cpu_time.py [--threads 1] [--repeats 7] [--size 16]
    python benchmarks/flows_cpu_time.py --device cuda   # the Glow step only, wall clock (synchronized),
                                                        # fastgen on its triton and cuda backends
"""
import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch

import fastgen
from fastgen.models import DataSpec, get_model
from fastgen.ops import reference

FLOW_OPS = ("actnorm", "affine_coupling", "flow_nll", "invertible_conv1x1")


@contextlib.contextmanager
def _replace_flow_ops(table):
    """fastgen.ops.<name> -> table[name] for the flow ops (the modules look them up per call)."""
    with contextlib.ExitStack() as stack:
        for name in FLOW_OPS:
            stack.enter_context(mock.patch.object(fastgen.ops, name, table[name]))
        yield


def _per_channel(v, x):
    return v.view((1, -1) + (1,) * (x.dim() - 2))


# one element-wise op per flow op, outputs shaped as the real ones; a zero logdet that still
# depends on the parameters, so autograd visits them as it would
_FLOOR = {
    "actnorm": lambda x, loc, ls, inverse=False: (x + _per_channel(loc + ls, x), (loc + ls).sum().expand(x.shape[0])),
    "affine_coupling": lambda x, t, r, *a, **k: (x + t + r, x.new_zeros(x.shape[0])),
    "flow_nll": lambda z, ld, *a, **k: z.flatten(1).sum(1) + ld,
    "invertible_conv1x1": lambda x, perm, lo, up, sign, ls, inverse=False: (
        x + _per_channel(ls + lo[0] + up[0], x), ls.sum().expand(x.shape[0])),
}


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
    ap.add_argument("--size", type=int, default=16, help="Glow step image size (16: 2 levels, 32: 3)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    if args.device == "cpu":
        op_rows(args, rows)
    glow_rows(args, rows)

    print(f"device={args.device} threads={args.threads} torch={torch.__version__} simd={fastgen._ext.CPU_SIMD}")
    print(f"{'case':<52} {'provider':<14} {'cpu ms':>9} {'wall ms':>9} {'speedup':>9}")
    base = {}
    for case, name, cpu, wall in rows:
        # CPU: process-time speedup; CUDA: the host's CPU time says little, wall time is the one
        key = cpu if args.device == "cpu" else wall
        base.setdefault(case, key)
        print(f"{case:<52} {name:<14} {cpu:9.2f} {wall:9.2f} {base[case] / key:8.2f}x")


def op_rows(args, rows):

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

    from fastgen.nn import InvConv2dLU
    for shape in ((32, 12, 8, 8), (64, 48, 16, 16)):
        layer = InvConv2dLU(shape[1])
        inv = (layer.perm, layer.lower, layer.upper, layer.sign, layer.log_s)
        x = torch.randn(shape, requires_grad=True)
        g = (torch.randn(shape), torch.randn(shape[0]))
        for name, fn in (("eager", reference.invertible_conv1x1),
                         ("fastgen-cpu", lambda a, *p: fastgen.ops.invertible_conv1x1(a, *p, backend="cpu"))):
            rows.append((f"invertible_conv1x1 fwd+bwd {'x'.join(map(str, shape))}", name,
                         *measure(fwd_bwd(fn, (x, *inv), g), args.repeats)))

    z, ld = torch.randn(64, 3, 64, 64, requires_grad=True), torch.randn(64, requires_grad=True)
    g = (torch.randn(64),)
    for name, fn in (("eager", lambda a, b: reference.flow_nll(a, b, "gaussian", 256)),
                     ("fastgen-cpu", lambda a, b: fastgen.ops.flow_nll(a, b, "gaussian", 256, backend="cpu"))):
        rows.append(("flow_nll fwd+bwd 64x3x64x64 bpd", name, *measure(fwd_bwd(fn, (z, ld), g), args.repeats)))



def glow_rows(args, rows):
    """A whole Glow training step on shapes images: the same model four ways (see the docstring)."""
    size, device = args.size, torch.device(args.device)
    model = get_model("glow")(DataSpec("shapes", "image", (3, size, size), 4), hidden=64, steps=4).to(device)
    batch = torch.rand(32, 3, size, size, device=device)
    model(batch)  # ActNorm init outside the timing
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    variants = {
        "eager": lambda: _replace_flow_ops({n: getattr(reference, n) for n in FLOW_OPS}),
        "reference": lambda: fastgen.use_backend("reference"),
    }
    for backend in (("cpu",) if device.type == "cpu" else ("triton", "cuda")):
        variants[f"fastgen-{backend}"] = lambda b=backend: fastgen.use_backend(b)
    variants["floor"] = lambda: _replace_flow_ops(_FLOOR)
    times = {name: ([], []) for name in variants}
    for name, ctx in variants.items():  # warm-up
        with ctx():
            step()
            step()
    for _ in range(args.repeats):
        for name, ctx in variants.items():
            with ctx():
                sync()
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(3):
                    step()
                sync()
                times[name][0].append((time.process_time() - c0) / 3)
                times[name][1].append((time.perf_counter() - w0) / 3)
    levels = 2 if size <= 16 else 3
    case = f"glow training step 32x3x{size}x{size} ({levels} levels x 4 steps)"
    for name, (cpu, wall) in times.items():
        rows.append((case, name, statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3))


if __name__ == "__main__":
    main()
