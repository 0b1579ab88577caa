"""Rectified flow's reflow claim on a 2D toy (Liu et al. 2022, "Flow Straight and Fast"): a
2-rectified flow, trained on the (noise, sample) couplings of a 1-rectified flow's ODE, samples
well in 1, 2, 4 Euler steps where the 1-rectified flow does not, because its paths are straight.

    python benchmarks/reflow_table.py --data moons --out benchmarks/results/cpu-amd-epyc-2core/reflow_table

Trains, with `fastgen.train` (the same runs `fastgen train rectified_flow` makes):
  1. the 1-rectified flow (`--train-steps`);
  2. the 2-rectified flow: `reflow_from=` that checkpoint, `--reflow-train-steps` more steps on
     `--pairs` couplings solved with `--pair-solver` in `--pair-steps` steps, starting from the
     1-rectified flow's weights;
  3. a control: the 1-rectified flow trained `--reflow-train-steps` more steps on independent
     (noise, data) pairs, so "after reflow" is not just "trained longer".
Then, from the same `--n` noises, sliced Wasserstein to `--n` held-out points (lower is better;
what `fastgen eval rectified_flow` reports; also the RBF MMD, which sees blur that SW's 1-D
projections hardly do) after each of `--steps` Euler steps, and each flow's
straightness S (0 = straight paths; 100 Euler steps). Writes <out>/reflow_table.csv and .png
(held-out data, 1-step samples before / after reflow, ODE paths, SW against steps).
"""
import argparse
import csv
import os
import shutil

import torch
from tqdm.auto import tqdm

from fastgen import data as fdata
from fastgen import metrics, train


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="moons")
    p.add_argument("--train-steps", type=int, default=8000)
    p.add_argument("--reflow-train-steps", type=int, default=4000)
    p.add_argument("--pairs", type=int, default=20000, help="reflow couplings")
    p.add_argument("--pair-steps", type=int, default=50, help="ODE steps that solve the couplings")
    p.add_argument("--pair-solver", default="heun", choices=("euler", "heun"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 100])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (the nets are tiny: more threads only contend on a shared CPU)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "local", "reflow_table"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    runs = os.path.join(args.out, "runs")
    common = dict(out=None, force=True, plot_every=0, seed=args.seed, lr=args.lr)

    rf1 = os.path.join(runs, "rf1")
    train.train("rectified_flow", args.data, steps=args.train_steps, **{**common, "out": rf1})
    # the control continues the 1-rectified run (same optimizer state and data stream) for as many
    # steps as reflow trains
    longer = os.path.join(runs, "rf1_longer")
    shutil.rmtree(longer, ignore_errors=True)
    shutil.copytree(rf1, longer)
    train.train("rectified_flow", args.data, steps=args.train_steps + args.reflow_train_steps, resume=True,
                **{**common, "out": longer, "force": False})
    rf2 = os.path.join(runs, "rf2")
    train.train("rectified_flow", args.data, steps=args.reflow_train_steps, **{**common, "out": rf2},
                model_options=dict(reflow_from=os.path.join(rf1, train.CHECKPOINT_NAME), reflow_pairs=args.pairs,
                                   reflow_steps=args.pair_steps, reflow_solver=args.pair_solver))

    labels = {"1-rectified": rf1, f"1-rectified +{args.reflow_train_steps} steps": longer,
              "2-rectified (reflow)": rf2}
    models = {k: train.model_from_checkpoint(train.load_checkpoint(os.path.join(v, train.CHECKPOINT_NAME)))
              for k, v in labels.items()}
    holdout = fdata.make(args.data, split="test", seed=args.seed).x[:args.n].reshape(args.n, -1)
    z = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed + 1))

    rows, samples = [], {}
    with tqdm(total=len(models) * (len(args.steps) + 1), desc="reflow table") as bar:
        for label, model in models.items():
            straightness = model.straightness(z, steps=100)
            bar.update(1)
            for steps in args.steps:
                x = model.sample(args.n, noise=z, solver="euler", steps=steps).reshape(args.n, -1)
                samples[label, steps] = x
                sw = float(metrics.sliced_wasserstein(x, holdout, seed=0))
                rows.append({"model": label, "solver": "euler", "steps": steps, "sliced_wasserstein": sw,
                             "mmd_rbf": float(metrics.mmd_rbf(x, holdout)), "straightness": straightness})
                bar.update(1)
    for r in rows:
        print(f"{r['model']:28s} {r['steps']:4d} Euler steps  SW {r['sliced_wasserstein']:.4f}  "
              f"MMD {r['mmd_rbf']:.4f}  straightness {r['straightness']:.4f}")

    csv_path = os.path.join(args.out, "reflow_table.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(args, models, rows, samples, holdout, z)
    shutil.rmtree(runs)  # checkpoints are reproducible from the command; only the table is kept
    print(f"wrote {csv_path} and reflow_table.png")


def plot(args, models, rows, samples, holdout, z):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, last = list(models)[0], list(models)[-1]
    fig, axes = plt.subplots(2, 3, figsize=(13, 8.5))
    lim = float(holdout.abs().max()) * 1.15

    def scatter(ax, x, title, color):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color=color)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")

    def sw(label, steps):
        return next(r["sliced_wasserstein"] for r in rows if r["model"] == label and r["steps"] == steps)

    s1 = min(args.steps)
    scatter(axes[0, 0], holdout, f"held-out {args.data}", "gray")
    scatter(axes[0, 1], samples[first, s1], f"{first}, {s1} Euler step (SW {sw(first, s1):.3f})", "C0")
    scatter(axes[0, 2], samples[last, s1], f"{last}, {s1} Euler step (SW {sw(last, s1):.3f})", "C2")
    for ax, label, color in ((axes[1, 0], first, "C0"), (axes[1, 1], last, "C2")):
        model = models[label]
        with torch.no_grad():
            paths = [z[:40]]
            sigmas = torch.linspace(1, 0, 101)
            x = z[:40]
            for i in range(100):
                x = x + (sigmas[i + 1] - sigmas[i]) * model.velocity(x, sigmas[i])
                paths.append(x)
        paths = torch.stack(paths)
        for k in range(paths.shape[1]):
            ax.plot(paths[:, k, 0], paths[:, k, 1], color=color, lw=0.7, alpha=0.7)
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=6, color="k", label="noise")
        ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=6, color="r", label="sample")
        straight = next(r["straightness"] for r in rows if r["model"] == label)
        scatter(ax, torch.empty(0, 2), f"{label}: ODE paths (straightness {straight:.3f})", color)
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[1, 2]
    for i, label in enumerate(models):
        pts = [(r["steps"], r["sliced_wasserstein"]) for r in rows if r["model"] == label]
        ax.plot(*zip(*pts), marker="o", label=label, color=("C0", "C1", "C2")[i % 3])
    ax.set_xscale("log")
    ax.set_xlabel("Euler steps")
    ax.set_ylabel("sliced Wasserstein to held-out data")
    ax.set_title("sample quality against steps", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(f"rectified flow vs reflow on {args.data} ({args.train_steps} + {args.reflow_train_steps} "
                 f"training steps, {args.pairs} couplings)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "reflow_table.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
