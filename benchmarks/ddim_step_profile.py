"""Where a DDIM step's microseconds go (issue 19, item 8): one `DDIMScheduler.step` at
(4, 4, 64, 64) against one memory pass (`clone`), the bare fused op, and diffusers' step; the
per-step cost of a 50-step `fastgen.diffusion.sample` loop with a trivial model against the same
loop over diffusers; and a cProfile of fastgen's step (the Python frames that remain).
Timed like `fastgen bench`: round-robin Timer blocks, median and IQR, and the share of the CPU
other processes took meanwhile (over 15%: the numbers are not to be kept).

    python benchmarks/ddim_step_profile.py [--threads N] [--steps 50]
"""
import argparse
import cProfile
import io
import pstats

import torch

from fastgen import diffusion
from fastgen.bench import machine, timing


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--shape", default="4,4,64,64")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)

    ours = diffusion.DDIMScheduler()
    ours.set_timesteps(args.steps)
    t = ours.timesteps[10]
    ac, acp = ours._device_tables("cpu")
    calls = {
        "clone (one memory pass)": lambda: x.clone(),
        "torch.ops.fastgen.ddim_step (bare op)": lambda: torch.ops.fastgen.ddim_step(
            eps, x, torch.empty(0), t, ac, acp, torch.empty(0), torch.empty(0)),
        "fastgen DDIMScheduler.step": lambda: ours.step(eps, t, x, return_dict=False),
    }
    try:
        import diffusers

        theirs = diffusers.DDIMScheduler()
        theirs.set_timesteps(args.steps)
        calls["diffusers DDIMScheduler.step"] = lambda: theirs.step(eps, theirs.timesteps[10], x, return_dict=False)
    except ImportError:
        theirs = None

    def trivial_model(sample, timestep):
        return sample * 0.1

    latents = torch.randn(shape, generator=g)
    loops = {"fastgen.diffusion.sample": lambda: diffusion.sample(
        trivial_model, diffusion.DDIMScheduler(), shape, args.steps, latents=latents, device="cpu",
        cuda_graph=False, progress=False)}
    if theirs is not None:
        def diffusers_loop():
            s = diffusers.DDIMScheduler()
            s.set_timesteps(args.steps)
            sample = latents
            for step_t in s.timesteps:
                sample = s.step(trivial_model(sample, step_t), step_t, sample).prev_sample
            return sample
        loops["diffusers loop"] = diffusers_loop
    loops["model alone x steps"] = lambda: [trivial_model(latents, 0) for _ in range(args.steps)]

    print(f"shape {shape}, torch threads {torch.get_num_threads()}, load average {machine.load_average():.2f}")
    for title, group, per in (("one step", calls, 1), (f"{args.steps}-step loop, per step", loops, args.steps)):
        with machine.OthersCpu() as others:
            stats = timing.time_cpu_group(group, budget_s=2.0)
        busy = "n/a" if others.fraction is None else f"{others.fraction:.0%}"
        print(f"\n{title} (other processes took {busy} of the CPU meanwhile)")
        for name, s in stats.items():
            print(f"  {name:<40} {1e3 * s['time_ms'] / per:9.1f} us   IQR {s['iqr_pct']:4.0f}%")

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        ours.step(eps, t, x, return_dict=False)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    print("\ncProfile of 2000 fastgen DDIMScheduler.step calls (tottime; profiler overhead inflates Python frames):")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:3000])


if __name__ == "__main__":
    main()
