"""Drop-in attention on fastgen's flash_attention op.

- `scaled_dot_product_attention`: torch.nn.functional.scaled_dot_product_attention's signature
  and results. Fused: no mask, `is_causal`, or a boolean mask that only depends on (batch, key)
  (a key padding mask, shape (B, 1, 1, Lk)); grouped-query attention with `enable_gqa`; dropout.
  Anything else (other masks, ranks other than 3/4) runs torch's own SDPA, with a one-time note.
- `MultiheadAttention`: a `torch.nn.MultiheadAttention` (same constructor, parameters,
  state-dict keys, forward signature and returns) whose forward runs the projections with
  torch and the attention with flash_attention when `need_weights=False` (as torch's own fast
  path asks), else torch's forward.

Differences from torch: a query that sees no key at all (every key padded) gets output 0
here; torch's math kernels give NaN for it. Dropout draws its mask from fastgen's counter-based
Philox (a seed taken from the default generator of the inputs' device, so `torch.manual_seed`
makes it reproducible), not from torch's dropout stream: the same distribution, other draws.
"""
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops

__all__ = ["KVCache", "MultiheadAttention", "scaled_dot_product_attention"]

_NOTED = set()


def _note_fallback(who, why):
    if why not in _NOTED:
        _NOTED.add(why)
        warnings.warn(f"fastgen.nn.{who}: {why}; running torch's implementation", RuntimeWarning, stacklevel=3)


def _padding_from_mask(attn_mask, b, lk):
    """A bool SDPA mask (True = attend) that only varies over (batch, key) as a key padding mask
    (True = padded), else None."""
    if attn_mask.dtype != torch.bool or attn_mask.dim() != 4 or attn_mask.shape[1:3] != (1, 1):
        return None
    if attn_mask.shape[0] not in (1, b) or attn_mask.shape[3] != lk:
        return None
    return (~attn_mask[:, 0, 0, :]).expand(b, lk)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention, fused by fastgen where it can be (see
    the module docstring)."""
    def fallback(why):
        _note_fallback("scaled_dot_product_attention", why)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    if query.dim() not in (3, 4) or key.dim() != query.dim() or value.dim() != query.dim():
        return fallback("only (B, H, L, E) and (B, L, E) inputs are fused")
    unbatched_heads = query.dim() == 3
    q, k, v = (t.unsqueeze(1) for t in (query, key, value)) if unbatched_heads else (query, key, value)
    if q.shape[1] != k.shape[1] and not enable_gqa:
        return fallback("different head counts need enable_gqa=True")
    if v.shape[-1] != q.shape[-1]:
        return fallback("value head dim differs from the query's")
    kpm = None
    if attn_mask is not None:
        if is_causal:
            return fallback("attn_mask together with is_causal")
        mask = attn_mask.unsqueeze(1) if unbatched_heads and attn_mask.dim() == 3 else attn_mask
        kpm = _padding_from_mask(mask, q.shape[0], k.shape[2])
        if kpm is None:
            return fallback("only masks of shape (B, 1, 1, Lk) (key padding) are fused")
    out, _ = ops.flash_attention(q, k, v, is_causal, scale, kpm, dropout_p)
    return out.squeeze(1) if unbatched_heads else out


class MultiheadAttention(nn.MultiheadAttention):
    """torch.nn.MultiheadAttention with the attention itself on fastgen's flash_attention.

    Construct, load state dicts and call it exactly as torch's. With `need_weights=False` and a
    boolean (or absent) key_padding_mask, no attn_mask other than the causal one flagged by
    `is_causal=True`, and no add_bias_kv / add_zero_attn, the attention is fused (attention
    dropout in training included, with fastgen's Philox mask); every other call runs torch's
    forward unchanged.
    """

    def _why_not_fused(self, query, key, value, key_padding_mask, need_weights, attn_mask, is_causal):
        if need_weights:
            return "need_weights=True returns the attention matrix, which the fused kernel never forms"
        if self.bias_k is not None or self.add_zero_attn:
            return "add_bias_kv / add_zero_attn are not fused"
        if query.dim() != 3:
            return "unbatched inputs are not fused"
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            return "float key_padding_mask is not fused"
        if attn_mask is not None and not is_causal:
            return "attn_mask other than a causal one (is_causal=True) is not fused"
        if attn_mask is None and is_causal:
            return "is_causal=True without attn_mask (torch requires the mask)"
        return None

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        why = self._why_not_fused(query, key, value, key_padding_mask, need_weights, attn_mask, is_causal)
        if why is not None:
            if not need_weights:  # the caller asked for the fast path and does not get it: say why
                _note_fallback("MultiheadAttention", why)
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, e = query.shape
        h, dh = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        if query is key and key is value and self._qkv_same_embed_dim:  # self-attention: one GEMM
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        # (B, L, H, Dh) memory viewed as (B, H, L, Dh): the kernel reads the strides, no copy
        q, k, v = (t.unflatten(-1, (h, dh)).transpose(1, 2) for t in (q, k, v))
        out, _ = ops.flash_attention(q, k, v, is_causal, None, key_padding_mask,
                                     self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, e))
        return (out if self.batch_first else out.transpose(0, 1)), None


class KVCache(nn.Module):
    """Keys and values of the tokens decoded so far, for incremental decoding.

    Buffers `k`, `v` (B, Hkv, max_len, Dh) and `seqlens` (B,) int64 live on the device; `append`
    writes new tokens in place and `attend` runs `fastgen.ops.decode_attention` of the newest
    queries against everything cached: no host sync per step, so a decode step can be captured
    in a CUDA graph. A prompt goes in with `append` followed by `attend` of its queries (causal
    among themselves) or with flash_attention on the prompt.
    """

    def __init__(self, batch_size, num_kv_heads, max_len, head_dim, dtype=torch.float32, device=None):
        super().__init__()
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("seqlens", torch.zeros(batch_size, dtype=torch.int64, device=device), persistent=False)

    @property
    def max_len(self):
        return self.k.shape[2]

    def reset(self):
        self.seqlens.zero_()
        return self

    def append(self, k_new, v_new):
        """Cache (B, Hkv, T, Dh) new keys/values after each sequence's current end."""
        ops.kv_cache_append(self.k, self.v, self.seqlens, k_new, v_new)
        return self

    def attend(self, q, scale=None):
        """Attention of the newest Lq queries (B, H, Lq, Dh), whose keys were just appended."""
        return ops.decode_attention(q, self.k, self.v, self.seqlens, scale)
