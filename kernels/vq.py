"""Triton kernel for vq_nearest: tiled z @ codebook.T with fp32 accumulation, ||e||^2 added in
the epilogue and a running (min, argmin) per row: no N x K tensor is ever written.

One program owns BLOCK_N rows and walks the codebook in BLOCK_K tiles. Within a tile
tl.argmin breaks ties to the left; across tiles a strict `<` keeps the earlier tile, so ties go
to the lowest index overall (as torch.argmin and faiss). NaN distances count as +inf.
"""
import torch

from ._compat import INTERPRET, autotune, fp32_dot_ieee, jit, next_power_of_2, tl, to_int64, triton

def _configs(tiles):
    return [] if triton is None else [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
                                      for bn, bk, w, s in tiles]


# Autotune configs (BLOCK_N, BLOCK_K, num_warps, num_stages), by (exact fp32, D in one chunk).
# Tensor-core dots (fp16, bf16, TF32) take big tiles; exact fp32 dots run on FMAs with operands
# in registers, and rows wider than one chunk loop over D with more live registers: there the
# big tiles spill (fastgen.compile_check; benchmarks/results/compile/), so they get smaller sets.
_TILE_SETS = {
    (False, True): ((64, 64, 8, 2), (128, 64, 8, 3), (64, 128, 8, 3), (128, 128, 8, 3), (32, 64, 4, 2)),
    (False, False): ((64, 64, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2)),
    (True, True): ((32, 32, 4, 2), (64, 32, 8, 2), (64, 64, 8, 2)),
    (True, False): ((32, 32, 4, 2), (32, 32, 8, 2)),
}


@jit
def _vq_nearest_kernel(z_ptr, e_ptr, enorm_ptr, znorm_ptr, idx_ptr, dist_ptr, N, K, D,
                       stride_z, stride_e, D_PAD, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
                       IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # D_PAD is a run-time bound on purpose: as a constexpr, the loop over D is unrolled and the
    # z tiles, the same for every codebook tile, are hoisted out of the K loop into registers.
    # Addresses are a 64-bit base per tile plus 32-bit offsets within it: 64-bit offsets per
    # element double the address registers and made the 16-bit configs spill.
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    local = tl.arange(0, BLOCK_N)
    z_tile = z_ptr + pid.to(tl.int64) * BLOCK_N * stride_z
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_i = tl.zeros([BLOCK_N], tl.int32)
    if ONE_CHUNK:  # D <= BLOCK_D: the z tile is loaded once for the whole codebook
        z_all = tl.load(z_tile + local[:, None] * stride_z + tl.arange(0, BLOCK_D)[None, :],
                        mask=rmask[:, None] & (tl.arange(0, BLOCK_D) < D)[None, :], other=0.0)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        e_tile = e_ptr + to_int64(k0) * stride_e
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for d0 in range(0, D_PAD, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dmask = ds < D
            if ONE_CHUNK:
                zt = z_all
            else:
                zt = tl.load(z_tile + local[:, None] * stride_z + ds[None, :],
                             mask=rmask[:, None] & dmask[None, :], other=0.0)
            et = tl.load(e_tile + tl.arange(0, BLOCK_K)[:, None] * stride_e + ds[None, :],
                         mask=cmask[:, None] & dmask[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(zt, tl.trans(et), acc, input_precision="ieee")
            else:
                acc = tl.dot(zt, tl.trans(et), acc)
        en = tl.load(enorm_ptr + cols, mask=cmask, other=float("inf"))
        d = en[None, :] - 2.0 * acc
        d = tl.where(cmask[None, :] & (d == d), d, float("inf"))  # padding and NaN -> +inf
        tile_min = tl.min(d, axis=1)
        tile_arg = tl.argmin(d, axis=1)
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        best_i = tl.where(better, tile_arg + k0, best_i)  # K < 2**31
    zn = tl.load(znorm_ptr + rows, mask=rmask, other=0.0)
    # a non-finite row of z has no finite distance (as in the reference): code 0 at +inf
    bad = (zn != zn) | (zn == float("inf")) | (best == float("inf")) | (best == float("-inf"))
    best_i = tl.where((zn != zn) | (zn == float("inf")), 0, best_i)
    dist = tl.where(bad, float("inf"), tl.maximum(best + zn, 0.0))
    tl.store(idx_ptr + rows, best_i.to(tl.int64), mask=rmask)
    tl.store(dist_ptr + rows, dist, mask=rmask)


def _prepare(z, codebook, metric):
    """fp32/fp64 math copies where needed (cosine: normalized), rows with unit inner stride."""
    if metric == "cosine":
        t = torch.float64 if z.dtype == torch.float64 else torch.float32
        z = torch.nn.functional.normalize(z.to(t), dim=1)
        codebook = torch.nn.functional.normalize(codebook.to(t), dim=1)
    if z.stride(1) != 1:
        z = z.contiguous()
    if codebook.stride(1) != 1:
        codebook = codebook.contiguous()
    return z, codebook


def vq_nearest(z, codebook, metric="l2"):
    n, d = z.shape
    k = codebook.shape[0]
    if z.dtype == torch.float64:
        raise TypeError("fastgen.vq_nearest: the triton kernel takes float16, bfloat16 or float32 "
                        "(it accumulates in fp32); use backend='cpu' or 'reference' for float64")
    z, codebook = _prepare(z, codebook, metric)
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    dist = torch.empty(n, dtype=torch.float32, device=z.device)
    if n == 0:
        return idx, dist
    enorm = codebook.float().pow(2).sum(1)
    znorm = z.float().pow(2).sum(1)
    ieee = z.dtype == torch.float32 and fp32_dot_ieee()
    block_d = max(16, min(64, next_power_of_2(d)))  # wider rows loop over D in chunks of 64
    d_pad = -(-d // block_d) * block_d
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    one_chunk = d_pad == block_d
    _VQ_NEAREST[ieee, one_chunk][grid](z, codebook, enorm, znorm, idx, dist, n, k, d, z.stride(0),
                                       codebook.stride(0), d_pad, BLOCK_D=block_d, ONE_CHUNK=one_chunk,
                                       IEEE=ieee)
    return idx, dist


_VQ_NEAREST = {key: autotune(_configs(tiles), key=["K", "D_PAD"])(_vq_nearest_kernel)
               for key, tiles in _TILE_SETS.items()}


# -- vq_quantize: gather + straight-through value + per-row squared error; backward dz ---------

@jit
def _vq_gather_st_kernel(z_ptr, e_ptr, idx_ptr, zq_ptr, sq_ptr, N, D, stride_z, stride_e,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # z and zq rows: a 64-bit tile start, 32-bit offsets in the tile; codebook rows: 64-bit
    # row starts (code * stride can pass 2**31), one vector per tile
    first = tl.program_id(0).to(tl.int64) * BLOCK_N
    local = tl.arange(0, BLOCK_N)
    rmask = local < N - first
    code = tl.load(idx_ptr + first + local, mask=rmask, other=0)
    z_tile = z_ptr + first * stride_z
    zq_tile = zq_ptr + first * D
    e_rows = e_ptr + code * stride_e
    acc = tl.zeros([BLOCK_N], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        m = rmask[:, None] & (ds < D)[None, :]
        z = tl.load(z_tile + local[:, None] * stride_z + ds[None, :], mask=m, other=0.0)
        e = tl.load(e_rows[:, None] + ds[None, :], mask=m, other=0.0)
        diff = e.to(tl.float32) - z.to(tl.float32)
        # taming's value z + (e - z): both steps rounded to z's dtype, as torch does them
        q = z.to(tl.float32) + diff.to(z.dtype).to(tl.float32)
        tl.store(zq_tile + local[:, None] * D + ds[None, :], q.to(z.dtype), mask=m)
        acc += tl.sum(diff * diff, axis=1)
    tl.store(sq_ptr + first + local, acc, mask=rmask)


@jit
def _vq_dz_kernel(gzq_ptr, gl_ptr, z_ptr, e_ptr, idx_ptr, dz_ptr, N, D, stride_g, stride_z, stride_e,
                  scale, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    first = tl.program_id(0).to(tl.int64) * BLOCK_N
    local = tl.arange(0, BLOCK_N)
    rmask = local < N - first
    code = tl.load(idx_ptr + first + local, mask=rmask, other=0)
    g_tile = gzq_ptr + first * stride_g
    z_tile = z_ptr + first * stride_z
    dz_tile = dz_ptr + first * D
    e_rows = e_ptr + code * stride_e
    c = tl.load(gl_ptr).to(tl.float32) * scale  # grad_loss stays on the device: no host sync
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        m = rmask[:, None] & (ds < D)[None, :]
        g = tl.load(g_tile + local[:, None] * stride_g + ds[None, :], mask=m, other=0.0)
        z = tl.load(z_tile + local[:, None] * stride_z + ds[None, :], mask=m, other=0.0)
        e = tl.load(e_rows[:, None] + ds[None, :], mask=m, other=0.0)
        dz = g.to(tl.float32) + c * (z.to(tl.float32) - e.to(tl.float32))
        tl.store(dz_tile + local[:, None] * D + ds[None, :], dz.to(z.dtype), mask=m)


# -- per-code sums: rows grouped by code (stable sort), each group summed in row order --------

@jit
def _vq_segment_kernel(z_ptr, e_ptr, order_ptr, start_ptr, out_ptr, cs_ptr, D, stride_z, stride_e,
                       decay, SUBTRACT: tl.constexpr, EMA: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    k = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    lo = tl.load(start_ptr + k)
    hi = tl.load(start_ptr + k + 1)
    acc = tl.zeros([BLOCK_D], tl.float32)
    if SUBTRACT:
        ev = tl.load(e_ptr + k * stride_e + ds, mask=dmask, other=0.0).to(tl.float32)
    for r0 in range(lo, hi, BLOCK_R):
        rs = r0 + tl.arange(0, BLOCK_R)
        rm = rs < hi
        rows = tl.load(order_ptr + rs, mask=rm, other=0)
        m = rm[:, None] & dmask[None, :]
        x = tl.load(z_ptr + rows[:, None] * stride_z + ds[None, :], mask=m, other=0.0).to(tl.float32)
        if SUBTRACT:
            x = tl.where(m, x - ev[None, :], 0.0)
        acc += tl.sum(x, axis=0)
    if EMA:
        old = tl.load(out_ptr + k * D + ds, mask=dmask, other=0.0)
        new = old.to(tl.float32) * decay + (1.0 - decay) * acc
        tl.store(out_ptr + k * D + ds, new.to(old.dtype), mask=dmask)
        if tl.program_id(1) == 0:
            cs = tl.load(cs_ptr + k)
            tl.store(cs_ptr + k, (cs.to(tl.float32) * decay + (1.0 - decay) * (hi - lo).to(tl.float32)).to(cs.dtype))
    else:
        tl.store(out_ptr + k * D + ds, acc, mask=dmask)


_ROW_BLOCK = 32


def _no_fp64(name, *tensors):
    if any(t.dtype == torch.float64 for t in tensors):
        raise TypeError(f"fastgen.{name}: the triton kernels take float16, bfloat16 or float32 "
                        "(fp32 accumulation); use backend='cpu' or 'reference' for float64")


def _rows(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _gather_block_d(d):
    # gathered codebook rows have no common base: one 64-bit address per element, so at most
    # 32 x 64 elements a tile on a GPU (32 x 128 spilled); the interpreter takes wider ones
    return _block_d(d) if INTERPRET else min(64, _block_d(d))


def _block_d(d):
    return max(16, min(128, next_power_of_2(d)))


def vq_quantize(z, codebook, beta=0.25, legacy=True):
    _no_fp64("vq_quantize", z)
    idx, _ = vq_nearest(z, codebook, "l2")
    z, codebook = _rows(z), _rows(codebook)
    n, d = z.shape
    zq = torch.empty((n, d), dtype=z.dtype, device=z.device)
    sq = torch.empty(n, dtype=torch.float32, device=z.device)
    if n:
        _vq_gather_st_kernel[(triton.cdiv(n, _ROW_BLOCK),)](
            z, codebook, idx, zq, sq, n, d, z.stride(0), codebook.stride(0),
            BLOCK_N=_ROW_BLOCK, BLOCK_D=_gather_block_d(d))
    # both terms of taming's loss have the value mse; the weights split only the gradients
    loss = sq.sum() * ((1.0 + beta) / (n * d)) if n * d else sq.new_full((), float("nan"))
    return zq, loss.to(z.dtype), idx


def vq_quantize_backward(grad_zq, grad_loss, z, codebook, indices, beta=0.25, legacy=True):
    _no_fp64("vq_quantize_backward", z)
    grad_zq, z, codebook = _rows(grad_zq), _rows(z), _rows(codebook)
    n, d = z.shape
    w_z, w_e = (1.0, beta) if legacy else (beta, 1.0)
    scale = 2.0 / (n * d) if n * d else 0.0
    dz = torch.empty((n, d), dtype=z.dtype, device=z.device)
    if n:
        _vq_dz_kernel[(triton.cdiv(n, _ROW_BLOCK),)](
            grad_zq, grad_loss, z, codebook, indices, dz, n, d, grad_zq.stride(0), z.stride(0),
            codebook.stride(0), scale * w_z, BLOCK_N=_ROW_BLOCK, BLOCK_D=_gather_block_d(d))
    _, diff_sums = _segment_sums(z, indices, codebook.shape[0], codebook=codebook)
    dcode = (diff_sums * (grad_loss.float() * (-scale * w_e))).to(codebook.dtype)
    return dz, dcode


def _group_rows(indices, k):
    """Rows grouped by code: order (stable) and start offsets [k + 1]. Out-of-range indices
    fall outside every group, so they are skipped rather than read or written out of bounds."""
    sorted_idx, order = torch.sort(indices, stable=True)
    starts = torch.searchsorted(sorted_idx, torch.arange(k + 1, device=indices.device, dtype=indices.dtype))
    return order, starts


def _segment_sums(z, indices, k, codebook=None, ema=None):
    d = z.shape[1]
    order, starts = _group_rows(indices, k)
    if ema is None:
        out, cs, decay = torch.empty((k, d), dtype=torch.float32, device=z.device), starts, 0.0
    else:
        cs, out, decay = ema
    e = codebook if codebook is not None else z
    block_d = min(64, _block_d(d))
    _vq_segment_kernel[(k, triton.cdiv(d, block_d))](
        z, e, order, starts, out, cs, d, z.stride(0), e.stride(0), decay,
        SUBTRACT=codebook is not None, EMA=ema is not None, BLOCK_R=32, BLOCK_D=block_d)
    return (starts[1:] - starts[:-1]).float(), out


def vq_code_sums(z, indices, num_codes):
    _no_fp64("vq_code_sums", z)
    return _segment_sums(_rows(z), indices, num_codes)


def vq_ema_update(z, indices, cluster_size, embed_sum, decay=0.99, eps=1e-5):
    _no_fp64("vq_ema_update", z, cluster_size, embed_sum)
    k = embed_sum.shape[0]
    counts, _ = _segment_sums(_rows(z), indices, k, ema=(cluster_size, embed_sum, decay))
    return _ema_codebook(counts, cluster_size, embed_sum, eps)


def _ema_codebook(counts, cluster_size, embed_sum, eps):
    """The codebook from the updated EMA buffers (Laplace-smoothed counts) and the perplexity of
    this step's code usage. Written here, not imported from fastgen.ops (kernels depend on nothing
    above them; the tests compare it with the reference's vq_ema_finish)."""
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + cluster_size.shape[0] * eps) * n
    p = counts / counts.sum().clamp_min(1)
    return embed_sum / smoothed.to(embed_sum.dtype).unsqueeze(1), torch.exp(-torch.sum(p * torch.log(p + 1e-10)))
