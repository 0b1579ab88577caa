"""VAE family: the Gaussian reparameterization fused with the KL to N(0, I)."""
import torch

from ..kernels import vae as _triton_vae
from . import _checks
from ._common import math_dtype
from ._registry import FusedOp


def _check(mu, logvar, eps):
    _checks.float_tensor("mu", mu)
    _checks.batched("mu", mu)
    _checks.like("mu", mu, "logvar", logvar)
    _checks.like("mu", mu, "eps", eps)


def _fake(mu, logvar, eps):
    z = torch.empty_like(mu, memory_format=torch.contiguous_format)
    return z, mu.new_empty((mu.shape[0],), dtype=math_dtype(mu.dtype))


def _check_backward(grad_z, grad_kl, mu, logvar, eps):
    _check(mu, logvar, eps)
    _checks.like("mu", mu, "grad_z", grad_z)
    _checks.per_sample("mu", mu, "grad_kl", grad_kl)


def _fake_backward(grad_z, grad_kl, mu, logvar, eps):
    return (torch.empty_like(mu, memory_format=torch.contiguous_format),
            torch.empty_like(mu, memory_format=torch.contiguous_format))


_backward_op = FusedOp(
    "gaussian_reparam_kl_backward",
    "Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor eps", "(Tensor, Tensor)",
    reference="vae.gaussian_reparam_kl_backward", fake=_fake_backward, check=_check_backward,
    triton=_triton_vae.gaussian_reparam_kl_backward, native=True)


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    ctx.save_for_backward(*inputs)
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _backward(ctx, grad_z, grad_kl):
    mu, logvar, eps = ctx.saved_tensors
    if grad_z is None:
        grad_z = torch.zeros_like(mu)
    if grad_kl is None:
        grad_kl = mu.new_zeros((mu.shape[0],), dtype=math_dtype(mu.dtype))
    d_mu = d_logvar = d_eps = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        d_mu, d_logvar = _backward_op(grad_z, grad_kl, mu, logvar, eps, backend=ctx.backend)
    if ctx.needs_input_grad[2]:  # rare (eps is usually sampled noise): not worth a kernel
        t = math_dtype(mu.dtype)
        d_eps = (grad_z.to(t) * torch.exp(0.5 * logvar.to(t))).to(eps.dtype)
    return d_mu, d_logvar, d_eps


_op = FusedOp(
    "gaussian_reparam_kl", "Tensor mu, Tensor logvar, Tensor eps", "(Tensor, Tensor)",
    reference="vae.gaussian_reparam_kl", fake=_fake, check=_check,
    triton=_triton_vae.gaussian_reparam_kl, native=True, autograd=(_backward, _setup_context))


def gaussian_reparam_kl(mu, logvar, eps, *, backend=None):
    """VAE reparameterization fused with the KL divergence to a standard normal.

    z = mu + exp(logvar / 2) * eps and, per sample b, KL(N(mu, exp(logvar)) || N(0, I)) =
    -1/2 * sum_j (1 + logvar - mu^2 - exp(logvar)) over every non-batch dim — one pass over
    the inputs, forward and backward.

    Args:
        mu, logvar, eps: tensors of one shape (B, ...) and one float dtype (fp16, bf16, fp32,
            fp64), on one device; any strides. Math runs in fp32 (fp64 for fp64 inputs).
        backend: "auto" (default: the current `fastgen.use_backend`), "triton", "cuda", "cpu"
            or "reference".

    Returns:
        (z, kl): z like mu (contiguous), kl of shape (B,) in fp32 (fp64 for fp64 inputs).
        Differentiable w.r.t. mu, logvar (and eps).
    """
    return _op(mu, logvar, eps, backend=backend)
