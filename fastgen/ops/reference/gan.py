"""The reference for the GAN family: bias + activation (GroupNorm + SiLU: norm.py, InfoNCE:
contrastive.py).

Part of the spec every backend is tested against (fastgen/ops/reference/__init__.py)."""
import torch

from ._common import math_dtype


BIAS_ACTS = ("leaky_relu", "relu", "silu", "gelu")


def bias_act_channel_shape(x, dim):
    """The shape that broadcasts a per-channel (x.shape[dim],) vector against x."""
    return [x.shape[d] if d == dim % x.dim() else 1 for d in range(x.dim())]


def _activation(y, act, alpha):
    if act == "leaky_relu":
        return torch.nn.functional.leaky_relu(y, alpha)
    if act == "relu":
        return torch.relu(y)
    if act == "silu":
        return torch.nn.functional.silu(y)
    return torch.nn.functional.gelu(y)  # exact (erf) gelu, torch's default


def bias_act(x, bias, act="leaky_relu", alpha=0.2, gain=1.0, dim=1):
    """y = act(x + bias broadcast along `dim`) * gain, in the math dtype, returned in x's dtype.
    bias may be None (no bias). alpha is leaky_relu's negative slope (ignored by the others)."""
    t = math_dtype(x.dtype)
    y = x.to(t)
    if bias is not None:
        y = y + bias.to(t).reshape(bias_act_channel_shape(x, dim))
    return (_activation(y, act, alpha) * gain).to(x.dtype).contiguous()


def bias_act_slope(y, act, alpha):
    """d act(y) / dy in y's dtype; relu/leaky_relu use torch's convention at 0 (slope of y <= 0)."""
    if act == "leaky_relu":
        return torch.where(y > 0, torch.ones_like(y), torch.full_like(y, alpha))
    if act == "relu":
        return (y > 0).to(y.dtype)
    if act == "silu":
        s = torch.sigmoid(y)
        return s * (1 + y * (1 - s))
    cdf = 0.5 * (1 + torch.erf(y * 0.5 ** 0.5))
    return cdf + y * torch.exp(-0.5 * y * y) * (2 * torch.pi) ** -0.5


def bias_act_backward(grad, x, bias, act="leaky_relu", alpha=0.2, gain=1.0, dim=1):
    """(dx in x's dtype, dbias in bias's dtype) of bias_act; dbias sums dx (in the math dtype)
    over every dim but `dim`. With bias None, dbias is an empty (0,) tensor."""
    t = math_dtype(x.dtype)
    y = x.to(t)
    if bias is not None:
        y = y + bias.to(t).reshape(bias_act_channel_shape(x, dim))
    dy = grad.to(t) * bias_act_slope(y, act, alpha) * gain
    if bias is None:
        return dy.to(x.dtype).contiguous(), x.new_empty((0,))
    return dy.to(x.dtype).contiguous(), sum_but_dim(dy, dim).to(bias.dtype)


def sum_but_dim(t, dim):
    """Sum over every dim but `dim` (a 1-D t is returned as is: torch's sum over an empty dim
    list would sum everything)."""
    d = dim % t.dim()
    others = [i for i in range(t.dim()) if i != d]
    if not others:
        return t
    return t.sum(others) if t.numel() else t.new_zeros(t.shape[d])


def bias_act_curvature(y, act):
    """d^2 act(y) / dy^2 (0 almost everywhere for relu/leaky_relu)."""
    if act in ("leaky_relu", "relu"):
        return torch.zeros_like(y)
    if act == "silu":
        s = torch.sigmoid(y)
        return s * (1 - s) * (2 + y * (1 - 2 * s))
    return torch.exp(-0.5 * y * y) * (2 * torch.pi) ** -0.5 * (2 - y * y)
