"""Triton kernels for normalizing flows: affine_coupling, actnorm, invertible_conv1x1 and
flow_nll (forward and backward).

The coupling's per-sample logdet uses the reduction layout of kernels/vae.py: grid axis 0 =
sample, axis 1 = chunk of its elements, one partial per program, partials summed per sample in
a fixed order afterwards (deterministic, no atomics). Math in fp32 (fp64 for fp64 inputs).

Scalars that must keep fp64 precision in fp64 math (clamp, 0.636, pi/2, pi/4) travel in a small
math-dtype tensor: a Python float argument or literal becomes an fp32 constant in Triton.
Triton has no atan/tanh/log1p that work under the interpreter and on every GPU, so they are
written here from exp/log/sin/cos.
"""
import functools
import math

import torch

from ._compat import INTERPRET, fp32_dot_ieee, jit, math_dtype, next_power_of_2, row_tiling, tl

SCALE_FNS = {"exp": 0, "sigmoid": 1, "tanh_exp": 2, "atan_exp": 3}
ATAN_CLAMP_GAIN = 0.636  # FrEIA's soft-clamp constant (the spec's value, not 2/pi)


@jit
def _log1p(x):
    # Goldberg's trick: log(u) * x / (u - 1) cancels the rounding of u = 1 + x.
    u = 1.0 + x
    d = tl.where(u == 1.0, 1.0, u - 1.0)
    return tl.where(u == 1.0, x, tl.log(u) * (x / d))


@jit
def _tanh(x):
    t = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -r, r)


@jit
def _atan(x, half_pi, quarter_pi, FP64: tl.constexpr):
    # |x| > 1: atan(x) = pi/2 - atan(1/x); then |a| > tan(pi/8): pi/4 + atan((a-1)/(a+1)); the
    # remaining |a| <= 0.4142 takes Cephes' atanf polynomial (fp32-accurate).
    ax = tl.abs(x)
    big = ax > 1.0
    a = tl.where(big, 1.0 / tl.where(big, ax, 1.0), ax)
    mid = a > 0.41421356237309503
    a = tl.where(mid, (a - 1.0) / (a + 1.0), a)
    z = a * a
    p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
         - 3.33329491539e-1) * z * a + a
    if FP64:
        # one Newton step on sin(p) - a cos(p) = 0 takes the fp32-level guess to fp64 accuracy
        s = tl.sin(p)
        c = tl.cos(p)
        p = p - (s - a * c) / (c + a * s)
    p = tl.where(mid, p + quarter_pi, p)
    p = tl.where(big, half_pi - p, p)
    return tl.where(x < 0, -p, p)


@jit
def _log_scale(r, params_ptr, FN: tl.constexpr, FP64: tl.constexpr):
    """log s from raw_scale (see fastgen.ops.reference.coupling_log_scale)."""
    if FN == 0:
        ls = r
    elif FN == 1:
        u = r + 2.0
        ls = tl.minimum(u, 0.0) - _log1p(tl.exp(-tl.abs(u)))
    elif FN == 2:
        clamp = tl.load(params_ptr)
        ls = clamp * _tanh(r / clamp)
    else:
        clamp = tl.load(params_ptr)
        gain = tl.load(params_ptr + 1)
        ls = clamp * gain * _atan(r / clamp, tl.load(params_ptr + 2), tl.load(params_ptr + 3), FP64)
    return ls


@jit
def _dlog_scale(r, params_ptr, FN: tl.constexpr):
    """d log s / d raw_scale."""
    if FN == 0:
        d = tl.full(r.shape, 1.0, r.dtype)
    elif FN == 1:
        u = r + 2.0
        d = tl.exp(-tl.maximum(u, 0.0) - _log1p(tl.exp(-tl.abs(u))))  # sigmoid(-u), overflow-free
    elif FN == 2:
        clamp = tl.load(params_ptr)
        th = _tanh(r / clamp)
        d = 1.0 - th * th
    else:
        clamp = tl.load(params_ptr)
        q = r / clamp
        d = tl.load(params_ptr + 1) / (1.0 + q * q)
    return d


@jit
def _coupling_fwd_kernel(x_ptr, t_ptr, r_ptr, y_ptr, partial_ptr, params_ptr, cols, chunk,
                         FN: tl.constexpr, INVERSE: tl.constexpr, FP64: tl.constexpr,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    math_t = partial_ptr.dtype.element_ty
    base = row * cols
    start = c.to(tl.int64) * chunk
    acc = tl.zeros([BLOCK], dtype=math_t)
    for off in range(0, chunk, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        mask = idx < cols
        x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        t = tl.load(t_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        r = tl.load(r_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        ls = _log_scale(r, params_ptr, FN, FP64)
        if INVERSE:
            y = (x - t) * tl.exp(-ls)
        else:
            y = x * tl.exp(ls) + t
        tl.store(y_ptr + base + idx, y.to(y_ptr.dtype.element_ty), mask=mask)
        acc += tl.where(mask, ls, 0.0)  # log s of a masked lane's 0 is not 0 for "sigmoid"
    total = tl.sum(acc, axis=0)
    if INVERSE:
        total = -total
    tl.store(partial_ptr + row * tl.num_programs(1) + c, total)


@jit
def _coupling_bwd_kernel(gy_ptr, gl_ptr, x_ptr, t_ptr, r_ptr, dx_ptr, dr_ptr, params_ptr, cols,
                         chunk, FN: tl.constexpr, INVERSE: tl.constexpr, FP64: tl.constexpr,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    math_t = gl_ptr.dtype.element_ty
    out_t = dx_ptr.dtype.element_ty
    base = row * cols
    start = c.to(tl.int64) * chunk
    gl = tl.load(gl_ptr + row)
    for off in range(0, chunk, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        mask = idx < cols
        gy = tl.load(gy_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        r = tl.load(r_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        ls = _log_scale(r, params_ptr, FN, FP64)
        d = _dlog_scale(r, params_ptr, FN)
        if INVERSE:
            t = tl.load(t_ptr + base + idx, mask=mask, other=0.0).to(math_t)
            inv_s = tl.exp(-ls)
            dx = gy * inv_s
            dr = -(gy * ((x - t) * inv_s) + gl) * d
        else:
            s = tl.exp(ls)
            dx = gy * s
            dr = (gy * x * s + gl) * d
        tl.store(dx_ptr + base + idx, dx.to(out_t), mask=mask)
        tl.store(dr_ptr + base + idx, dr.to(out_t), mask=mask)


@functools.lru_cache(maxsize=64)
def _params(clamp, dtype, device):
    # cached: on a GPU, building it per call would be a host-to-device copy per call
    return torch.tensor([clamp, ATAN_CLAMP_GAIN, math.pi / 2, math.pi / 4],
                        dtype=math_dtype(dtype), device=device)


def affine_coupling(x_b, shift, raw_scale, scale_fn="exp", clamp=2.0, inverse=False):
    x_b, shift, raw_scale = x_b.contiguous(), shift.contiguous(), raw_scale.contiguous()
    rows, cols, block, chunk, chunks = row_tiling(x_b)
    y = torch.empty_like(x_b, memory_format=torch.contiguous_format)
    math_t = math_dtype(x_b.dtype)
    if rows == 0:
        return y, x_b.new_empty((0,), dtype=math_t)
    partial = x_b.new_empty((rows, chunks), dtype=math_t)
    _coupling_fwd_kernel[(rows, chunks)](
        x_b, shift, raw_scale, y, partial, _params(clamp, x_b.dtype, x_b.device), cols, chunk,
        FN=SCALE_FNS[scale_fn], INVERSE=bool(inverse), FP64=math_t == torch.float64, BLOCK=block)
    logdet = partial.view(rows) if chunks == 1 else partial.sum(1)
    return y, logdet


def affine_coupling_backward(grad_y, grad_logdet, x_b, shift, raw_scale, scale_fn="exp", clamp=2.0,
                             inverse=False):
    grad_y, x_b, shift, raw_scale = (t.contiguous() for t in (grad_y, x_b, shift, raw_scale))
    rows, cols, block, chunk, chunks = row_tiling(x_b)
    dx = torch.empty_like(x_b, memory_format=torch.contiguous_format)
    dr = torch.empty_like(x_b, memory_format=torch.contiguous_format)
    if rows == 0 or cols == 0:
        return dx, dr
    math_t = math_dtype(x_b.dtype)
    grad_logdet = grad_logdet.to(math_t).contiguous()
    _coupling_bwd_kernel[(rows, chunks)](
        grad_y, grad_logdet, x_b, shift, raw_scale, dx, dr, _params(clamp, x_b.dtype, x_b.device),
        cols, chunk, FN=SCALE_FNS[scale_fn], INVERSE=bool(inverse), FP64=math_t == torch.float64,
        BLOCK=block)
    return dx, dr


# -- actnorm --------------------------------------------------------------------------------------
# x is viewed as (N, C, S), S = spatial size. Programs own [BN, BC, BS] tiles, so NCHW images
# (large S) and (N, D) features (S = 1) both get full blocks. The backward's per-channel sums
# (sum g and sum g * x) are written per program and added over programs afterwards in a fixed
# order; loc/log_scale only enter the finishing formulas on C-vectors.

@jit
def _to_math(v, FP64: tl.constexpr):
    if FP64:
        out = v.to(tl.float64)
    else:
        out = v.to(tl.float32)
    return out


@jit
def _actnorm_tile(N, C, S, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BN + tl.arange(0, BN).to(tl.int64)[:, None, None]
    c = tl.program_id(1).to(tl.int64) * BC + tl.arange(0, BC).to(tl.int64)[None, :, None]
    s = tl.program_id(2).to(tl.int64) * BS + tl.arange(0, BS).to(tl.int64)[None, None, :]
    mask = (n < N) & (c < C) & (s < S)
    return (n * C + c) * S + s, mask, c, c < C


@jit
def _actnorm_fwd_kernel(x_ptr, loc_ptr, ls_ptr, y_ptr, N, C, S, INVERSE: tl.constexpr,
                        FP64: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr):
    offs, mask, c, cmask = _actnorm_tile(N, C, S, BN, BC, BS)
    x = _to_math(tl.load(x_ptr + offs, mask=mask, other=0.0), FP64)
    loc = _to_math(tl.load(loc_ptr + c, mask=cmask, other=0.0), FP64)
    ls = _to_math(tl.load(ls_ptr + c, mask=cmask, other=0.0), FP64)
    if INVERSE:
        y = x * tl.exp(-ls) - loc
    else:
        y = (x + loc) * tl.exp(ls)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@jit
def _actnorm_bwd_kernel(gy_ptr, x_ptr, ls_ptr, dx_ptr, sum_g_ptr, sum_gx_ptr, N, C, S,
                        INVERSE: tl.constexpr, FP64: tl.constexpr, BN: tl.constexpr,
                        BC: tl.constexpr, BS: tl.constexpr):
    offs, mask, c, cmask = _actnorm_tile(N, C, S, BN, BC, BS)
    g = _to_math(tl.load(gy_ptr + offs, mask=mask, other=0.0), FP64)
    x = _to_math(tl.load(x_ptr + offs, mask=mask, other=0.0), FP64)
    ls = _to_math(tl.load(ls_ptr + c, mask=cmask, other=0.0), FP64)
    if INVERSE:
        dx = g * tl.exp(-ls)
    else:
        dx = g * tl.exp(ls)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    row = tl.program_id(0).to(tl.int64) * tl.num_programs(2) + tl.program_id(2)
    cols = tl.program_id(1).to(tl.int64) * BC + tl.arange(0, BC)
    tl.store(sum_g_ptr + row * C + cols, tl.sum(tl.sum(g, axis=2), axis=0), mask=cols < C)
    tl.store(sum_gx_ptr + row * C + cols, tl.sum(tl.sum(g * x, axis=2), axis=0), mask=cols < C)


def _actnorm_blocks(n, c, s):
    bs = min(next_power_of_2(s), 1024)
    bc = min(next_power_of_2(c), max(1, 1024 // bs))
    bn = min(next_power_of_2(n), max(1, 1024 // (bs * bc)))
    grid = (-(-n // bn), -(-c // bc), -(-s // bs))
    return grid, dict(BN=bn, BC=bc, BS=bs)


def _actnorm_nsc(x):
    n, c = x.shape[0], x.shape[1]
    return n, c, (x.numel() // (n * c)) if n * c else math.prod(x.shape[2:])


def actnorm(x, loc, log_scale, inverse=False):
    x, loc, log_scale = x.contiguous(), loc.contiguous(), log_scale.contiguous()
    n, c, s = _actnorm_nsc(x)
    math_t = math_dtype(x.dtype)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    # the same value for every sample: a C-vector sum, no pass over x needed
    total = log_scale.to(math_t).sum() * s
    logdet = (-total if inverse else total).expand(n).contiguous()
    if x.numel():
        grid, blocks = _actnorm_blocks(n, c, s)
        _actnorm_fwd_kernel[grid](x, loc, log_scale, y, n, c, s, INVERSE=bool(inverse),
                                  FP64=math_t == torch.float64, **blocks)
    return y, logdet


def actnorm_finish(sum_g, sum_gx, grad_logdet, loc, log_scale, s, inverse):
    """(d loc, d log_scale) from the per-channel sums of g and g * x (math dtype)."""
    math_t = sum_g.dtype
    ls, loc_m = log_scale.to(math_t), loc.to(math_t)
    gl_total = grad_logdet.to(math_t).sum() * s
    if inverse:
        d_loc = -sum_g
        d_ls = -torch.exp(-ls) * sum_gx - gl_total
    else:
        scale = torch.exp(ls)
        d_loc = scale * sum_g
        d_ls = scale * (sum_gx + loc_m * sum_g) + gl_total
    return d_loc.to(loc.dtype), d_ls.to(log_scale.dtype)


def actnorm_backward(grad_y, grad_logdet, x, loc, log_scale, inverse=False):
    grad_y, x, log_scale = grad_y.contiguous(), x.contiguous(), log_scale.contiguous()
    n, c, s = _actnorm_nsc(x)
    math_t = math_dtype(x.dtype)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        sum_g = sum_gx = torch.zeros(c, dtype=math_t, device=x.device)
    else:
        grid, blocks = _actnorm_blocks(n, c, s)
        parts_g = x.new_empty((grid[0] * grid[2], c), dtype=math_t)
        parts_gx = torch.empty_like(parts_g)
        _actnorm_bwd_kernel[grid](grad_y, x, log_scale, dx, parts_g, parts_gx, n, c, s,
                                  INVERSE=bool(inverse), FP64=math_t == torch.float64, **blocks)
        sum_g, sum_gx = parts_g.sum(0), parts_gx.sum(0)
    return (dx,) + actnorm_finish(sum_g, sum_gx, grad_logdet, loc, log_scale, s, inverse)


# -- invertible 1x1 convolution --------------------------------------------------------------------
# y[n] = M @ x[n] over (N, C, S): one program per (sample, block of output channels, block of
# positions), the input channels in blocks of BK through tl.dot (fp32 math, "ieee" precision so
# fp32 stays fp32; fp64 math as broadcast FMAs, which tl.dot does not take everywhere). The
# C x C weight build, its inverse and the chain of d M back to the LU factors are torch ops on
# C x C matrices; the weight gradient sum_n G[n] X[n]^T is torch.tensordot.

@jit
def _invconv_kernel(m_ptr, x_ptr, y_ptr, C, S, FP64: tl.constexpr, IEEE: tl.constexpr, BO: tl.constexpr,
                    BS: tl.constexpr, BK: tl.constexpr):
    # axis 0 = (sample, block of positions), flat: a 2048 x 2048 image has 65536 position
    # blocks, one more than CUDA allows on axes 1 and 2
    s_blocks = tl.cdiv(S, BS)
    n = (tl.program_id(0) // s_blocks).to(tl.int64)
    o = tl.program_id(1) * BO + tl.arange(0, BO)
    s = (tl.program_id(0) % s_blocks).to(tl.int64) * BS + tl.arange(0, BS).to(tl.int64)
    base = n * C * S
    if FP64:
        acc = tl.zeros((BO, BS), dtype=tl.float64)
    else:
        acc = tl.zeros((BO, BS), dtype=tl.float32)
    for k0 in range(0, C, BK):
        k = k0 + tl.arange(0, BK)
        m = tl.load(m_ptr + o[:, None] * C + k[None, :], mask=(o[:, None] < C) & (k[None, :] < C), other=0.0)
        x = _to_math(tl.load(x_ptr + base + k[:, None].to(tl.int64) * S + s[None, :],
                             mask=(k[:, None] < C) & (s[None, :] < S), other=0.0), FP64)
        if FP64:
            acc += tl.sum(m[:, :, None] * x[None, :, :], axis=1)
        elif IEEE:
            acc += tl.dot(m, x, input_precision="ieee")
        else:
            acc += tl.dot(m, x)
    tl.store(y_ptr + base + o[:, None].to(tl.int64) * S + s[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(o[:, None] < C) & (s[None, :] < S))


def _invconv_apply(m, x):
    """M @ x[n] at every position of x (N, C, *spatial), M (C, C) in the math dtype."""
    x = x.contiguous()
    n, c, s = _actnorm_nsc(x)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel():
        fp64 = m.dtype == torch.float64
        ieee = fp32_dot_ieee()
        # fp64 forms its BO x BK x BS products in registers, and exact fp32 dots run on FMAs
        # with operands in registers: smaller tiles on a GPU (fastgen.compile_check: no spills)
        if INTERPRET:
            tiles = (32, 16, 32) if fp64 else (64, 32, 64)
        elif fp64:
            tiles = (16, 16, 32)
        else:
            tiles = (32, 32, 32) if ieee else (64, 32, 64)
        bo, bk, bs = (max(16, min(next_power_of_2(v), t)) for v, t in zip((c, c, s), tiles))
        grid = (n * -(-s // bs), -(-c // bo))
        _invconv_kernel[grid](m.contiguous(), x, y, c, s, FP64=fp64, IEEE=ieee, BO=bo, BS=bs, BK=bk)
    return y


def _invconv_parts(perm, lower, upper, sign, log_s, math_t, inverse):
    p, lo, up, sg, ls = (v.to(math_t) for v in (perm, lower, upper, sign, log_s))
    lo = torch.tril(lo, -1) + torch.eye(lo.shape[0], dtype=math_t, device=lo.device)
    scale = sg * torch.exp(ls)
    up = torch.triu(up, 1) + torch.diag(scale)
    w = p @ lo @ up
    return p, lo, up, scale, (torch.linalg.inv(w) if inverse else w)


def invertible_conv1x1(x, perm, lower, upper, sign, log_s, inverse=False):
    math_t = math_dtype(x.dtype)
    *_, m = _invconv_parts(perm, lower, upper, sign, log_s, math_t, inverse)
    n, _, s = _actnorm_nsc(x)
    total = log_s.to(math_t).sum() * s
    return _invconv_apply(m, x), (-total if inverse else total).expand(n).contiguous()


def invertible_conv1x1_backward(grad_y, grad_logdet, x, perm, lower, upper, sign, log_s, inverse=False):
    math_t = math_dtype(x.dtype)
    p, lo, up, scale, m = _invconv_parts(perm, lower, upper, sign, log_s, math_t, inverse)
    n, c, s = _actnorm_nsc(x)
    d_x = _invconv_apply(m.t(), grad_y)
    d_m = torch.tensordot(grad_y.to(math_t).reshape(n, c, s), x.to(math_t).reshape(n, c, s),
                          dims=([0, 2], [0, 2]))
    d_w = -m.t() @ d_m @ m.t() if inverse else d_m
    a = p.t() @ d_w
    d_up = lo.t() @ a
    gl_total = grad_logdet.to(math_t).sum() * s
    d_ls = torch.diagonal(d_up) * scale + (-gl_total if inverse else gl_total)
    pt = log_s.dtype
    return d_x, torch.tril(a @ up.t(), -1).to(pt), torch.triu(d_up, 1).to(pt), d_ls.to(pt)


# -- flow NLL -------------------------------------------------------------------------------------
# -log p(z) = sum_j term(z_j) + const: term = z^2 / 2 (gaussian, const = D log(2 pi) / 2) or
# |z| + 2 log1p(exp(-|z|)) (logistic, const = 0). The kernel reduces the terms per sample; the
# constant, logdet and the bits-per-dim scaling are applied to the (B,) result.

PRIORS = {"gaussian": 0, "logistic": 1}


@jit
def _nll_fwd_kernel(z_ptr, partial_ptr, cols, chunk, PRIOR: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    math_t = partial_ptr.dtype.element_ty
    base = row * cols
    start = c.to(tl.int64) * chunk
    acc = tl.zeros([BLOCK], dtype=math_t)
    for off in range(0, chunk, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        mask = idx < cols
        z = tl.load(z_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        if PRIOR == 0:
            term = 0.5 * z * z
        else:
            a = tl.abs(z)
            term = a + 2.0 * _log1p(tl.exp(-a))
        acc += tl.where(mask, term, 0.0)
    tl.store(partial_ptr + row * tl.num_programs(1) + c, tl.sum(acc, axis=0))


@jit
def _nll_bwd_kernel(g_ptr, z_ptr, dz_ptr, cols, chunk, PRIOR: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    math_t = g_ptr.dtype.element_ty
    base = row * cols
    start = c.to(tl.int64) * chunk
    g = tl.load(g_ptr + row)
    for off in range(0, chunk, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        mask = idx < cols
        z = tl.load(z_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        if PRIOR == 0:
            d = z
        else:
            d = _tanh(0.5 * z)
        tl.store(dz_ptr + base + idx, (g * d).to(dz_ptr.dtype.element_ty), mask=mask)


def nll_finish(terms, logdet, d, prior, n_bins):
    """nll or bits/dim (B,) from the per-sample sums of the prior terms (math dtype)."""
    nll = terms - logdet.to(terms.dtype)
    if prior == "gaussian":
        nll = nll + 0.5 * math.log(2 * math.pi) * d
    if n_bins is not None:
        nll = (nll + d * math.log(n_bins)) / (d * math.log(2.0))
    return nll


def nll_grad_scale(d, n_bins):
    return 1.0 if n_bins is None else 1.0 / (d * math.log(2.0))


def flow_nll(z, logdet, prior="gaussian", n_bins=None):
    z = z.contiguous()
    rows, cols, block, chunk, chunks = row_tiling(z)
    math_t = math_dtype(z.dtype)
    if rows == 0:
        return z.new_empty((0,), dtype=math_t)
    partial = z.new_empty((rows, chunks), dtype=math_t)
    _nll_fwd_kernel[(rows, chunks)](z, partial, cols, chunk, PRIOR=PRIORS[prior], BLOCK=block)
    terms = partial.view(rows) if chunks == 1 else partial.sum(1)
    return nll_finish(terms, logdet, math.prod(z.shape[1:]), prior, n_bins)


def flow_nll_backward(grad_nll, z, prior="gaussian", n_bins=None):
    z = z.contiguous()
    rows, cols, block, chunk, chunks = row_tiling(z)
    dz = torch.empty_like(z, memory_format=torch.contiguous_format)
    if rows == 0 or cols == 0:
        return dz
    # the bits/dim factor folds into the per-sample gradient in the math dtype (a Python float
    # kernel argument would be fp32)
    g = grad_nll.to(math_dtype(z.dtype)) * nll_grad_scale(math.prod(z.shape[1:]), n_bins)
    _nll_bwd_kernel[(rows, chunks)](g.contiguous(), z, dz, cols, chunk, PRIOR=PRIORS[prior],
                                    BLOCK=block)
    return dz
