"""The reference for vector quantization: nearest code, straight-through quantize, EMA codebook.

Part of the spec every backend is tested against (fastgen/ops/reference/__init__.py)."""
import torch

from ._common import math_dtype


VQ_METRICS = ("l2", "cosine")


def vq_distances(z, codebook, metric="l2"):
    """Full [N, K] squared distances in the math dtype (the eager path the fused op avoids).
    metric="cosine" measures between the L2-normalized vectors (2 - 2 cos)."""
    t = math_dtype(z.dtype)
    z, e = z.to(t), codebook.to(t)
    if metric == "cosine":
        z = torch.nn.functional.normalize(z, dim=1)
        e = torch.nn.functional.normalize(e, dim=1)
    return (z * z).sum(1, keepdim=True) - 2 * (z @ e.t()) + (e * e).sum(1)


def vq_nearest(z, codebook, metric="l2"):
    """Index of the nearest code per row of z [N, D] among codebook [K, D] and its squared
    distance (fp32; fp64 for fp64 inputs), clamped at 0. Ties go to the lowest index; NaN
    distances count as +inf (a NaN code is never chosen; an all-NaN row maps to code 0 with
    distance inf)."""
    d = vq_distances(z, codebook, metric)
    d = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)
    if d.shape[1] == 0 or d.shape[0] == 0:
        return (torch.zeros(d.shape[0], dtype=torch.int64, device=z.device),
                torch.full((d.shape[0],), float("inf"), dtype=d.dtype, device=z.device))
    dist, idx = d.min(1)  # first minimum on ties, like argmin
    return idx, dist.clamp_min(0)


def vq_quantize(z, codebook, beta=0.25, legacy=True):
    """Nearest code, straight-through and taming's VectorQuantizer2 loss, for z [N, D]:
    z_q = z + (codebook[idx] - z).detach();
    legacy:     loss = mean((sg(z_q) - z)^2) + beta * mean((z_q - sg(z))^2)
    not legacy: loss = beta * mean((sg(z_q) - z)^2) + mean((z_q - sg(z))^2).
    The two settings give the same loss value, (1 + beta) * mse; they weight the gradients
    to z (commitment) and to the codebook differently."""
    idx, _ = vq_nearest(z.detach(), codebook.detach())
    e = codebook[idx]
    commit = torch.mean((e.detach() - z) ** 2)
    embed = torch.mean((e - z.detach()) ** 2)
    loss = commit + beta * embed if legacy else beta * commit + embed
    z_q = z + (e - z).detach()
    return z_q, loss, idx


def vq_quantize_backward(grad_zq, grad_loss, z, codebook, indices, beta=0.25, legacy=True):
    """Gradients of vq_quantize: with c = 2 * grad_loss / (N * D) and (w_z, w_e) = (1, beta)
    when legacy else (beta, 1):
        dz        = grad_zq + c * w_z * (z - codebook[indices])            (straight-through + commitment)
        dcodebook = index_add over indices of c * w_e * (codebook[indices] - z)."""
    t = math_dtype(z.dtype)
    n, d = z.shape
    w_z, w_e = (1.0, beta) if legacy else (beta, 1.0)
    c = 2.0 * grad_loss.to(t) / (n * d) if n * d else grad_loss.to(t) * 0
    diff = z.to(t) - codebook.to(t)[indices]
    dz = grad_zq.to(t) + (c * w_z) * diff
    dcode = torch.zeros(codebook.shape, dtype=t, device=z.device).index_add_(0, indices, (-c * w_e) * diff)
    return dz.to(z.dtype), dcode.to(codebook.dtype)


def vq_code_sums(z, indices, num_codes):
    """Per-code row counts [K] and row sums [K, D] (math dtype) of z [N, D] grouped by indices."""
    t = math_dtype(z.dtype)
    counts = torch.zeros(num_codes, dtype=t, device=z.device)
    counts.index_add_(0, indices, torch.ones(indices.shape[0], dtype=t, device=z.device))
    sums = torch.zeros(num_codes, z.shape[1], dtype=t, device=z.device).index_add_(0, indices, z.to(t))
    return counts, sums


def vq_ema_apply_(counts, sums, cluster_size, embed_sum, decay, eps):
    """The EMA codebook step from this batch's per-code counts and sums (VQ-VAE appendix,
    taming's EmbeddingEMA), updating the buffers in place:
        cluster_size <- decay * cluster_size + (1 - decay) * counts
        embed_sum    <- decay * embed_sum    + (1 - decay) * sums
        codebook      = embed_sum / ((cluster_size + eps) / (n + K eps) * n),  n = sum(cluster_size)
    Returns (codebook in embed_sum's dtype, perplexity = exp(entropy of counts / sum(counts)))."""
    cluster_size.mul_(decay).add_(counts.to(cluster_size.dtype), alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums.to(embed_sum.dtype), alpha=1 - decay)
    return vq_ema_finish(counts, cluster_size, embed_sum, eps)


def vq_ema_finish(counts, cluster_size, embed_sum, eps):
    """The codebook from the updated EMA buffers (Laplace-smoothed counts) and the perplexity
    of this step's code usage; the part of vq_ema_apply_ after the in-place update."""
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + cluster_size.shape[0] * eps) * n
    codebook = embed_sum / smoothed.to(embed_sum.dtype).unsqueeze(1)
    return codebook, vq_perplexity(counts)


def vq_perplexity(counts):
    """exp(entropy) of the code usage distribution counts / sum(counts) (taming's formula)."""
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-torch.sum(p * torch.log(p + 1e-10)))


def vq_ema_update(z, indices, cluster_size, embed_sum, decay=0.99, eps=1e-5):
    """One EMA codebook step from z [N, D] and its codes indices [N] (see vq_ema_apply_)."""
    counts, sums = vq_code_sums(z, indices, embed_sum.shape[0])
    return vq_ema_apply_(counts, sums, cluster_size, embed_sum, decay, eps)
