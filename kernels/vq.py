"""Triton kernel for vq_nearest: tiled z @ codebook.T with fp32 accumulation, ||e||^2 added in
the epilogue and a running (min, argmin) per row: no N x K tensor is ever written.

One program owns BLOCK_N rows and walks the codebook in BLOCK_K tiles. Within a tile
tl.argmin breaks ties to the left; across tiles a strict `<` keeps the earlier tile, so ties go
to the lowest index overall (as torch.argmin and faiss). NaN distances count as +inf.
"""
import torch

from ._compat import autotune, jit, next_power_of_2, tl, triton

_CONFIGS = [] if triton is None else [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bn, bk, w, s in ((64, 64, 4, 2), (128, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3), (32, 64, 4, 2))
]


@autotune(_CONFIGS, key=["K", "D_PAD"])
@jit
def _vq_nearest_kernel(z_ptr, e_ptr, enorm_ptr, znorm_ptr, idx_ptr, dist_ptr, N, K, D,
                       stride_z, stride_e, D_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                       IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_i = tl.zeros([BLOCK_N], tl.int64)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for d0 in range(0, D_PAD, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dmask = ds < D
            zt = tl.load(z_ptr + rows[:, None] * stride_z + ds[None, :],
                         mask=rmask[:, None] & dmask[None, :], other=0.0)
            et = tl.load(e_ptr + cols.to(tl.int64)[:, None] * stride_e + ds[None, :],
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
        best_i = tl.where(better, tile_arg.to(tl.int64) + k0, best_i)
    zn = tl.load(znorm_ptr + rows, mask=rmask, other=0.0)
    # a non-finite row of z has no finite distance (as in the reference): code 0 at +inf
    bad = (zn != zn) | (zn == float("inf")) | (best == float("inf")) | (best == float("-inf"))
    best_i = tl.where((zn != zn) | (zn == float("inf")), 0, best_i)
    dist = tl.where(bad, float("inf"), tl.maximum(best + zn, 0.0))
    tl.store(idx_ptr + rows, best_i, mask=rmask)
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
    block_d = max(16, min(64, next_power_of_2(d)))
    d_pad = -(-d // block_d) * block_d
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _vq_nearest_kernel[grid](z, codebook, enorm, znorm, idx, dist, n, k, d, z.stride(0),
                             codebook.stride(0), D_PAD=d_pad, BLOCK_D=block_d,
                             IEEE=z.dtype == torch.float32)
    return idx, dist
