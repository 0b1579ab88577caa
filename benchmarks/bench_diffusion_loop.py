"""A full DDIM sampling loop with a trivial model: fastgen.diffusion.sample (fused steps; on
CUDA one captured graph) vs the same loop over diffusers' DDIMScheduler (when installed).
Prints a table and appends rows to <out>/diffusion_loop.csv.

    python benchmarks/bench_diffusion_loop.py [--device cpu|cuda] [--steps 50] [--shape 4,4,64,64]
"""
import argparse
import csv
import os

import torch

import fastgen
from fastgen import diffusion
from fastgen._info import device_name
from fastgen.bench.machine import median_seconds


def trivial_model(x, t):
    # the cheapest model that still depends on x: the loop's own cost dominates
    return x * 0.1


def _time(fn, device, repeats):
    return median_seconds(fn, device, repeats) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--shape", default="4,4,64,64")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="benchmarks/results/local")
    args = p.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    device = args.device
    latents = torch.randn(shape, device=device)
    rows = []

    def ours(cuda_graph):
        return lambda: diffusion.sample(trivial_model, diffusion.DDIMScheduler(), shape, args.steps,
                                        latents=latents, device=device, cuda_graph=cuda_graph, progress=False)

    providers = {"fastgen.sample": ours(False)}
    if device == "cuda":
        providers["fastgen.sample+cuda_graph"] = ours(True)
    try:
        import diffusers

        def theirs():
            s = diffusers.DDIMScheduler()
            s.set_timesteps(args.steps, device=device)
            x = latents
            for t in s.timesteps:
                x = s.step(trivial_model(x, t), t, x).prev_sample
            return x
        providers["diffusers loop"] = theirs
    except ImportError:
        print("diffusers not installed: no peer")
    for name, fn in providers.items():
        rows.append({"provider": name, "ms": _time(fn, device, args.repeats)})
    base = next((r["ms"] for r in rows if r["provider"] == "diffusers loop"), None)
    print(f"DDIM {args.steps}-step loop, trivial model, shape {shape}, {device_name(device)}, "
          f"torch threads {torch.get_num_threads()}")
    for r in rows:
        r.update(device=device_name(device), shape="x".join(map(str, shape)), steps=args.steps,
                 speedup_vs_diffusers=(base / r["ms"]) if base else None, torch=torch.__version__,
                 fastgen=fastgen.__version__)
        ratio = f"{r['speedup_vs_diffusers']:.2f}x" if base else "-"
        print(f"  {r['provider']:<28} {r['ms']:9.3f} ms   vs diffusers {ratio}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "diffusion_loop.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
