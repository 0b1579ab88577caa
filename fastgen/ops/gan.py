"""GAN / WGAN / SimCLR family: bias + activation (StyleGAN's fused_bias_act idea), GroupNorm
fused with SiLU, and the NT-Xent (InfoNCE) loss without the 2N x 2N similarity matrix."""
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
        if tuple(s.shape) != want or s.dtype != math_dtype(x.dtype) or s.device != x.device:
            raise ValueError(f"fastgen: {name} must be a {want} {math_dtype(x.dtype)} tensor on "
                             f"{x.device} (the forward's), got {tuple(s.shape)} {s.dtype} on {s.device}")


def _fake_group_norm_silu_backward(grad, x, weight, bias, mean, rstd, num_groups, act=True):
    def param(p):
        return p.new_empty(p.shape) if p is not None else x.new_empty((0,))
    return torch.empty_like(x, memory_format=torch.contiguous_format), param(weight), param(bias)


_group_norm_silu_backward_op = FusedOp(
    "group_norm_silu_backward",
    "Tensor grad, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, int num_groups, "
    "bool act=True", "(Tensor, Tensor, Tensor)",
    reference="gan.group_norm_silu_backward", fake=_fake_group_norm_silu_backward,
    check=_check_group_norm_silu_backward, triton=_triton_gan.group_norm_silu_backward, native=True,
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
    reference="gan.group_norm_silu", fake=_fake_group_norm_silu, check=_check_group_norm_silu,
    triton=_triton_gan.group_norm_silu, native=True, native_checks=True, native_autograd=True,
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


# -- info_nce_loss -----------------------------------------------------------------------------


def _check_info_nce(z1, z2, temperature):
    _checks.float_tensor("z1", z1)
    if z1.dim() != 2:
        raise ValueError(f"fastgen: z1 must have shape (N, D), got {tuple(z1.shape)}")
    if z1.shape[0] == 0:
        raise ValueError("fastgen: info_nce_loss needs at least one pair: z1 has N=0 rows")
    _checks.like("z1", z1, "z2", z2)
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"fastgen: temperature must be positive and finite, got {temperature}")


def _fake_info_nce(z1, z2, temperature):
    t = math_dtype(z1.dtype)
    return z1.new_empty((), dtype=t), z1.new_empty((2 * z1.shape[0],), dtype=t)


def _check_info_nce_backward(grad_loss, z1, z2, lse, temperature):
    _check_info_nce(z1, z2, temperature)
    _checks.float_tensor("grad_loss", grad_loss)
    if grad_loss.numel() != 1:
        raise ValueError(f"fastgen: grad_loss must be a scalar, got shape {tuple(grad_loss.shape)}")
    _checks.float_tensor("lse", lse)
    if lse.shape != (2 * z1.shape[0],):
        raise ValueError(f"fastgen: lse must have shape ({2 * z1.shape[0]},), got {tuple(lse.shape)}")
    for name, t in (("grad_loss", grad_loss), ("lse", lse)):
        if t.device != z1.device:
            raise ValueError(f"fastgen: {name} is on {t.device} but z1 is on {z1.device}")


def _fake_info_nce_backward(grad_loss, z1, z2, lse, temperature):
    return (torch.empty_like(z1, memory_format=torch.contiguous_format),
            torch.empty_like(z2, memory_format=torch.contiguous_format))


_info_nce_backward_op = FusedOp(
    "info_nce_loss_backward", "Tensor grad_loss, Tensor z1, Tensor z2, Tensor lse, float temperature",
    "(Tensor, Tensor)", reference="gan.info_nce_loss_backward", fake=_fake_info_nce_backward,
    check=_check_info_nce_backward, triton=_triton_gan.info_nce_loss_backward, native=True)


def _info_nce_setup(ctx, inputs, keyword_only_inputs, output):
    z1, z2, temperature = inputs
    ctx.save_for_backward(z1, z2, output[1])
    ctx.temperature = temperature
    ctx.backend = keyword_only_inputs.get("backend", "auto")
    ctx.mark_non_differentiable(output[1])


def _info_nce_backward(ctx, grad_loss, _grad_lse):
    z1, z2, lse = ctx.saved_tensors
    if grad_loss is None or not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None
    dz1, dz2 = _info_nce_backward_op(grad_loss, z1, z2, lse, ctx.temperature, backend=ctx.backend)
    return dz1, dz2, None


_info_nce_op = FusedOp(
    "info_nce_loss", "Tensor z1, Tensor z2, float temperature", "(Tensor, Tensor)",
    reference="gan.info_nce_loss", fake=_fake_info_nce, check=_check_info_nce,
    triton=_triton_gan.info_nce_loss, native=True, autograd=(_info_nce_backward, _info_nce_setup))


def info_nce_loss(z1, z2, temperature=0.5, *, backend=None):
    """NT-Xent / InfoNCE loss of SimCLR for N positive pairs (z1[k], z2[k]):

        z = cat(z1, z2)  (2N, D),   u_i = z_i / max(||z_i||, 1e-12),   s_ij = u_i . u_j / temperature
        loss = 1/(2N) * sum_{i < 2N} [ logsumexp_{j != i} s_ij  -  s_{i, (i + N) mod 2N} ]

    i.e. F.cross_entropy over the masked similarity matrix with each sample's partner as the
    target, averaged over all 2N anchors. Computed blockwise with an online logsumexp: the
    2N x 2N matrix is never stored, forward or backward (the backward recomputes tiles from the
    saved per-anchor logsumexp). Memory O(N * D + tile).

    Args:
        z1, z2: (N, D) float tensors (fp16, bf16, fp32, fp64) of one dtype and device, N >= 1.
        temperature: > 0.
        backend: see `fastgen.use_backend`.

    Returns:
        the scalar loss in fp32 (fp64 for fp64 inputs); differentiable w.r.t. z1 and z2.
    """
    return _info_nce_op(z1, z2, float(temperature), backend=backend)[0]
