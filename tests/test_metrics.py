"""fastgen.metrics: known values, invariances and error messages."""
import math

import pytest
import torch

from fastgen import metrics

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.float64]


def _randn(*shape, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _mixture(n, centres, seed, std=0.05):
    """n points spread evenly over the given 2-D mode centres, Gaussian with `std` around each."""
    centres = torch.as_tensor(centres, dtype=torch.float64)
    idx = torch.arange(n) % len(centres)
    return centres[idx] + std * _randn(n, 2, seed=seed)


RING8 = [(5 * math.cos(2 * math.pi * i / 8), 5 * math.sin(2 * math.pi * i / 8)) for i in range(8)]


# ------------------------------------------------------------------------------------------ MMD
def _mmd_brute(x, y, sigmas):
    """Full-matrix unbiased MMD^2 in float64, straight from the definition."""
    x, y = x.double().reshape(len(x), -1), y.double().reshape(len(y), -1)

    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(torch.exp(-d2 / (2 * s**2)) for s in sigmas)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * k(x, y).mean())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [None, 1, 7, 64])
def test_mmd_matches_brute_force(device, dtype, block_size):
    x = _randn(53, 3, seed=1, dtype=dtype, device=device)
    y = _randn(41, 3, seed=2, dtype=dtype, device=device) * 1.3 + 0.4
    sigmas = [0.3, 1.0, 2.5]
    got = metrics.mmd_rbf(x, y, bandwidths=sigmas, block_size=block_size)
    assert got.shape == () and got.dtype == dtype and got.device.type == device
    want = _mmd_brute(x.cpu(), y.cpu(), sigmas)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert abs(float(got) - float(want)) < tol


def test_mmd_default_bandwidths_are_median_multiples():
    x, y = _randn(60, 2, seed=3), _randn(50, 2, seed=4) + 0.5
    med = float(metrics.median_heuristic(x, y))
    pooled = torch.cat([x, y])
    d = torch.cdist(pooled, pooled)
    i, j = torch.triu_indices(len(pooled), len(pooled), offset=1)
    assert med == pytest.approx(float(d[i, j].median()), rel=1e-9)
    sigmas = [mult * med for mult in metrics.DEFAULT_BANDWIDTH_MULTIPLES]
    assert float(metrics.mmd_rbf(x, y)) == pytest.approx(float(_mmd_brute(x, y, sigmas)), rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mmd_same_vs_shifted_and_symmetric(dtype):
    x, y = _randn(800, 2, seed=5, dtype=dtype), _randn(800, 2, seed=6, dtype=dtype)
    same = float(metrics.mmd_rbf(x, y))
    shifted = float(metrics.mmd_rbf(x, y + 1.0))
    assert abs(same) < 0.01
    assert shifted > 0.1 and shifted > 20 * abs(same)
    assert float(metrics.mmd_rbf(y + 1.0, x)) == pytest.approx(shifted, rel=1e-4)
    # different sample counts, images flattened
    imgs = torch.rand(90, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    other = torch.rand(70, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    assert abs(float(metrics.mmd_rbf(imgs, other))) < 0.02
    assert float(metrics.mmd_rbf(imgs, other * 0.5)) > 0.1


def test_mmd_is_differentiable():
    x = _randn(30, 2, seed=7).requires_grad_(True)
    metrics.mmd_rbf(x, _randn(20, 2, seed=8) + 2).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------- sliced Wasserstein
def _w_p_1d_same_n(a, b, p):
    return float(((a.sort().values - b.sort().values).abs() ** p).mean() ** (1 / p))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_sliced_wasserstein_1d_closed_form(device, p):
    # with D = 1 every unit direction is +-1, and W_p(-a, -b) = W_p(a, b): SW_p is W_p exactly
    a = _randn(200, seed=9, device=device)
    b = _randn(200, seed=10, device=device).exp()
    got = metrics.sliced_wasserstein(a, b, p=p, n_projections=7)
    assert float(got) == pytest.approx(_w_p_1d_same_n(a.cpu(), b.cpu(), p), rel=1e-10)
    assert float(metrics.sliced_wasserstein(a[:, None], b[:, None], p=p)) == pytest.approx(float(got), rel=1e-10)


def test_sliced_wasserstein_unequal_sizes_exact():
    # quantile functions: x: 0 on (0, 1/2], 1 on (1/2, 1]; y: 0, 0.5, 1 on thirds
    x, y = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64)
    assert float(metrics.sliced_wasserstein(x, y, p=1)) == pytest.approx(1 / 6, rel=1e-12)
    assert float(metrics.sliced_wasserstein(x, y, p=2)) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    assert float(metrics.sliced_wasserstein(y, x, p=2)) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    # repeating every sample leaves the empirical measure (so the distance) unchanged
    a, b = _randn(30, 2, seed=11), _randn(45, 2, seed=12) + 0.3
    base = float(metrics.sliced_wasserstein(a, b, seed=3))
    assert float(metrics.sliced_wasserstein(a.repeat(3, 1), b, seed=3)) == pytest.approx(base, rel=1e-10)
    assert float(metrics.sliced_wasserstein(a.repeat(2, 1), b.repeat(4, 1), seed=3)) == pytest.approx(base, rel=1e-10)
    assert float(metrics.sliced_wasserstein(a, a.repeat(5, 1))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sliced_wasserstein_zero_translation_seed(dtype):
    x = _randn(300, 5, seed=13, dtype=dtype)
    assert float(metrics.sliced_wasserstein(x, x)) == 0.0
    assert float(metrics.sliced_wasserstein(x, x.flip(0))) == pytest.approx(0.0, abs=1e-6)
    # a translation by c*v moves every projection by c<theta, v>: SW_2 = |c| sqrt(mean <theta, v>^2),
    # and E<theta, v>^2 = |v|^2 / D = 1 for v = ones
    sw = float(metrics.sliced_wasserstein(x, x + 0.7, n_projections=4096))
    assert sw == pytest.approx(0.7, rel=0.1)
    r1 = metrics.sliced_wasserstein(x, x + 0.7, seed=1)
    assert torch.equal(r1, metrics.sliced_wasserstein(x, x + 0.7, seed=1))
    assert not torch.equal(r1, metrics.sliced_wasserstein(x, x + 0.7, seed=2))
    assert r1.shape == () and r1.dtype == dtype


def test_sliced_wasserstein_images_and_grad():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 3, 4, 4, generator=g, requires_grad=True)
    b = torch.rand(60, 3, 4, 4, generator=g)
    sw = metrics.sliced_wasserstein(a, b + 1)
    sw.backward()
    assert float(sw.detach()) > 0.5 and torch.isfinite(a.grad).all()


# ------------------------------------------------------------------------------ likelihood units
def test_bits_per_dim_hand_computed():
    assert metrics.nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert metrics.nats_to_bits(torch.tensor([0.0, 2 * math.log(2)])).tolist() == pytest.approx([0.0, 2.0])
    assert metrics.bits_per_dim(10 * math.log(2), 5) == pytest.approx(2.0)
    nll = torch.tensor([100.0, 250.0], dtype=torch.float64)
    d = 3 * 8 * 8
    got = metrics.bits_per_dim(nll, d, n_bins=256)
    assert got.shape == (2,) and got.dtype == torch.float64
    want = [(v + d * math.log(256)) / (d * math.log(2)) for v in (100.0, 250.0)]
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    # a uniform density on [0,1]^D (nll 0) is 8 bits per dim once discretised into 256 bins
    assert metrics.bits_per_dim(0.0, 784, n_bins=256) == pytest.approx(8.0)
    assert float(metrics.bits_per_dim(torch.tensor(0.0), 784, n_bins=2)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ reconstruction
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reconstruction_mse(dtype):
    x = _randn(6, 3, 5, 5, seed=14, dtype=dtype)
    x_hat = _randn(6, 3, 5, 5, seed=15, dtype=dtype)
    per = metrics.reconstruction_mse(x, x_hat, reduction="none")
    want = ((x - x_hat) ** 2).reshape(6, -1).mean(1)
    assert per.shape == (6,) and per.dtype == dtype
    torch.testing.assert_close(per, want)
    torch.testing.assert_close(metrics.reconstruction_mse(x, x_hat), torch.nn.functional.mse_loss(x, x_hat))
    torch.testing.assert_close(metrics.reconstruction_mse(x, x_hat, reduction="sum"), want.sum())
    assert float(metrics.reconstruction_mse(x, x)) == 0.0


# ----------------------------------------------------------------------- precision / recall
def test_precision_recall_identical_and_disjoint():
    real = _mixture(400, RING8, seed=16)
    assert metrics.precision_recall_knn(real, real.clone()) == {"precision": 1.0, "recall": 1.0}
    assert metrics.precision_recall_knn(real, real + 1000.0) == {"precision": 0.0, "recall": 0.0}


@pytest.mark.parametrize("block_size", [None, 13])
def test_precision_recall_half_the_modes(block_size):
    real = _mixture(800, RING8, seed=17).float()
    fake = _mixture(400, RING8[::2], seed=18).float()  # every other mode
    pr = metrics.precision_recall_knn(real, fake, k=3, block_size=block_size)
    assert pr["precision"] > 0.9
    assert 0.35 < pr["recall"] < 0.55
    swapped = metrics.precision_recall_knn(fake, real, k=3, block_size=block_size)
    assert swapped["recall"] == pr["precision"] and swapped["precision"] == pr["recall"]


def test_precision_recall_same_distribution_high():
    pr = metrics.precision_recall_knn(_randn(500, 2, seed=19), _randn(300, 2, seed=20), k=5)
    assert pr["precision"] > 0.85 and pr["recall"] > 0.85


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x, y = _randn(300, 4, seed=21), _randn(250, 4, seed=22) + 0.2
    xc, yc = x.cuda(), y.cuda()
    assert float(metrics.mmd_rbf(xc, yc)) == pytest.approx(float(metrics.mmd_rbf(x, y)), rel=1e-8)
    assert metrics.precision_recall_knn(xc, yc) == metrics.precision_recall_knn(x, y)
    # different generators on the two devices: only agree statistically
    assert float(metrics.sliced_wasserstein(xc, yc, n_projections=2048)) == pytest.approx(
        float(metrics.sliced_wasserstein(x, y, n_projections=2048)), rel=0.1)


# ------------------------------------------------------------------------------- bad input
_X = torch.zeros(4, 2)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: metrics.mmd_rbf(_X, torch.zeros(4, 3)), ValueError, "same number of features"),
    (lambda: metrics.mmd_rbf(_X, torch.zeros(0, 2)), ValueError, "y is empty"),
    (lambda: metrics.mmd_rbf(_X.long(), _X), TypeError, "x must have a floating-point dtype"),
    (lambda: metrics.mmd_rbf(_X.numpy(), _X), TypeError, "x must be a torch.Tensor"),
    (lambda: metrics.mmd_rbf(_X[:1], _X), ValueError, "x needs at least 2 samples"),
    (lambda: metrics.mmd_rbf(_X, _X, bandwidths=[1.0, -1.0]), ValueError, "bandwidths must be finite and > 0"),
    (lambda: metrics.mmd_rbf(_X, _X, bandwidths=[]), ValueError, "bandwidths is empty"),
    (lambda: metrics.mmd_rbf(_X, _X, block_size=0), ValueError, "block_size must be >= 1"),
    (lambda: metrics.mmd_rbf(torch.tensor(1.0), _X), ValueError, "x must have a sample dimension"),
    (lambda: metrics.sliced_wasserstein(_X, _X, p=0.5), ValueError, "p must be a finite number >= 1"),
    (lambda: metrics.sliced_wasserstein(_X, _X, p=math.inf), ValueError, "p must be a finite number >= 1"),
    (lambda: metrics.sliced_wasserstein(_X, _X, n_projections=0), ValueError, "n_projections must be >= 1"),
    (lambda: metrics.sliced_wasserstein(_X, _X, n_projections=2.0), TypeError, "n_projections must be an int"),
    (lambda: metrics.sliced_wasserstein(_X, torch.zeros(3, 5)), ValueError, "x and y must have the same number"),
    (lambda: metrics.sliced_wasserstein(_X, torch.zeros(3, 2, dtype=torch.int32)), TypeError, "y must have a float"),
    (lambda: metrics.bits_per_dim(torch.tensor([1, 2]), 3), TypeError, "nll_nats must have a floating-point"),
    (lambda: metrics.bits_per_dim(1.0, 0), ValueError, "num_dims must be >= 1"),
    (lambda: metrics.bits_per_dim(1.0, 3, n_bins=1), ValueError, "n_bins must be >= 2"),
    (lambda: metrics.bits_per_dim("1", 3), TypeError, "nll_nats must be"),
    (lambda: metrics.nats_to_bits(None), TypeError, "x must be"),
    (lambda: metrics.reconstruction_mse(_X, torch.zeros(4, 3)), ValueError, "x and x_hat must have the same shape"),
    (lambda: metrics.reconstruction_mse(_X, _X, reduction="max"), ValueError, "reduction must be"),
    (lambda: metrics.reconstruction_mse(torch.zeros(0, 2), torch.zeros(0, 2)), ValueError, "x is empty"),
    (lambda: metrics.reconstruction_mse(_X, _X.int()), TypeError, "x_hat must have a floating-point dtype"),
    (lambda: metrics.precision_recall_knn(_X, _X, k=4), ValueError, "k must be < the number of real samples"),
    (lambda: metrics.precision_recall_knn(_X, _X[:3], k=3), ValueError, "k must be < the number of fake samples"),
    (lambda: metrics.precision_recall_knn(_X, _X, k=0), ValueError, "k must be >= 1"),
    (lambda: metrics.precision_recall_knn(_X, torch.zeros(4, 1)), ValueError, "real and fake must have the same"),
    (lambda: metrics.precision_recall_knn(_X, torch.zeros(4, 2, dtype=torch.bool)), TypeError, "fake must have"),
])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
