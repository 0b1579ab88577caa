"""Triton kernels for group_norm_silu.

One program per (sample, group): the group's Cg * HW elements are contiguous in (N, C, *).
Forward: mean, then the centred variance (two passes: no E[x^2] - E[x]^2 cancellation), then
the output. Backward: per-channel sums of gy and gy * (x - mean) over (channel tile, HW tile)
blocks, then dx; dweight / dbias are reduced over the batch afterwards (fixed order).
Math in fp32 (fp64 for fp64 inputs).
"""
import torch

from ._compat import INTERPRET, jit, math_dtype, next_power_of_2, tl, to_int64


@jit
def _gn_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, G, CG, HW, eps,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    g = pid % G
    m = to_int64(CG) * HW  # a group may hold 2**31 elements or more
    base = pid.to(tl.int64) * m
    math_t = mean_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK], dtype=math_t)
    for i0 in range(0, m, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + base + idx, mask=idx < m, other=0.0).to(math_t)
    mean = tl.sum(acc, axis=0) / m
    acc = tl.zeros([BLOCK], dtype=math_t)
    for i0 in range(0, m, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        d = tl.load(x_ptr + base + idx, mask=idx < m, other=0.0).to(math_t) - mean
        acc += tl.where(idx < m, d * d, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / m + eps)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)
    for i0 in range(0, m, BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        mask = idx < m
        c = g * CG + idx // HW
        y = (tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(math_t) - mean) * rstd
        if HAS_W:
            y = y * tl.load(w_ptr + c, mask=mask, other=0.0).to(math_t)
        if HAS_B:
            y = y + tl.load(b_ptr + c, mask=mask, other=0.0).to(math_t)
        if ACT:
            y = y / (1.0 + tl.exp(-y))
        tl.store(y_ptr + base + idx, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def _gn_bwd_kernel(g_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, dx_ptr, sa_ptr, sb_ptr, G, CG, HW,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    pid = tl.program_id(0)
    g = pid % G
    m = to_int64(CG) * HW
    base = pid.to(tl.int64) * m
    math_t = mean_ptr.dtype.element_ty
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    # pass 1: per channel sa = sum gy * (x - mean), sb = sum gy; group sums s1 = sum w * sb,
    # s2 = sum w * rstd * sa (= sum of dL/dxhat and of dL/dxhat * xhat)
    s1 = tl.zeros([BLOCK_C], dtype=math_t)
    s2 = tl.zeros([BLOCK_C], dtype=math_t)
    for c0 in range(0, CG, BLOCK_C):
        cl = c0 + tl.arange(0, BLOCK_C)
        cmask = cl < CG
        c = g * CG + cl
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(math_t) if HAS_W else tl.full([BLOCK_C], 1.0, math_t)
        b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(math_t) if HAS_B else tl.zeros([BLOCK_C], math_t)
        sa = tl.zeros([BLOCK_C, BLOCK_HW], dtype=math_t)
        sb = tl.zeros([BLOCK_C, BLOCK_HW], dtype=math_t)
        for h0 in range(0, HW, BLOCK_HW):
            hw = h0 + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < HW)[None, :]
            offs = base + cl.to(tl.int64)[:, None] * HW + hw[None, :]
            xc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(math_t) - mean
            gy = tl.load(g_ptr + offs, mask=mask, other=0.0).to(math_t)
            if ACT:
                y = xc * rstd * w[:, None] + b[:, None]
                sig = 1.0 / (1.0 + tl.exp(-y))
                gy = gy * sig * (1.0 + y * (1.0 - sig))
            sa += tl.where(mask, gy * xc, 0.0)
            sb += tl.where(mask, gy, 0.0)
        sa_c = tl.sum(sa, axis=1)
        sb_c = tl.sum(sb, axis=1)
        tl.store(sa_ptr + pid.to(tl.int64) * CG + cl, sa_c, mask=cmask)
        tl.store(sb_ptr + pid.to(tl.int64) * CG + cl, sb_c, mask=cmask)
        s1 += tl.where(cmask, w * sb_c, 0.0)
        s2 += tl.where(cmask, w * rstd * sa_c, 0.0)
    k1 = -rstd * rstd * tl.sum(s2, axis=0) / m
    k2 = -rstd * tl.sum(s1, axis=0) / m
    # pass 2: dx = rstd * w * gy + k1 * (x - mean) + k2
    for c0 in range(0, CG, BLOCK_C):
        cl = c0 + tl.arange(0, BLOCK_C)
        cmask = cl < CG
        c = g * CG + cl
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(math_t) if HAS_W else tl.full([BLOCK_C], 1.0, math_t)
        b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(math_t) if HAS_B else tl.zeros([BLOCK_C], math_t)
        for h0 in range(0, HW, BLOCK_HW):
            hw = h0 + tl.arange(0, BLOCK_HW)
            mask = cmask[:, None] & (hw < HW)[None, :]
            offs = base + cl.to(tl.int64)[:, None] * HW + hw[None, :]
            xc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(math_t) - mean
            gy = tl.load(g_ptr + offs, mask=mask, other=0.0).to(math_t)
            if ACT:
                y = xc * rstd * w[:, None] + b[:, None]
                sig = 1.0 / (1.0 + tl.exp(-y))
                gy = gy * sig * (1.0 + y * (1.0 - sig))
            dx = rstd * w[:, None] * gy + k1 * xc + k2
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _gn_dims(x, num_groups):
    n, c = x.shape[0], x.shape[1]
    hw = x.numel() // (n * c) if n * c else 0
    return n, c, c // num_groups, hw


def group_norm_silu(x, weight, bias, num_groups, eps=1e-5, act=True):
    x = x.contiguous()
    n, c, cg, hw = _gn_dims(x, num_groups)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    t = math_dtype(x.dtype)
    mean = x.new_empty((n, num_groups), dtype=t)
    rstd = x.new_empty((n, num_groups), dtype=t)
    if n == 0:
        return y, mean, rstd
    if cg * hw == 0:  # nothing to normalize: mean 0 and var 0, as the reference
        mean.zero_()
        rstd.fill_(1.0 / (eps ** 0.5))
        return y, mean, rstd
    w = weight.contiguous() if weight is not None else x
    b = bias.contiguous() if bias is not None else x
    block = min(4096 if INTERPRET else 1024, next_power_of_2(cg * hw))
    _gn_fwd_kernel[(n * num_groups,)](x, w, b, y, mean, rstd, num_groups, cg, hw, float(eps),
                                      HAS_W=weight is not None, HAS_B=bias is not None, ACT=bool(act),
                                      BLOCK=block)
    return y, mean, rstd


def group_norm_silu_backward(grad, x, weight, bias, mean, rstd, num_groups, act=True):
    x, grad = x.contiguous(), grad.contiguous()
    n, c, cg, hw = _gn_dims(x, num_groups)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    t = math_dtype(x.dtype)
    sa = x.new_zeros((n, num_groups, cg), dtype=t)
    sb = x.new_zeros((n, num_groups, cg), dtype=t)
    if n and cg * hw:
        w = weight.contiguous() if weight is not None else x
        b = bias.contiguous() if bias is not None else x
        block_hw = min(1024, next_power_of_2(hw))
        block_c = min(next_power_of_2(cg), max(1, (4096 if INTERPRET else 2048) // block_hw))
        _gn_bwd_kernel[(n * num_groups,)](grad, x, w, b, mean.contiguous(), rstd.contiguous(), dx, sa, sb,
                                          num_groups, cg, hw, HAS_W=weight is not None,
                                          HAS_B=bias is not None, ACT=bool(act), BLOCK_C=block_c,
                                          BLOCK_HW=block_hw)
    dw = ((sa * rstd.to(t)[..., None]).sum(0).reshape(c).to(weight.dtype) if weight is not None
          else x.new_empty((0,)))
    db = sb.sum(0).reshape(c).to(bias.dtype) if bias is not None else x.new_empty((0,))
    return dx, dw, db
