"""Procedural images of filled shapes, and binary vectors made from them.

`shapes`: one filled circle, square, triangle or cross (label 0..3) per image, at a random
position and size, in a random colour on a random background colour. Rendered in one batch by
signed distances on the pixel grid with a one-pixel antialiasing ramp; float32 CHW in [0, 1].
`binary`: the same shapes as {0, 1} masks (coverage >= 0.5), 1 channel, flattened to size*size.
`bars`: bars-and-stripes on a size x size grid, flattened: every row (label 0, horizontal bars)
or every column (label 1, vertical stripes) is on or off with probability 1/2.
"""
import math

import torch

from .base import DatasetBuilder, check_choice, check_int, register

SHAPE_NAMES = ("circle", "square", "triangle", "cross")
DEFAULT_N = 10000

R_MIN, R_MAX = 0.18, 0.34        # shape "radius" as a fraction of the image side
SQUARE = math.sqrt(math.pi) / 2  # square half-side / r: same area as the circle
TRIANGLE = 1.4                   # triangle circumradius / r
CROSS_W = 0.33                   # cross arm half-width / r (arm half-length = r)
# axis-aligned extent of each shape around its centre, / r: (half-width, above, below)
_EXTENT = torch.tensor([
    [1.0, 1.0, 1.0],
    [SQUARE, SQUARE, SQUARE],
    [TRIANGLE * math.sqrt(3) / 2, TRIANGLE, TRIANGLE / 2],  # apex up, centred on its centroid
    [1.0, 1.0, 1.0],
])
_TRI_NORMALS = torch.tensor([[0.0, 1.0], [math.sqrt(3) / 2, -0.5], [-math.sqrt(3) / 2, -0.5]])


def _sdf(kind, dx, dy, r):
    """Signed distance (pixels, < 0 inside) of shape `kind` for offsets dx, dy [m, H, W] from
    the centres and radii r [m, 1, 1]. Exact for the circle, exact near the edges for the others
    (which is all the antialiasing ramp needs)."""
    if kind == 0:
        return torch.sqrt(dx * dx + dy * dy) - r
    if kind == 1:
        return torch.maximum(dx.abs(), dy.abs()) - SQUARE * r
    if kind == 2:
        n = _TRI_NORMALS
        d = torch.maximum(torch.maximum(n[0, 0] * dx + n[0, 1] * dy, n[1, 0] * dx + n[1, 1] * dy),
                          n[2, 0] * dx + n[2, 1] * dy)
        return d - TRIANGLE * r / 2  # the inradius is half the circumradius
    ax, ay, w = dx.abs(), dy.abs(), CROSS_W * r
    return torch.minimum(torch.maximum(ax - r, ay - w), torch.maximum(ax - w, ay - r))


def render_coverage(count, size, g):
    """(coverage [count, size, size] in [0, 1], kind [count] int64): one random shape per image,
    entirely inside the image."""
    kind = torch.randint(0, len(SHAPE_NAMES), (count,), generator=g)
    r = size * (R_MIN + (R_MAX - R_MIN) * torch.rand(count, generator=g))
    ext = _EXTENT[kind] * r[:, None]  # [count, 3]
    u = torch.rand(count, 2, generator=g)
    cx = ext[:, 0] + u[:, 0] * (size - 2 * ext[:, 0])
    cy = ext[:, 1] + u[:, 1] * (size - ext[:, 1] - ext[:, 2])
    grid = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    cov = torch.empty(count, size, size)
    for k in range(len(SHAPE_NAMES)):
        idx = (kind == k).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        dx = grid.view(1, 1, size) - cx[idx].view(-1, 1, 1)
        dy = grid.view(1, size, 1) - cy[idx].view(-1, 1, 1)
        sdf = _sdf(k, dx, dy, r[idx].view(-1, 1, 1))
        cov[idx] = (0.5 - sdf).clamp_(0, 1)
    return cov, kind


def _colours(count, channels, g):
    """(foreground, background) [count, channels]: every channel differs by 0.35..0.65."""
    bg = torch.rand(count, channels, generator=g)
    fg = (bg + 0.35 + 0.3 * torch.rand(count, channels, generator=g)) % 1.0
    return fg, bg


def shapes(count, g, opts):
    size, channels = opts["size"], opts["channels"]
    cov, kind = render_coverage(count, size, g)
    fg, bg = _colours(count, channels, g)
    x = torch.lerp(bg[:, :, None, None].expand(count, channels, size, size),
                   fg[:, :, None, None].expand(count, channels, size, size), cov[:, None])
    return x.clamp_(0, 1), kind


def binary_shapes(count, g, opts):
    size = opts["size"]
    cov, kind = render_coverage(count, size, g)
    return (cov >= 0.5).to(torch.float32).reshape(count, size * size), kind


def bars(count, g, opts):
    n = opts["size"]
    y = torch.randint(0, 2, (count,), generator=g)
    on = (torch.rand(count, n, generator=g) < 0.5).to(torch.float32)
    rows = on[:, :, None].expand(count, n, n)  # row i all on/off: horizontal bars
    cols = on[:, None, :].expand(count, n, n)  # column j all on/off: vertical stripes
    x = torch.where(y[:, None, None] == 0, rows, cols)
    return x.reshape(count, n * n), y


def _check_shapes(opts):
    check_int(opts, "size", 8, 512, "shapes")
    check_choice(opts, "channels", (1, 3), "shapes")


register(DatasetBuilder(
    name="shapes", kind="image", options={"size": 16, "channels": 3}, default_n=DEFAULT_N,
    doc="filled circle / square / triangle / cross (label 0..3), random position, size and colours; "
        "float32 [channels, size, size] in [0, 1]",
    generate=shapes, info=lambda opts: (len(SHAPE_NAMES), SHAPE_NAMES), check=_check_shapes,
    option_docs={"size": "image side in pixels (8..512; 16 or 32 are the usual)",
                 "channels": "1 (grey) or 3 (RGB)"}))

register(DatasetBuilder(
    name="binary", kind="binary", options={"size": 8}, default_n=DEFAULT_N,
    doc="the shapes as {0, 1} masks, flattened: float32 [size*size], label = shape 0..3",
    generate=binary_shapes, info=lambda opts: (len(SHAPE_NAMES), SHAPE_NAMES),
    check=lambda opts: check_int(opts, "size", 6, 64, "binary"),
    option_docs={"size": "mask side in pixels (6..64), D = size*size"}))

register(DatasetBuilder(
    name="bars", kind="binary", options={"size": 4}, default_n=DEFAULT_N,
    doc="bars-and-stripes on a size x size grid, flattened: float32 [size*size] in {0, 1}; "
        "label 0 = horizontal bars, 1 = vertical stripes",
    generate=bars, info=lambda opts: (2, ("horizontal", "vertical")),
    check=lambda opts: check_int(opts, "size", 2, 64, "bars"),
    option_docs={"size": "grid side (the n of n x n), D = size*size"}))
