"""Triton kernels for normalizing flows: affine_coupling (forward and backward).

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

from ._compat import jit, tl
from .vae import _math_dtype, _tiling

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
                        dtype=_math_dtype(dtype), device=device)


def affine_coupling(x_b, shift, raw_scale, scale_fn="exp", clamp=2.0, inverse=False):
    x_b, shift, raw_scale = x_b.contiguous(), shift.contiguous(), raw_scale.contiguous()
    rows, cols, block, chunk, chunks = _tiling(x_b)
    y = torch.empty_like(x_b, memory_format=torch.contiguous_format)
    math_t = _math_dtype(x_b.dtype)
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
    rows, cols, block, chunk, chunks = _tiling(x_b)
    dx = torch.empty_like(x_b, memory_format=torch.contiguous_format)
    dr = torch.empty_like(x_b, memory_format=torch.contiguous_format)
    if rows == 0 or cols == 0:
        return dx, dr
    math_t = _math_dtype(x_b.dtype)
    grad_logdet = grad_logdet.to(math_t).contiguous()
    _coupling_bwd_kernel[(rows, chunks)](
        grad_y, grad_logdet, x_b, shift, raw_scale, dx, dr, _params(clamp, x_b.dtype, x_b.device),
        cols, chunk, FN=SCALE_FNS[scale_fn], INVERSE=bool(inverse), FP64=math_t == torch.float64,
        BLOCK=block)
    return dx, dr
