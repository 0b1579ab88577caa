"""Pictures of samples: scatter plots for 2D points, image grids for images and binary vectors.
matplotlib with the Agg backend (no screen needed)."""
import math

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(x, nrow=None, pad=1):
    """[N, C, H, W] in [0, 1] -> one [H', W', C] array (C = 1 or 3) for imshow."""
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    return grid.permute(1, 2, 0).clamp(0, 1).numpy()


def as_images(x, spec):
    """Data-shaped samples -> [N, C, H, W] images, or None when they are not image-like."""
    if spec.kind == "image":
        return x
    if spec.kind == "binary":
        d = math.prod(spec.shape)
        side = int(math.isqrt(d))
        if side * side == d:
            return x.reshape(-1, 1, side, side)
    return None


def _grid_figure(plt, grid, title, width=7.0):
    """A figure shaped like the image grid (no big empty margins)."""
    h, w = grid.shape[:2]
    fig, ax = plt.subplots(figsize=(width, width * h / w + (0.5 if title else 0.1)), dpi=100)
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    return fig, ax


def save_tensor_plot(x, spec, path, *, reference=None, title=None):
    """Plot samples `x` (shaped like the data described by `spec`) to `path`. For 2D points,
    `reference` (real data) is drawn underneath."""
    plt = _pyplot()
    x = x.detach().float().cpu()
    images = as_images(x, spec)
    if images is not None:
        fig, ax = _grid_figure(plt, image_grid(images[:64]), title, width=5.0)
    else:
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if spec.kind == "points2d":
        if reference is not None:
            r = reference.detach().float().cpu()
            ax.scatter(r[:, 0], r[:, 1], s=2, alpha=0.3, label="data")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, label="samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
    elif images is None:  # sequences and anything else: one row per sample
        ax.imshow(x.reshape(x.shape[0], -1)[:64].numpy(), aspect="auto", interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@torch.no_grad()
def save_samples(model, dataset, path, *, n=None, title=None, seed=0):
    """Samples of `model` next to its data; for images, a row of reconstructions too when the
    model has `reconstruct`. Uses its own generator so plotting never shifts the training RNG."""
    spec = model.data
    n = n or (1000 if spec.kind == "points2d" else 64)
    gen = torch.Generator(model.device).manual_seed(seed)
    samples = model.sample(n, generator=gen).cpu()
    if spec.kind == "points2d":
        return save_tensor_plot(samples, spec, path, reference=dataset.x[:2000], title=title)
    if hasattr(model, "reconstruct") and as_images(samples, spec) is not None:
        real = dataset.x[:32].to(model.device)
        recon = model.reconstruct(real).cpu()
        rows = torch.cat([as_images(real.cpu(), spec), as_images(recon, spec),
                          as_images(samples[:32], spec)])
        plt = _pyplot()
        fig, ax = _grid_figure(plt, image_grid(rows, nrow=16), title)
        ax.set_title((title + "\n" if title else "") + "data (rows 1-2), reconstructions (3-4), samples (5-6)",
                     fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
    return save_tensor_plot(samples, spec, path, title=title)
