"""Triton kernels for the GAN family: bias_act.

bias_act views x as (outer, C, inner) with C = x.shape[dim]. The forward is a flat elementwise
kernel; the backward walks (rows of outer) x (channels) tiles so each program also sums its
tile's dx per channel into one partial row: dbias = partials summed in a fixed order (no atomics,
deterministic). Math in fp32 (fp64 for fp64 inputs).
"""
import torch

from ._compat import INTERPRET, double_arg, jit, math_dtype, next_power_of_2, split_double, tl

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
    partial = x.new_empty((grid_o, c), dtype=math_dtype(x.dtype)) if bias is not None else x
    b = bias.contiguous() if bias is not None else x
    _bias_act_bwd_kernel[(grid_c, grid_o)](grad, x, b, dx, partial, c, inner, outer, rows_per,
                                           *_params(alpha, gain), ACT=ACT_CODES[act],
                                           HAS_BIAS=bias is not None, FP64=x.dtype == torch.float64,
                                           BLOCK_C=block_c,
                                           BLOCK_I=block_i)
    if bias is not None:
        db = partial.sum(0).to(bias.dtype)
    return dx, db
