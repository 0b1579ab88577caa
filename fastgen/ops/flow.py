"""Normalizing flows: the affine coupling's coupled half with its log-determinant reduced in
the same pass, ActNorm, and the flow negative log-likelihood (prior log-prob fused with the
logdet sum, optionally in bits per dimension)."""
import math
import numbers

import torch

from ..kernels import flow as _triton_flow
from . import _checks, reference
from ._registry import FusedOp


def _per_sample_out(t):
    return t.new_empty((t.shape[0],), dtype=reference.math_dtype(t.dtype))


def _contiguous_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


# -- affine coupling ----------------------------------------------------------------------------

def _check_scale_args(scale_fn, clamp, inverse):
    if not isinstance(scale_fn, str):
        raise TypeError(f"fastgen: scale_fn must be a str, got {type(scale_fn).__name__}")
    if scale_fn not in reference.COUPLING_SCALE_FNS:
        raise ValueError(f"fastgen: scale_fn must be one of {reference.COUPLING_SCALE_FNS}, got {scale_fn!r}")
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
    reference=reference.affine_coupling_backward, fake=_fake_coupling_backward,
    check=_check_coupling_backward, triton=_triton_flow.affine_coupling_backward, native=True)


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
        grad_logdet = x_b.new_zeros((x_b.shape[0],), dtype=reference.math_dtype(x_b.dtype))
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
    reference=reference.affine_coupling, fake=_fake_coupling, check=_check_coupling,
    triton=_triton_flow.affine_coupling, native=True, autograd=(_coupling_grads, _setup_coupling))


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
