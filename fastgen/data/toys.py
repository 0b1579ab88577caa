"""2D toy distributions of the flow / diffusion literature (the set FFJORD popularised), with the
usual parameters, scaled to roughly [-4, 4]. Each returns x float32 [count, 2] and an int64
label: which moon / circle / mode / arm where that is natural, else 0."""
import math

import torch

from .base import DatasetBuilder, register

DEFAULT_N = 10000


def _normal(count, dim, g):
    return torch.randn(count, dim, generator=g)


def moons(count, g, opts):
    """Two interleaved half circles (sklearn's make_moons, noise 0.1), then *2 + (-1, -0.2)."""
    y = torch.randint(0, 2, (count,), generator=g)
    t = torch.rand(count, generator=g) * math.pi
    upper = torch.stack([torch.cos(t), torch.sin(t)], 1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    x = torch.where(y[:, None] == 0, upper, lower) + 0.1 * _normal(count, 2, g)
    return x * 2 + torch.tensor([-1.0, -0.2]), y


def circles(count, g, opts):
    """Two concentric circles, radii 1 and 0.5 (make_circles, factor 0.5, noise 0.08), * 3.
    Label 0 = outer, 1 = inner."""
    y = torch.randint(0, 2, (count,), generator=g)
    t = torch.rand(count, generator=g) * (2 * math.pi)
    r = torch.where(y == 0, 1.0, 0.5)
    x = torch.stack([r * torch.cos(t), r * torch.sin(t)], 1) + 0.08 * _normal(count, 2, g)
    return x * 3, y


def eight_gaussians(count, g, opts):
    """Eight Gaussians (std 0.5) centred at radius 4, angles k*45 degrees, all / 1.414.
    Label = k."""
    y = torch.randint(0, 8, (count,), generator=g)
    angle = y.to(torch.float32) * (math.pi / 4)
    centres = 4 * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    x = centres + 0.5 * _normal(count, 2, g)
    return x / 1.414, y


def checkerboard(count, g, opts):
    """Uniform on the dark squares of a 4x4 checkerboard covering [-4, 4]^2. Label 0."""
    x1 = torch.rand(count, generator=g) * 4 - 2
    x2 = torch.rand(count, generator=g) - torch.randint(0, 2, (count,), generator=g).to(torch.float32) * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2, torch.zeros(count, dtype=torch.int64)


def swissroll(count, g, opts):
    """The Swiss roll (make_swiss_roll, noise 1.0) seen from its side: (t cos t, t sin t) for
    t in [1.5 pi, 4.5 pi], / 5. Label 0."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(count, generator=g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + 1.0 * _normal(count, 2, g)
    return x / 5, torch.zeros(count, dtype=torch.int64)


def pinwheel(count, g, opts):
    """Five spiral arms (radial std 0.3, tangential std 0.1, rate 0.25), * 2. Label = arm."""
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    y = torch.randint(0, arms, (count,), generator=g)
    f = _normal(count, 2, g) * torch.tensor([radial_std, tangential_std])
    f[:, 0] += 1
    angle = y.to(torch.float32) * (2 * math.pi / arms) + rate * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    x = torch.stack([c * f[:, 0] - s * f[:, 1], s * f[:, 0] + c * f[:, 1]], 1)
    return x * 2, y


_TOYS = [
    ("moons", moons, ("upper moon", "lower moon")),
    ("circles", circles, ("outer circle", "inner circle")),
    ("8gaussians", eight_gaussians, tuple(f"mode {k} ({45 * k} deg)" for k in range(8))),
    ("checkerboard", checkerboard, ("all",)),
    ("swissroll", swissroll, ("all",)),
    ("pinwheel", pinwheel, tuple(f"arm {k}" for k in range(5))),
]

for _name, _fn, _classes in _TOYS:
    register(DatasetBuilder(
        name=_name, kind="points2d", options={}, default_n=DEFAULT_N, doc=(_fn.__doc__ or "").strip(),
        generate=_fn, info=(lambda opts, _c=_classes: (len(_c), _c))))
