"""The shape of the DDIM paper's Table 1 on a 2D toy: sample quality against the number of
sampling steps for DDIM (eta = 0, 0.5, 1) and DDPM, on one trained `ddpm` checkpoint.

    python benchmarks/ddim_table.py --data moons --train-steps 4000      # trains, then tabulates
    python benchmarks/ddim_table.py --ckpt runs/ddpm-moons/checkpoint.pt # an existing checkpoint

Quality is the sliced Wasserstein distance between n samples and n held-out data points (lower
is better; the same metric `fastgen eval ddpm` reports). Writes <out>/ddim_table.csv and .png.
"""
import argparse
import csv
import os

import torch

from fastgen import data as fdata
from fastgen import metrics, train


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="moons")
    p.add_argument("--ckpt", default=None, help="a ddpm checkpoint (default: train one)")
    p.add_argument("--train-steps", type=int, default=4000)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 1000])
    p.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "local"))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ckpt = args.ckpt
    if ckpt is None:
        run = os.path.join(args.out, f"ddpm-{args.data}")
        train.train("ddpm", args.data, steps=args.train_steps, out=run, force=True, plot_every=0, seed=args.seed)
        ckpt = os.path.join(run, "checkpoint.pt")
    model = train.model_from_checkpoint(train.load_checkpoint(ckpt, "ddpm"))
    holdout = fdata.make(model.data.name, split="test", seed=args.seed).x[:args.n].reshape(args.n, -1)

    rows = []
    samplers = [(f"DDIM eta={eta:g}", "ddim", eta) for eta in args.etas] + [("DDPM", "ddpm", None)]
    for label, sampler, eta in samplers:
        for steps in args.steps:
            g = torch.Generator().manual_seed(args.seed)
            x = model.sample(args.n, generator=g, sampler=sampler, steps=steps, eta=eta).reshape(args.n, -1)
            sw = float(metrics.sliced_wasserstein(x, holdout, seed=0))
            rows.append({"sampler": label, "steps": steps, "sliced_wasserstein": sw})
            print(f"{label:14s} {steps:5d} steps  SW {sw:.4f}", flush=True)

    csv_path = os.path.join(args.out, "ddim_table.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sampler", "steps", "sliced_wasserstein"])
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, _, _ in samplers:
        pts = [(r["steps"], r["sliced_wasserstein"]) for r in rows if r["sampler"] == label]
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("sliced Wasserstein to held-out data (lower is better)")
    ax.set_title(f"DDIM vs DDPM on {model.data.name} (one ddpm checkpoint)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "ddim_table.png"))
    print(f"wrote {csv_path} and ddim_table.png")


if __name__ == "__main__":
    main()
