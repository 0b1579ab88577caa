"""The reference for VAE: reparameterization + KL.

Part of the spec every backend is tested against (fastgen/ops/reference/__init__.py)."""
import torch

from ._common import math_dtype, per_sample_sum


def gaussian_reparam_kl(mu, logvar, eps):
    """z = mu + exp(logvar/2) * eps; kl[b] = -1/2 * sum_j (1 + logvar - mu^2 - exp(logvar)),
    summed over every non-batch dim. Returns (z in mu's dtype, kl[B] in the math dtype)."""
    t = math_dtype(mu.dtype)
    m, lv, e = mu.to(t), logvar.to(t), eps.to(t)
    z = m + torch.exp(0.5 * lv) * e
    kl = -0.5 * per_sample_sum(1 + lv - m * m - torch.exp(lv))
    return z.to(mu.dtype).contiguous(), kl


def gaussian_reparam_kl_backward(grad_z, grad_kl, mu, logvar, eps):
    """Gradients of gaussian_reparam_kl w.r.t. (mu, logvar), in mu's dtype."""
    t = math_dtype(mu.dtype)
    gz, m, lv, e = grad_z.to(t), mu.to(t), logvar.to(t), eps.to(t)
    gkl = grad_kl.to(t).reshape((-1,) + (1,) * (mu.dim() - 1))
    sd = torch.exp(0.5 * lv)
    d_mu = gz + gkl * m
    d_logvar = 0.5 * (gz * e * sd + gkl * (sd * sd - 1))
    return d_mu.to(mu.dtype).contiguous(), d_logvar.to(mu.dtype).contiguous()
