"""Normalizing flows: the affine coupling's coupled half with its log-determinant reduced in
the same pass, ActNorm, and the flow negative log-likelihood (prior log-prob fused with the
logdet sum, optionally in bits per dimension)."""
import math
import numbers

import torch

from ..kernels import flow as _triton_flow
from . import _checks
from ._common import math_dtype
from ._registry import FusedOp

COUPLING_SCALE_FNS = ("exp", "sigmoid", "tanh_exp", "atan_exp")
FLOW_PRIORS = ("gaussian", "logistic")


def _per_sample_out(t):
    return t.new_empty((t.shape[0],), dtype=math_dtype(t.dtype))


def _contiguous_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


# -- affine coupling ----------------------------------------------------------------------------

def _check_scale_args(scale_fn, clamp, inverse):
    if not isinstance(scale_fn, str):
        raise TypeError(f"fastgen: scale_fn must be a str, got {type(scale_fn).__name__}")
    if scale_fn not in COUPLING_SCALE_FNS:
        raise ValueError(f"fastgen: scale_fn must be one of {COUPLING_SCALE_FNS}, got {scale_fn!r}")
    if isinstance(clamp, bool) or not isinstance(clamp, numbers.Real):
        raise TypeError(f"fastgen: clamp must be a float, got {type(clamp).__name__}")
    if not (math.isfinite(clamp) and clamp > 0):
        raise ValueError(f"fastgen: clamp must be a finite float > 0, got {clamp!r}")
    if not isinstance(inverse, bool):
        raise TypeError(f"fastgen: inverse must be a bool, got {type(inverse).__name__}")


def _check_coupling(x_b, shift, raw_scale, scale_fn="exp", clamp=2.0, inverse=False):
    _checks.float_tensor("x_b", x_b)
    _checks.batched("x_b", x_b)
    _checks.like("x_b", x_b, "shift", shift)
    _checks.like("x_b", x_b, "raw_scale", raw_scale)
    _check_scale_args(scale_fn, clamp, inverse)


def _fake_coupling(x_b, shift, raw_scale, scale_fn="exp", clamp=2.0, inverse=False):
    return _contiguous_like(x_b), _per_sample_out(x_b)


def _check_coupling_backward(grad_y, grad_logdet, x_b, shift, raw_scale, scale_fn="exp", clamp=2.0,
                             inverse=False):
    _check_coupling(x_b, shift, raw_scale, scale_fn, clamp, inverse)
    _checks.like("x_b", x_b, "grad_y", grad_y)
    _checks.per_sample("x_b", x_b, "grad_logdet", grad_logdet)


def _fake_coupling_backward(grad_y, grad_logdet, x_b, shift, raw_scale, scale_fn="exp", clamp=2.0,
                            inverse=False):
    return _contiguous_like(x_b), _contiguous_like(x_b)


_coupling_backward = FusedOp(
    "affine_coupling_backward",
    "Tensor grad_y, Tensor grad_logdet, Tensor x_b, Tensor shift, Tensor raw_scale, "
    "str scale_fn='exp', float clamp=2.0, bool inverse=False", "(Tensor, Tensor)",
    reference="flow.affine_coupling_backward", fake=_fake_coupling_backward,
    check=_check_coupling_backward, triton=_triton_flow.affine_coupling_backward, native=True,
    native_checks=True)


def _setup_coupling(ctx, inputs, keyword_only_inputs, output):
    x_b, shift, raw_scale = inputs[:3]
    ctx.args = tuple(inputs[3:])
    ctx.save_for_backward(x_b, shift, raw_scale)
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _coupling_grads(ctx, grad_y, grad_logdet):
    x_b, shift, raw_scale = ctx.saved_tensors
    args = ctx.args  # (scale_fn, clamp, inverse): autograd fills in the schema defaults
    inverse = args[2]
    if grad_y is None:
        grad_y = torch.zeros_like(x_b)
    if grad_logdet is None:
        grad_logdet = x_b.new_zeros((x_b.shape[0],), dtype=math_dtype(x_b.dtype))
    d_x = d_raw = d_shift = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[2] or (inverse and ctx.needs_input_grad[1]):
        d_x, d_raw = _coupling_backward(grad_y, grad_logdet, x_b, shift, raw_scale, *args,
                                        backend=ctx.backend)
    if ctx.needs_input_grad[1]:
        # y depends on shift with slope 1 (forward) or -1/s (inverse, = -d x_b / g): no kernel.
        d_shift = -d_x if inverse else grad_y.to(shift.dtype)
    return (d_x if ctx.needs_input_grad[0] else None, d_shift,
            d_raw if ctx.needs_input_grad[2] else None) + (None,) * len(ctx.args)


_coupling = FusedOp(
    "affine_coupling",
    "Tensor x_b, Tensor shift, Tensor raw_scale, str scale_fn='exp', float clamp=2.0, "
    "bool inverse=False", "(Tensor, Tensor)",
    reference="flow.affine_coupling", fake=_fake_coupling, check=_check_coupling,
    triton=_triton_flow.affine_coupling, native=True, native_checks=True,
    autograd=(_coupling_grads, _setup_coupling))


def affine_coupling(x_b, shift, raw_scale, scale_fn="exp", clamp=2.0, inverse=False, *, backend=None):
    """The coupled half of an affine coupling layer and its log-determinant, in one pass.

    With log s from `raw_scale` by `scale_fn` (math in fp32, fp64 for fp64 inputs):
        "exp"       log s = raw                                  (RealNVP)
        "sigmoid"   log s = log sigmoid(raw + 2)                 (Glow)
        "tanh_exp"  log s = clamp * tanh(raw / clamp)
        "atan_exp"  log s = clamp * 0.636 * atan(raw / clamp)    (FrEIA)
    forward:  y = x_b * s + shift,    logdet[b] =  sum of log s over sample b
    inverse:  y = (x_b - shift) / s,  logdet[b] = -sum of log s over sample b
    so `affine_coupling(*affine_coupling(x, t, r)[0:1], t, r, inverse=True)` returns x and the
    two logdets cancel. `clamp` (> 0) only matters for "tanh_exp" and "atan_exp".

    Args:
        x_b, shift, raw_scale: one shape (B, ...) and one float dtype (fp16, bf16, fp32, fp64)
            on one device; any strides.
        backend: see `fastgen.use_backend`.

    Returns:
        (y, logdet): y like x_b (contiguous), logdet (B,) fp32 (fp64 for fp64 inputs).
        Differentiable w.r.t. x_b, shift and raw_scale, through both outputs.
    """
    _check_scale_args(scale_fn, clamp, inverse)
    return _coupling(x_b, shift, raw_scale, scale_fn, float(clamp), inverse, backend=backend)


# -- actnorm ------------------------------------------------------------------------------------

def _check_actnorm(x, loc, log_scale, inverse=False):
    _checks.float_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"fastgen: x must have shape (N, C, *spatial) (NCHW or (N, D)), got "
                         f"{tuple(x.shape)}")
    c = x.shape[1]
    for name, p in (("loc", loc), ("log_scale", log_scale)):
        _checks.float_tensor(name, p)
        if p.shape != (c,):
            raise ValueError(f"fastgen: {name} must have shape ({c},) (one entry per channel of x), "
                             f"got {tuple(p.shape)}")
        if p.dtype != x.dtype:
            raise TypeError(f"fastgen: {name} has dtype {p.dtype} but x has {x.dtype}")
        if p.device != x.device:
            raise ValueError(f"fastgen: {name} is on {p.device} but x is on {x.device}")
    if not isinstance(inverse, bool):
        raise TypeError(f"fastgen: inverse must be a bool, got {type(inverse).__name__}")


def _fake_actnorm(x, loc, log_scale, inverse=False):
    return _contiguous_like(x), _per_sample_out(x)


def _check_actnorm_backward(grad_y, grad_logdet, x, loc, log_scale, inverse=False):
    _check_actnorm(x, loc, log_scale, inverse)
    _checks.like("x", x, "grad_y", grad_y)
    _checks.per_sample("x", x, "grad_logdet", grad_logdet)


def _fake_actnorm_backward(grad_y, grad_logdet, x, loc, log_scale, inverse=False):
    return _contiguous_like(x), torch.empty_like(loc), torch.empty_like(log_scale)


_actnorm_backward = FusedOp(
    "actnorm_backward",
    "Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor loc, Tensor log_scale, bool inverse=False",
    "(Tensor, Tensor, Tensor)",
    reference="flow.actnorm_backward", fake=_fake_actnorm_backward, check=_check_actnorm_backward,
    triton=_triton_flow.actnorm_backward, native=True, native_checks=True)


def _setup_actnorm(ctx, inputs, keyword_only_inputs, output):
    x, loc, log_scale, inverse = inputs
    ctx.inverse = inverse
    ctx.save_for_backward(x, loc, log_scale)
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _actnorm_grads(ctx, grad_y, grad_logdet):
    x, loc, log_scale = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    if grad_logdet is None:
        grad_logdet = x.new_zeros((x.shape[0],), dtype=math_dtype(x.dtype))
    if not any(ctx.needs_input_grad[:3]):
        return None, None, None, None
    d_x, d_loc, d_ls = _actnorm_backward(grad_y, grad_logdet, x, loc, log_scale, ctx.inverse,
                                         backend=ctx.backend)
    needs = ctx.needs_input_grad
    return (d_x if needs[0] else None, d_loc if needs[1] else None, d_ls if needs[2] else None, None)


_actnorm = FusedOp(
    "actnorm", "Tensor x, Tensor loc, Tensor log_scale, bool inverse=False", "(Tensor, Tensor)",
    reference="flow.actnorm", fake=_fake_actnorm, check=_check_actnorm,
    triton=_triton_flow.actnorm, native=True, native_checks=True,
    autograd=(_actnorm_grads, _setup_actnorm))


def actnorm(x, loc, log_scale, inverse=False, *, backend=None):
    """Glow's activation normalization with its log-determinant.

        forward: y = (x + loc) * exp(log_scale),   logdet[b] =  S * sum(log_scale)
        inverse: y = x * exp(-log_scale) - loc,    logdet[b] = -S * sum(log_scale)

    per channel, S = H * W for NCHW input (1 for (N, D)); any (N, C, *spatial) works.
    Data-dependent initialization (loc = -mean, log_scale = -log std) lives in
    `fastgen.nn.flows.ActNorm`.

    Args:
        x: (N, C, ...) float tensor (fp16, bf16, fp32, fp64), any strides.
        loc, log_scale: (C,), x's dtype and device.
        backend: see `fastgen.use_backend`.

    Returns:
        (y, logdet): y like x (contiguous), logdet (N,) fp32 (fp64 for fp64). Differentiable
        w.r.t. x, loc and log_scale, through both outputs.
    """
    if not isinstance(inverse, bool):
        raise TypeError(f"fastgen: inverse must be a bool, got {type(inverse).__name__}")
    return _actnorm(x, loc, log_scale, inverse, backend=backend)


# -- invertible 1x1 convolution -----------------------------------------------------------------

def _check_invconv(x, perm, lower, upper, sign, log_s, inverse=False):
    _checks.float_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"fastgen: x must have shape (N, C, *spatial) (NCHW or (N, C)), got "
                         f"{tuple(x.shape)}")
    c = x.shape[1]
    _checks.float_tensor("log_s", log_s)
    for name, p, shape in (("log_s", log_s, (c,)), ("perm", perm, (c, c)), ("lower", lower, (c, c)),
                           ("upper", upper, (c, c)), ("sign", sign, (c,))):
        _checks.float_tensor(name, p)
        if p.shape != shape:
            raise ValueError(f"fastgen: {name} must have shape {shape} (C = {c}, the channels of x), "
                             f"got {tuple(p.shape)}")
        if p.dtype != log_s.dtype:
            raise TypeError(f"fastgen: {name} has dtype {p.dtype} but log_s has {log_s.dtype}")
        if p.device != x.device:
            raise ValueError(f"fastgen: {name} is on {p.device} but x is on {x.device}")
    if not isinstance(inverse, bool):
        raise TypeError(f"fastgen: inverse must be a bool, got {type(inverse).__name__}")
    _check_invconv_values(perm, sign)


def _check_invconv_values(perm, sign):
    """W = P L U must be invertible: P a permutation and diag(U) = sign * exp(log_s) nonzero.
    Host tensors only (on a GPU reading the values would be a sync); the C++ check is the same."""
    if _checks.host_readable(sign):
        bad = ((sign != 1) & (sign != -1)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise ValueError(f"fastgen: sign must hold +1 or -1 (the signs of W's diagonal), got "
                             f"{float(sign[i]):g} at channel {i}")
    if _checks.host_readable(perm) and perm.numel():
        ones = perm == 1
        if not (bool(((perm == 0) | ones).all()) and bool((ones.sum(0) == 1).all())
                and bool((ones.sum(1) == 1).all())):
            raise ValueError("fastgen: perm must be a permutation matrix (0/1 entries, one 1 in each "
                             "row and column)")


def _fake_invconv(x, perm, lower, upper, sign, log_s, inverse=False):
    return _contiguous_like(x), _per_sample_out(x)


def _check_invconv_backward(grad_y, grad_logdet, x, perm, lower, upper, sign, log_s, inverse=False):
    _check_invconv(x, perm, lower, upper, sign, log_s, inverse)
    _checks.like("x", x, "grad_y", grad_y)
    _checks.per_sample("x", x, "grad_logdet", grad_logdet)


def _fake_invconv_backward(grad_y, grad_logdet, x, perm, lower, upper, sign, log_s, inverse=False):
    return (_contiguous_like(x), _contiguous_like(lower), _contiguous_like(upper),
            _contiguous_like(log_s))


_invconv_backward = FusedOp(
    "invertible_conv1x1_backward",
    "Tensor grad_y, Tensor grad_logdet, Tensor x, Tensor perm, Tensor lower, Tensor upper, "
    "Tensor sign, Tensor log_s, bool inverse=False", "(Tensor, Tensor, Tensor, Tensor)",
    reference="flow.invertible_conv1x1_backward", fake=_fake_invconv_backward,
    check=_check_invconv_backward, triton=_triton_flow.invertible_conv1x1_backward, native=True,
    native_checks=True)


def _setup_invconv(ctx, inputs, keyword_only_inputs, output):
    ctx.inverse = inputs[6]
    ctx.save_for_backward(*inputs[:6])
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _invconv_grads(ctx, grad_y, grad_logdet):
    x, perm, lower, upper, sign, log_s = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if needs[1] or needs[4]:
        raise RuntimeError("fastgen.invertible_conv1x1: perm and sign are constants of the LU "
                           "parametrization and have no gradient; pass them without requires_grad")
    if not (needs[0] or needs[2] or needs[3] or needs[5]):
        return (None,) * 7
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    if grad_logdet is None:
        grad_logdet = x.new_zeros((x.shape[0],), dtype=math_dtype(x.dtype))
    d_x, d_lower, d_upper, d_ls = _invconv_backward(grad_y, grad_logdet, x, perm, lower, upper, sign,
                                                    log_s, ctx.inverse, backend=ctx.backend)
    return (d_x if needs[0] else None, None, d_lower if needs[2] else None,
            d_upper if needs[3] else None, None, d_ls if needs[5] else None, None)


_invconv = FusedOp(
    "invertible_conv1x1",
    "Tensor x, Tensor perm, Tensor lower, Tensor upper, Tensor sign, Tensor log_s, bool inverse=False",
    "(Tensor, Tensor)",
    reference="flow.invertible_conv1x1", fake=_fake_invconv, check=_check_invconv,
    triton=_triton_flow.invertible_conv1x1, native=True, native_checks=True,
    autograd=(_invconv_grads, _setup_invconv))


def invertible_conv1x1(x, perm, lower, upper, sign, log_s, inverse=False, *, backend=None):
    """Glow's invertible 1x1 convolution with the LU-parametrized weight and its log-determinant,
    weight build and all, as one op:

        W = perm @ (strictly-lower(lower) + I) @ (strictly-upper(upper) + diag(sign * exp(log_s)))
        forward: y[n] = W @ x[n],      logdet[b] =  S * sum(log_s)
        inverse: y[n] = W^-1 @ x[n],   logdet[b] = -S * sum(log_s)

    at every spatial position (S = H * W; 1 for (N, C) input), so the determinant never needs
    `slogdet`. Only the strictly lower part of `lower` and the strictly upper part of `upper`
    are used. For sampling without gradients, `fastgen.nn.InvConv2dLU` caches W^-1 instead.

    Args:
        x: (N, C, *spatial) float tensor (fp16, bf16, fp32, fp64), any strides; math in fp32
            (fp64 for fp64 x).
        perm: (C, C) permutation matrix; sign: (C,) signs of U's diagonal; both constants.
        lower, upper: (C, C); log_s: (C,). All five share one float dtype and x's device.
        backend: see `fastgen.use_backend`.

    Returns:
        (y, logdet): y like x (contiguous), logdet (N,) fp32 (fp64 for fp64 x). Differentiable
        w.r.t. x, lower, upper and log_s, through both outputs.
    """
    if not isinstance(inverse, bool):
        raise TypeError(f"fastgen: inverse must be a bool, got {type(inverse).__name__}")
    return _invconv(x, perm, lower, upper, sign, log_s, inverse, backend=backend)


# -- flow NLL -----------------------------------------------------------------------------------

def _check_nll_args(prior, n_bins):
    if not isinstance(prior, str):
        raise TypeError(f"fastgen: prior must be a str, got {type(prior).__name__}")
    if prior not in FLOW_PRIORS:
        raise ValueError(f"fastgen: prior must be one of {FLOW_PRIORS}, got {prior!r}")
    if n_bins is not None:
        if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral):
            raise TypeError(f"fastgen: n_bins must be an int or None, got {type(n_bins).__name__}")
        if n_bins < 1:
            raise ValueError(f"fastgen: n_bins must be >= 1, got {n_bins}")


def _check_nll_z(z, n_bins):
    _checks.float_tensor("z", z)
    _checks.batched("z", z)
    if n_bins is not None and math.prod(z.shape[1:]) == 0:
        raise ValueError(f"fastgen: bits per dim need at least one dim per sample; z has shape "
                         f"{tuple(z.shape)}")


def _check_nll(z, logdet, prior="gaussian", n_bins=None):
    _check_nll_args(prior, n_bins)
    _check_nll_z(z, n_bins)
    _checks.per_sample("z", z, "logdet", logdet)


def _fake_nll(z, logdet, prior="gaussian", n_bins=None):
    return _per_sample_out(z)


def _check_nll_backward(grad_nll, z, prior="gaussian", n_bins=None):
    _check_nll_args(prior, n_bins)
    _check_nll_z(z, n_bins)
    _checks.per_sample("z", z, "grad_nll", grad_nll)


def _fake_nll_backward(grad_nll, z, prior="gaussian", n_bins=None):
    return _contiguous_like(z)


_nll_backward = FusedOp(
    "flow_nll_backward", "Tensor grad_nll, Tensor z, str prior='gaussian', int? n_bins=None", "Tensor",
    reference="flow.flow_nll_backward", fake=_fake_nll_backward, check=_check_nll_backward,
    triton=_triton_flow.flow_nll_backward, native=True, native_checks=True)


def _setup_nll(ctx, inputs, keyword_only_inputs, output):
    z, logdet, prior, n_bins = inputs
    ctx.prior, ctx.n_bins = prior, n_bins
    ctx.logdet_dtype = logdet.dtype
    ctx.save_for_backward(z)
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _nll_grads(ctx, grad_nll):
    (z,) = ctx.saved_tensors
    d_z = d_logdet = None
    if ctx.needs_input_grad[0]:
        d_z = _nll_backward(grad_nll, z, ctx.prior, ctx.n_bins, backend=ctx.backend)
    if ctx.needs_input_grad[1]:
        # nll is linear in logdet with slope -1 (nats) or -1 / (D log 2) (bits/dim): no kernel
        k = 1.0 if ctx.n_bins is None else 1.0 / (math.prod(z.shape[1:]) * math.log(2.0))
        d_logdet = (grad_nll * -k).to(ctx.logdet_dtype)
    return d_z, d_logdet, None, None


_nll = FusedOp(
    "flow_nll", "Tensor z, Tensor logdet, str prior='gaussian', int? n_bins=None", "Tensor",
    reference="flow.flow_nll", fake=_fake_nll, check=_check_nll,
    triton=_triton_flow.flow_nll, native=True, native_checks=True,
    autograd=(_nll_grads, _setup_nll))


def flow_nll(z, logdet, prior="gaussian", n_bins=None, *, backend=None):
    """Per-sample negative log-likelihood of a normalizing flow, prior and logdet fused in one
    pass over z:

        nll[b] = -(log p(z[b]) + logdet[b])                       (nats)
        log p(z) = sum_j -z_j^2 / 2 - D log(2 pi) / 2              prior="gaussian"
        log p(z) = sum_j -(softplus(z_j) + softplus(-z_j))         prior="logistic" (NICE)

    With `n_bins` (data with n_bins levels per dim, dequantized with uniform noise to an
    interval of width 1, e.g. x = (k + u) / n_bins), the result is bits per dimension of the
    discrete data, D = dims per sample:

        bpd[b] = (nll[b] + D * log(n_bins)) / (D * log 2)

    Args:
        z: (B, ...) float tensor (fp16, bf16, fp32, fp64), any strides.
        logdet: (B,) float tensor, the flow's log|det dz/dx| per sample.
        prior: "gaussian" or "logistic".
        n_bins: None (nats) or an int >= 1 (bits per dim).
        backend: see `fastgen.use_backend`.

    Returns:
        (B,) fp32 (fp64 for fp64 z), differentiable w.r.t. z and logdet.
    """
    _check_nll_args(prior, n_bins)
    return _nll(z, logdet, prior, None if n_bins is None else int(n_bins), backend=backend)
