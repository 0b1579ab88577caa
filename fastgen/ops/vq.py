"""Vector quantization: the nearest-code search without an N x K distance matrix, and the
quantize step (nearest code + straight-through + taming's commitment/codebook loss) on top."""
import torch

from ..kernels import vq as _triton_vq
from ..kernels._compat import FP32_ACCUMULATED as _TRITON_DTYPES
from . import _checks
from ._common import math_dtype
from ._registry import FusedOp

VQ_METRICS = ("l2", "cosine")


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
    if metric not in VQ_METRICS:
        raise ValueError(f"fastgen: metric must be one of {VQ_METRICS}, got {metric!r}")


def _fake_nearest(z, codebook, metric="l2"):
    n = z.shape[0]
    return z.new_empty((n,), dtype=torch.int64), z.new_empty((n,), dtype=math_dtype(z.dtype))


_nearest = FusedOp(
    "vq_nearest", "Tensor z, Tensor codebook, str metric='l2'", "(Tensor, Tensor)",
    reference="vq.vq_nearest", fake=_fake_nearest, check=_check_nearest,
    triton=_triton_vq.vq_nearest, triton_dtypes=_TRITON_DTYPES, native=True)


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


# -- vq_quantize: nearest code + straight-through + taming's loss, fused forward and backward --

def _check_quantize(z, codebook, beta=0.25, legacy=True):
    _check_nearest(z, codebook)
    if not isinstance(beta, (int, float)) or not 0 <= beta < float("inf"):
        raise ValueError(f"fastgen: beta must be a finite number >= 0, got {beta!r}")


def _fake_quantize(z, codebook, beta=0.25, legacy=True):
    return (torch.empty_like(z, memory_format=torch.contiguous_format), z.new_empty(()),
            z.new_empty((z.shape[0],), dtype=torch.int64))


def _check_quantize_backward(grad_zq, grad_loss, z, codebook, indices, beta=0.25, legacy=True):
    _check_quantize(z, codebook, beta, legacy)
    _checks.like("z", z, "grad_zq", grad_zq)
    _checks.float_tensor("grad_loss", grad_loss)
    if grad_loss.numel() != 1 or grad_loss.device != z.device:
        raise ValueError(f"fastgen: grad_loss must be a one-element tensor on {z.device}, got shape "
                         f"{tuple(grad_loss.shape)} on {grad_loss.device}")
    _check_indices(indices, z.shape[0], codebook.shape[0], z.device)


def _check_indices(indices, n, k, device):
    _checks.tensor("indices", indices)
    if indices.dtype != torch.int64 or indices.shape != (n,):
        raise ValueError(f"fastgen: indices must be an int64 tensor of shape ({n},), got "
                         f"{indices.dtype} of shape {tuple(indices.shape)}")
    if indices.device != device:
        raise ValueError(f"fastgen: indices is on {indices.device} but z is on {device}")
    # Range check where it costs no device sync; the CUDA/Triton kernels skip rows whose index
    # is out of range instead of touching memory out of bounds.
    if indices.device.type == "cpu" and n and not _is_fake(indices):
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"fastgen: indices must lie in [0, {k}), got values in [{lo}, {hi}]")


def _is_fake(t):
    from torch._subclasses.fake_tensor import is_fake
    return torch.compiler.is_compiling() or is_fake(t)


def _fake_quantize_backward(grad_zq, grad_loss, z, codebook, indices, beta=0.25, legacy=True):
    return (torch.empty_like(z, memory_format=torch.contiguous_format),
            torch.empty_like(codebook, memory_format=torch.contiguous_format))


_quantize_backward = FusedOp(
    "vq_quantize_backward",
    "Tensor grad_zq, Tensor grad_loss, Tensor z, Tensor codebook, Tensor indices, float beta=0.25, "
    "bool legacy=True", "(Tensor, Tensor)",
    reference="vq.vq_quantize_backward", fake=_fake_quantize_backward,
    check=_check_quantize_backward, triton=_triton_vq.vq_quantize_backward, triton_dtypes=_TRITON_DTYPES, native=True)


def _setup_quantize(ctx, inputs, keyword_only_inputs, output):
    z, codebook, beta, legacy = (tuple(inputs) + (0.25, True))[:4]
    ctx.save_for_backward(z, codebook, output[2])
    ctx.beta, ctx.legacy = beta, legacy
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _backward_quantize(ctx, grad_zq, grad_loss, grad_idx):
    z, codebook, idx = ctx.saved_tensors
    if grad_zq is None:
        grad_zq = torch.zeros_like(z)
    if grad_loss is None:
        grad_loss = z.new_zeros(())
    dz, dcode = _quantize_backward(grad_zq, grad_loss, z, codebook, idx, ctx.beta, ctx.legacy,
                                   backend=ctx.backend)
    return (dz if ctx.needs_input_grad[0] else None, dcode if ctx.needs_input_grad[1] else None,
            None, None)


_quantize = FusedOp(
    "vq_quantize", "Tensor z, Tensor codebook, float beta=0.25, bool legacy=True",
    "(Tensor, Tensor, Tensor)",
    reference="vq.vq_quantize", fake=_fake_quantize, check=_check_quantize,
    triton=_triton_vq.vq_quantize, triton_dtypes=_TRITON_DTYPES, native=True, autograd=(_backward_quantize, _setup_quantize))


def vq_quantize(z, codebook, beta=0.25, legacy=True, *, backend=None):
    """Quantize z (N, D) to its nearest codes with taming-transformers' VectorQuantizer2
    semantics, in one fused op forward and backward.

    Returns (z_q, loss, indices): z_q == z + (codebook[idx] - z).detach() as taming computes it
    (in z's dtype), loss (0-d, z's dtype, summed in fp32) and indices (int64 [N]), with
        legacy=True:  loss = mean((sg(z_q) - z)^2) + beta * mean((z_q - sg(z))^2)
        legacy=False: loss = beta * mean((sg(z_q) - z)^2) + mean((z_q - sg(z))^2).
    The search is vq_nearest's (no N x K matrix). Backward: dz = grad_zq + the commitment term
    (straight-through); dcodebook = per-code sums of the codebook term, computed by grouping
    rows by code and summing each group in a fixed order: deterministic, no float atomics.
    """
    return _quantize(z, codebook, float(beta), bool(legacy), backend=backend)


# -- EMA codebook update -------------------------------------------------------------------------

def _check_code_sums(z, indices, num_codes):
    _checks.float_tensor("z", z)
    if z.dim() != 2:
        raise ValueError(f"fastgen: z must have shape (N, D), got {tuple(z.shape)}")
    if not isinstance(num_codes, (int, torch.SymInt)) or num_codes < 1:
        raise ValueError(f"fastgen: num_codes must be a positive int, got {num_codes!r}")
    _check_indices(indices, z.shape[0], num_codes, z.device)


def _fake_code_sums(z, indices, num_codes):
    t = math_dtype(z.dtype)
    return z.new_empty((num_codes,), dtype=t), z.new_empty((num_codes, z.shape[1]), dtype=t)


_code_sums = FusedOp(
    "vq_code_sums", "Tensor z, Tensor indices, int num_codes", "(Tensor, Tensor)",
    reference="vq.vq_code_sums", fake=_fake_code_sums, check=_check_code_sums,
    triton=_triton_vq.vq_code_sums, triton_dtypes=_TRITON_DTYPES, native=True)


def vq_code_sums(z, indices, num_codes, *, backend=None):
    """Per-code counts [K] and sums [K, D] of the rows of z [N, D] grouped by indices [N]
    (fp32; fp64 for fp64 z). Rows are grouped by code and each group summed in row order:
    deterministic, no N x K one-hot, no float atomics."""
    return _code_sums(z, indices, int(num_codes), backend=backend)


def _check_ema(z, indices, cluster_size, embed_sum, decay=0.99, eps=1e-5):
    _checks.float_tensor("embed_sum", embed_sum)
    if embed_sum.dim() != 2 or embed_sum.shape[0] < 1:
        raise ValueError(f"fastgen: embed_sum must have shape (K, D) with K >= 1, got {tuple(embed_sum.shape)}")
    _check_code_sums(z, indices, embed_sum.shape[0])
    if embed_sum.shape[1] != z.shape[1]:
        raise ValueError(f"fastgen: embed_sum has D={embed_sum.shape[1]} but z has D={z.shape[1]}")
    _checks.float_tensor("cluster_size", cluster_size)
    if cluster_size.dtype != embed_sum.dtype:
        raise TypeError(f"fastgen: cluster_size has dtype {cluster_size.dtype} but embed_sum has "
                        f"{embed_sum.dtype} (they must share one float dtype)")
    if cluster_size.shape != embed_sum.shape[:1]:
        raise ValueError(f"fastgen: cluster_size must have shape ({embed_sum.shape[0]},), got "
                         f"{tuple(cluster_size.shape)}")
    for name, t in (("cluster_size", cluster_size), ("embed_sum", embed_sum)):
        if t.device != z.device:
            raise ValueError(f"fastgen: {name} is on {t.device} but z is on {z.device}")
        if not t.is_contiguous():
            raise ValueError(f"fastgen: {name} is updated in place and must be contiguous")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"fastgen: decay must be in [0, 1], got {decay}")
    if not eps > 0:
        raise ValueError(f"fastgen: eps must be > 0, got {eps}")


def _fake_ema(z, indices, cluster_size, embed_sum, decay=0.99, eps=1e-5):
    return torch.empty_like(embed_sum), cluster_size.new_empty((), dtype=math_dtype(z.dtype))


_ema = FusedOp(
    "vq_ema_update",
    "Tensor z, Tensor indices, Tensor(a!) cluster_size, Tensor(b!) embed_sum, float decay=0.99, "
    "float eps=1e-05", "(Tensor, Tensor)",
    reference="vq.vq_ema_update", fake=_fake_ema, check=_check_ema,
    triton=_triton_vq.vq_ema_update, triton_dtypes=_TRITON_DTYPES, native=True)


def ema_codebook(cluster_size, embed_sum, eps):
    """The codebook from the EMA buffers: embed_sum / Laplace-smoothed cluster_size,
    (cluster_size + eps) / (n + K eps) * n with n = sum(cluster_size), in embed_sum's dtype."""
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) * (n / (n + cluster_size.shape[0] * eps))
    return embed_sum / smoothed.to(embed_sum.dtype)[:, None]


def code_perplexity(counts):
    """exp(entropy) of the code usage counts / sum(counts) (taming's formula, 1e-10 inside the log)."""
    p = counts / counts.sum().clamp_min(1)
    return (-(p * (p + 1e-10).log()).sum()).exp()


def _ema_apply_(counts, sums, cluster_size, embed_sum, decay, eps):
    """The EMA step from all-reduced counts / sums (the distributed path of vq_ema_update)."""
    cluster_size.mul_(decay).add_(counts.to(cluster_size.dtype), alpha=1 - decay)
    embed_sum.mul_(decay).add_(sums.to(embed_sum.dtype), alpha=1 - decay)
    return ema_codebook(cluster_size, embed_sum, eps), code_perplexity(counts)


def _distributed():
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def vq_ema_update(z, indices, cluster_size, embed_sum, decay=0.99, eps=1e-5, *, backend=None):
    """One EMA codebook step (VQ-VAE appendix; taming's EmbeddingEMA), updating the buffers
    `cluster_size` (K,) and `embed_sum` (K, D) in place:

        cluster_size <- decay * cluster_size + (1 - decay) * counts
        embed_sum    <- decay * embed_sum    + (1 - decay) * sums
        codebook      = embed_sum / ((cluster_size + eps) / (n + K eps) * n),  n = sum(cluster_size)

    counts/sums are the per-code counts and sums of z's rows (segmented sums, no N x K one-hot),
    fused with the EMA in one pass. When torch.distributed is initialized they are all-reduced
    first, so every replica keeps the same codebook.

    Returns (codebook (K, D) in embed_sum's dtype, perplexity of this step's code usage).
    """
    decay, eps = float(decay), float(eps)
    if _distributed():
        import torch.distributed as dist
        _check_ema(z, indices, cluster_size, embed_sum, decay, eps)
        counts, sums = vq_code_sums(z, indices, embed_sum.shape[0], backend=backend)
        stats = torch.cat([sums, counts[:, None]], 1)  # one all-reduce for both
        dist.all_reduce(stats)
        return _ema_apply_(stats[:, -1], stats[:, :-1], cluster_size, embed_sum, decay, eps)
    return _ema(z, indices, cluster_size, embed_sum, decay, eps, backend=backend)
