"""Triton flash attention: forward with an online softmax in base 2, backward as two passes
(dK/dV per key block, dQ per query block), so no atomics: deterministic.

Layout (B, H, L, Dh) with any strides; grouped-query attention reads kv head h // GROUP.
Causal masking is top-left aligned (query i sees keys j <= i, as SDPA's is_causal); a key
padding mask [B, Lk] marks padded keys with True. A query with no visible key writes 0 and
lse = -inf. Scores are scaled by scale * log2(e) once so the softmax can use exp2.
"""
import math

import torch

from ._compat import INTERPRET, fp32_dot_ieee, jit, next_power_of_2, smem_limit, tl, to_int64, triton

LOG2E = 1.4426950408889634


@jit
def _scores(q, k, offs_m, offs_n, LK, kpm_ptr, qk_scale, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr,
            IEEE: tl.constexpr):
    """Scaled (base-2) scores of a [BLOCK_M, BLOCK_N] tile with masked pairs at -inf."""
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * qk_scale
    valid = (offs_n < LK)[None, :]
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    if HAS_KPM:
        pad = tl.load(kpm_ptr + offs_n, mask=offs_n < LK, other=1)
        valid = valid & (pad == 0)[None, :]
    return tl.where(valid, s, float("-inf"))


@jit
def _dropout(p, rows, offs_n, LK, seed, dropout_p, drop_scale):
    """Attention dropout of a probability tile: element (row, j) is kept iff
    rand(seed, row * LK + j) >= dropout_p (row = (b * H + h) * LQ + i, int64), and kept values
    are scaled by 1 / (1 - dropout_p). Returns (dropped tile, keep mask)."""
    keep = tl.rand(seed, rows[:, None] * LK + offs_n[None, :]) >= dropout_p
    return tl.where(keep, p * drop_scale, 0.0), keep


@jit
def _lse2(lse):
    """lse in base 2 for recomputing p = exp2(s - lse2); a query that saw no key gets +inf, so
    its p is 0 without an inf - inf."""
    return tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)


@jit
def _tile(base, first, stride, BLOCK: tl.constexpr, offs_d):
    """Pointers to rows first .. first + BLOCK - 1 (columns offs_d) of a matrix at `base` with
    row stride `stride`: the tile's start in 64 bits (it can pass 2**31 elements), offsets
    within the tile in 32 (64-bit offsets per element double the address registers)."""
    return base + to_int64(first) * stride + tl.arange(0, BLOCK)[:, None] * stride + offs_d[None, :]


@jit
def _split_pid(L, BLOCK: tl.constexpr):
    """(block along the sequence, batch * head) of this program. The grid is flat, blocks of one
    head adjacent: axis 0 takes 2**31 - 1 programs, axis 1 only 65535 (B * H can exceed it)."""
    pid = tl.program_id(0)
    nblocks = tl.cdiv(L, BLOCK)
    return pid % nblocks, pid // nblocks


@jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, kpm_ptr, qk_scale,
                     sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, skpm,
                     H, GROUP, LQ, LK, D, seed_ptr, dropout_p, drop_scale,
                     CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, IEEE: tl.constexpr, DROPOUT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = _split_pid(LQ, BLOCK_M)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    mmask = offs_m < LQ
    q_base = q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = k_ptr + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    kpm_base = kpm_ptr + b.to(tl.int64) * skpm
    q = tl.load(_tile(q_base, pid_m * BLOCK_M, sqm, BLOCK_M, offs_d), mask=mmask[:, None] & dmask[None, :],
                other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = LK
    if CAUSAL:
        hi = tl.minimum(LK, (pid_m + 1) * BLOCK_M)  # keys past the block's last query are masked
    if DROPOUT:
        seed = tl.load(seed_ptr)
    rows = bh.to(tl.int64) * LQ + offs_m
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n < LK)[:, None] & dmask[None, :]
        k = tl.load(_tile(k_base, start_n, skn, BLOCK_N, offs_d), mask=kv_mask, other=0.0)
        s = _scores(q, k, offs_m, offs_n, LK, kpm_base, qk_scale, CAUSAL, HAS_KPM, IEEE)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)  # the softmax sums before dropout
        if DROPOUT:
            p, _ = _dropout(p, rows, offs_n, LK, seed, dropout_p, drop_scale)
        v = tl.load(_tile(v_base, start_n, svn, BLOCK_N, offs_d), mask=kv_mask, other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    tl.store(_tile(o_ptr, bh.to(tl.int64) * LQ + pid_m * BLOCK_M, D, BLOCK_M, offs_d), out.to(o_ptr.dtype.element_ty),
             mask=mmask[:, None] & dmask[None, :])
    tl.store(lse_ptr + bh.to(tl.int64) * LQ + offs_m, lse, mask=mmask)


@jit
def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, kpm_ptr, dk_ptr, dv_ptr,
                          qk_scale, sm_scale, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, skpm,
                          H, HKV, GROUP, LQ, LK, D, seed_ptr, dropout_p, drop_scale,
                          CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, IEEE: tl.constexpr, DROPOUT: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n, bhk = _split_pid(LK, BLOCK_N)
    b = bhk // HKV
    hk = bhk % HKV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    kv_mask = (offs_n < LK)[:, None] & dmask[None, :]
    k = tl.load(_tile(k_ptr + b.to(tl.int64) * skb + hk.to(tl.int64) * skh, pid_n * BLOCK_N, skn, BLOCK_N, offs_d),
                mask=kv_mask, other=0.0)
    v = tl.load(_tile(v_ptr + b.to(tl.int64) * svb + hk.to(tl.int64) * svh, pid_n * BLOCK_N, svn, BLOCK_N, offs_d),
                mask=kv_mask, other=0.0)
    kpm_base = kpm_ptr + b.to(tl.int64) * skpm
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = 0
    if CAUSAL:
        lo = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M  # earlier queries see none of these keys
    if DROPOUT:
        seed = tl.load(seed_ptr)
    for g in range(0, GROUP):  # the query heads sharing this kv head, in order: no atomics
        h = hk * GROUP + g
        bh = b * H + h
        q_base = q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        for start_m in range(lo, LQ, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            mmask = offs_m < LQ
            qd_mask = mmask[:, None] & dmask[None, :]
            q = tl.load(_tile(q_base, start_m, sqm, BLOCK_M, offs_d), mask=qd_mask, other=0.0)
            rows = bh.to(tl.int64) * LQ + offs_m
            do = tl.load(_tile(do_ptr, bh.to(tl.int64) * LQ + start_m, D, BLOCK_M, offs_d), mask=qd_mask, other=0.0)
            lse2 = _lse2(tl.load(lse_ptr + rows, mask=mmask, other=float("-inf")))
            delta = tl.load(delta_ptr + rows, mask=mmask, other=0.0)
            s = _scores(q, k, offs_m, offs_n, LK, kpm_base, qk_scale, CAUSAL, HAS_KPM, IEEE)
            p = tl.exp2(s - lse2[:, None])
            p_kept = p
            if DROPOUT:
                p_kept, keep = _dropout(p, rows, offs_n, LK, seed, dropout_p, drop_scale)
            if IEEE:
                dv += tl.dot(tl.trans(p_kept.to(do.dtype)), do, input_precision="ieee")
                dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            else:
                dv += tl.dot(tl.trans(p_kept.to(do.dtype)), do)
                dp = tl.dot(do, tl.trans(v))
            if DROPOUT:  # d(dropped p) -> d p
                dp = tl.where(keep, dp * drop_scale, 0.0)
            ds = p * (dp - delta[:, None])
            if IEEE:
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")
            else:
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    first = bhk.to(tl.int64) * LK + pid_n * BLOCK_N
    tl.store(_tile(dk_ptr, first, D, BLOCK_N, offs_d), (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(_tile(dv_ptr, first, D, BLOCK_N, offs_d), dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, kpm_ptr, dq_ptr,
                        qk_scale, sm_scale, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, skpm,
                        H, GROUP, LQ, LK, D, seed_ptr, dropout_p, drop_scale,
                        CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, IEEE: tl.constexpr, DROPOUT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = _split_pid(LQ, BLOCK_M)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    mmask = offs_m < LQ
    qd_mask = mmask[:, None] & dmask[None, :]
    q = tl.load(_tile(q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, pid_m * BLOCK_M, sqm, BLOCK_M, offs_d),
                mask=qd_mask, other=0.0)
    rows = bh.to(tl.int64) * LQ + offs_m
    first = bh.to(tl.int64) * LQ + pid_m * BLOCK_M
    do = tl.load(_tile(do_ptr, first, D, BLOCK_M, offs_d), mask=qd_mask, other=0.0)
    lse2 = _lse2(tl.load(lse_ptr + rows, mask=mmask, other=float("-inf")))
    delta = tl.load(delta_ptr + rows, mask=mmask, other=0.0)
    k_base = k_ptr + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    kpm_base = kpm_ptr + b.to(tl.int64) * skpm
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = LK
    if CAUSAL:
        hi = tl.minimum(LK, (pid_m + 1) * BLOCK_M)
    if DROPOUT:
        seed = tl.load(seed_ptr)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n < LK)[:, None] & dmask[None, :]
        k = tl.load(_tile(k_base, start_n, skn, BLOCK_N, offs_d), mask=kv_mask, other=0.0)
        v = tl.load(_tile(v_base, start_n, svn, BLOCK_N, offs_d), mask=kv_mask, other=0.0)
        s = _scores(q, k, offs_m, offs_n, LK, kpm_base, qk_scale, CAUSAL, HAS_KPM, IEEE)
        p = tl.exp2(s - lse2[:, None])
        if IEEE:
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        else:
            dp = tl.dot(do, tl.trans(v))
        if DROPOUT:
            _, keep = _dropout(p, rows, offs_n, LK, seed, dropout_p, drop_scale)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if IEEE:
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
        else:
            dq += tl.dot(ds.to(k.dtype), k)
    tl.store(_tile(dq_ptr, first, D, BLOCK_M, offs_d), (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=qd_mask)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, operand class and head-dim bucket, for
# GPUs with >= 160 KB of shared memory per block (sm_80, sm_90, sm_100) and for the ~100 KB ones
# (sm_86, sm_89, sm_120). "mma": fp16 / bf16, and fp32 with TF32 allowed; "ieee": exact fp32,
# whose dots run on FMAs with operands in registers, so its tiles are small. Every entry is
# compiled for sm_80 and sm_90 by fastgen.compile_check (no spills for 16-bit operands, shared
# memory within the limit); the table in benchmarks/results/compile/ has the numbers.
# dK/dV at d=128 takes 4 warps: on 32 x 64 tiles with 8 warps, Triton 3.6's code for sm_90 gave
# different dk / dv on identical calls (a race; H200, benchmarks/results/nvidia-h200-20261204b).
_TILES = {
    # kind, class: {head-dim bucket: tiles}
    ("fwd", "mma"): {64: (64, 64, 4, 3), 128: (64, 32, 4, 3), 256: (64, 32, 8, 2)},
    ("fwd", "ieee"): {64: (32, 32, 8, 2), 128: (32, 32, 8, 2), 256: (16, 32, 8, 2)},
    ("dkdv", "mma"): {64: (32, 32, 4, 3), 128: (32, 32, 4, 2), 256: (16, 32, 8, 2)},
    ("dkdv", "ieee"): {64: (32, 32, 8, 2), 128: (16, 32, 8, 2), 256: (16, 16, 8, 2)},
    ("dq", "mma"): {64: (32, 64, 4, 3), 128: (64, 32, 8, 3), 256: (32, 32, 4, 2)},
    ("dq", "ieee"): {64: (32, 32, 8, 2), 128: (32, 32, 8, 2), 256: (16, 32, 8, 2)},
    ("decode", "mma"): {64: (64, 64, 4, 2), 128: (32, 64, 4, 2), 256: (16, 32, 4, 2)},
    ("decode", "ieee"): {64: (32, 32, 8, 2), 128: (16, 32, 8, 2), 256: (16, 16, 8, 2)},
}
_SMALL_SMEM = 160 * 1024
# Under the interpreter every program is a slow host step and registers do not exist: big tiles
# (tests/test_ops_attention.py also runs the GPU table under the interpreter, once per bucket).
_INTERPRETER_TILES = {64: (64, 64), 128: (64, 32), 256: (32, 32)}
GPU_TILES_UNDER_INTERPRETER = False


def _tiles(kind, d, dtype, device):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages, IEEE) for one kernel on `device`."""
    block_d = max(16, next_power_of_2(d))
    ieee = dtype == torch.float32 and fp32_dot_ieee()
    if INTERPRET and not GPU_TILES_UNDER_INTERPRETER and device.type == "cpu":
        bm, bn = _INTERPRETER_TILES[max(64, block_d)]
        if kind == "decode":
            bm = 128
        return bm, bn, block_d, 4, 1, ieee
    bm, bn, warps, stages = _TILES[kind, "ieee" if ieee else "mma"][max(64, block_d)]
    if dtype == torch.float32 and not ieee:  # TF32 operands are twice the bytes of fp16 ones
        stages = min(stages, 2)
    if smem_limit(device) < _SMALL_SMEM:
        stages = 1 if block_d >= 128 else min(stages, 2)
        if block_d >= 256:
            bn = min(bn, 16)
    return bm, bn, block_d, warps, stages, ieee


def _row_strided(t):
    """Unit stride along Dh; and a row stride small enough that offsets within a tile of at
    most 256 rows stay in 32 bits (the kernels add a 64-bit tile start)."""
    return t if t.stride(-1) == 1 and t.stride(-2) < 2 ** 23 else t.contiguous()


def _common(q, k, v, scale, key_padding_mask):
    if q.dtype == torch.float64:
        raise TypeError("fastgen.flash_attention: the triton kernels take float16, bfloat16 or float32; "
                        "use backend='cpu' or 'reference' for float64")
    q, k, v = _row_strided(q), _row_strided(k), _row_strided(v)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if key_padding_mask is None:
        kpm, has_kpm = q.new_zeros(1, dtype=torch.int8), False
    else:
        kpm, has_kpm = key_padding_mask.to(torch.int8).contiguous(), True
    return q, k, v, sm_scale, kpm, has_kpm


def _strides(q, k, v, kpm, has_kpm):
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), kpm.stride(0) if has_kpm else 0)


def _dropout_args(q, dropout_p, seed):
    """(seed pointer, dropout_p, 1 / (1 - dropout_p), DROPOUT) kernel arguments."""
    if not dropout_p > 0:
        return q, 0.0, 1.0, False
    return seed.reshape(1), float(dropout_p), 1.0 / (1.0 - dropout_p) if dropout_p < 1 else 0.0, True


def flash_attention(q, k, v, causal=False, scale=None, key_padding_mask=None, dropout_p=0.0, seed=None):
    q, k, v, sm_scale, kpm, has_kpm = _common(q, k, v, scale, key_padding_mask)
    seed_ptr, p_drop, drop_scale, dropout = _dropout_args(q, dropout_p, seed)
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    block_m, block_n, block_d, warps, stages, ieee = _tiles("fwd", d, q.dtype, q.device)
    _attn_fwd_kernel[(triton.cdiv(lq, block_m) * b * h,)](
        q, k, v, out, lse, kpm, sm_scale * LOG2E, *_strides(q, k, v, kpm, has_kpm),
        h, h // hkv, lq, lk, d, seed_ptr, p_drop, drop_scale, CAUSAL=causal, HAS_KPM=has_kpm,
        IEEE=ieee, DROPOUT=dropout, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=warps, num_stages=stages)
    return out, lse


def flash_attention_backward(grad_out, grad_lse, q, k, v, out, lse, causal=False, scale=None,
                             key_padding_mask=None, dropout_p=0.0, seed=None):
    q, k, v, sm_scale, kpm, has_kpm = _common(q, k, v, scale, key_padding_mask)
    seed_ptr, p_drop, drop_scale, dropout = _dropout_args(q, dropout_p, seed)
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    do = grad_out.contiguous()
    # delta_i = sum_d dO * O (softmax Jacobian); a gradient on lse adds p * grad_lse to dS,
    # which is the same as subtracting it from delta
    delta = (do.float() * out.float()).sum(-1) - grad_lse.float()
    lse = lse.float().contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty((b, hkv, lk, d), dtype=k.dtype, device=k.device)
    dv = torch.empty((b, hkv, lk, d), dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    flags = dict(CAUSAL=causal, HAS_KPM=has_kpm, DROPOUT=dropout)
    strides = _strides(q, k, v, kpm, has_kpm)
    block_m, block_n, block_d, warps, stages, ieee = _tiles("dkdv", d, q.dtype, q.device)
    _attn_bwd_dkdv_kernel[(triton.cdiv(lk, block_n) * b * hkv,)](
        q, k, v, do, lse, delta, kpm, dk, dv, sm_scale * LOG2E, sm_scale, *strides,
        h, hkv, h // hkv, lq, lk, d, seed_ptr, p_drop, drop_scale, IEEE=ieee, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, num_stages=stages, **flags)
    block_m, block_n, block_d, warps, stages, ieee = _tiles("dq", d, q.dtype, q.device)
    _attn_bwd_dq_kernel[(triton.cdiv(lq, block_m) * b * h,)](
        q, k, v, do, lse, delta, kpm, dq, sm_scale * LOG2E, sm_scale, *strides,
        h, h // hkv, lq, lk, d, seed_ptr, p_drop, drop_scale, IEEE=ieee, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, num_stages=stages, **flags)
    return dq, dk, dv


# -- decode: few queries against a KV cache, split over the keys ("flash-decoding") -----------

@jit
def _decode_partial_kernel(q_ptr, k_ptr, v_ptr, seqlens_ptr, m_ptr, l_ptr, acc_ptr, qk_scale,
                           sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
                           H, GROUP, LQ, LK, D, SPLIT_LEN, NSPLIT,
                           IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr):
    """Unnormalized partial attention of one (batch, head)'s block of queries over one key
    split: running max (base 2), sum and accumulator, merged by the combine step. Keys past the
    cache (cache_seqlens[b] > LK) do not exist, as on every backend."""
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    seqlen = tl.load(seqlens_ptr + b)
    offs_m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < LQ
    dmask = offs_d < D
    q = tl.load(_tile(q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, tl.program_id(2) * BLOCK_M, sqm, BLOCK_M,
                      offs_d), mask=mmask[:, None] & dmask[None, :], other=0.0)
    limit = seqlen - (LQ - 1 - offs_m)  # query i (bottom-right aligned) sees keys j < limit_i
    k_base = k_ptr + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    lo = split * SPLIT_LEN
    hi = tl.minimum(tl.minimum(lo + SPLIT_LEN, seqlen), LK)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n < hi)[:, None] & dmask[None, :]
        k = tl.load(_tile(k_base, start_n, skn, BLOCK_N, offs_d), mask=kv_mask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where((offs_n[None, :] < limit[:, None]) & (offs_n < hi)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(_tile(v_base, start_n, svn, BLOCK_N, offs_d), mask=kv_mask, other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    row = (bh.to(tl.int64) * NSPLIT + split) * LQ + offs_m
    tl.store(m_ptr + row, m_i, mask=mmask)
    tl.store(l_ptr + row, l_i, mask=mmask)
    tl.store(acc_ptr + row[:, None] * D + offs_d[None, :], acc, mask=mmask[:, None] & dmask[None, :])


def decode_attention(q, k_cache, v_cache, cache_seqlens, scale=None):
    if q.dtype == torch.float64:
        raise TypeError("fastgen.decode_attention: the triton kernels take float16, bfloat16 or float32; "
                        "use backend='cpu' or 'reference' for float64")
    q, k, v = _row_strided(q), _row_strided(k_cache), _row_strided(v_cache)
    b, h, lq, d = q.shape
    hkv, lmax = k.shape[1], k.shape[2]
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    sm_scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    block_m, block_n, block_d, warps, stages, ieee = _tiles("decode", d, q.dtype, q.device)
    block_m = min(block_m, max(16, next_power_of_2(lq)))
    # enough splits to fill the device when B * H is small, each at least a few key blocks long
    nsplit = max(1, min(64, triton.cdiv(lmax, 4 * block_n)))
    split_len = triton.cdiv(triton.cdiv(lmax, nsplit), block_n) * block_n
    nsplit = triton.cdiv(lmax, split_len)
    m = torch.empty((b * h, nsplit, lq), dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    acc = torch.empty((b * h, nsplit, lq, d), dtype=torch.float32, device=q.device)
    _decode_partial_kernel[(b * h, nsplit, triton.cdiv(lq, block_m))](
        q, k, v, cache_seqlens.to(torch.int64).contiguous(), m, l, acc, sm_scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), h, h // hkv, lq, lmax, d, split_len, nsplit,
        IEEE=ieee, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps,
        num_stages=stages)
    # combine the splits: weights 2^(m_s - max m), a split that saw nothing weighs 0
    m_max = m.amax(1, keepdim=True)
    w = torch.exp2(m - m_max.masked_fill(m_max == float("-inf"), 0))
    num = (w.unsqueeze(-1) * acc).sum(1)
    den = (w * l).sum(1).unsqueeze(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-30), 0.0).view(b, h, lq, d).to(q.dtype)
