"""How often the certified two-stage search (docs/vq_certified.md) needs its fallback, and how
many candidates stage 2 re-ranks: per grid shape on Gaussian data (a sample of rows: the
fractions do not depend on N), and optionally on a trained VQGAN's latents.

    python benchmarks/vq_certified_stats.py [--rows 4096] [--vqgan RUN_DIR] [--out DIR]

Runs the CPU kernel in both stage-1 modes ('bf16': at::mm in bf16 as AMX machines run it;
'bf16_emulated': fp32 products of bf16-rounded inputs), checks every result bit for bit against
the exact kernel, and writes stats.csv / stats.md to --out.
"""
import argparse
import csv
import os
import sys
import time

import torch

from fastgen.ops import vq_certified

GRID = [(k, d) for k in (512, 1024, 8192) for d in (8, 64, 256)] + [(16384, 256)]


def _stats(name, z, e, modes):
    exact = vq_certified.vq_nearest_search(z, e, "l2", "exact")
    rows = []
    for mode in modes:
        t = time.perf_counter()
        idx, dist, status = vq_certified.vq_nearest_search(z, e, "l2", mode)
        seconds = time.perf_counter() - t
        same = torch.equal(idx, exact[0]) and torch.equal(dist.view(torch.int32), exact[1].view(torch.int32))
        if not same:
            raise SystemExit(f"{name} {mode}: NOT bit-identical to the exact kernel")
        kept = status[status > 0].float()
        rows.append({"data": name, "N": z.shape[0], "K": e.shape[0], "D": z.shape[1], "mode": mode,
                     "fallback_fraction": float((status < 0).float().mean()),
                     "mean_candidates": float(kept.mean()) if kept.numel() else float("nan"),
                     "max_candidates": int(kept.max()) if kept.numel() else 0,
                     "bit_identical": same, "seconds": round(seconds, 3)})
        print(rows[-1], flush=True)
    return rows


def _vqgan_latents(run_dir, n_images=512):
    """The encoder's latents (rows of z before quantization) of held-out images, and the codebook."""
    from fastgen import data as fdata, train
    ckpts = sorted(f for f in os.listdir(run_dir) if f.endswith(".pt"))
    state = train.load_checkpoint(os.path.join(run_dir, ckpts[-1]), "vqgan")
    model = train.model_from_checkpoint(state, "cpu").eval()
    run = state["run_config"]
    x = fdata.make(run["data"], split="test", seed=run["seed"], **run["data_options"]).x[:n_images]
    with torch.no_grad():
        h = model.quant_conv(model.encoder(2 * x - 1))
    z = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]).contiguous()
    return z, model.quantize.embedding.weight.detach().contiguous()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--vqgan", default=None, help="a `fastgen train vqgan` run folder")
    p.add_argument("--modes", default="bf16_emulated,bf16")
    p.add_argument("--out", default="benchmarks/results/vq_certified")
    args = p.parse_args()
    modes = args.modes.split(",")
    g = torch.Generator().manual_seed(0)
    rows = []
    for k, d in GRID:
        z = torch.randn(args.rows, d, generator=g)
        e = torch.randn(k, d, generator=g)
        rows += _stats("gaussian", z, e, modes)
    if args.vqgan:
        z, e = _vqgan_latents(args.vqgan)
        rows += _stats("vqgan-latents", z, e, modes)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stats.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "stats.md"), "w") as f:
        f.write(f"# Certified search: fallback and candidates (CPU {vq_certified.cpu_bf16_isa()} bf16 ISA; "
                f"torch {torch.__version__})\n\n`python benchmarks/vq_certified_stats.py "
                f"{' '.join(sys.argv[1:])}`; every row bit-identical to the exact kernel.\n\n")
        f.write("| data | N | K | D | mode | rows that fell back | mean candidates | max |\n|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['data']} | {r['N']} | {r['K']} | {r['D']} | {r['mode']} | {r['fallback_fraction']:.4%} "
                    f"| {r['mean_candidates']:.2f} | {r['max_candidates']} |\n")


if __name__ == "__main__":
    main()
