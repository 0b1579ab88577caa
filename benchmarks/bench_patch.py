"""fastgen.patch on users' own models: unpatched vs patched, side by side in one run (the two
alternate, median of the repeats), ratio = unpatched time / patched time.

    python benchmarks/bench_patch.py [--reps 3] [--only vq,rvq,ddim,ddim_gn,torch] [--threads N]
                                     [--out benchmarks/results/patch]

Cases (CPU, fp32):
- vq:    vector-quantize-pytorch VectorQuantize training step (forward + backward), B = 8 x 1024
         tokens, dim 256, codebook 8192 (EMA codebook, rotation trick: the library's defaults)
- rvq:   ResidualVQ, 4 quantizers, same tokens and dim, codebook 1024, training step
- ddim:  diffusers DDIMPipeline with a small UNet2DModel, 50 steps, batch 4 (patch.diffusers defaults;
         ddim_gn: with the opt-in fused resnet GroupNorm+SiLU)
- torch: a torch model with nn.MultiheadAttention + GroupNorm/SiLU blocks, training step
The machine's load average is recorded before and after: other jobs share this CPU.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

import fastgen
import fastgen.patch


def _load():
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def _time(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def side_by_side(unpatched, patched, reps, before=None, after=None):
    """Alternate the two (one warm-up each), return the medians in seconds."""
    times = {"unpatched": [], "patched": []}
    for i in range(reps + 1):
        for name, fn, hook in (("unpatched", unpatched, before), ("patched", patched, after)):
            if hook:
                hook()
            t = _time(fn)
            if i:  # the first round warms up
                times[name].append(t)
    if before:
        before()
    return {k: statistics.median(v) for k, v in times.items()}, times


def case_vq(reps, residual=False):
    import vector_quantize_pytorch as vqp

    torch.manual_seed(0)
    if residual:
        ref = vqp.ResidualVQ(dim=256, num_quantizers=4, codebook_size=1024)
    else:
        ref = vqp.VectorQuantize(dim=256, codebook_size=8192)
    pat = copy.deepcopy(ref)
    ref.train()
    pat.train()
    x = torch.randn(8, 1024, 256)

    def step(module):
        xi = x.clone().requires_grad_()
        out = module(xi)
        (out[0].square().mean() + out[2].sum()).backward()

    off = lambda: fastgen.patch.vector_quantize_pytorch(enable=False)  # noqa: E731
    on = lambda: fastgen.patch.vector_quantize_pytorch(enable=True)  # noqa: E731
    return side_by_side(lambda: step(ref), lambda: step(pat), reps, before=off, after=on)


def case_ddim(reps, **patch_options):
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(32, 64), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    ref = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    pat = diffusers.DDIMPipeline(unet=copy.deepcopy(unet), scheduler=diffusers.DDIMScheduler())
    print(fastgen.patch.diffusers(pat, **patch_options), file=sys.stderr)
    for p in (ref, pat):
        p.set_progress_bar_config(disable=True)

    def run(p):
        with torch.no_grad():
            p(batch_size=4, num_inference_steps=50, generator=torch.Generator().manual_seed(0), output_type="np")

    return side_by_side(lambda: run(ref), lambda: run(pat), reps)


class _TorchModel(nn.Module):
    """Conv + GroupNorm + SiLU blocks, then self-attention over the pixels (batch_first,
    need_weights=False, as a user who does not need the weights writes it)."""

    def __init__(self, ch=64, heads=4):
        super().__init__()
        block = lambda: nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.GroupNorm(8, ch), nn.SiLU())  # noqa: E731
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.blocks = nn.Sequential(block(), block(), block())
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)
        self.out = nn.Conv2d(ch, 3, 1)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        b, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.out(t.transpose(1, 2).reshape(b, c, hh, ww))


def case_torch(reps):
    torch.manual_seed(0)
    ref = _TorchModel()
    pat = copy.deepcopy(ref)
    print(fastgen.patch.modules(pat), file=sys.stderr)
    x = torch.randn(8, 3, 32, 32)

    def step(m):
        m(x).square().mean().backward()

    return side_by_side(lambda: step(ref), lambda: step(pat), reps)


CASES = {
    "vq": ("VectorQuantize train step, 8x1024 tokens, dim 256, codebook 8192", lambda r: case_vq(r)),
    "rvq": ("ResidualVQ x4 train step, 8x1024 tokens, dim 256, codebook 1024", lambda r: case_vq(r, residual=True)),
    "ddim": ("DDIMPipeline, small UNet2DModel (32x32, 32/64 ch), 50 steps, batch 4; patch.diffusers defaults "
             "(scheduler)", case_ddim),
    "ddim_gn": ("same, with the opt-in resnet_group_norm_silu=True", lambda r: case_ddim(r, resnet_group_norm_silu=True)),
    "torch": ("torch model: 3 x (conv+GroupNorm+SiLU) + MultiheadAttention, 8x3x32x32, train step", case_torch),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--out", default="benchmarks/results/patch")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; 1 is steadier on a shared CPU)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"--only: unknown cases {unknown}; known: {list(CASES)}")
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    rows = []
    for name in names:
        what, fn = CASES[name]
        load_before = _load()
        medians, times = fn(args.reps)
        load_after = _load()
        row = dict(case=name, what=what, unpatched_s=medians["unpatched"], patched_s=medians["patched"],
                   ratio=medians["unpatched"] / medians["patched"], times=times,
                   load_before=load_before, load_after=load_after)
        rows.append(row)
        print(f"{name:6s} unpatched {row['unpatched_s']:.3f}s  patched {row['patched_s']:.3f}s  "
              f"ratio {row['ratio']:.2f}x  (load {load_before[0]:.1f} -> {load_after[0]:.1f})  {what}", flush=True)
    meta = dict(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
                reps=args.reps, note="ratio = unpatched / patched median time; the CPU is shared with other jobs "
                                     "(load average recorded per case)")
    for pkg in ("diffusers", "vector_quantize_pytorch"):
        try:
            import importlib.metadata as md
            meta[pkg] = md.version(pkg.replace("_", "-"))
        except Exception:  # noqa: BLE001 - optional packages
            meta[pkg] = None
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"bench_patch_{torch.get_num_threads()}threads.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
