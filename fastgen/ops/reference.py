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


def vq_quantize(z, codebook, beta, legacy=True):
    """Nearest code, straight-through and taming's VectorQuantizer2 loss, for z [N, D]:
    z_q = z + (codebook[idx] - z).detach();
    legacy:     loss = mean((sg(z_q) - z)^2) + beta * mean((z_q - sg(z))^2)
    not legacy: loss = beta * mean((sg(z_q) - z)^2) + mean((z_q - sg(z))^2)."""
    idx, _ = vq_nearest(z.detach(), codebook.detach())
    e = codebook[idx]
    commit = torch.mean((e.detach() - z) ** 2)
    embed = torch.mean((e - z.detach()) ** 2)
    loss = commit + beta * embed if legacy else beta * commit + embed
    z_q = z + (e - z).detach()
    return z_q, loss, idx


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
