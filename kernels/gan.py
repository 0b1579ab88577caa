"""Triton kernels for the GAN / SimCLR family: bias_act, group_norm_silu, info_nce_loss.

bias_act views x as (outer, C, inner) with C = x.shape[dim]. The forward is a flat elementwise
kernel; the backward walks (rows of outer) x (channels) tiles so each program also sums its
tile's dx per channel into one partial row: dbias = partials summed in a fixed order (no atomics,
deterministic). Math in fp32 (fp64 for fp64 inputs).
"""
import torch

from ._compat import INTERPRET, double_arg, fp32_dot_ieee, jit, next_power_of_2, split_double, tl, to_int64

ACT_CODES = {"leaky_relu": 0, "relu": 1, "silu": 2, "gelu": 3}
# GELU's constants are literals in the @jit code below: Triton's compiler rejects reads of
# (non-constexpr) module globals, which the interpreter accepts. 0.7071067811865476 = sqrt(1/2),
# 0.3989422804014327 = 1 / sqrt(2 pi).


@jit
def _act(y, alpha, ACT: tl.constexpr):
    if ACT == 0:
        out = tl.where(y <= 0, y * alpha, y)
    elif ACT == 1:
        out = tl.where(y <= 0, 0.0, y)
    elif ACT == 2:
        out = y / (1.0 + tl.exp(-y))
    else:
        out = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    return out


@jit
def _act_slope(y, alpha, ACT: tl.constexpr):
    if ACT == 0:
        s = tl.where(y > 0, 1.0, alpha)
    elif ACT == 1:
        s = tl.where(y > 0, 1.0, 0.0)
    elif ACT == 2:
        sig = 1.0 / (1.0 + tl.exp(-y))
        s = sig * (1.0 + y * (1.0 - sig))
    else:
        s = 0.5 * (1.0 + tl.math.erf(y * 0.7071067811865476)) + y * tl.exp(-0.5 * y * y) * 0.3989422804014327
    return s


@jit
def _bias_act_fwd_kernel(x_ptr, b_ptr, out_ptr, numel, C, inner, alpha_hi, alpha_lo, gain_hi, gain_lo,
                         ACT: tl.constexpr, HAS_BIAS: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    math_t = tl.float64 if FP64 else tl.float32
    alpha = double_arg(alpha_hi, alpha_lo, math_t)
    gain = double_arg(gain_hi, gain_lo, math_t)
    y = tl.load(x_ptr + offs, mask=mask, other=0.0).to(math_t)
    if HAS_BIAS:
        c = (offs // inner) % C
        y += tl.load(b_ptr + c, mask=mask, other=0.0).to(math_t)
    out = _act(y, alpha, ACT) * gain
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _bias_act_bwd_kernel(g_ptr, x_ptr, b_ptr, dx_ptr, partial_ptr, C, inner, rows, rows_per,
                         alpha_hi, alpha_lo, gain_hi, gain_lo, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                         FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr):
    # axis 0 = channel tile (may be many), axis 1 = row block (at most 2048: CUDA caps axis 1)
    pid_o = tl.program_id(1)
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    math_t = tl.float64 if FP64 else tl.float32
    alpha = double_arg(alpha_hi, alpha_lo, math_t)
    gain = double_arg(gain_hi, gain_lo, math_t)
    if HAS_BIAS:
        b = tl.load(b_ptr + cs, mask=cmask, other=0.0).to(math_t)
    else:
        b = tl.zeros([BLOCK_C], dtype=math_t)
    acc = tl.zeros([BLOCK_C, BLOCK_I], dtype=math_t)
    o0 = pid_o.to(tl.int64) * rows_per
    for k in range(0, tl.minimum(rows_per, rows - o0)):
        base = (o0 + k) * C * inner
        for j0 in range(0, inner, BLOCK_I):
            js = j0 + tl.arange(0, BLOCK_I)
            mask = cmask[:, None] & (js < inner)[None, :]
            offs = base + cs.to(tl.int64)[:, None] * inner + js[None, :]
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(math_t)
            y = tl.load(x_ptr + offs, mask=mask, other=0.0).to(math_t) + b[:, None]
            dx = g * _act_slope(y, alpha, ACT) * gain
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if HAS_BIAS:
                acc += tl.where(mask, dx, 0.0)
    if HAS_BIAS:
        tl.store(partial_ptr + pid_o.to(tl.int64) * C + cs, tl.sum(acc, axis=1), mask=cmask)


def _math_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _outer_c_inner(x, dim):
    d = dim % x.dim()
    c = x.shape[d]
    inner = 1
    for s in x.shape[d + 1:]:
        inner *= s
    outer = x.numel() // (c * inner) if c * inner else 0
    return outer, c, inner


def bias_act(x, bias, act="leaky_relu", alpha=0.2, gain=1.0, dim=1):
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return out
    _, c, inner = _outer_c_inner(x, dim)
    block = 4096 if INTERPRET else 1024
    grid = (_cdiv(x.numel(), block),)
    b = bias.contiguous() if bias is not None else x  # never read without HAS_BIAS
    _bias_act_fwd_kernel[grid](x, b, out, x.numel(), c, inner, *_params(alpha, gain),
                               ACT=ACT_CODES[act], HAS_BIAS=bias is not None,
                               FP64=x.dtype == torch.float64, BLOCK=block)
    return out


def _cdiv(a, b):
    return -(-a // b)


def _params(alpha, gain):
    # hi + lo fp32 pairs: fp64 inputs need alpha and gain in fp64, and a parameter tensor would
    # be a host-to-device copy per call (and not capturable in a CUDA graph)
    return split_double(alpha) + split_double(gain)


def bias_act_backward(grad, x, bias, act="leaky_relu", alpha=0.2, gain=1.0, dim=1):
    x, grad = x.contiguous(), grad.contiguous()
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    outer, c, inner = _outer_c_inner(x, dim)
    if bias is None:
        db = x.new_empty((0,))
    if x.numel() == 0:
        return dx, (db if bias is None else torch.zeros_like(bias))
    block_i = min(1024, next_power_of_2(inner))
    block_c = min(next_power_of_2(c), max(1, 1024 // block_i))
    grid_c = _cdiv(c, block_c)
    # Enough row blocks to fill a GPU; under the interpreter every program is a slow host step.
    want = 1 if INTERPRET else max(1, 2048 // grid_c)
    rows_per = _cdiv(outer, min(outer, want))
    grid_o = _cdiv(outer, rows_per)
    partial = x.new_empty((grid_o, c), dtype=_math_dtype(x.dtype)) if bias is not None else x
    b = bias.contiguous() if bias is not None else x
    _bias_act_bwd_kernel[(grid_c, grid_o)](grad, x, b, dx, partial, c, inner, outer, rows_per,
                                           *_params(alpha, gain), ACT=ACT_CODES[act],
                                           HAS_BIAS=bias is not None, FP64=x.dtype == torch.float64,
                                           BLOCK_C=block_c,
                                           BLOCK_I=block_i)
    if bias is not None:
        db = partial.sum(0).to(bias.dtype)
    return dx, db


# -- group_norm_silu ---------------------------------------------------------------------------
# One program per (sample, group): the group's Cg * HW elements are contiguous in (N, C, *).
# Forward: mean, then the centred variance (two passes: no E[x^2] - E[x]^2 cancellation), then
# the output. Backward: per-channel sums of gy and gy * (x - mean) over (channel tile, HW tile)
# blocks, then dx; dweight / dbias are reduced over the batch afterwards (fixed order).


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
    t = _math_dtype(x.dtype)
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
    t = _math_dtype(x.dtype)
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


# -- info_nce_loss -----------------------------------------------------------------------------
# u = normalized cat(z1, z2) (2N, D) in the math dtype; v = u / temperature. Forward: one
# program per BLOCK_M anchors walks all 2N candidates in BLOCK_N tiles with an online
# logsumexp (diagonal masked), writing lse only. Backward: one program per (BLOCK_M anchors, D
# chunk) recomputes the tiles and accumulates sum_j (P_ij + P_ji) u_j with
# P_ij = exp(s_ij - lse_i): each program owns its output rows (no atomics, deterministic).
# The O(N * D) pieces (normalization and its backward, the positive-pair term) run in torch.


@jit
def _sim_tile(u_ptr, v_ptr, rows, cols, M, D, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=u_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        a = tl.load(u_ptr + rows.to(tl.int64)[:, None] * D + ds[None, :],
                    mask=(rows < M)[:, None] & (ds < D)[None, :], other=0.0)
        b = tl.load(v_ptr + cols.to(tl.int64)[:, None] * D + ds[None, :],
                    mask=(cols < M)[:, None] & (ds < D)[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee", out_dtype=acc.dtype)
        else:
            acc = tl.dot(a, tl.trans(b), acc, out_dtype=acc.dtype)
    # the anchor itself and padding are not candidates
    keep = (rows[:, None] != cols[None, :]) & (cols < M)[None, :]
    return tl.where(keep, acc, float("-inf"))


@jit
def _info_nce_fwd_kernel(u_ptr, v_ptr, lse_ptr, M, D, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    math_t = u_ptr.dtype.element_ty
    run_max = tl.full([BLOCK_M], float("-inf"), math_t)
    run_sum = tl.zeros([BLOCK_M], math_t)
    for j0 in range(0, M, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        s = _sim_tile(u_ptr, v_ptr, rows, cols, M, D, BLOCK_M, BLOCK_N, BLOCK_D, IEEE)
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        safe = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows with nothing seen yet
        run_sum = run_sum * tl.exp(run_max - safe) + tl.sum(tl.exp(s - safe[:, None]), axis=1)
        run_max = new_max
    tl.store(lse_ptr + rows, run_max + tl.log(run_sum), mask=rows < M)


@jit
def _info_nce_bwd_kernel(u_ptr, v_ptr, lse_ptr, du_ptr, M, D, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, OUT_D: tl.constexpr,
                         IEEE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(1) * OUT_D + tl.arange(0, OUT_D)
    math_t = u_ptr.dtype.element_ty
    lse_i = tl.load(lse_ptr + rows, mask=rows < M, other=0.0)
    acc = tl.zeros([BLOCK_M, OUT_D], dtype=math_t)
    for j0 in range(0, M, BLOCK_N):
        cols = j0 + tl.arange(0, BLOCK_N)
        s = _sim_tile(u_ptr, v_ptr, rows, cols, M, D, BLOCK_M, BLOCK_N, BLOCK_D, IEEE)
        lse_j = tl.load(lse_ptr + cols, mask=cols < M, other=0.0)
        w = tl.exp(s - lse_i[:, None]) + tl.exp(s - lse_j[None, :])
        w = tl.where((rows < M)[:, None], w, 0.0)
        uj = tl.load(u_ptr + cols.to(tl.int64)[:, None] * D + outs[None, :],
                     mask=(cols < M)[:, None] & (outs < D)[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(w, uj, acc, input_precision="ieee", out_dtype=acc.dtype)
        else:
            acc = tl.dot(w, uj, acc, out_dtype=acc.dtype)
    tl.store(du_ptr + rows.to(tl.int64)[:, None] * D + outs[None, :], acc,
             mask=(rows < M)[:, None] & (outs < D)[None, :])


_NORM_EPS = 1e-12
# IEEE: fp32 tiles use exact fp32 products unless torch allows TF32 for fp32 matmuls (then the
# logits, divided by the temperature, carry TF32's ~1e-3 relative error, as torch's own
# u @ v.T would); fp64 tiles pass no precision option.
# Every dot names its accumulator's dtype as out_dtype: Triton 3.6 asserts that an fp64
# accumulator matches out_dtype (default fp32), where 3.8 infers it.


def _info_nce_prepare(z1, z2, temperature):
    t = _math_dtype(z1.dtype)
    z = torch.cat([z1, z2]).to(t).contiguous()
    norm = z.norm(dim=1, keepdim=True)
    u = (z / norm.clamp_min(_NORM_EPS)).contiguous()
    return z, norm, u, (u * (1.0 / temperature)).contiguous()


def _info_nce_blocks(d, dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_D, OUT_D, num_warps, IEEE); tl.dot needs every dim >= 16. Exact
    fp32 and fp64 dots run on FMAs with their operands in registers: small tiles (fastgen.
    compile_check: no spills, and fp64's 64x64x128 tiles were over every GPU's shared memory)."""
    fit = max(16, next_power_of_2(d))
    ieee = dtype == torch.float32 and fp32_dot_ieee()
    if INTERPRET:
        return 64, 64, min(128, fit), min(128, fit), 4, ieee
    if dtype == torch.float64:
        return 32, 32, min(16, fit), min(32, fit), 4, ieee
    if ieee:
        return 32, 32, min(32, fit), min(64, fit), 4, ieee
    return 64, 64, min(64, fit), min(128, fit), 4, ieee


def info_nce_loss(z1, z2, temperature):
    z, norm, u, v = _info_nce_prepare(z1, z2, temperature)
    m, d = u.shape
    n = z1.shape[0]
    lse = torch.empty(m, dtype=u.dtype, device=u.device)
    bm, bn, bd, _, warps, ieee = _info_nce_blocks(d, u.dtype)
    _info_nce_fwd_kernel[(_cdiv(m, bm),)](u, v, lse, m, d, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                                          IEEE=ieee, num_warps=warps)
    pos = (u[:n] * v[n:]).sum()
    return (lse.sum() - 2 * pos) / m, lse


def info_nce_loss_backward(grad_loss, z1, z2, lse, temperature):
    z, norm, u, v = _info_nce_prepare(z1, z2, temperature)
    m, d = u.shape
    n = z1.shape[0]
    lse = lse.to(u.dtype).contiguous()
    du = torch.empty_like(u)
    bm, bn, bd, out_d, warps, ieee = _info_nce_blocks(d, u.dtype)
    _info_nce_bwd_kernel[(_cdiv(m, bm), _cdiv(d, out_d))](
        u, v, lse, du, m, d, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, OUT_D=out_d, IEEE=ieee,
        num_warps=warps)
    du[:n] -= 2 * u[n:]
    du[n:] -= 2 * u[:n]
    du *= grad_loss.to(u.dtype).reshape(()) / (m * temperature)
    clamped = norm <= _NORM_EPS
    dz = torch.where(clamped, du / _NORM_EPS, (du - u * (u * du).sum(1, keepdim=True)) / norm.clamp_min(_NORM_EPS))
    dz = dz.to(z1.dtype)
    return dz[:n].clone(), dz[n:].clone()  # two outputs must not share storage
