"""The reference for normalizing flows: affine coupling, ActNorm, invertible 1x1 conv, NLL.

Part of the spec every backend is tested against (fastgen/ops/reference/__init__.py)."""
import math

import torch

from ._common import math_dtype, per_sample_sum


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
