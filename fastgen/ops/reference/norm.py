"""The reference for the normalization family: GroupNorm + SiLU.

Part of the spec every backend is tested against (fastgen/ops/reference/__init__.py)."""
import torch

from ._common import math_dtype
from .gan import bias_act_slope


def group_norm_silu(x, weight, bias, num_groups, eps=1e-5, act=True):
    """GroupNorm of x (N, C, *) over num_groups groups of C / num_groups channels, per-channel
    affine (weight / bias may be None), then SiLU when `act`. Returns (y in x's dtype, mean and
    rstd of shape (N, num_groups) in the math dtype); rstd = 1 / sqrt(biased var + eps)."""
    t = math_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    xg = x.to(t).reshape(n, num_groups, _group_size(x, num_groups))
    empty = xg.numel() == 0  # torch warns (and returns nan) for a mean / var over nothing
    mean = xg.new_zeros(n, num_groups) if empty else xg.mean(-1)
    var = xg.new_zeros(n, num_groups) if empty else xg.var(-1, unbiased=False)
    rstd = torch.rsqrt(var + eps)
    y = ((xg - mean[..., None]) * rstd[..., None]).reshape(x.shape)
    shape = [1, c] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.to(t).reshape(shape)
    if bias is not None:
        y = y + bias.to(t).reshape(shape)
    if act:
        y = torch.nn.functional.silu(y)
    return y.to(x.dtype).contiguous(), mean, rstd


def _group_size(x, num_groups):
    size = x.shape[1] // num_groups
    for s in x.shape[2:]:
        size *= s
    return size


def group_norm_silu_backward(grad, x, weight, bias, mean, rstd, num_groups, act=True):
    """(dx, dweight, dbias) of group_norm_silu's first output from the forward's saved mean and
    rstd, in closed form (a test checks it against autograd through group_norm_silu):
        xhat = (x - mean) * rstd,  y = xhat * w + b,  gy = grad * silu'(y) (grad when not act),
        dx = rstd * (gy*w - E[gy*w] - xhat * E[gy*w * xhat])   (E: mean over the group),
        dweight = sum over batch and space of gy * xhat,  dbias = the same sum of gy.
    dweight / dbias are (0,) tensors when weight / bias is None."""
    t = math_dtype(x.dtype)
    n, c = x.shape[0], x.shape[1]
    shape = [1, c] + [1] * (x.dim() - 2)
    gs = _group_size(x, num_groups)
    xhat = ((x.to(t).reshape(n, num_groups, gs) - mean.to(t)[..., None]) * rstd.to(t)[..., None]).reshape(x.shape)
    w = weight.to(t).reshape(shape) if weight is not None else torch.ones(shape, dtype=t, device=x.device)
    gy = grad.to(t)
    if act:
        y = xhat * w + (bias.to(t).reshape(shape) if bias is not None else 0)
        gy = gy * bias_act_slope(y, "silu", 0.0)
    gx = (gy * w).reshape(n, num_groups, gs)
    xg = xhat.reshape(n, num_groups, gs)
    if gx.shape[-1]:
        gx = gx - gx.mean(-1, keepdim=True) - xg * (gx * xg).mean(-1, keepdim=True)
    dx = (gx * rstd.to(t)[..., None]).reshape(x.shape)
    dims = [0] + list(range(2, x.dim()))
    dw = (gy * xhat).sum(dims).to(weight.dtype) if weight is not None else x.new_empty((0,))
    db = gy.sum(dims).to(bias.dtype) if bias is not None else x.new_empty((0,))
    return dx.to(x.dtype).contiguous(), dw, db
