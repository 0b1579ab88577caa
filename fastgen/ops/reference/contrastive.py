"""The reference for the contrastive family: the NT-Xent (InfoNCE) loss.

Part of the spec every backend is tested against (fastgen/ops/reference/__init__.py)."""
import torch

from ._common import math_dtype


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
