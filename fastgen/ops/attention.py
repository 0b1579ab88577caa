"""Attention: flash attention (online softmax, no L x L matrix) forward and backward.

Backends: Triton (forward + deterministic two-pass backward), CPU C++ (torch's own fused CPU
flash-attention kernels, which are good, behind our mask/GQA/empty-row handling), reference
(math attention in fp32). Layout (B, H, L, Dh) as torch's SDPA.
"""
import torch

from ..kernels import attention as _triton_attention
from ..kernels._compat import FP32_ACCUMULATED as _TRITON_DTYPES
from . import _checks, _philox
from ._common import math_dtype
from ._registry import FusedOp


def _check(q, k, v, causal=False, scale=None, key_padding_mask=None, dropout_p=0.0, seed=None, kv=("k", "v")):
    kn, vn = kv  # the names of k and v in the caller's signature (decode: k_cache, v_cache)
    for name, t in (("q", q), (kn, k), (vn, v)):
        _checks.float_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"fastgen: {name} must have shape (B, H, L, Dh), got {tuple(t.shape)}")
    b, h, lq, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"fastgen: {kn} must have shape ({b}, Hkv, Lk, {d}), got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"fastgen: {vn} has shape {tuple(v.shape)} but {kn} has {tuple(k.shape)}")
    if k.shape[1] == 0 or h % k.shape[1]:
        raise ValueError(f"fastgen: the number of query heads ({h}) must be a multiple of the number "
                         f"of key/value heads ({k.shape[1]})")
    if not 1 <= d <= 256:
        raise ValueError(f"fastgen: head dim must be in [1, 256], got {d}")
    for name, t in ((kn, k), (vn, v)):
        if t.dtype != q.dtype:
            raise TypeError(f"fastgen: {name} has dtype {t.dtype} but q has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"fastgen: {name} is on {t.device} but q is on {q.device}")
    if scale is not None and not 0 < scale < float("inf"):
        raise ValueError(f"fastgen: scale must be a finite positive number, got {scale}")
    if key_padding_mask is not None:
        _checks.tensor("key_padding_mask", key_padding_mask)
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (b, k.shape[2]):
            raise ValueError(f"fastgen: key_padding_mask must be a bool tensor of shape ({b}, {k.shape[2]}) "
                             f"(True = padded key), got {key_padding_mask.dtype} of shape "
                             f"{tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"fastgen: key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
    _check_dropout_p(dropout_p)
    if dropout_p > 0:
        if seed is None:
            raise ValueError("fastgen: dropout_p > 0 needs a seed (an int64 tensor with one value)")
        _checks.tensor("seed", seed)
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(f"fastgen: seed must be an int64 tensor with one value, got {seed.dtype} of "
                             f"shape {tuple(seed.shape)}")
        if seed.device != q.device:
            raise ValueError(f"fastgen: seed is on {seed.device} but q is on {q.device}")


def _check_dropout_p(dropout_p):
    if not 0.0 <= dropout_p <= 1.0:  # NaN too
        raise ValueError(f"fastgen: dropout_p must be in [0, 1], got {dropout_p}")


def _fake(q, k, v, causal=False, scale=None, key_padding_mask=None, dropout_p=0.0, seed=None):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty(q.shape[:3], dtype=math_dtype(q.dtype)))


def _check_backward(grad_out, grad_lse, q, k, v, out, lse, causal=False, scale=None, key_padding_mask=None,
                    dropout_p=0.0, seed=None):
    _check(q, k, v, causal, scale, key_padding_mask, dropout_p, seed)
    _checks.like("q", q, "grad_out", grad_out)
    _checks.like("q", q, "out", out)
    for name, t in (("grad_lse", grad_lse), ("lse", lse)):
        _checks.float_tensor(name, t)
        if t.shape != q.shape[:3]:
            raise ValueError(f"fastgen: {name} must have shape {tuple(q.shape[:3])}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"fastgen: {name} is on {t.device} but q is on {q.device}")


def _fake_backward(grad_out, grad_lse, q, k, v, out, lse, causal=False, scale=None, key_padding_mask=None,
                   dropout_p=0.0, seed=None):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


_ARGS = ("Tensor q, Tensor k, Tensor v, bool causal=False, float? scale=None, Tensor? key_padding_mask=None, "
         "float dropout_p=0.0, Tensor? seed=None")

_backward_op = FusedOp(
    "flash_attention_backward",
    "Tensor grad_out, Tensor grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "bool causal=False, float? scale=None, Tensor? key_padding_mask=None, float dropout_p=0.0, Tensor? seed=None",
    "(Tensor, Tensor, Tensor)",
    reference="attention.flash_attention_backward", fake=_fake_backward, check=_check_backward,
    triton=_triton_attention.flash_attention_backward, triton_dtypes=_TRITON_DTYPES, native=True)


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    q, k, v, causal, scale, kpm, dropout_p, seed = (tuple(inputs) + (False, None, None, 0.0, None))[:8]
    ctx.save_for_backward(q, k, v, output[0], output[1], kpm, seed)
    ctx.causal, ctx.scale, ctx.dropout_p = causal, scale, dropout_p
    ctx.backend = keyword_only_inputs.get("backend", "auto")


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, kpm, seed = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse)
    dq, dk, dv = _backward_op(grad_out, grad_lse, q, k, v, out, lse, ctx.causal, ctx.scale, kpm,
                              ctx.dropout_p, seed, backend=ctx.backend)
    return dq, dk, dv, None, None, None, None, None


_op = FusedOp(
    "flash_attention", _ARGS, "(Tensor, Tensor)",
    reference="attention.flash_attention", fake=_fake, check=_check,
    triton=_triton_attention.flash_attention, triton_dtypes=_TRITON_DTYPES, native=True, autograd=(_backward, _setup_context))


def flash_attention(q, k, v, causal=False, scale=None, key_padding_mask=None, dropout_p=0.0, *,
                    generator=None, seed=None, backend=None):
    """Exact attention softmax(q k^T * scale) v without materializing the Lq x Lk scores.

    Args:
        q: (B, H, Lq, Dh); k, v: (B, Hkv, Lk, Dh) with H a multiple of Hkv (grouped-query
            attention: query head h reads kv head h // (H // Hkv)); Dh in [1, 256]; fp16, bf16,
            fp32 (fp64: cpu and reference backends); any strides with unit last stride preferred.
        causal: query i sees keys j <= i (top-left aligned, as SDPA's is_causal).
        scale: score scale, default 1/sqrt(Dh).
        key_padding_mask: (B, Lk) bool, True marks a padded key (nn.MultiheadAttention's
            convention).
        dropout_p: drop each attention probability with this chance and scale the kept ones by
            1 / (1 - dropout_p), as SDPA's dropout. The mask is counter-based (Philox, see
            `fastgen.ops.reference.attention_dropout_keep`): computed in the kernels, recomputed
            in the backward, never stored, and the same on every backend for one seed.
        generator: torch.Generator the dropout seed is drawn from (default: the default
            generator of q's device, so torch.manual_seed makes dropout reproducible). Drawing
            the seed is a device op: no host sync.
        seed: instead of a generator, the seed itself (int, or int64 tensor with one value).

    Returns:
        (out (B, H, Lq, Dh) in q's dtype, lse (B, H, Lq) fp32: natural log-sum-exp of the scaled
        scores per query). A query that sees no key gets out 0 and lse -inf. Differentiable
        w.r.t. q, k, v (and through lse); the Triton backward runs as separate dK/dV and dQ
        passes without atomics, so it is deterministic.
    """
    dropout_p = float(dropout_p)
    _check_dropout_p(dropout_p)  # before the no-dropout shortcut below drops it
    seed = _dropout_seed(q, dropout_p, generator, seed)
    if seed is None:  # the schema's defaults: the same op call as before dropout existed
        return _op(q, k, v, bool(causal), None if scale is None else float(scale), key_padding_mask,
                   backend=backend)
    return _op(q, k, v, bool(causal), None if scale is None else float(scale), key_padding_mask,
               dropout_p, seed, backend=backend)


def _dropout_seed(q, dropout_p, generator, seed):
    """The dropout seed as an int64 tensor with one value on q's device, or None without dropout."""
    if generator is not None and seed is not None:
        raise ValueError("fastgen: pass either generator or seed, not both")
    if not dropout_p > 0:
        return None
    seed = _philox.seed_tensor(generator, seed, device=q.device)
    if not (seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool):
        seed = seed.to(torch.int64)  # other integer dtypes are read as int64; the check names the rest
    return (seed.reshape(1) if seed.numel() == 1 else seed).to(q.device)


# -- decoding against a KV cache -------------------------------------------------------------------

def _check_decode(q, k_cache, v_cache, cache_seqlens, scale=None):
    _check(q, k_cache, v_cache, False, scale, None, kv=("k_cache", "v_cache"))
    _checks.tensor("cache_seqlens", cache_seqlens)
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or tuple(cache_seqlens.shape) != (q.shape[0],):
        raise ValueError(f"fastgen: cache_seqlens must be an int32/int64 tensor of shape ({q.shape[0]},), got "
                         f"{cache_seqlens.dtype} of shape {tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"fastgen: cache_seqlens is on {cache_seqlens.device} but q is on {q.device}")
    _checks.in_range("cache_seqlens", cache_seqlens, 0, k_cache.shape[2] + 1)


def _fake_decode(q, k_cache, v_cache, cache_seqlens, scale=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


_decode = FusedOp(
    "decode_attention", "Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, float? scale=None",
    "Tensor", reference="attention.decode_attention", fake=_fake_decode, check=_check_decode,
    triton=_triton_attention.decode_attention, triton_dtypes=_TRITON_DTYPES, native=True)


def decode_attention(q, k_cache, v_cache, cache_seqlens, scale=None, *, backend=None):
    """Attention of a few new queries against a KV cache, for incremental decoding (inference:
    no autograd).

    Args:
        q: (B, H, Lq, Dh), the Lq newest tokens of each sequence (Lq small: 1 when sampling).
        k_cache, v_cache: (B, Hkv, Lmax, Dh) with H a multiple of Hkv (GQA).
        cache_seqlens: (B,) int32/int64 on q's device: the valid length of each sequence's cache,
            the new tokens' keys included (they are its last Lq entries). Read on the device: no
            host sync, so a decode step can be captured in a CUDA graph.
        scale: default 1/sqrt(Dh).

    Query i of sequence b sits at position cache_seqlens[b] - Lq + i and sees keys up to its own.
    A length outside [0, Lmax] raises a ValueError for CPU tensors. On CUDA tensors it is not
    checked (that would be a host sync): the kernels then read only the Lmax keys there are, with
    the queries at the positions the length gives; a query that sees no key returns 0.
    Triton splits the keys over programs ("flash-decoding") and merges the partial softmaxes.
    """
    return _decode(q, k_cache, v_cache, cache_seqlens, None if scale is None else float(scale), backend=backend)


def _check_kv_append(k_cache, v_cache, cache_seqlens, k_new, v_new):
    for name, t in (("k_new", k_new), ("v_new", v_new), ("k_cache", k_cache), ("v_cache", v_cache)):
        _checks.float_tensor(name, t)  # no silent cast of int / bool / complex values
        if t.dim() != 4:
            raise ValueError(f"fastgen: {name} must have shape (B, Hkv, {'T' if name.endswith('new') else 'Lmax'}, "
                             f"Dh), got {tuple(t.shape)}")
    b, hkv, t, d = k_new.shape
    if k_cache.shape[:2] != (b, hkv) or k_cache.shape[3] != d or v_cache.shape != k_cache.shape:
        raise ValueError(f"fastgen: k_cache/v_cache must have shape ({b}, {hkv}, Lmax, {d}), got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if v_new.shape != k_new.shape:
        raise ValueError(f"fastgen: v_new has shape {tuple(v_new.shape)} but k_new has {tuple(k_new.shape)}")
    _checks.tensor("cache_seqlens", cache_seqlens)
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or tuple(cache_seqlens.shape) != (b,):
        raise ValueError(f"fastgen: cache_seqlens must be an int32/int64 tensor of shape ({b},), got "
                         f"{cache_seqlens.dtype} of shape {tuple(cache_seqlens.shape)}")
    for name, x in (("v_cache", v_cache), ("cache_seqlens", cache_seqlens), ("k_new", k_new), ("v_new", v_new)):
        if x.device != k_cache.device:
            raise ValueError(f"fastgen: {name} is on {x.device} but k_cache is on {k_cache.device}")
    if t and _checks.host_readable(cache_seqlens):
        lo, hi = (int(x) for x in cache_seqlens.aminmax())
        if lo < 0:
            raise ValueError(f"fastgen: cache_seqlens must be >= 0, got {lo}")
        if hi + t > k_cache.shape[2]:
            raise ValueError(f"fastgen: appending {t} tokens overflows the cache (Lmax={k_cache.shape[2]}, "
                             f"longest sequence {hi})")


@torch.no_grad()
def kv_cache_append(k_cache, v_cache, cache_seqlens, k_new, v_new):
    """Write k_new, v_new (B, Hkv, T, Dh) into the caches at positions cache_seqlens[b] + t and
    advance cache_seqlens by T, all in place and on the device (no host sync). The caller keeps
    0 <= cache_seqlens and cache_seqlens + T <= Lmax (checked for CPU tensors; on a GPU that
    would be a host sync)."""
    _check_kv_append(k_cache, v_cache, cache_seqlens, k_new, v_new)
    b, hkv, t, d = k_new.shape
    pos = (cache_seqlens.long()[:, None] + torch.arange(t, device=k_new.device)[None, :])  # [B, T]
    index = pos[:, None, :, None].expand(b, hkv, t, d)
    k_cache.scatter_(2, index, k_new.to(k_cache.dtype))
    v_cache.scatter_(2, index, v_new.to(v_cache.dtype))
    cache_seqlens.add_(t)
