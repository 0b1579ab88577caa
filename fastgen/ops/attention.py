"""Attention: flash attention (online softmax, no L x L matrix) forward and backward.

Backends: Triton (forward + deterministic two-pass backward), CPU C++ (torch's own fused CPU
flash-attention kernels, which are good, behind our mask/GQA/empty-row handling), reference
(math attention in fp32). Layout (B, H, L, Dh) as torch's SDPA.
"""
import torch

from ..kernels import attention as _triton_attention
from . import _checks, reference
from ._registry import FusedOp


def _check(q, k, v, causal=False, scale=None, key_padding_mask=None):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.float_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"fastgen: {name} must have shape (B, H, L, Dh), got {tuple(t.shape)}")
    b, h, lq, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"fastgen: k must have shape ({b}, Hkv, Lk, {d}), got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"fastgen: v has shape {tuple(v.shape)} but k has {tuple(k.shape)}")
    if k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"fastgen: the number of query heads ({h}) must be a multiple of the number "
                         f"of key/value heads ({k.shape[1]})")
    if not 1 <= d <= 256:
        raise ValueError(f"fastgen: head dim must be in [1, 256], got {d}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"fastgen: {name} has dtype {t.dtype} but q has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"fastgen: {name} is on {t.device} but q is on {q.device}")
    if scale is not None and not scale > 0:
        raise ValueError(f"fastgen: scale must be positive, got {scale}")
    if key_padding_mask is not None:
        _checks.tensor("key_padding_mask", key_padding_mask)
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (b, k.shape[2]):
            raise ValueError(f"fastgen: key_padding_mask must be a bool tensor of shape ({b}, {k.shape[2]}) "
                             f"(True = padded key), got {key_padding_mask.dtype} of shape "
                             f"{tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"fastgen: key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")


def _fake(q, k, v, causal=False, scale=None, key_padding_mask=None):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty(q.shape[:3], dtype=reference.math_dtype(q.dtype)))


def _check_backward(grad_out, grad_lse, q, k, v, out, lse, causal=False, scale=None, key_padding_mask=None):
    _check(q, k, v, causal, scale, key_padding_mask)
    _checks.like("q", q, "grad_out", grad_out)
    _checks.like("q", q, "out", out)
    for name, t in (("grad_lse", grad_lse), ("lse", lse)):
        _checks.float_tensor(name, t)
        if t.shape != q.shape[:3]:
            raise ValueError(f"fastgen: {name} must have shape {tuple(q.shape[:3])}, got {tuple(t.shape)}")


def _fake_backward(grad_out, grad_lse, q, k, v, out, lse, causal=False, scale=None, key_padding_mask=None):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


_ARGS = "Tensor q, Tensor k, Tensor v, bool causal=False, float? scale=None, Tensor? key_padding_mask=None"

_backward_op = FusedOp(
    "flash_attention_backward",
    "Tensor grad_out, Tensor grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "bool causal=False, float? scale=None, Tensor? key_padding_mask=None", "(Tensor, Tensor, Tensor)",
    reference=reference.flash_attention_backward, fake=_fake_backward, check=_check_backward,
    triton=_triton_attention.flash_attention_backward, native=True)


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    q, k, v, causal, scale, kpm = (tuple(inputs) + (False, None, None))[:6]
    ctx.save_for_backward(q, k, v, output[0], output[1], kpm)
    ctx.causal, ctx.scale = causal, scale
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, kpm = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse)
    dq, dk, dv = _backward_op(grad_out, grad_lse, q, k, v, out, lse, ctx.causal, ctx.scale, kpm,
                              backend=ctx.backend)
    return dq, dk, dv, None, None, None


_op = FusedOp(
    "flash_attention", _ARGS, "(Tensor, Tensor)",
    reference=reference.flash_attention, fake=_fake, check=_check,
    triton=_triton_attention.flash_attention, native=True, autograd=(_backward, _setup_context))


def flash_attention(q, k, v, causal=False, scale=None, key_padding_mask=None, *, backend=None):
    """Exact attention softmax(q k^T * scale) v without materializing the Lq x Lk scores.

    Args:
        q: (B, H, Lq, Dh); k, v: (B, Hkv, Lk, Dh) with H a multiple of Hkv (grouped-query
            attention: query head h reads kv head h // (H // Hkv)); Dh in [1, 256]; fp16, bf16,
            fp32 (fp64: cpu and reference backends); any strides with unit last stride preferred.
        causal: query i sees keys j <= i (top-left aligned, as SDPA's is_causal).
        scale: score scale, default 1/sqrt(Dh).
        key_padding_mask: (B, Lk) bool, True marks a padded key (nn.MultiheadAttention's
            convention).

    Returns:
        (out (B, H, Lq, Dh) in q's dtype, lse (B, H, Lq) fp32: natural log-sum-exp of the scaled
        scores per query). A query that sees no key gets out 0 and lse -inf. Differentiable
        w.r.t. q, k, v (and through lse); the Triton backward runs as separate dK/dV and dQ
        passes without atomics, so it is deterministic.
    """
    return _op(q, k, v, bool(causal), None if scale is None else float(scale), key_padding_mask,
               backend=backend)
