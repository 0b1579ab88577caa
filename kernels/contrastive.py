"""Triton kernels for info_nce_loss.

u = normalized cat(z1, z2) (2N, D) in the math dtype; v = u / temperature. Forward: one
program per BLOCK_M anchors walks all 2N candidates in BLOCK_N tiles with an online
logsumexp (diagonal masked), writing lse only. Backward: one program per (BLOCK_M anchors, D
chunk) recomputes the tiles and accumulates sum_j (P_ij + P_ji) u_j with
P_ij = exp(s_ij - lse_i): each program owns its output rows (no atomics, deterministic).
The O(N * D) pieces (normalization and its backward, the positive-pair term) run in torch.
"""
import torch

from ._compat import INTERPRET, fp32_dot_ieee, jit, math_dtype, next_power_of_2, tl, triton


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
    t = math_dtype(z1.dtype)
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
    _info_nce_fwd_kernel[(triton.cdiv(m, bm),)](u, v, lse, m, d, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
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
    _info_nce_bwd_kernel[(triton.cdiv(m, bm), triton.cdiv(d, out_d))](
        u, v, lse, du, m, d, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, OUT_D=out_d, IEEE=ieee,
        num_warps=warps)
    du[:n] -= 2 * u[n:]
    du[n:] -= 2 * u[:n]
    du *= grad_loss.to(u.dtype).reshape(()) / (m * temperature)
    clamped = norm <= _NORM_EPS
    dz = torch.where(clamped, du / _NORM_EPS, (du - u * (u * du).sum(1, keepdim=True)) / norm.clamp_min(_NORM_EPS))
    dz = dz.to(z1.dtype)
    return dz[:n].clone(), dz[n:].clone()  # two outputs must not share storage
