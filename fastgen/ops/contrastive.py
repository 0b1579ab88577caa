"""Contrastive family: the NT-Xent (InfoNCE) loss of SimCLR without the 2N x 2N similarity
matrix."""
import math

import torch

from ..kernels import contrastive as _triton_contrastive
from . import _checks
from ._common import math_dtype
from ._registry import FusedOp

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
    "(Tensor, Tensor)", reference="contrastive.info_nce_loss_backward", fake=_fake_info_nce_backward,
    check=_check_info_nce_backward, triton=_triton_contrastive.info_nce_loss_backward, native=True)


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
    reference="contrastive.info_nce_loss", fake=_fake_info_nce, check=_check_info_nce,
    triton=_triton_contrastive.info_nce_loss, native=True, autograd=(_info_nce_backward, _info_nce_setup))


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
