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


def robust_limits(*clouds, lo=0.005, hi=0.995, pad=0.04, max_ratio=3.0):
    """Axis limits ((x0, x1), (y0, y1)) for 2D point clouds [N, 2]: the lo..hi quantiles of all
    points together (so a few outliers do not set the range), padded by `pad` of the span on
    each side. The shorter side is widened, centred, until width/height is within
    [1/max_ratio, max_ratio], so an equal-aspect plot never becomes a thin strip."""
    pts = torch.cat([c.detach().float().cpu().reshape(-1, 2) for c in clouds if c is not None])
    pts = pts[torch.isfinite(pts).all(dim=1)]
    if pts.shape[0] == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    q = torch.quantile(pts, torch.tensor([lo, hi]), dim=0)  # [2 (lo, hi), 2 (x, y)]
    centre, span = (q[0] + q[1]) / 2, (q[1] - q[0]) * (1 + 2 * pad)
    span = span.clamp_min(max(float(span.max()), 1e-6) / max_ratio)
    return tuple((float(centre[i] - span[i] / 2), float(centre[i] + span[i] / 2)) for i in range(2))


def _marker_style(n):
    """Marker area (pt^2) and alpha for n points: visible when few, not a solid blob when many."""
    size = min(24.0, max(2.0, 6000.0 / max(n, 1)))
    alpha = min(0.9, max(0.25, 0.9 * math.sqrt(500.0 / max(n, 1))))
    return size, alpha


def _format_title(title, metrics):
    parts = [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in (metrics or {}).items()]
    if not parts:
        return title
    return (title + "\n" if title else "") + ", ".join(parts)


def _points_figure(plt, x, reference, title):
    """Equal-aspect scatter of samples `x` [N, 2] over a light overlay of `reference`, on axes
    from robust quantiles; the figure has the data's aspect ratio (no big empty margins)."""
    (x0, x1), (y0, y1) = robust_limits(x, reference)
    ratio = (x1 - x0) / (y1 - y0)
    ax_w = 5.5 * min(ratio, 1.0)  # inches of axes; the longer side is 5.5
    ax_h = ax_w / ratio
    title_h = 0.2 * (title.count("\n") + 1) + 0.1 if title else 0.0
    fig, ax = plt.subplots(figsize=(ax_w + 0.6, ax_h + 0.45 + title_h), dpi=100)
    if reference is not None:
        r = reference.detach().float().cpu()
        size, _ = _marker_style(r.shape[0])
        ax.scatter(r[:, 0], r[:, 1], s=1.5 * size, alpha=0.5, color="0.6", linewidths=0, zorder=1,
                   label=f"held-out data ({r.shape[0]})")
    size, alpha = _marker_style(x.shape[0])
    ax.scatter(x[:, 0], x[:, 1], s=size, alpha=alpha, color="tab:blue", linewidths=0, zorder=2,
               label=f"samples ({x.shape[0]})")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal", adjustable="box")
    outside = int(((x[:, 0] < x0) | (x[:, 0] > x1) | (x[:, 1] < y0) | (x[:, 1] > y1)
                   | ~torch.isfinite(x).all(dim=1)).sum())
    if outside:
        ax.text(0.01, 0.01, f"{outside} sample{'s' if outside > 1 else ''} outside the view",
                transform=ax.transAxes, fontsize=7, color="0.35", va="bottom", ha="left")
    ax.tick_params(labelsize=7)
    legend = ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    for handle in legend.legend_handles if hasattr(legend, "legend_handles") else legend.legendHandles:
        handle.set_sizes([20.0])
        handle.set_alpha(0.9)
    return fig, ax


def save_tensor_plot(x, spec, path, *, reference=None, title=None, metrics=None):
    """Plot samples `x` (shaped like the data described by `spec`) to `path`. For 2D points,
    `reference` (held-out data) is drawn underneath in light grey. `metrics` ({name: value})
    is added to the title."""
    plt = _pyplot()
    x = x.detach().float().cpu()
    title = _format_title(title, metrics)
    images = as_images(x, spec)
    if images is not None:
        fig, ax = _grid_figure(plt, image_grid(images[:64]), title, width=5.0)
    elif spec.kind == "points2d":
        fig, ax = _points_figure(plt, x, reference, title)
    else:  # sequences and anything else: one row per sample
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.imshow(x.reshape(x.shape[0], -1)[:64].numpy(), aspect="auto", interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.4)
    fig.savefig(path)
    plt.close(fig)
    return path


@torch.no_grad()
def save_samples(model, dataset, path, *, n=None, title=None, seed=0, metrics=None):
    """Samples of `model` next to its data; for images, a row of reconstructions too when the
    model has `reconstruct`. For 2D points the held-out data is drawn underneath and, unless
    `metrics` is given, the title reports the sliced Wasserstein distance of the samples to it.
    Uses its own generators so plotting never shifts the training RNG."""
    spec = model.data
    n = n or (1000 if spec.kind == "points2d" else 64)
    gen = torch.Generator(model.device).manual_seed(seed)
    samples = model.sample(n, generator=gen).cpu()
    if spec.kind == "points2d":
        reference = dataset.x[:2000]
        if metrics is None and torch.isfinite(samples).all():
            from .metrics import sliced_wasserstein

            metrics = {"sliced W to held-out": float(sliced_wasserstein(samples, reference, seed=seed))}
        return save_tensor_plot(samples, spec, path, reference=reference, title=title, metrics=metrics)
    title = _format_title(title, metrics)
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
