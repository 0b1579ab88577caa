"""The reference for attention: flash (prefill) attention, decode attention over a KV cache.

Part of the spec every backend is tested against (fastgen/ops/reference/__init__.py)."""
import math

import torch

from .. import _philox  # the counter-based RNG every backend draws from
from ._common import math_dtype


def attention_valid(lq, lk, causal, key_padding_mask, device):
    """Which (query, key) pairs take part: [B or 1, 1, Lq, Lk] bool. Causal is top-left aligned,
    as torch's SDPA `is_causal` (query i sees keys j <= i); key_padding_mask [B, Lk] marks padded
    keys with True, as nn.MultiheadAttention's."""
    valid = torch.ones(1, 1, lq, lk, dtype=torch.bool, device=device)
    if causal:
        valid = valid & torch.ones(lq, lk, dtype=torch.bool, device=device).tril()
    if key_padding_mask is not None:
        valid = valid & ~key_padding_mask[:, None, None, :]
    return valid


def attention_dropout_keep(shape, dropout_p, seed, device):
    """Dropout mask (True = kept) of the attention probabilities, shape (B, H, Lq, Lk): element
    (b, h, i, j) is kept iff rand(seed, ((b * H + h) * Lq + i) * Lk + j) >= dropout_p, the
    counter-based uniform of fastgen/ops/_philox.py (Triton's tl.rand), so every backend and
    every tiling drops the same elements."""
    offsets = torch.arange(math.prod(shape), dtype=torch.int64, device=device).reshape(shape)
    return _philox.rand(seed, offsets) >= dropout_p


def dropout_scale(dropout_p):
    """1 / (1 - p) for the kept probabilities (0 when p = 1: everything is dropped)."""
    return 1.0 / (1.0 - dropout_p) if dropout_p < 1 else 0.0


def flash_attention(q, k, v, causal=False, scale=None, key_padding_mask=None, dropout_p=0.0, seed=None):
    """Math attention in fp32 (fp64 for fp64): q [B, H, Lq, Dh], k and v [B, Hkv, Lk, Dh] with
    H a multiple of Hkv (grouped-query attention: query head h reads kv head h // (H / Hkv)).
    scale defaults to 1/sqrt(Dh). Returns (out [B, H, Lq, Dh] in q's dtype, lse [B, H, Lq] the
    natural log-sum-exp of the scaled, masked scores). A query with no visible key gets out 0
    and lse -inf. dropout_p > 0 drops probabilities by `attention_dropout_keep` (seed: an
    integer tensor with one value) and scales the kept ones by 1 / (1 - dropout_p)."""
    t = math_dtype(q.dtype)
    group = q.shape[1] // k.shape[1]
    qf, kf, vf = q.to(t), k.to(t).repeat_interleave(group, 1), v.to(t).repeat_interleave(group, 1)
    scale = 1.0 / q.shape[-1] ** 0.5 if scale is None else scale
    s = (qf @ kf.transpose(-1, -2)) * scale
    valid = attention_valid(q.shape[2], k.shape[2], causal, key_padding_mask, q.device)
    s = s.masked_fill(~valid, float("-inf"))
    # softmax spelled out so that a query with no visible key gives 0 (and no NaN gradients)
    if s.shape[-1]:
        m = s.amax(-1, keepdim=True).detach()
        m = m.masked_fill(m == float("-inf"), 0)
    else:  # no keys (Lk = 0): every query sees nothing
        m = s.new_zeros(s.shape[:-1] + (1,))
    e = torch.exp(s - m)
    denom = e.sum(-1, keepdim=True)
    tiny = torch.finfo(t).tiny
    p = e / denom.clamp_min(tiny)
    lse = torch.where(denom > 0, m + torch.log(denom.clamp_min(tiny)), float("-inf")).squeeze(-1)
    if dropout_p > 0:  # lse is of the probabilities before dropout, as the kernels keep it
        keep = attention_dropout_keep(s.shape, dropout_p, seed, q.device)
        p = p * keep * dropout_scale(dropout_p)
    return (p @ vf).to(q.dtype), lse


def flash_attention_backward(grad_out, grad_lse, q, k, v, out, lse, causal=False, scale=None,
                             key_padding_mask=None, dropout_p=0.0, seed=None):
    """Gradients of flash_attention w.r.t. (q, k, v), by torch autograd through the reference."""
    with torch.enable_grad():
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        o, l = flash_attention(qq, kk, vv, causal, scale, key_padding_mask, dropout_p, seed)
        grads = torch.autograd.grad((o, l), (qq, kk, vv), (grad_out, grad_lse), allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g.contiguous() for g, x in zip(grads, (q, k, v)))


def decode_attention_valid(lq, lmax, cache_seqlens):
    """[B, 1, Lq, Lmax] bool for decoding: the Lq new queries of sequence b sit at the last Lq
    of its cache_seqlens[b] positions and see every key up to their own (bottom-right causal)."""
    j = torch.arange(lmax, device=cache_seqlens.device)
    i = torch.arange(lq, device=cache_seqlens.device)
    limit = cache_seqlens.long()[:, None] - (lq - 1 - i)[None, :]      # [B, Lq]: keys j < limit
    return (j[None, None, :] < limit[:, :, None]).unsqueeze(1)


def decode_attention(q, k_cache, v_cache, cache_seqlens, scale=None):
    """Attention of a few new queries q [B, H, Lq, Dh] against a KV cache [B, Hkv, Lmax, Dh]
    holding cache_seqlens[b] valid positions per sequence (the new tokens' keys included, at
    the end). Returns out [B, H, Lq, Dh] in q's dtype (0 for a query that sees no key)."""
    t = math_dtype(q.dtype)
    group = q.shape[1] // k_cache.shape[1]
    qf = q.to(t)
    kf = k_cache.to(t).repeat_interleave(group, 1)
    vf = v_cache.to(t).repeat_interleave(group, 1)
    scale = 1.0 / q.shape[-1] ** 0.5 if scale is None else scale
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~decode_attention_valid(q.shape[2], k_cache.shape[2], cache_seqlens), float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # a row with nothing visible: 0
    return (p @ vf).to(q.dtype)
