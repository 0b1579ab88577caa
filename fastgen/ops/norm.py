"""Normalization family: GroupNorm fused with SiLU (the normalization block of UNet / VQGAN res
blocks)."""
import math

import torch

from ..kernels import norm as _triton_norm
from . import _checks
from ._common import math_dtype
from ._registry import FusedOp

# -- group_norm_silu ---------------------------------------------------------------------------


def _check_group_norm_silu(x, weight, bias, num_groups, eps=1e-5, act=True):
    _checks.float_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"fastgen: x must have shape (N, C, *), got {tuple(x.shape)}")
    channels = x.shape[1]
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"fastgen: num_groups must be >= 1 and divide the {channels} channels of x, "
                         f"got {num_groups}")
    if not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"fastgen: eps must be a positive finite float, got {eps}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        _checks.float_tensor(name, p)
        if p.shape != (channels,):
            raise ValueError(f"fastgen: {name} must have shape ({channels},), got {tuple(p.shape)}")
        if p.dtype != x.dtype:
            raise TypeError(f"fastgen: {name} has dtype {p.dtype} but x has {x.dtype}")
        if p.device != x.device:
            raise ValueError(f"fastgen: {name} is on {p.device} but x is on {x.device}")


def _fake_group_norm_silu(x, weight, bias, num_groups, eps=1e-5, act=True):
    stats = x.new_empty((x.shape[0], num_groups), dtype=math_dtype(x.dtype))
    return torch.empty_like(x, memory_format=torch.contiguous_format), stats, torch.empty_like(stats)


def _check_group_norm_silu_backward(grad, x, weight, bias, mean, rstd, num_groups, act=True):
    _check_group_norm_silu(x, weight, bias, num_groups, 1e-5, act)
    _checks.like("x", x, "grad", grad)
    want = (x.shape[0], num_groups)
    for name, s in (("mean", mean), ("rstd", rstd)):
        _checks.float_tensor(name, s)
        if tuple(s.shape) != want or s.dtype != math_dtype(x.dtype):
            raise ValueError(f"fastgen: {name} must be the forward's {want} {math_dtype(x.dtype)} statistics, "
                             f"got {tuple(s.shape)} {s.dtype}")
        if s.device != x.device:
            raise ValueError(f"fastgen: {name} is on {s.device} but x is on {x.device}")


def _fake_group_norm_silu_backward(grad, x, weight, bias, mean, rstd, num_groups, act=True):
    def param(p):
        return p.new_empty(p.shape) if p is not None else x.new_empty((0,))
    return torch.empty_like(x, memory_format=torch.contiguous_format), param(weight), param(bias)


_group_norm_silu_backward_op = FusedOp(
    "group_norm_silu_backward",
    "Tensor grad, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, int num_groups, "
    "bool act=True", "(Tensor, Tensor, Tensor)",
    reference="norm.group_norm_silu_backward", fake=_fake_group_norm_silu_backward,
    check=_check_group_norm_silu_backward, triton=_triton_norm.group_norm_silu_backward, native=True,
    native_checks=True)


def _group_norm_silu_setup(ctx, inputs, keyword_only_inputs, output):
    x, weight, bias, num_groups, eps, act = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.args = (num_groups, act)
    ctx.backend = keyword_only_inputs.get("backend", "auto")
    ctx.mark_non_differentiable(mean, rstd)


def _group_norm_silu_backward(ctx, grad, _grad_mean, _grad_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    if grad is None or not any(ctx.needs_input_grad[:3]):
        return None, None, None, None, None, None
    dx, dw, db = _group_norm_silu_backward_op(grad, x, weight, bias, mean, rstd, *ctx.args,
                                              backend=ctx.backend)
    return (dx if ctx.needs_input_grad[0] else None, dw if weight is not None else None,
            db if bias is not None else None, None, None, None)


_group_norm_silu_op = FusedOp(
    "group_norm_silu",
    "Tensor x, Tensor? weight, Tensor? bias, int num_groups, float eps=1e-05, bool act=True",
    "(Tensor, Tensor, Tensor)",
    reference="norm.group_norm_silu", fake=_fake_group_norm_silu, check=_check_group_norm_silu,
    triton=_triton_norm.group_norm_silu, native=True, native_checks=True, native_autograd=True,
    autograd=(_group_norm_silu_backward, _group_norm_silu_setup))


def group_norm_silu(x, weight, bias, num_groups, eps=1e-5, act=True, *, backend=None):
    """GroupNorm fused with SiLU: silu(group_norm(x, num_groups, weight, bias, eps)), the
    normalization block of UNet / VQGAN res blocks, in one read of x forward and two backward.

    Args:
        x: (N, C, *) float tensor (fp16, bf16, fp32, fp64), any strides (computed on a
            contiguous copy; channels_last inputs pay that copy).
        weight, bias: (C,) per-channel affine, or None (nn.GroupNorm(affine=False)). Parameters
            of another float dtype (fp32 under autocast) are cast to x's dtype first.
        num_groups: divides C. eps: added to the biased group variance.
        act: apply SiLU (False: plain GroupNorm, same kernels).
        backend: see `fastgen.use_backend`.

    Returns:
        y like x (contiguous). Statistics and math in fp32 (fp64 for fp64 inputs). Differentiable
        w.r.t. x, weight and bias (once: no double backward); dweight / dbias are reduced over
        the batch in a fixed order (deterministic).
    """
    _checks.float_tensor("x", x)
    weight = _cast_param("weight", weight, x)
    bias = _cast_param("bias", bias, x)
    return _group_norm_silu_op(x, weight, bias, int(num_groups), float(eps), bool(act),
                               backend=backend)[0]


def _cast_param(name, p, x):
    if p is None:
        return None
    _checks.float_tensor(name, p)
    return p.to(x.dtype) if p.dtype != x.dtype else p
