"""Plain-PyTorch specification of every fastgen op: obviously correct, and the ground truth
every kernel is tested against. Math runs in fp32 (fp64 for fp64 inputs); outputs follow the
kernels' contract (per-element outputs in the input dtype, per-sample reductions in the math
dtype).
"""
import math

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


# -- vector quantization -----------------------------------------------------------------------

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


# -- attention -----------------------------------------------------------------------------------

def attention_valid(lq, lk, causal, key_padding_mask, device):
    """Which (query, key) pairs take part: [B or 1, 1, Lq, Lk] bool. Causal is top-left aligned,
    as torch's SDPA `is_causal` (query i sees keys j <= i); key_padding_mask [B, Lk] marks padded
    keys with True, as nn.MultiheadAttention's."""
    valid = torch.ones(1, 1, lq, lk, dtype=torch.bool, device=device)
    if causal:
        valid = valid & torch.ones(lq, lk, dtype=torch.bool, device=device).tril()
    if key_padding_mask is not None:
        valid = valid & ~key_padding_mask[:, None, None, :]
    return valid


def attention_dropout_keep(shape, dropout_p, seed, device):
    """Dropout mask (True = kept) of the attention probabilities, shape (B, H, Lq, Lk): element
    (b, h, i, j) is kept iff rand(seed, ((b * H + h) * Lq + i) * Lk + j) >= dropout_p, the
    counter-based uniform of fastgen/ops/_philox.py (Triton's tl.rand), so every backend and
    every tiling drops the same elements."""
    from . import _philox
    offsets = torch.arange(math.prod(shape), dtype=torch.int64, device=device).reshape(shape)
    return _philox.rand(seed, offsets) >= dropout_p


def dropout_scale(dropout_p):
    """1 / (1 - p) for the kept probabilities (0 when p = 1: everything is dropped)."""
    return 1.0 / (1.0 - dropout_p) if dropout_p < 1 else 0.0


def flash_attention(q, k, v, causal=False, scale=None, key_padding_mask=None, dropout_p=0.0, seed=None):
    """Math attention in fp32 (fp64 for fp64): q [B, H, Lq, Dh], k and v [B, Hkv, Lk, Dh] with
    H a multiple of Hkv (grouped-query attention: query head h reads kv head h // (H / Hkv)).
    scale defaults to 1/sqrt(Dh). Returns (out [B, H, Lq, Dh] in q's dtype, lse [B, H, Lq] the
    natural log-sum-exp of the scaled, masked scores). A query with no visible key gets out 0
    and lse -inf. dropout_p > 0 drops probabilities by `attention_dropout_keep` (seed: an
    integer tensor with one value) and scales the kept ones by 1 / (1 - dropout_p)."""
    t = math_dtype(q.dtype)
    group = q.shape[1] // k.shape[1]
    qf, kf, vf = q.to(t), k.to(t).repeat_interleave(group, 1), v.to(t).repeat_interleave(group, 1)
    scale = 1.0 / q.shape[-1] ** 0.5 if scale is None else scale
    s = (qf @ kf.transpose(-1, -2)) * scale
    valid = attention_valid(q.shape[2], k.shape[2], causal, key_padding_mask, q.device)
    s = s.masked_fill(~valid, float("-inf"))
    # softmax spelled out so that a query with no visible key gives 0 (and no NaN gradients)
    if s.shape[-1]:
        m = s.amax(-1, keepdim=True).detach()
        m = m.masked_fill(m == float("-inf"), 0)
    else:  # no keys (Lk = 0): every query sees nothing
        m = s.new_zeros(s.shape[:-1] + (1,))
    e = torch.exp(s - m)
    denom = e.sum(-1, keepdim=True)
    tiny = torch.finfo(t).tiny
    p = e / denom.clamp_min(tiny)
    lse = torch.where(denom > 0, m + torch.log(denom.clamp_min(tiny)), float("-inf")).squeeze(-1)
    if dropout_p > 0:  # lse is of the probabilities before dropout, as the kernels keep it
        keep = attention_dropout_keep(s.shape, dropout_p, seed, q.device)
        p = p * keep * dropout_scale(dropout_p)
    return (p @ vf).to(q.dtype), lse


def flash_attention_backward(grad_out, grad_lse, q, k, v, out, lse, causal=False, scale=None,
                             key_padding_mask=None, dropout_p=0.0, seed=None):
    """Gradients of flash_attention w.r.t. (q, k, v), by torch autograd through the reference."""
    with torch.enable_grad():
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        o, l = flash_attention(qq, kk, vv, causal, scale, key_padding_mask, dropout_p, seed)
        grads = torch.autograd.grad((o, l), (qq, kk, vv), (grad_out, grad_lse), allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, (q, k, v)))


def decode_attention_valid(lq, lmax, cache_seqlens):
    """[B, 1, Lq, Lmax] bool for decoding: the Lq new queries of sequence b sit at the last Lq
    of its cache_seqlens[b] positions and see every key up to their own (bottom-right causal)."""
    j = torch.arange(lmax, device=cache_seqlens.device)
    i = torch.arange(lq, device=cache_seqlens.device)
    limit = cache_seqlens.long()[:, None] - (lq - 1 - i)[None, :]      # [B, Lq]: keys j < limit
    return (j[None, None, :] < limit[:, :, None]).unsqueeze(1)


def decode_attention(q, k_cache, v_cache, cache_seqlens, scale=None):
    """Attention of a few new queries q [B, H, Lq, Dh] against a KV cache [B, Hkv, Lmax, Dh]
    holding cache_seqlens[b] valid positions per sequence (the new tokens' keys included, at
    the end). Returns out [B, H, Lq, Dh] in q's dtype (0 for a query that sees no key)."""
    t = math_dtype(q.dtype)
    group = q.shape[1] // k_cache.shape[1]
    qf = q.to(t)
    kf = k_cache.to(t).repeat_interleave(group, 1)
    vf = v_cache.to(t).repeat_interleave(group, 1)
    scale = 1.0 / q.shape[-1] ** 0.5 if scale is None else scale
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~decode_attention_valid(q.shape[2], k_cache.shape[2], cache_seqlens), float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # a row with nothing visible: 0
    return (p @ vf).to(q.dtype)
# -- normalizing flows -------------------------------------------------------------------------

COUPLING_SCALE_FNS = ("exp", "sigmoid", "tanh_exp", "atan_exp")
# FrEIA's soft clamp multiplies atan by 0.636 (about 2/pi): the constant is part of the spec.
ATAN_CLAMP_GAIN = 0.636


def coupling_log_scale(raw_scale, scale_fn="exp", clamp=2.0):
    """log s of the affine coupling's scale, from the conditioner's raw output (math dtype):
    exp:      log s = raw                               (RealNVP)
    sigmoid:  log s = log sigmoid(raw + 2)              (Glow)
    tanh_exp: log s = clamp * tanh(raw / clamp)         (soft clamp to (-clamp, clamp))
    atan_exp: log s = clamp * 0.636 * atan(raw / clamp) (FrEIA's soft clamp)."""
    if scale_fn == "exp":
        return raw_scale
    if scale_fn == "sigmoid":
        return torch.nn.functional.logsigmoid(raw_scale + 2.0)
    if scale_fn == "tanh_exp":
        return clamp * torch.tanh(raw_scale / clamp)
    if scale_fn == "atan_exp":
        return clamp * ATAN_CLAMP_GAIN * torch.atan(raw_scale / clamp)
    raise ValueError(f"fastgen: scale_fn must be one of {COUPLING_SCALE_FNS}, got {scale_fn!r}")


def affine_coupling(x_b, shift, raw_scale, scale_fn="exp", clamp=2.0, inverse=False):
    """The coupled half of an affine coupling layer, s = exp(log s) with log s from
    `coupling_log_scale(raw_scale, scale_fn, clamp)`:
        forward: y = x_b * s + shift,    logdet[b] =  sum log s over the sample's elements
        inverse: y = (x_b - shift) / s,  logdet[b] = -sum log s.
    Returns (y in x_b's dtype, logdet[B] in the math dtype)."""
    t = math_dtype(x_b.dtype)
    x, sh = x_b.to(t), shift.to(t)
    log_s = coupling_log_scale(raw_scale.to(t), scale_fn, clamp)
    if inverse:
        y, logdet = (x - sh) * torch.exp(-log_s), -per_sample_sum(log_s)
    else:
        y, logdet = x * torch.exp(log_s) + sh, per_sample_sum(log_s)
    return y.to(x_b.dtype).contiguous(), logdet


def coupling_dlog_scale(raw_scale, scale_fn="exp", clamp=2.0):
    """d log s / d raw_scale for `coupling_log_scale` (math dtype)."""
    if scale_fn == "exp":
        return torch.ones_like(raw_scale)
    if scale_fn == "sigmoid":
        return torch.sigmoid(-(raw_scale + 2.0))
    if scale_fn == "tanh_exp":
        return 1 - torch.tanh(raw_scale / clamp) ** 2
    if scale_fn == "atan_exp":
        return ATAN_CLAMP_GAIN / (1 + (raw_scale / clamp) ** 2)
    raise ValueError(f"fastgen: scale_fn must be one of {COUPLING_SCALE_FNS}, got {scale_fn!r}")


def affine_coupling_backward(grad_y, grad_logdet, x_b, shift, raw_scale, scale_fn="exp", clamp=2.0,
                             inverse=False):
    """Gradients of affine_coupling w.r.t. (x_b, raw_scale), in x_b's dtype, with g = grad_y,
    gl = grad_logdet[b], d = d log s / d raw:
        forward: d x_b = g * s,   d raw = (g * x_b * s + gl) * d
        inverse: d x_b = g / s,   d raw = -(g * y + gl) * d,   y = (x_b - shift) / s.
    The gradient of shift is grad_y (forward) or -d x_b (inverse): the caller forms it."""
    t = math_dtype(x_b.dtype)
    g, x, r = grad_y.to(t), x_b.to(t), raw_scale.to(t)
    gl = grad_logdet.to(t).reshape((-1,) + (1,) * (x_b.dim() - 1))
    log_s = coupling_log_scale(r, scale_fn, clamp)
    d = coupling_dlog_scale(r, scale_fn, clamp)
    if inverse:
        inv_s = torch.exp(-log_s)
        d_x = g * inv_s
        d_r = -(g * (x - shift.to(t)) * inv_s + gl) * d
    else:
        s = torch.exp(log_s)
        d_x = g * s
        d_r = (g * x * s + gl) * d
    return d_x.to(x_b.dtype).contiguous(), d_r.to(x_b.dtype).contiguous()


def actnorm_shape(x):
    """(N, C, S) of ActNorm's input x of shape (N, C, *spatial): S = the spatial size."""
    n, c = x.shape[0], x.shape[1]
    s = 1
    for d in x.shape[2:]:
        s *= d
    return n, c, s


def actnorm(x, loc, log_scale, inverse=False):
    """Glow's ActNorm on x (N, C, *spatial) — NCHW images or (N, D) features — with per-
    channel loc, log_scale of shape (C,):
        forward: y = (x + loc) * exp(log_scale),   logdet[b] =  S * sum_c log_scale[c]
        inverse: y = x * exp(-log_scale) - loc,    logdet[b] = -S * sum_c log_scale[c]
    S = H * W (1 for (N, D)). Returns (y in x's dtype, logdet[N] in the math dtype)."""
    t = math_dtype(x.dtype)
    _, c, s = actnorm_shape(x)
    view = (1, c) + (1,) * (x.dim() - 2)
    xm, loc_m, ls = x.to(t), loc.to(t).reshape(view), log_scale.to(t)
    total = s * ls.sum()
    if inverse:
        y, total = xm * torch.exp(-ls).reshape(view) - loc_m, -total
    else:
        y = (xm + loc_m) * torch.exp(ls).reshape(view)
    return y.to(x.dtype).contiguous(), total.expand(x.shape[0]).contiguous()


def actnorm_backward(grad_y, grad_logdet, x, loc, log_scale, inverse=False):
    """Gradients of actnorm w.r.t. (x, loc, log_scale), in x's dtype, with g = grad_y and
    sums over the batch and spatial positions of each channel:
        forward: d x = g * s,  d loc = sum g * s,  d log_scale = sum g * y + S * sum_b grad_logdet
        inverse: d x = g / s,  d loc = -sum g,     d log_scale = -sum g * x / s - S * sum_b grad_logdet."""
    t = math_dtype(x.dtype)
    _, c, s = actnorm_shape(x)
    view = (1, c) + (1,) * (x.dim() - 2)
    dims = [0] + list(range(2, x.dim()))
    g, xm = grad_y.to(t), x.to(t)
    ls = log_scale.to(t)
    gl_total = s * grad_logdet.to(t).sum()
    if inverse:
        inv_s = torch.exp(-ls).reshape(view)
        d_x = g * inv_s
        d_loc = -g.sum(dims)
        d_ls = -(g * xm * inv_s).sum(dims) - gl_total
    else:
        scale = torch.exp(ls).reshape(view)
        d_x = g * scale
        d_loc = d_x.sum(dims)
        d_ls = (d_x * (xm + loc.to(t).reshape(view))).sum(dims) + gl_total
    return d_x.to(x.dtype).contiguous(), d_loc.to(loc.dtype), d_ls.to(log_scale.dtype)


def lu_weight(perm, lower, upper, sign, log_s):
    """Glow's LU-parametrized 1x1-conv weight W = P @ L @ U with L = strictly-lower(lower) + I
    and U = strictly-upper(upper) + diag(sign * exp(log_s)) (only those parts of lower and upper
    are used)."""
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    lo = torch.tril(lower, -1) + eye
    up = torch.triu(upper, 1) + torch.diag(sign * torch.exp(log_s))
    return perm @ lo @ up


def invertible_conv1x1(x, perm, lower, upper, sign, log_s, inverse=False):
    """Glow's invertible 1x1 convolution with the LU-parametrized weight W = lu_weight(...) on
    x (N, C, *spatial) (also (N, C)):
        forward: y[n] = W @ x[n],       logdet[b] =  S * sum(log_s)
        inverse: y[n] = W^-1 @ x[n],    logdet[b] = -S * sum(log_s)
    per spatial position, S = H * W. Math in fp32 (fp64 for fp64 x); returns (y in x's dtype,
    logdet[N] in the math dtype)."""
    t = math_dtype(x.dtype)
    n, c, s = actnorm_shape(x)
    w = lu_weight(*(p.to(t) for p in (perm, lower, upper, sign, log_s)))
    if inverse:
        w = torch.linalg.inv(w)
    y = torch.einsum("oc,nc...->no...", w, x.to(t))
    total = s * log_s.to(t).sum()
    return y.to(x.dtype).contiguous(), (-total if inverse else total).expand(n).contiguous()


def invertible_conv1x1_backward(grad_y, grad_logdet, x, perm, lower, upper, sign, log_s, inverse=False):
    """Gradients of invertible_conv1x1 w.r.t. (x, lower, upper, log_s); perm and sign are
    constants. With M the applied matrix (W forward, W^-1 inverse), X, G = x, grad_y as (N, C, S):
        d x = M^T G,   d M = sum_n G[n] X[n]^T,   d W = d M (forward) or -M^T d M M^T (inverse),
        A = P^T d W:   d lower = strictly-lower(A U^T),   d upper = strictly-upper(L^T A),
        d log_s = diag(L^T A) * sign * exp(log_s) +- S * sum_b grad_logdet[b]."""
    t = math_dtype(x.dtype)
    n, c, s = actnorm_shape(x)
    p, lo_raw, up_raw, sg, ls = (v.to(t) for v in (perm, lower, upper, sign, log_s))
    eye = torch.eye(c, dtype=t, device=x.device)
    lo = torch.tril(lo_raw, -1) + eye
    up = torch.triu(up_raw, 1) + torch.diag(sg * torch.exp(ls))
    w = p @ lo @ up
    m = torch.linalg.inv(w) if inverse else w
    xm, g = x.to(t).reshape(n, c, s), grad_y.to(t).reshape(n, c, s)
    d_x = torch.einsum("oc,nos->ncs", m, g)
    d_m = torch.einsum("nos,ncs->oc", g, xm)
    d_w = -m.t() @ d_m @ m.t() if inverse else d_m
    a = p.t() @ d_w
    d_lower = torch.tril(a @ up.t(), -1)
    d_up = lo.t() @ a
    gl_total = s * grad_logdet.to(t).sum()
    d_ls = torch.diagonal(d_up) * sg * torch.exp(ls) + (-gl_total if inverse else gl_total)
    return (d_x.reshape(x.shape).to(x.dtype).contiguous(), d_lower.to(lower.dtype),
            torch.triu(d_up, 1).to(upper.dtype), d_ls.to(log_s.dtype))


FLOW_PRIORS = ("gaussian", "logistic")


def flow_prior_log_prob(z, prior="gaussian"):
    """log p(z) per sample under a standard prior, summed over the non-batch dims:
    gaussian: sum -z^2/2 - log(2 pi)/2;  logistic: sum -(softplus(z) + softplus(-z))."""
    t = math_dtype(z.dtype)
    zm = z.to(t)
    if prior == "gaussian":
        return per_sample_sum(-0.5 * zm * zm) - 0.5 * math.log(2 * math.pi) * math.prod(z.shape[1:])
    if prior == "logistic":
        return -per_sample_sum(torch.nn.functional.softplus(zm) + torch.nn.functional.softplus(-zm))
    raise ValueError(f"fastgen: prior must be one of {FLOW_PRIORS}, got {prior!r}")


def flow_nll(z, logdet, prior="gaussian", n_bins=None):
    """Per-sample negative log-likelihood of a flow, z = f(x) with logdet = log|det df/dx|:
        nll[b] = -(log p(z[b]) + logdet[b])                              (nats)
    and with n_bins (data quantized to n_bins levels per dim and dequantized to [0, 1) or any
    interval of width 1 before the flow), the discrete model's bits per dimension, D = the
    number of dims per sample:
        bpd[b] = (nll[b] + D * log(n_bins)) / (D * log(2)).
    The D log(n_bins) term is the dequantization's change of volume: one bin of the data
    has width 1/n_bins per dim. Returns shape (B,) in the math dtype of z."""
    t = math_dtype(z.dtype)
    nll = -(flow_prior_log_prob(z, prior) + logdet.to(t))
    if n_bins is None:
        return nll
    d = math.prod(z.shape[1:])
    return (nll + d * math.log(n_bins)) / (d * math.log(2.0))


def flow_nll_backward(grad_nll, z, prior="gaussian", n_bins=None):
    """Gradient of flow_nll w.r.t. z, in z's dtype: g * k * dprior, with dprior = z (gaussian) or
    tanh(z / 2) (logistic), k = 1 or 1 / (D log 2) with n_bins. (d logdet = -g * k: the caller
    forms it.)"""
    t = math_dtype(z.dtype)
    zm = z.to(t)
    k = 1.0 if n_bins is None else 1.0 / (math.prod(z.shape[1:]) * math.log(2.0))
    g = grad_nll.to(t).reshape((-1,) + (1,) * (z.dim() - 1)) * k
    dprior = zm if prior == "gaussian" else torch.tanh(0.5 * zm)
    return (g * dprior).to(z.dtype).contiguous()
# -- diffusion: noise schedules and sampler steps ---------------------------------------------
# Written the way the DDPM/DDIM papers (and diffusers' schedulers) state them, one quantity at
# a time; the kernels fold the same math into a few per-step coefficients.

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


def _per_sample(values, like):
    """(B,) or (1,) per-sample values shaped to broadcast against `like` (B, ...)."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def _timestep_alphas(timesteps, alphas_cumprod, like):
    t = math_dtype(like.dtype)
    i = timesteps.to(alphas_cumprod.device).reshape(-1).long()
    n = alphas_cumprod.shape[0]
    # a t outside [0, T) gives NaN (the op's check rejects host values first; device values are
    # not read on the host, and the kernels give NaN for them too)
    a = alphas_cumprod.to(t)[i.clamp(0, n - 1)].masked_fill((i < 0) | (i >= n), float("nan"))
    return _per_sample(a, like)


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    """q(x_t | x_0): sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise, abar_t = alphas_cumprod[t]
    per sample (timesteps: integer tensor with B entries, or one shared by all)."""
    t = math_dtype(original_samples.dtype)
    a = _timestep_alphas(timesteps, alphas_cumprod, original_samples)
    out = a.sqrt() * original_samples.to(t) + (1 - a).sqrt() * noise.to(t)
    return out.to(original_samples.dtype).contiguous()


def get_velocity(sample, noise, timesteps, alphas_cumprod):
    """v-prediction target: sqrt(abar_t) * noise - sqrt(1 - abar_t) * sample."""
    t = math_dtype(sample.dtype)
    a = _timestep_alphas(timesteps, alphas_cumprod, sample)
    out = a.sqrt() * noise.to(t) - (1 - a).sqrt() * sample.to(t)
    return out.to(sample.dtype).contiguous()


def _step_alphas(timestep, alphas_cumprod, alphas_cumprod_prev, dtype):
    """abar_t and abar_prev as 0-d tensors of the math dtype. alphas_cumprod_prev[t] holds the
    cumulative alpha of the timestep the sampler steps to from t (set by the scheduler)."""
    t = timestep.to(alphas_cumprod.device).reshape(()).long()
    return alphas_cumprod[t].to(dtype), alphas_cumprod_prev[t].to(dtype)


def pred_original_and_epsilon(model_output, sample, alpha_prod_t, prediction_type):
    """(x0, eps) implied by the model output, in the math dtype (before any clipping)."""
    a, b = alpha_prod_t, 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - b.sqrt() * model_output) / a.sqrt(), model_output
    if prediction_type == "sample":
        return model_output, (sample - a.sqrt() * model_output) / b.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * sample - b.sqrt() * model_output, a.sqrt() * model_output + b.sqrt() * sample
    raise ValueError(f"fastgen: prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def dynamic_threshold(x0, ratio, max_value):
    """Imagen's dynamic thresholding scale per sample: s = clamp(quantile(|x0|, ratio), 1, max),
    shape (B,), in fp32 (fp64 for fp64)."""
    flat = x0.reshape(x0.shape[0], -1).abs().to(math_dtype(x0.dtype))
    return torch.quantile(flat, ratio, dim=1).clamp(1, max_value)


def guided(model_output, model_output_uncond, guidance_scale, dtype):
    """Classifier-free guidance u + s (c - u) in `dtype` when an unconditional output is given
    (not empty); the model output itself otherwise."""
    m = model_output.to(dtype)
    if model_output_uncond.numel() == 0:
        return m
    u = model_output_uncond.to(dtype)
    return u + guidance_scale * (m - u)


def _limit_x0(x0, threshold, clip_sample, clip_sample_range):
    if threshold.numel():
        s = _per_sample(threshold.to(x0.dtype), x0)
        return torch.clamp(x0, -s, s) / s
    if clip_sample:
        return x0.clamp(-clip_sample_range, clip_sample_range)
    return x0


def step_noise(noise, seed, seed_offset, sample):
    """The noise a stochastic step adds: `noise` as passed, or, with a `seed` (0-d integer
    tensor or int), in-kernel noise: element i (flat, row-major) of the step gets
    Philox randn(seed, seed_offset + i) in float32 (fastgen/ops/_philox.py, Triton's tl.randn)."""
    if seed is None:
        return noise
    from . import _philox
    return _philox.randn_like(sample, seed, seed_offset)


def ddim_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
              threshold, model_output_uncond, guidance_scale=1.0, eta=0.0, prediction_type="epsilon",
              clip_sample=False, clip_sample_range=1.0, use_clipped_model_output=False, seed=None,
              seed_offset=0):
    """One DDIM update x_t -> x_prev (Song et al. eq. 12). `threshold`: per-sample dynamic
    threshold s (B,), or empty for none (then `clip_sample` clamps x0 to +-clip_sample_range).
    `noise`: like sample, or empty when eta == 0. `model_output_uncond` (or empty): the
    unconditional output for classifier-free guidance with `guidance_scale`. `seed` (or None):
    in-kernel noise instead of `noise`, see `step_noise`.
    Returns (prev_sample, pred_original_sample)."""
    t = math_dtype(sample.dtype)
    a, a_prev = _step_alphas(timestep, alphas_cumprod, alphas_cumprod_prev, t)
    x, m = sample.to(t), guided(model_output, model_output_uncond, guidance_scale, t)
    x0, eps = pred_original_and_epsilon(m, x, a, prediction_type)
    x0 = _limit_x0(x0, threshold, clip_sample, clip_sample_range)
    # sigma_t^2 = eta^2 (1 - a_prev) r, r = (1 - a / a_prev) / (1 - a)
    r = (a_prev - a) / (a_prev * (1 - a))
    std = eta * ((1 - a_prev) * r).sqrt()
    if use_clipped_model_output:
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    # the direction's weight sqrt(1 - a_prev - sigma^2) with 1 - r = a (1 - a_prev) /
    # (a_prev (1 - a)) written out: the plain difference cancels when it is tiny (eta ~ 1 with
    # a ~ 0 or a_prev ~ 1) and its square root turns an ulp into ~1e-4 (diffusers computes it
    # that way; at zero terminal SNR with eta = 1 it even gets NaN). Clamped at 0: negative
    # only for eta > 1.
    one_minus_r = a * (1 - a_prev) / (a_prev * (1 - a))
    direction = ((1 - a_prev) * ((1 - eta * eta) + eta * eta * one_minus_r)).clamp_min(0).sqrt()
    prev = a_prev.sqrt() * x0 + direction * eps
    if eta > 0:
        prev = prev + std * step_noise(noise, seed, seed_offset, sample).to(t)
    return prev.to(sample.dtype).contiguous(), x0.to(sample.dtype).contiguous()


def ddpm_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
              threshold, model_output_uncond, guidance_scale=1.0, prediction_type="epsilon",
              variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0, seed=None,
              seed_offset=0):
    """One ancestral DDPM update (Ho et al. eq. 6-7): the posterior mean of q(x_prev | x_t, x0)
    plus std * noise when t > 0 and `noise` is not empty. fixed_small: the posterior variance
    (clamped at 1e-20); fixed_large: beta_t; the *_log variants compute the same std through
    the log (exp(log(var) / 2)). Guidance as in `ddim_step`.
    Returns (prev_sample, pred_original_sample)."""
    t = math_dtype(sample.dtype)
    a, a_prev = _step_alphas(timestep, alphas_cumprod, alphas_cumprod_prev, t)
    x, m = sample.to(t), guided(model_output, model_output_uncond, guidance_scale, t)
    x0, _ = pred_original_and_epsilon(m, x, a, prediction_type)
    x0 = _limit_x0(x0, threshold, clip_sample, clip_sample_range)
    alpha_t = a / a_prev
    beta_t = 1 - alpha_t
    mean = (a_prev.sqrt() * beta_t / (1 - a)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a)) * x
    posterior_var = ((1 - a_prev) / (1 - a) * beta_t).clamp_min(1e-20)
    if variance_type == "fixed_small":
        std = posterior_var.sqrt()
    elif variance_type == "fixed_small_log":
        std = torch.exp(0.5 * torch.log(posterior_var))
    elif variance_type == "fixed_large":
        std = beta_t.sqrt()
    elif variance_type == "fixed_large_log":
        std = torch.exp(0.5 * torch.log(beta_t))
    else:
        raise ValueError(f"fastgen: variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
    prev = mean
    if (noise.numel() or seed is not None) and int(timestep) > 0:
        prev = prev + std * step_noise(noise, seed, seed_offset, sample).to(t)
    return prev.to(sample.dtype).contiguous(), x0.to(sample.dtype).contiguous()


def flow_euler_step(model_output, sample, noise, step_index, sigmas, model_output_uncond,
                    guidance_scale=1.0):
    """Flow matching / rectified flow Euler step from sigma = sigmas[i] to sigma_next =
    sigmas[i + 1] with velocity v = model_output: x + (sigma_next - sigma) * v. With `noise`
    (not empty), the stochastic variant: (1 - sigma_next) * (x - sigma * v) + sigma_next * noise.
    Guidance as in `ddim_step`."""
    t = math_dtype(sample.dtype)
    i = step_index.to(sigmas.device).reshape(()).long()
    s, s_next = sigmas[i].to(t), sigmas[i + 1].to(t)
    x, v = sample.to(t), guided(model_output, model_output_uncond, guidance_scale, t)
    if noise.numel():
        prev = (1 - s_next) * (x - s * v) + s_next * noise.to(t)
    else:
        prev = x + (s_next - s) * v
    return prev.to(sample.dtype).contiguous()


def flow_heun_step(model_output, model_output_next, sample, step_index, sigmas):
    """Heun's (trapezoidal) corrector: x + (sigma_next - sigma) * (v + v_next) / 2, where v_next
    is the velocity at the Euler predictor x + (sigma_next - sigma) * v."""
    t = math_dtype(sample.dtype)
    i = step_index.to(sigmas.device).reshape(()).long()
    dt = sigmas[i + 1].to(t) - sigmas[i].to(t)
    prev = sample.to(t) + dt * 0.5 * (model_output.to(t) + model_output_next.to(t))
    return prev.to(sample.dtype).contiguous()
# -- GAN / SimCLR family: bias + activation, GroupNorm + SiLU, InfoNCE ---------------------------

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
