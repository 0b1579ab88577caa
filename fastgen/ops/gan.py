"""GAN family: bias + activation (StyleGAN's fused_bias_act idea). GroupNorm + SiLU is in
norm.py, the NT-Xent (InfoNCE) loss in contrastive.py."""
import math

import torch

from ..kernels import gan as _triton_gan
from . import _checks
from ._common import math_dtype
from ._registry import FusedOp

BIAS_ACTS = ("leaky_relu", "relu", "silu", "gelu")

# -- bias_act ----------------------------------------------------------------------------------


def _check_bias_act(x, bias, act="leaky_relu", alpha=0.2, gain=1.0, dim=1):
    _checks.float_tensor("x", x)
    if x.dim() < 1:
        raise ValueError("fastgen: x must have at least one dim (the channel dim), got a 0-d tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"fastgen: dim must be in [{-x.dim()}, {x.dim() - 1}] for x of shape "
                         f"{tuple(x.shape)}, got {dim}")
    if bias is not None:
        _checks.float_tensor("bias", bias)
        channels = x.shape[dim]
        if bias.dim() != 1 or bias.shape[0] != channels:
            raise ValueError(f"fastgen: bias must have shape ({channels},) (x.shape[{dim}]), "
                             f"got {tuple(bias.shape)}")
        if bias.dtype != x.dtype:
            raise TypeError(f"fastgen: bias has dtype {bias.dtype} but x has {x.dtype}")
        if bias.device != x.device:
            raise ValueError(f"fastgen: bias is on {bias.device} but x is on {x.device}")
    if act not in BIAS_ACTS:
        raise ValueError(f"fastgen: act must be one of {BIAS_ACTS}, got {act!r}")
    if not math.isfinite(alpha) or not math.isfinite(gain):
        raise ValueError(f"fastgen: alpha and gain must be finite, got alpha={alpha}, gain={gain}")


def _fake_bias_act(x, bias, act="leaky_relu", alpha=0.2, gain=1.0, dim=1):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _check_bias_act_backward(grad, x, bias, act="leaky_relu", alpha=0.2, gain=1.0, dim=1):
    _check_bias_act(x, bias, act, alpha, gain, dim)
    _checks.like("x", x, "grad", grad)


def _fake_bias_act_backward(grad, x, bias, act="leaky_relu", alpha=0.2, gain=1.0, dim=1):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    return dx, (bias.new_empty(bias.shape) if bias is not None else x.new_empty((0,)))


def _channel_view(v, x, dim):
    """v (x.shape[dim],) viewed to broadcast against x."""
    d = dim % x.dim()
    return v.reshape([x.shape[i] if i == d else 1 for i in range(x.dim())])


def _curvature(y, act):
    """act''(y), for the double backward (0 almost everywhere for relu / leaky_relu)."""
    if act in ("leaky_relu", "relu"):
        return torch.zeros_like(y)
    if act == "silu":
        s = torch.sigmoid(y)
        return s * (1 - s) * (2 + y * (1 - 2 * s))
    return torch.exp(-0.5 * y * y) * (2 * torch.pi) ** -0.5 * (2 - y * y)  # exact (erf) gelu


def _sum_but_dim(t, dim):
    d = dim % t.dim()
    others = [i for i in range(t.dim()) if i != d]
    return t if not others else (t.sum(others) if t.numel() else t.new_zeros(t.shape[d]))


def _bias_act_backward_setup(ctx, inputs, keyword_only_inputs, output):
    grad, x, bias, act, alpha, gain, dim = inputs
    ctx.save_for_backward(grad, x, bias)
    ctx.args = (act, alpha, gain, dim)
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _bias_act_double_backward(ctx, gg_x, gg_bias):
    """Backward of (dx, dbias) = bias_act_backward(grad, x, bias). dx = grad * gain * act'(y),
    y = x + bias, and dbias sums dx over every dim but `dim`: both are linear in grad, so grad's
    cotangent is the backward op itself applied to gg_x + gg_bias (broadcast). Through act'(y)
    x and bias get grad * gain * act''(y) * (that same cotangent): exactly zero for relu and
    leaky_relu (piecewise-constant slope), which is what WGAN-GP's penalty differentiates."""
    grad, x, bias = ctx.saved_tensors
    act, alpha, gain, dim = ctx.args
    if gg_x is None and gg_bias is None:
        return None, None, None, None, None, None, None
    cot = gg_x if gg_x is not None else torch.zeros_like(x)
    if gg_bias is not None and gg_bias.numel():
        cot = cot + _channel_view(gg_bias, x, dim).to(cot.dtype)
    d_grad = d_x = d_bias = None
    if ctx.needs_input_grad[0]:
        d_grad = _bias_act_backward_op(cot, x, bias, act, alpha, gain, dim, backend=ctx.backend)[0]
    if (ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2])) and \
            act in ("silu", "gelu"):
        t = math_dtype(x.dtype)
        y = x.to(t) + (_channel_view(bias.to(t), x, dim) if bias is not None else 0)
        h = cot.to(t) * grad.to(t) * gain * _curvature(y, act)
        d_x = h.to(x.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            d_bias = _sum_but_dim(h, dim).to(bias.dtype)
    return d_grad, d_x, d_bias, None, None, None, None


_bias_act_backward_op = FusedOp(
    "bias_act_backward",
    "Tensor grad, Tensor x, Tensor? bias, str act='leaky_relu', float alpha=0.2, float gain=1.0, "
    "int dim=1", "(Tensor, Tensor)",
    reference="gan.bias_act_backward", fake=_fake_bias_act_backward,
    check=_check_bias_act_backward, triton=_triton_gan.bias_act_backward, native=True,
    native_checks=True, autograd=(_bias_act_double_backward, _bias_act_backward_setup))


def _bias_act_setup(ctx, inputs, keyword_only_inputs, output):
    x, bias, act, alpha, gain, dim = inputs
    ctx.save_for_backward(x, bias)
    ctx.args = (act, alpha, gain, dim)
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _bias_act_backward(ctx, grad):
    x, bias = ctx.saved_tensors
    if not (ctx.needs_input_grad[0] or (bias is not None and ctx.needs_input_grad[1])):
        return None, None, None, None, None, None
    dx, dbias = _bias_act_backward_op(grad, x, bias, *ctx.args, backend=ctx.backend)
    return dx, (dbias if bias is not None else None), None, None, None, None


_bias_act_op = FusedOp(
    "bias_act", "Tensor x, Tensor? bias, str act='leaky_relu', float alpha=0.2, float gain=1.0, "
    "int dim=1", "Tensor",
    reference="gan.bias_act", fake=_fake_bias_act, check=_check_bias_act,
    triton=_triton_gan.bias_act, native=True, native_checks=True,
    autograd=(_bias_act_backward, _bias_act_setup))


def bias_act(x, bias=None, act="leaky_relu", alpha=0.2, gain=1.0, dim=1, *, backend=None):
    """Bias add, activation and gain in one pass: act(x + bias) * gain, bias broadcast along
    `dim` (StyleGAN2's fused_bias_act without its clamp).

    Args:
        x: float tensor (fp16, bf16, fp32, fp64), any shape with at least one dim, any strides.
        bias: (x.shape[dim],) float tensor, or None for no bias. A bias of another float dtype
            (an fp32 parameter under autocast) is cast to x's dtype first (differentiably).
        act: "leaky_relu" (negative slope `alpha`), "relu", "silu" or "gelu" (exact erf form,
            torch's default).
        alpha: leaky_relu's negative slope; ignored by the other activations.
        gain: output scale (StyleGAN uses sqrt(2) for leaky_relu).
        dim: the channel dim `bias` runs along (negative counts from the end).
        backend: see `fastgen.use_backend`.

    Returns:
        a tensor like x (contiguous), computed in fp32 (fp64 for fp64 inputs). Differentiable
        w.r.t. x and bias; twice differentiable (so a gradient penalty can go through it) for
        every act. dbias is reduced in the math dtype in a fixed order (deterministic).
    """
    _checks.float_tensor("x", x)
    if bias is not None:
        _checks.float_tensor("bias", bias)
        if bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
    return _bias_act_op(x, bias, act, float(alpha), float(gain), int(dim), backend=backend)
