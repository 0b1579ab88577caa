"""Evaluation metrics shared by the reference models' ``eval``, in plain PyTorch.

Every function works on CPU and CUDA tensors in float32 / float64 (float16 / bfloat16 inputs are
computed in float32). A *sample set* is a tensor whose first dimension indexes samples: 2-D points
``[N, 2]``, images ``[N, C, H, W]`` (flattened to ``[N, C*H*W]``), anything ``[N, ...]``; a 1-D
tensor ``[N]`` is N one-dimensional samples. Two sample sets compared with each other must be on
the same device and have the same number of features; their dtypes are promoted to a common one.

Pairwise-distance metrics (``mmd_rbf``, ``precision_recall_knn``) work in row blocks so that at most
``block * N`` distances exist at once (memory O(block * N), not O(N * M)); by default a block holds
about 2**23 distances (32 MiB in float32). Inputs are centred on their pooled mean first (the
metrics are translation invariant) which keeps the matmul form of the distance accurate in float32.

Metrics return tensors (0-d, or ``[B]`` for per-sample ones) on the inputs' device and stay
differentiable where that makes sense (``mmd_rbf``, ``sliced_wasserstein``, ``reconstruction_mse``),
except ``precision_recall_knn``, which returns Python floats. Bad input raises ``TypeError``
(not a tensor, non-float dtype) or ``ValueError`` (empty, mismatched shapes, out-of-range
parameters) with the argument's name in the message.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_BANDWIDTH_MULTIPLES",
    "average_precision",
    "bits_per_dim",
    "median_heuristic",
    "mmd_rbf",
    "nats_to_bits",
    "precision_recall_knn",
    "reconstruction_mse",
    "sliced_wasserstein",
]

#: Default RBF bandwidths of ``mmd_rbf``, as multiples of the median pairwise distance.
DEFAULT_BANDWIDTH_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Points per sample set used by the median heuristic (evenly spaced indices, deterministic).
_MEDIAN_SUBSAMPLE = 512
#: Distances held at once by the blockwise pairwise computations (when block_size is None).
_BLOCK_ELEMENTS = 1 << 23

_LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------
def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_float_tensor(t, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    return t


def _samples(t, name: str) -> Tensor:
    """Validate a sample set and flatten it to [N, D]."""
    _check_float_tensor(t, name)
    if t.dim() == 0:
        raise ValueError(f"{name} must have a sample dimension (shape [N, ...]), got a 0-d tensor")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): need at least one sample")
    if t.numel() == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)})")
    return t.reshape(t.shape[0], -1)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    dtype = dtypes[0]
    for d in dtypes[1:]:
        dtype = torch.promote_types(dtype, d)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _sample_pair(x, y, xname: str, yname: str):
    """Validate two sample sets that are compared with each other; returns them as [N, D], [M, D]
    in a common compute dtype."""
    a, b = _samples(x, xname), _samples(y, yname)
    if a.device != b.device:
        raise ValueError(f"{xname} and {yname} must be on the same device, got {a.device} and {b.device}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{xname} and {yname} must have the same number of features per sample, got "
            f"{tuple(x.shape[1:])} ({a.shape[1]} features) and {tuple(y.shape[1:])} ({b.shape[1]} features)"
        )
    dtype = _compute_dtype(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _block_rows(n_cols: int, block_size: Optional[int]) -> int:
    if block_size is not None:
        return _check_int(block_size, "block_size", 1)
    return max(1, _BLOCK_ELEMENTS // max(n_cols, 1))


def _pooled_center(a: Tensor, b: Tensor):
    center = (a.sum(0) + b.sum(0)) / (a.shape[0] + b.shape[0])
    return a - center, b - center


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------
def _evenly_spaced(t: Tensor, n: int) -> Tensor:
    if t.shape[0] <= n:
        return t
    idx = torch.linspace(0, t.shape[0] - 1, n, device=t.device).round().long()
    return t[idx]


@torch.no_grad()
def median_heuristic(x: Tensor, y: Tensor) -> Tensor:
    """Median pairwise Euclidean distance of the pooled sample (0-d tensor, x's device/dtype).

    Up to 512 evenly spaced samples of each set are pooled (deterministic, and symmetric in x and
    y); the median is taken over all distinct pairs of the pooled points. A median of 0 (all
    points identical) is replaced by 1."""
    a, b = _sample_pair(x, y, "x", "y")
    z = torch.cat([_evenly_spaced(a, _MEDIAN_SUBSAMPLE), _evenly_spaced(b, _MEDIAN_SUBSAMPLE)])
    z = z - z.mean(0)
    n = z.shape[0]
    if n < 2:
        return torch.ones((), device=z.device, dtype=z.dtype)
    i, j = torch.triu_indices(n, n, offset=1, device=z.device)
    med = torch.cdist(z, z)[i, j].median()
    return torch.where(med > 0, med, torch.ones_like(med))


def _bandwidth_tensor(bandwidths, device, dtype) -> Tensor:
    if isinstance(bandwidths, Tensor):
        bw = bandwidths.detach()
        if not (bw.is_floating_point() or bw.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f"bandwidths must be real numbers, got a tensor of dtype {bw.dtype}")
        bw = bw.to("cpu", torch.float64).flatten()
    else:
        seq = [bandwidths] if isinstance(bandwidths, numbers.Real) else bandwidths
        try:
            seq = list(seq)
        except TypeError:
            raise TypeError(
                f"bandwidths must be a positive number, a sequence of them or a tensor, got {type(bandwidths).__name__}"
            ) from None
        for v in seq:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"bandwidths must contain real numbers, got {type(v).__name__}")
        bw = torch.tensor([float(v) for v in seq], dtype=torch.float64)
    if bw.numel() == 0:
        raise ValueError("bandwidths is empty: give at least one RBF bandwidth")
    if not bool(torch.isfinite(bw).all()) or not bool((bw > 0).all()):
        raise ValueError(f"bandwidths must be finite and > 0, got {bw.tolist()}")
    return bw.to(device=device, dtype=dtype)


def _rbf_sum(a: Tensor, b: Optional[Tensor], gammas: Tensor, rows: int) -> Tensor:
    """sum_{i,j} sum_s exp(-gamma_s * |a_i - b_j|^2) in float64, in row blocks of a against b.
    With b None: the within-set sum over i != j of a, from the strict upper triangle (j > i)
    times 2."""
    same = b is None
    if same:
        b = a
    b_sq = b.square().sum(1)
    total = torch.zeros((), device=a.device, dtype=torch.float64)
    for s in range(0, a.shape[0], rows):
        ab = a[s:s + rows]
        c0 = s if same else 0  # columns left of the block's diagonal are the lower triangle
        d2 = (ab.square().sum(1)[:, None] + b_sq[None, c0:] - 2.0 * (ab @ b[c0:].T)).clamp_min(0)
        k = torch.exp(d2 * -gammas[0])
        for g in gammas[1:]:
            k = k + torch.exp(d2 * -g)
        if same:  # keep j > i only: block-local column index > row index
            r = torch.arange(ab.shape[0], device=a.device)
            lower = r[None, :k.shape[1]] <= r[:, None]
            k = torch.cat([k[:, :ab.shape[0]].masked_fill(lower, 0.0), k[:, ab.shape[0]:]], dim=1)
        total = total + k.sum(dtype=torch.float64)
    return 2.0 * total if same else total


def mmd_rbf(x: Tensor, y: Tensor, *, bandwidths=None, block_size: Optional[int] = None) -> Tensor:
    """Squared maximum mean discrepancy between sample sets ``x`` [N, ...] and ``y`` [M, ...]
    with the kernel ``k(a, b) = sum_s exp(-|a - b|^2 / (2 sigma_s^2))`` (a sum of RBF kernels).

    Unbiased estimator (U-statistic; the i == j terms of the within-set sums are excluded)::

        MMD^2_u = 1/(N(N-1)) sum_{i!=j} k(x_i, x_j) + 1/(M(M-1)) sum_{i!=j} k(y_i, y_j)
                  - 2/(NM) sum_{i,j} k(x_i, y_j)

    so it is ~0 (and can be slightly negative) when x and y come from the same distribution.
    Needs N, M >= 2.

    bandwidths: the sigmas (a positive number, a sequence of them, or a 1-D tensor). Default:
    ``DEFAULT_BANDWIDTH_MULTIPLES`` = (0.25, 0.5, 1, 2, 4) times the median heuristic, the median
    pairwise distance of the pooled x and y (see ``median_heuristic``; at most 512 evenly spaced
    points of each set, treated as a constant for autograd). The default is symmetric, so
    ``mmd_rbf(x, y) == mmd_rbf(y, x)`` up to rounding.

    block_size: rows per block of the pairwise computation (default: about 2**23 / max(N, M)
    rows); memory is O(block_size * max(N, M)). Sums are accumulated in float64.

    Returns a 0-d tensor on x's device in the compute dtype (float32 for half inputs).
    """
    a, b = _sample_pair(x, y, "x", "y")
    n, m = a.shape[0], b.shape[0]
    if n < 2:
        raise ValueError(f"x needs at least 2 samples for the unbiased MMD estimator, got {n}")
    if m < 2:
        raise ValueError(f"y needs at least 2 samples for the unbiased MMD estimator, got {m}")
    if bandwidths is None:
        med = median_heuristic(a, b)
        sigmas = med * torch.tensor(DEFAULT_BANDWIDTH_MULTIPLES, device=a.device, dtype=a.dtype)
    else:
        sigmas = _bandwidth_tensor(bandwidths, a.device, a.dtype)
    gammas = 0.5 / sigmas.square()
    a, b = _pooled_center(a, b)
    rows = _block_rows(max(n, m), block_size)
    kxx = _rbf_sum(a, None, gammas, rows)
    kyy = _rbf_sum(b, None, gammas, rows)
    kxy = _rbf_sum(a, b, gammas, rows)
    mmd2 = kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m)
    return mmd2.to(a.dtype)


# --------------------------------------------------------------------------------------------
# sliced Wasserstein
# --------------------------------------------------------------------------------------------
def _quantile_coupling(n: int, m: int, device):
    """Exact monotone coupling of two uniform empirical measures with n and m atoms.

    The quantile functions are step functions with breaks at i/n and j/m; on each interval between
    consecutive breaks (in units of 1/(n*m), so integer arithmetic is exact) both are constant.
    Returns the sorted-sample index of each side on each interval and the interval's length."""
    bx = torch.arange(1, n + 1, device=device, dtype=torch.int64) * m
    by = torch.arange(1, m + 1, device=device, dtype=torch.int64) * n
    breaks = torch.cat([bx, by]).sort().values
    width = torch.diff(breaks, prepend=breaks.new_zeros(1))
    keep = width > 0
    breaks, width = breaks[keep], width[keep]
    ix = (breaks + m - 1) // m - 1  # ceil(t * n) - 1 for t in the interval ending at breaks/(n m)
    iy = (breaks + n - 1) // n - 1
    return ix, iy, width


def sliced_wasserstein(x: Tensor, y: Tensor, *, n_projections: int = 256, p: float = 2, seed: int = 0) -> Tensor:
    """Sliced Wasserstein-p distance between sample sets ``x`` [N, ...] and ``y`` [M, ...]::

        SW_p = ( mean_{theta} W_p^p(<theta, x>, <theta, y>) )^(1/p)

    over ``n_projections`` random unit directions theta (Gaussian draws normalised to the unit
    sphere, from a ``torch.Generator`` on x's device seeded with ``seed``: deterministic for a
    given seed and device, CPU and CUDA draw different directions). Each W_p^p is the exact
    Wasserstein-p between the two projected empirical measures (uniform weights): both are
    sorted and their quantile functions compared; with N != M the quantile functions are
    integrated exactly over the merged quantile levels {i/N} U {j/M} (no resampling). Same units
    as the data. p must be a finite number >= 1.

    Returns a 0-d tensor on x's device in the compute dtype (float32 for half inputs).
    """
    a, b = _sample_pair(x, y, "x", "y")
    n_projections = _check_int(n_projections, "n_projections", 1)
    seed = _check_int(seed, "seed", -(2**63))
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a real number, got {type(p).__name__}")
    p = float(p)
    if not math.isfinite(p) or p < 1:
        raise ValueError(f"p must be a finite number >= 1, got {p}")
    n, m, d = a.shape[0], b.shape[0], a.shape[1]

    gen = torch.Generator(device=a.device)
    gen.manual_seed(seed)
    theta = torch.randn(n_projections, d, generator=gen, device=a.device, dtype=torch.float32).to(a.dtype)
    theta = theta / theta.norm(dim=1, keepdim=True)

    a, b = _pooled_center(a, b)
    pa = (a @ theta.T).sort(dim=0).values  # [N, P]
    pb = (b @ theta.T).sort(dim=0).values  # [M, P]
    if n == m:
        diff = (pa - pb).abs()
        weights = None
    else:
        ix, iy, width = _quantile_coupling(n, m, a.device)
        diff = (pa[ix] - pb[iy]).abs()
        weights = (width.to(torch.float64) / (n * m)).to(a.dtype)
    cost = diff if p == 1 else (diff.square() if p == 2 else diff.pow(p))
    wpp = cost.mean(0) if weights is None else (cost * weights[:, None]).sum(0)  # [P]
    swpp = wpp.mean()
    return swpp if p == 1 else (swpp.sqrt() if p == 2 else swpp.pow(1.0 / p))


# --------------------------------------------------------------------------------------------
# likelihood units
# --------------------------------------------------------------------------------------------
def _check_value(v, name: str):
    if isinstance(v, Tensor):
        return _check_float_tensor(v, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a floating-point tensor or a real number, got {type(v).__name__}")
    return float(v)


def nats_to_bits(x: Union[Tensor, float]) -> Union[Tensor, float]:
    """Convert nats to bits (divide by ln 2). A tensor (floating) gives a tensor of the same
    shape and dtype, a Python number gives a float."""
    return _check_value(x, "x") / _LN2


def bits_per_dim(nll_nats: Union[Tensor, float], num_dims: int, *, n_bins: Optional[int] = None) -> Union[Tensor, float]:
    """Convert a negative log-likelihood in nats (per sample: tensor [B], a 0-d tensor or a
    number) to bits per dimension: ``nll / (num_dims * ln 2)``.

    With ``n_bins`` (e.g. 256 for 8-bit images) the nll is taken to be that of a *continuous*
    density on [0, 1]^D over data that were discretised into ``n_bins`` bins of width
    ``1 / n_bins`` per dimension (uniformly dequantised and scaled to [0, 1]); the discrete
    model's nll is then ``nll + D * ln(n_bins)``, so::

        bpd = (nll + D * ln(n_bins)) / (D * ln 2)

    (for data scaled to another interval, first add D * ln(interval length) to the nll).
    Without ``n_bins`` no offset is added (the nll is already discrete, or continuous bpd is
    wanted). Tensor in, tensor of the same shape and dtype out; number in, float out.
    """
    nll = _check_value(nll_nats, "nll_nats")
    num_dims = _check_int(num_dims, "num_dims", 1)
    offset = 0.0
    if n_bins is not None:
        offset = num_dims * math.log(_check_int(n_bins, "n_bins", 2))
    return (nll + offset) / (num_dims * _LN2)


# --------------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------------
def reconstruction_mse(x: Tensor, x_hat: Tensor, *, reduction: str = "mean") -> Tensor:
    """Mean squared error of a reconstruction, averaged over each sample's features:
    ``((x - x_hat) ** 2).reshape(B, -1).mean(1)``. ``x`` and ``x_hat`` must have the same shape
    [B, ...] (1-D [B] means one feature per sample).

    reduction: "none" -> per-sample tensor [B]; "mean" (default) -> 0-d mean over the batch;
    "sum" -> 0-d sum over the batch. Computed in the promoted dtype (float32 for half inputs).
    """
    if reduction not in ("mean", "none", "sum"):
        raise ValueError(f"reduction must be 'mean', 'none' or 'sum', got {reduction!r}")
    a, b = _samples(x, "x"), _samples(x_hat, "x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if a.device != b.device:
        raise ValueError(f"x and x_hat must be on the same device, got {a.device} and {b.device}")
    dtype = _compute_dtype(a.dtype, b.dtype)
    per_sample = (a.to(dtype) - b.to(dtype)).square().mean(1)
    if reduction == "none":
        return per_sample
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


# --------------------------------------------------------------------------------------------
# improved precision / recall
# --------------------------------------------------------------------------------------------
def _knn_radii(a: Tensor, k: int, rows: int) -> Tensor:
    """Distance of each row of a to its k-th nearest neighbour among the other rows."""
    n = a.shape[0]
    out = torch.empty(n, device=a.device, dtype=a.dtype)
    cols = torch.arange(n, device=a.device)
    for s in range(0, n, rows):
        d = torch.cdist(a[s:s + rows], a)
        self_mask = torch.arange(s, s + d.shape[0], device=a.device)[:, None] == cols[None, :]
        d.masked_fill_(self_mask, float("inf"))
        out[s:s + d.shape[0]] = d.topk(k, dim=1, largest=False).values[:, -1]
    return out


def _fraction_covered(queries: Tensor, centres: Tensor, radii: Tensor, rows: int) -> float:
    """Fraction of queries within radii[j] of some centres[j] (closed balls)."""
    inside = torch.zeros((), device=queries.device, dtype=torch.int64)
    for s in range(0, queries.shape[0], rows):
        d = torch.cdist(queries[s:s + rows], centres)
        inside += (d <= radii[None, :]).any(dim=1).sum()
    return float(inside) / queries.shape[0]


@torch.no_grad()
def precision_recall_knn(real: Tensor, fake: Tensor, *, k: int = 3, block_size: Optional[int] = None) -> Dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) on flattened samples/features.

    Each real sample's ball has radius = Euclidean distance to its k-th nearest neighbour among
    the other reals; their union estimates the real manifold. ``precision`` = fraction of fake
    samples inside at least one real ball (distance <= radius). ``recall`` is symmetric: fraction
    of real samples inside at least one fake ball (radii from k-NN among the fakes).
    Needs 1 <= k < N_real and k < N_fake.

    Computed blockwise with ``torch.cdist`` (memory O(block_size * max(N, M)); default about
    2**23 / max(N, M) rows per block). Returns ``{"precision": float, "recall": float}``.
    """
    r, f = _sample_pair(real, fake, "real", "fake")
    k = _check_int(k, "k", 1)
    if k >= r.shape[0]:
        raise ValueError(f"k must be < the number of real samples ({r.shape[0]}), got k={k}")
    if k >= f.shape[0]:
        raise ValueError(f"k must be < the number of fake samples ({f.shape[0]}), got k={k}")
    r, f = _pooled_center(r, f)
    rows = _block_rows(max(r.shape[0], f.shape[0]), block_size)
    real_radii = _knn_radii(r, k, rows)
    fake_radii = _knn_radii(f, k, rows)
    return {
        "precision": _fraction_covered(f, r, real_radii, rows),
        "recall": _fraction_covered(r, f, fake_radii, rows),
    }


# --------------------------------------------------------------------------------------------
# detection

def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """Average precision per class (column) of `scores` [N, C] against binary `targets` [N, C]:
    the mean, over the positives, of the precision among the items ranked at or above each one
    (ranked by decreasing score; no interpolation: sklearn's `average_precision_score`, with
    tied scores counted together). A class with no positive gets NaN."""
    scores = _check_float_tensor(scores, "scores")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if scores.dim() == 1:
        scores, targets = scores[:, None], targets[:, None]
    if scores.dim() != 2 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both have shape [N, C], got {tuple(scores.shape)} "
                         f"and {tuple(targets.shape)}")
    t = targets.to(torch.float64)
    order = scores.argsort(dim=0, descending=True, stable=True)
    s = scores.gather(0, order)
    hits = t.gather(0, order)
    tp = hits.cumsum(0)
    n = s.shape[0]
    # tied scores form one threshold: every item of a tie group takes the precision at its end
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]
    positions = torch.arange(n, device=s.device)[:, None].expand_as(s)
    end = torch.where(last_of_tie, positions, n).flip(0).cummin(0).values.flip(0)
    precision_at_end = tp.gather(0, end) / (end + 1).to(torch.float64)
    n_pos = t.sum(0)
    ap = (hits * precision_at_end).sum(0) / n_pos
    ap = torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan")))
    return ap.to(scores.dtype)
