"""Vector quantization: the nearest-code search without an N x K distance matrix, and the
quantize step (nearest code + straight-through + taming's commitment/codebook loss) on top."""
import torch

from ..kernels import vq as _triton_vq
from . import _checks, reference
from ._registry import FusedOp


def _check_nearest(z, codebook, metric="l2"):
    _checks.float_tensor("z", z)
    _checks.float_tensor("codebook", codebook)
    if z.dim() != 2:
        raise ValueError(f"fastgen: z must have shape (N, D), got {tuple(z.shape)}")
    if codebook.dim() != 2:
        raise ValueError(f"fastgen: codebook must have shape (K, D), got {tuple(codebook.shape)}")
    if codebook.shape[1] != z.shape[1]:
        raise ValueError(f"fastgen: codebook has D={codebook.shape[1]} but z has D={z.shape[1]}")
    if codebook.shape[0] == 0:
        raise ValueError("fastgen: codebook is empty (K=0)")
    if codebook.dtype != z.dtype:
        raise TypeError(f"fastgen: codebook has dtype {codebook.dtype} but z has {z.dtype}")
    if codebook.device != z.device:
        raise ValueError(f"fastgen: codebook is on {codebook.device} but z is on {z.device}")
    if metric not in reference.VQ_METRICS:
        raise ValueError(f"fastgen: metric must be one of {reference.VQ_METRICS}, got {metric!r}")


def _fake_nearest(z, codebook, metric="l2"):
    n = z.shape[0]
    return z.new_empty((n,), dtype=torch.int64), z.new_empty((n,), dtype=reference.math_dtype(z.dtype))


_nearest = FusedOp(
    "vq_nearest", "Tensor z, Tensor codebook, str metric='l2'", "(Tensor, Tensor)",
    reference=reference.vq_nearest, fake=_fake_nearest, check=_check_nearest,
    triton=_triton_vq.vq_nearest, native=True)


def vq_nearest(z, codebook, metric="l2", *, backend=None):
    """Nearest codebook entry for every row of z, without materializing the N x K distances.

    Args:
        z: (N, D) float tensor (fp16/bf16/fp32/fp64; accumulated in fp32, fp64 for fp64).
        codebook: (K, D), same dtype and device, K >= 1.
        metric: "l2" (squared Euclidean) or "cosine" (squared distance between the
            L2-normalized vectors, i.e. 2 - 2 cos).
        backend: see `fastgen.use_backend`.

    Returns:
        (indices int64 [N], distances [N] fp32 (fp64 for fp64), clamped at 0). Ties go to the
        lowest index, as torch.argmin and faiss do. NaN distances count as +inf.
    """
    return _nearest(z, codebook, metric, backend=backend)


def vq_quantize(z, codebook, beta=0.25, legacy=True, *, backend=None):
    """Quantize z (N, D) to its nearest codes with taming-transformers' VectorQuantizer2
    semantics: returns (z_q, loss, indices) with z_q = z + (codebook[idx] - z).detach()
    (straight-through) and
        legacy=True:  loss = mean((sg(z_q) - z)^2) + beta * mean((z_q - sg(z))^2)
        legacy=False: loss = beta * mean((sg(z_q) - z)^2) + mean((z_q - sg(z))^2).
    The search is `vq_nearest` (fused, no N x K matrix); gradients reach z (straight-through +
    commitment term) and the codebook (codebook term)."""
    idx, _ = vq_nearest(z.detach(), codebook.detach(), backend=backend)
    e = codebook.index_select(0, idx)
    commit = torch.mean((e.detach() - z) ** 2)
    embed = torch.mean((e - z.detach()) ** 2)
    loss = commit + beta * embed if legacy else beta * commit + embed
    return z + (e - z).detach(), loss, idx
