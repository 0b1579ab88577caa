"""The reference for GAN / SimCLR family: bias + activation, GroupNorm + SiLU, InfoNCE.

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


INFO_NCE_NORM_EPS = 1e-12  # F.normalize's default


def info_nce_loss(z1, z2, temperature):
    """NT-Xent (SimCLR) on N positive pairs (z1[k], z2[k]), the eager way (a 2N x 2N matrix):
        z = cat(z1, z2) (2N, D),  u_i = z_i / max(||z_i||, 1e-12),  s_ij = u_i . u_j / temperature,
        loss = 1/(2N) * sum_i [ logsumexp_{j != i} s_ij - s_{i, p(i)} ],  p(i) = (i + N) mod 2N,
    i.e. cross-entropy over the 2N - 1 other samples with the partner as the target, averaged
    over all 2N anchors. Returns (loss, lse) in the math dtype, lse[i] = logsumexp_{j != i} s_ij."""
    t = math_dtype(z1.dtype)
    z = torch.cat([z1, z2]).to(t)
    u = torch.nn.functional.normalize(z, dim=1, eps=INFO_NCE_NORM_EPS)
    s = u @ u.t() / temperature
    m, n = z.shape[0], z1.shape[0]
    s = s.masked_fill(torch.eye(m, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.arange(m, device=z.device).roll(n)
    return torch.nn.functional.cross_entropy(s, target), torch.logsumexp(s, 1)


def info_nce_loss_backward(grad_loss, z1, z2, lse, temperature):
    """(dz1, dz2) of info_nce_loss in closed form on the full matrix (a test checks it against
    autograd through info_nce_loss): with P the masked row softmax of s and Y the partner
    one-hot, G = grad * (P - Y) / (2N), dU = (G + G^T) u / temperature, then back through the
    normalization u = z / max(||z||, eps)."""
    t = math_dtype(z1.dtype)
    z = torch.cat([z1, z2]).to(t)
    m, n = z.shape[0], z1.shape[0]
    norm = z.norm(dim=1, keepdim=True)
    u = z / norm.clamp_min(INFO_NCE_NORM_EPS)
    s = (u @ u.t() / temperature).masked_fill(torch.eye(m, dtype=torch.bool, device=z.device), float("-inf"))
    p = torch.exp(s - lse.to(t)[:, None])
    p[torch.arange(m, device=z.device), torch.arange(m, device=z.device).roll(n)] -= 1
    g = p * (grad_loss.to(t) / m)
    du = (g + g.t()) @ u / temperature
    dz = torch.where(norm <= INFO_NCE_NORM_EPS, du / INFO_NCE_NORM_EPS,
                     (du - u * (u * du).sum(1, keepdim=True)) / norm.clamp_min(INFO_NCE_NORM_EPS))
    dz = dz.to(z1.dtype)
    return dz[:n].clone(), dz[n:].clone()
