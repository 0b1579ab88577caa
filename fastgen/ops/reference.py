"""Plain-PyTorch specification of every fastgen op: obviously correct, and the ground truth
every kernel is tested against. Math runs in fp32 (fp64 for fp64 inputs); outputs follow the
kernels' contract (per-element outputs in the input dtype, per-sample reductions in the math
dtype).
"""
import torch


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in for inputs of `dtype`: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample_sum(x):
    """Sum over every dim but the first (the batch); shape (B,)."""
    return x.reshape(x.shape[0], -1).sum(1) if x.numel() else x.new_zeros(x.shape[0])


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
