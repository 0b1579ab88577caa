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
                       IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       tiles_ptr=None, SKIP: tl.constexpr = False):
    # SKIP (stage 2 of the certified search below): code tile t of this row block is computed
    # only where tiles_ptr[pid * cdiv(K, BLOCK_K) + t] != 0; the same arithmetic otherwise.
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
        run = True
        if SKIP:
            run = tl.load(tiles_ptr + pid * tl.cdiv(K, BLOCK_K) + k0 // BLOCK_K) != 0
        if run:
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


def _exact_block_d(d):
    return max(16, min(64, next_power_of_2(d)))  # wider rows loop over D in chunks of 64


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
    if z.dtype == torch.float64:
        raise TypeError("fastgen.vq_nearest: the triton kernel takes float16, bfloat16 or float32 "
                        "(it accumulates in fp32); use backend='cpu' or 'reference' for float64")
    z, codebook = _prepare(z, codebook, metric)
    if certified_applies(z, codebook.shape[0]):
        return vq_nearest_certified(z, codebook)[:2]
    return _vq_nearest_exact(z, codebook)


def _vq_nearest_exact(z, codebook):
    n, d = z.shape
    k = codebook.shape[0]
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    dist = torch.empty(n, dtype=torch.float32, device=z.device)
    if n == 0:
        return idx, dist
    enorm = codebook.float().pow(2).sum(1)
    znorm = z.float().pow(2).sum(1)
    ieee = z.dtype == torch.float32 and fp32_dot_ieee()
    block_d = _exact_block_d(d)
    d_pad = -(-d // block_d) * block_d
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    one_chunk = d_pad == block_d
    _VQ_NEAREST[ieee, one_chunk][grid](z, codebook, enorm, znorm, idx, dist, n, k, d, z.stride(0),
                                       codebook.stride(0), d_pad, BLOCK_D=block_d, ONE_CHUNK=one_chunk,
                                       IEEE=ieee)
    return idx, dist


_VQ_NEAREST = {key: autotune(_configs(tiles), key=["K", "D_PAD"])(_vq_nearest_kernel)
               for key, tiles in _TILE_SETS.items()}


# -- the certified two-stage search (docs/vq_certified.md; the CPU twin is csrc/cpu/vq_certified.cpp)
#
# For fp32 inputs with exact ("ieee") fp32 dots, _vq_nearest_kernel runs on the FMA units. Here
# stage 1 (_vq_candidates_kernel) ranks the codes with bf16 tensor-core dots of bf16-rounded z
# and e, keeping per row the running minimum m of a_j = ||e_j||^2 - 2 z^.e^_j and every code
# with a_j <= m + 2B, where B bounds |a_j - p_j| and p_j is the fp32 value _vq_nearest_kernel
# computes for the same (row, code). Stage 2 (_vq_rerank_kernel) recomputes the candidates with
# _vq_nearest_kernel's own arithmetic: the same tl.dot("ieee") over the same BLOCK_D chunks,
# the same epilogue, so the same bits (a dot's element does not depend on the other rows and
# columns of its tile: on the GPU each is one FMA chain, under the interpreter one numpy
# matmul element). Rows with more than CAP candidates, or with values the bound does not
# cover, run _vq_nearest_kernel itself.
#
# The bound, with u = 2^-24, v = 2^-8 (bf16), A = ||z|| max_j ||e_j||, E = max_j ||e_j||^2:
#   exact kernel, D FMAs + E - 2 acc:   g_{D+1} (E + 2A)
#   bf16 rounding of z and e:           2 (2v + v^2) A        (products of bf16 are exact in fp32)
#   stage-1 accumulation, D terms:      2 g'_D (1 + v)^2 A    (g' with unit 2^-20: tensor cores
#                                                              align and truncate inside an MMA,
#                                                              so 16x the fp32 unit as margin)
#   a_j = en - 2 acc in fp32:           u (E + 2 (1 + v)^2 (1 + g'_D) A)   (+ u^2 E: common/vq_bound.h)
# plus 2^-123 (D + 2)(2 + max|z| + max|e|) for subnormals flushed to zero, all times
# (1 + 2^-20) for the float64 arithmetic of the bound. Why the candidates hold the answer:
# p_j* <= p_i <= a_i + B for all i, so every code tied with the winner has
# a_j - B <= p_j* <= min_i a_i + B. Under the interpreter (where bf16 dots are wrong, see
# docs/design.md) stage 1 runs fp32 dots on the bf16-rounded values instead: the same
# products, exact numpy accumulation, so the same bound applies.

CERTIFIED_CAP = 32  # stage-2 candidates per row; a row with more runs the exact kernel
CERTIFIED_NOTE = ("certified two-stage for fp32 inputs with ieee fp32 dots, K >= 4096, D <= 256: bf16 "
                  "tensor-core stage 1, exact stage 2 (fp16/bf16 inputs already run on tensor cores)")


@jit
def _vq_candidates_kernel(z_ptr, e_ptr, enorm_ptr, twob_ptr, cand_ptr, aval_ptr, count_ptr, thr_ptr, N, K, D,
                          BLOCK_D: tl.constexpr, CAP: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    # z, e: bf16-rounded copies, contiguous [N, BLOCK_D*] / [K, D] (D padded to BLOCK_D by masks)
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ds = tl.arange(0, BLOCK_D)
    dmask = ds < D
    zt = tl.load(z_ptr + rows[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    two_b = tl.load(twob_ptr + rows, mask=rmask, other=0.0)
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    thr = tl.full([BLOCK_N], float("inf"), tl.float32)
    count = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        et = tl.load(e_ptr + to_int64(k0) * D + tl.arange(0, BLOCK_K)[:, None] * D + ds[None, :],
                     mask=cmask[:, None] & dmask[None, :], other=0.0)
        acc = tl.dot(zt, tl.trans(et))
        en = tl.load(enorm_ptr + cols, mask=cmask, other=float("inf"))
        a = en[None, :] - 2.0 * acc
        a = tl.where(cmask[None, :] & (a == a), a, float("inf"))
        tile_min = tl.min(a, axis=1)
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        # the threshold rounded up: + |best| 2^-21 covers the fp32 rounding of the sum
        thr = tl.where(better, best + two_b + tl.abs(best) * 4.76837158203125e-07, thr)
        keep = (a <= thr[:, None]) & cmask[None, :]
        pos = count[:, None] + tl.cumsum(keep.to(tl.int32), axis=1) - 1
        smask = keep & (pos < CAP) & rmask[:, None]
        tl.store(cand_ptr + rows[:, None] * CAP + pos, cols[None, :].to(tl.int32) + tl.zeros_like(pos), mask=smask)
        tl.store(aval_ptr + rows[:, None] * CAP + pos, a, mask=smask)
        count += tl.sum(keep.to(tl.int32), axis=1)
    tl.store(count_ptr + rows, count, mask=rmask)
    tl.store(thr_ptr + rows, thr, mask=rmask)


# Stage 2 computes a (row block, code tile) pair wherever one of the block's 32 rows has a
# candidate in the tile: with ~3 candidates per row (Gaussian data) that is ~1 - (1 - 3/T)^32 of
# the T = K/32 tiles: ~30% at K = 8192, ~95% at K = 1024. Below this K the two stages together
# would cost more than the exact kernel alone, so the exact kernel runs.
CERTIFIED_MIN_K = 4096


def certified_applies(z, k) -> bool:
    """Whether vq_nearest on this (prepared) z and K codes runs the two-stage search: fp32
    inputs whose exact kernel uses ieee fp32 dots, D <= 256, K >= CERTIFIED_MIN_K, unless
    FASTGEN_VQ_EXACT_ONLY is set."""
    import os
    if os.environ.get("FASTGEN_VQ_EXACT_ONLY", "") not in ("", "0"):
        return False
    return (z.dtype == torch.float32 and z.shape[0] > 0 and z.shape[1] <= 256 and k >= CERTIFIED_MIN_K
            and fp32_dot_ieee())


def certified_bound(z, codebook, enorm, acc_unit=2.0 ** -20, bf16_out=False):
    """Per-row 2B (float32, rounded up) and the rows the bound covers, as the comment above
    derives it. acc_unit: the rounding unit of stage 1's accumulation (2^-20 for tensor cores,
    2^-24 for IEEE fp32 on CPU); bf16_out: stage 1's dot is rounded to bf16 once (CPU at::mm in
    bf16). csrc/common/vq_bound.h (the CPU and CUDA kernels' copy) computes the same formula."""
    d = z.shape[1]
    u, v, ua, w = 2.0 ** -24, 2.0 ** -8, acc_unit, 1.0 if bf16_out else 0.0
    # g_{D+1}: the exact kernel's D FMAs from 0 plus E - 2 acc (csrc/common/vq_bound.h)
    g, ga = (d + 1) * u / (1 - (d + 1) * u), d * ua / (1 - d * ua)
    v1 = (1 + v) ** 2
    coef_a = 2 * (g + (2 * v + v * v) + ga * v1 + w * v * (1 + ga) * v1 + u * v1 * (1 + ga) * (1 + w * v))
    coef_e = g + u * (1 + u)
    z64, e64 = z.double(), codebook.double()
    e_norm_max = e64.pow(2).sum(1).max().sqrt()
    e_abs_max = e64.abs().max()
    en_max = enorm.double().max()
    z_norm = z64.pow(2).sum(1).sqrt()
    z_abs = z64.abs().amax(1)
    a = z_norm * e_norm_max
    b = (coef_a * a + coef_e * en_max + 2.0 ** -123 * (d + 2) * (2 + z_abs + e_abs_max)) * (1 + 2.0 ** -20)
    lim = 2.0 ** 60
    ok = (torch.isfinite(b) & (z_abs <= lim) & (a <= 2.0 ** 100) & (e_abs_max <= lim) & (en_max <= 2.0 ** 100)
          & torch.isfinite(e64).all())
    two_b = (2 * b).float()
    two_b = torch.where(two_b.double() < 2 * b, torch.nextafter(two_b, torch.full_like(two_b, float("inf"))), two_b)
    return torch.where(ok, two_b, torch.zeros_like(two_b)), ok


def vq_nearest_certified(z, codebook):
    """Two-stage search on prepared fp32 z / codebook. Returns (indices, distances, status) with
    status as the CPU kernel's: candidates per row, -1 where the row needed every code tile."""
    n, d = z.shape
    k = codebook.shape[0]
    z = z.contiguous()
    codebook = codebook.contiguous()
    enorm = codebook.float().pow(2).sum(1)  # as _vq_nearest_exact computes them
    znorm = z.float().pow(2).sum(1)
    two_b, ok = certified_bound(z, codebook, enorm)
    # stage-1 operands: bf16 on a GPU; under the interpreter the fp32 values of the bf16
    # rounding (its bf16 dots are wrong; its fp32 dots are numpy's)
    s1 = torch.float32 if INTERPRET else torch.bfloat16
    z1 = z.to(torch.bfloat16).to(s1)
    e1 = codebook.to(torch.bfloat16).to(s1)
    cap = CERTIFIED_CAP
    # zero-filled: fastgen.compile_check records the launches without running them, and the
    # bookkeeping below must still index in bounds (count 0 = every row needs every tile)
    cand = torch.zeros((n, cap), dtype=torch.int32, device=z.device)
    aval = torch.empty((n, cap), dtype=torch.float32, device=z.device)
    count = torch.zeros(n, dtype=torch.int32, device=z.device)
    thr = torch.empty(n, dtype=torch.float32, device=z.device)
    block_d1 = max(16, next_power_of_2(d))
    # 64 x 64 tiles with 4 warps spilled (the candidate positions' cumsum); compile_check. At
    # BLOCK_D 256, 4 warps spilled 20 B (sm_80) / 4 B (sm_90) under Triton 3.6 (the H200
    # image's): 8 warps spill nothing under 3.6 and 3.8
    bn1, bk1, w1 = (64, 64, 8) if block_d1 <= 64 else (32, 64, 4) if block_d1 <= 128 else (32, 64, 8)
    _vq_candidates_kernel[(triton.cdiv(n, bn1),)](
        z1, e1, enorm, two_b, cand, aval, count, thr, n, k, d, BLOCK_D=block_d1, CAP=cap,
        BLOCK_N=bn1, BLOCK_K=bk1, num_warps=w1)
    fallback = (~ok) | (count > cap) | (count <= 0)
    # stage 2: _vq_nearest_kernel with its first fp32 config (the one the interpreter runs,
    # whose numpy dots give tile-shape-dependent bits), on the code tiles that hold a candidate
    # of one of the block's rows; a block with a fallback row computes every tile
    block_n, block_k, warps, stages = _TILE_SETS[True, -(-d // _exact_block_d(d)) == 1][0]
    n_blocks, n_tiles = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    slots = torch.arange(cap, device=z.device)
    valid = (slots[None, :] < count[:, None].clamp(max=cap)) & (aval <= thr[:, None]) & ~fallback[:, None]
    row_block = torch.arange(n, device=z.device) // block_n
    flat = (row_block[:, None] * n_tiles + cand.long() // block_k)[valid]
    tiles = torch.zeros(n_blocks * n_tiles, dtype=torch.int8, device=z.device)
    tiles[flat] = 1
    tiles = tiles.view(n_blocks, n_tiles)
    tiles[row_block[fallback]] = 1
    idx = torch.empty(n, dtype=torch.int64, device=z.device)
    dist = torch.empty(n, dtype=torch.float32, device=z.device)
    block_d = _exact_block_d(d)
    d_pad = -(-d // block_d) * block_d
    _vq_nearest_kernel[(n_blocks,)](z, codebook, enorm, znorm, idx, dist, n, k, d, z.stride(0),
                                    codebook.stride(0), d_pad, BLOCK_D=block_d, ONE_CHUNK=d_pad == block_d,
                                    IEEE=True, BLOCK_N=block_n, BLOCK_K=block_k, tiles_ptr=tiles, SKIP=True,
                                    num_warps=warps, num_stages=stages)
    status = torch.where(fallback, torch.full_like(count, -1), valid.sum(1, dtype=torch.int32))
    return idx, dist, status


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
    indices = indices.contiguous()  # _vq_dz_kernel reads indices[row] at offset row
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
