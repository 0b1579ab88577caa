"""Triton kernels for the VAE family: gaussian_reparam_kl (forward and backward).

Grid: axis 0 = sample, axis 1 = chunk of that sample's elements (axis 1 is capped at 65535 on
CUDA, so the chunk grows for huge samples). The forward writes one partial KL per program;
partials are summed per sample afterwards in a fixed order: deterministic, no atomics.
Math in fp32 (fp64 for fp64 inputs): the partial buffer's dtype is the math dtype.
"""
import torch

from ._compat import jit, math_dtype, row_tiling, tl


@jit
def _reparam_kl_fwd_kernel(mu_ptr, lv_ptr, eps_ptr, z_ptr, partial_ptr, cols, chunk,
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
        # Masked lanes load 0: their KL term 1 + 0 - 0 - exp(0) is exactly 0.
        mu = tl.load(mu_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        lv = tl.load(lv_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        eps = tl.load(eps_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        sd = tl.exp(0.5 * lv)
        tl.store(z_ptr + base + idx, (mu + sd * eps).to(z_ptr.dtype.element_ty), mask=mask)
        acc += 1.0 + lv - mu * mu - sd * sd
    tl.store(partial_ptr + row * tl.num_programs(1) + c, -0.5 * tl.sum(acc, axis=0))


@jit
def _reparam_kl_bwd_kernel(gz_ptr, gkl_ptr, mu_ptr, lv_ptr, eps_ptr, dmu_ptr, dlv_ptr, cols, chunk,
                           BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    math_t = gkl_ptr.dtype.element_ty
    out_t = dmu_ptr.dtype.element_ty
    base = row * cols
    start = c.to(tl.int64) * chunk
    gkl = tl.load(gkl_ptr + row)
    for off in range(0, chunk, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        mask = idx < cols
        gz = tl.load(gz_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        mu = tl.load(mu_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        lv = tl.load(lv_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        eps = tl.load(eps_ptr + base + idx, mask=mask, other=0.0).to(math_t)
        sd = tl.exp(0.5 * lv)
        tl.store(dmu_ptr + base + idx, (gz + gkl * mu).to(out_t), mask=mask)
        tl.store(dlv_ptr + base + idx, (0.5 * (gz * eps * sd + gkl * (sd * sd - 1.0))).to(out_t),
                 mask=mask)


def gaussian_reparam_kl(mu, logvar, eps):
    mu, logvar, eps = mu.contiguous(), logvar.contiguous(), eps.contiguous()
    rows, cols, block, chunk, chunks = row_tiling(mu)
    z = torch.empty_like(mu, memory_format=torch.contiguous_format)
    if rows == 0:
        return z, mu.new_empty((0,), dtype=math_dtype(mu.dtype))
    partial = mu.new_empty((rows, chunks), dtype=math_dtype(mu.dtype))
    _reparam_kl_fwd_kernel[(rows, chunks)](mu, logvar, eps, z, partial, cols, chunk, BLOCK=block)
    kl = partial.view(rows) if chunks == 1 else partial.sum(1)
    return z, kl


def gaussian_reparam_kl_backward(grad_z, grad_kl, mu, logvar, eps):
    mu, logvar, eps, grad_z = mu.contiguous(), logvar.contiguous(), eps.contiguous(), grad_z.contiguous()
    rows, cols, block, chunk, chunks = row_tiling(mu)
    dmu = torch.empty_like(mu, memory_format=torch.contiguous_format)
    dlv = torch.empty_like(mu, memory_format=torch.contiguous_format)
    if rows == 0 or cols == 0:
        return dmu, dlv
    grad_kl = grad_kl.to(math_dtype(mu.dtype)).contiguous()
    _reparam_kl_bwd_kernel[(rows, chunks)](grad_z, grad_kl, mu, logvar, eps, dmu, dlv, cols, chunk,
                                           BLOCK=block)
    return dmu, dlv
