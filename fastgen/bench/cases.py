"""Benchmark cases, one per op (later issues add theirs, and their peers, here)."""
import torch

import fastgen
from fastgen.ops import reference

from .harness import Case, register_case


def _reparam_inputs(shape, dtype, device, requires_grad):
    g = torch.Generator(device).manual_seed(0)
    mu, logvar, eps = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
    return {"mu": mu.requires_grad_(requires_grad), "logvar": logvar.requires_grad_(requires_grad),
            "eps": eps}


register_case(Case(
    op="gaussian_reparam_kl",
    shapes=[(64, 65536), (4096, 256)],      # 2**22 elements: few large samples, many VAE latents
    quick_shapes=[(32, 8192)],
    make_inputs=_reparam_inputs,
    reference=reference.gaussian_reparam_kl,
    fastgen=lambda backend, **kw: fastgen.ops.gaussian_reparam_kl(**kw, backend=backend),
    grad_inputs=("mu", "logvar"),
))
