"""vq_nearest on every backend against the reference; vq_quantize against taming's formulas."""
import pytest
import torch

import fastgen
from fastgen.ops import reference
from fastgen.testing import assert_close

from conftest import native_device_tests, require_backend

OP = "vq_nearest"
SHAPES = [(1, 1, 1), (7, 5, 3), (100, 37, 16), (130, 300, 33), (65, 1100, 8), (3, 70, 300),
          (67, 129, 64)]  # (N, K, D)


def _setup(device_backend, dtype=torch.float32):
    device, backend = device_backend
    require_backend(OP, device, backend)
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton kernel takes fp16/bf16/fp32 (raises a TypeError for fp64: tested below)")
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bf16 tl.dot is wrong under the Triton interpreter: GPU only "
                    "(docs/design.md, 'Limits of the Triton interpreter')")
    return device, backend


def _check_nearest(z, e, metric, idx, dist):
    """idx must be a true nearest code: equal to the reference where the runner-up is clearly
    farther, and otherwise at most a rounding error away from the minimum distance."""
    d_ref = reference.vq_distances(z, e, metric)
    idx_ref, dist_ref = reference.vq_nearest(z, e, metric)
    assert idx.dtype == torch.int64 and idx.shape == idx_ref.shape
    assert bool(((idx >= 0) & (idx < e.shape[0])).all())
    chosen = d_ref.gather(1, idx[:, None].cpu() if d_ref.is_cpu else idx[:, None])[:, 0]
    scale = 1e-4 * (1 + d_ref.abs().amax(1)) if z.dtype in (torch.float32, torch.float64) else \
        2e-2 * (1 + d_ref.abs().amax(1))
    assert bool(((chosen - dist_ref).abs() <= scale).all()), "chosen code is not a nearest one"
    gap = d_ref.topk(min(2, e.shape[0]), dim=1, largest=False).values
    clear = (gap[:, -1] - gap[:, 0]) > 2 * scale if e.shape[0] > 1 else torch.ones_like(scale, dtype=torch.bool)
    assert bool((idx[clear] == idx_ref[clear]).all())
    assert_close(dist, dist_ref, rtol=1e-4, atol=float(scale.max()), name="distances")


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device_backend, shape, dtype, metric):
    device, backend = _setup(device_backend, dtype)
    n, k, d = shape
    g = torch.Generator().manual_seed(n * 1000 + k)
    z = torch.randn(n, d, generator=g).to(device, dtype)
    e = torch.randn(k, d, generator=g).to(device, dtype)
    idx, dist = fastgen.ops.vq_nearest(z, e, metric, backend=backend)
    assert dist.dtype == reference.math_dtype(dtype)
    _check_nearest(z, e, metric, idx, dist)


# (K0, D): the CPU kernels take different paths below and above D = 32 (codes packed in panels
# of 64 there, with specializations for D = 32, 64, 256), so copies land in other panels and
# next to the padding codes; at D <= 32 the AVX2 kernel tracks minima per block of 128 codes
# within tiles of 128 KiB, so copies also land in later blocks (150, 12) and tiles (1500, 8),
# (400, 32)
@pytest.mark.parametrize("k0, d", [(40, 8), (70, 32), (45, 64), (70, 256), (33, 40), (150, 12), (1500, 8),
                                   (400, 32)], ids=str)
def test_ties_go_to_the_lowest_index(device_backend, k0, d):
    device, backend = _setup(device_backend)
    # small integers: every dot product is exact, so duplicated codes tie exactly
    g = torch.Generator().manual_seed(d)
    e = torch.randint(-3, 4, (k0, d), generator=g).float().repeat(3, 1).to(device)  # at k, k+k0, k+2k0
    z = torch.randint(-3, 4, (50, d), generator=g).float().to(device)
    idx, _ = fastgen.ops.vq_nearest(z, e, backend=backend)
    assert bool((idx < k0).all())
    assert idx.tolist() == reference.vq_nearest(z, e)[0].tolist()
    idx, _ = fastgen.ops.vq_nearest(torch.zeros(3, d, device=device), torch.zeros(300, d, device=device),
                                    backend=backend)
    assert idx.tolist() == [0, 0, 0]


@pytest.mark.parametrize("k, d", [(20, 4), (300, 8), (100, 64)], ids=str)
def test_non_finite_inputs_stay_in_bounds(device_backend, k, d):
    device, backend = _setup(device_backend)
    z = torch.randn(6, d, device=device)
    e = torch.randn(k, d, device=device)
    z[1, 2] = float("nan")
    z[2, 0] = float("inf")
    e[3] = float("nan")
    idx, dist = fastgen.ops.vq_nearest(z, e, backend=backend)
    idx_ref, dist_ref = reference.vq_nearest(z, e)
    assert idx.tolist() == idx_ref.tolist()
    assert_close(dist, dist_ref, name="distances", backend=backend)
    assert 3 not in idx.tolist()


def test_empty_and_non_contiguous(device_backend):
    device, backend = _setup(device_backend)
    idx, dist = fastgen.ops.vq_nearest(torch.empty(0, 5, device=device), torch.randn(7, 5, device=device),
                                       backend=backend)
    assert idx.shape == (0,) and dist.shape == (0,)
    zt = torch.randn(12, 30, device=device).t()[:, ::2]     # (30, 6), non-contiguous
    et = torch.randn(6, 50, device=device).t()               # (50, 6), non-contiguous
    idx, dist = fastgen.ops.vq_nearest(zt, et, backend=backend)
    _check_nearest(zt, et, "l2", idx, dist)


def test_bad_inputs_name_the_argument():
    z, e = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="codebook has D=4 but z has D=3"):
        fastgen.ops.vq_nearest(z, torch.randn(5, 4))
    with pytest.raises(ValueError, match="codebook is empty"):
        fastgen.ops.vq_nearest(z, torch.randn(0, 3))
    with pytest.raises(TypeError, match="z must be float16, bfloat16, float32 or float64"):
        fastgen.ops.vq_nearest(torch.ones(4, 3, dtype=torch.int32), e)
    with pytest.raises(ValueError, match=r"z must have shape \(N, D\)"):
        fastgen.ops.vq_nearest(torch.randn(2, 4, 3), e)
    with pytest.raises(ValueError, match="codebook is on meta but z is on cpu"):
        fastgen.ops.vq_nearest(z, e.to("meta"))
    with pytest.raises(ValueError, match="metric must be one of"):
        fastgen.ops.vq_nearest(z, e, "dot")
    with pytest.raises(TypeError, match="codebook has dtype torch.float64"):
        fastgen.ops.vq_nearest(z, e.double())
    from fastgen.kernels import vq as triton_vq

    with pytest.raises(TypeError, match="triton kernel takes float16, bfloat16 or float32"):
        triton_vq.vq_nearest(z.double(), e.double())


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    z, e = torch.randn(6, 3, device=device), torch.randn(5, 3, device=device)
    return [("vq_nearest_native", (z, e, "l2"), "z")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)


# -- vq_quantize: taming's VectorQuantizer2 formulas ---------------------------------------------

def _taming_quantize(z, embedding, beta, legacy):
    """taming's formulas, restated: distances, argmin, codebook/commitment loss, straight-through."""
    d = (z ** 2).sum(1, keepdim=True) + (embedding ** 2).sum(1) - 2 * z @ embedding.t()
    idx = torch.argmin(d, dim=1)
    z_q = embedding[idx]
    if legacy:
        loss = torch.mean((z_q.detach() - z) ** 2) + beta * torch.mean((z_q - z.detach()) ** 2)
    else:
        loss = beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
    return z + (z_q - z).detach(), loss, idx


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_quantize_matches_taming(legacy):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 8, generator=g, requires_grad=True)
    emb = torch.randn(32, 8, generator=g, requires_grad=True)
    z2, emb2 = z.detach().clone().requires_grad_(), emb.detach().clone().requires_grad_()
    z_q, loss, idx = fastgen.ops.vq_quantize(z, emb, 0.25, legacy)
    z_q2, loss2, idx2 = _taming_quantize(z2, emb2, 0.25, legacy)
    assert idx.tolist() == idx2.tolist()
    assert torch.equal(z_q, z_q2)
    assert_close(loss, loss2)
    w = torch.randn(z_q.shape, generator=g)
    ((z_q * w).sum() + loss).backward()
    ((z_q2 * w).sum() + loss2).backward()
    assert_close(z.grad, z2.grad, name="dz")
    assert_close(emb.grad, emb2.grad, name="dcodebook")
