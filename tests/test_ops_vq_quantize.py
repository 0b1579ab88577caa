"""vq_quantize (fused forward + backward), vq_code_sums and vq_ema_update on every backend
against the plain-PyTorch reference."""
import pytest
import torch

import fastgen
from fastgen.ops import reference
from fastgen.testing import assert_close, tolerance

from conftest import CPU_KEYS, _native_op, check_native_on_second_gpu, native_device_tests, require_backend, two_gpus
from test_ops_vq import _check_nearest

SHAPES = [(1, 1, 1), (7, 5, 3), (100, 37, 16), (130, 300, 33), (3, 70, 300)]  # (N, K, D)
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _setup(device_backend, op, dtype=torch.float32):
    device, backend = device_backend
    require_backend(op, device, backend)
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton kernels take fp16/bf16/fp32 (fp64 raises a TypeError: tested below)")
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bf16 is wrong under the Triton interpreter: GPU only "
                    "(docs/design.md, 'Limits of the Triton interpreter')")
    return device, backend


def _data(n, k, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed + n * 7 + k)
    z = torch.randn(n, d, generator=g, dtype=torch.float64).to(device, dtype)
    e = torch.randn(k, d, generator=g, dtype=torch.float64).to(device, dtype)
    return z, e


# -- vq_quantize ----------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_forward_backward(device_backend, shape, dtype, legacy):
    device, backend = _setup(device_backend, "vq_quantize", dtype)
    n, k, d = shape
    z, e = _data(n, k, d, dtype, device)
    z.requires_grad_()
    e.requires_grad_()
    beta = 0.3
    z_q, loss, idx = fastgen.ops.vq_quantize(z, e, beta, legacy, backend=backend)
    assert z_q.dtype == dtype and z_q.shape == z.shape and loss.dtype == dtype and loss.shape == ()
    _check_nearest(z.detach(), e.detach(), "l2", idx, ((z - e[idx]) ** 2).sum(1).detach().to(
        reference.math_dtype(dtype)))
    # z_q is taming's z + (e[idx] - z), bit for bit, for the chosen codes
    want_zq = z.detach() + (e.detach()[idx] - z.detach())
    assert torch.equal(z_q.detach(), want_zq)
    t = reference.math_dtype(dtype)
    mse = ((e.detach()[idx].to(t) - z.detach().to(t)) ** 2).mean()
    assert_close(loss.to(t), (1 + beta) * mse, dtype=dtype, backend=backend, name="loss")

    g = torch.Generator().manual_seed(1)
    gzq = torch.randn(z.shape, generator=g).to(device, dtype)
    gloss = torch.tensor(1.7, dtype=dtype, device=device)
    dz, de = torch.autograd.grad((z_q, loss), (z, e), (gzq, gloss))
    dz_ref, de_ref = reference.vq_quantize_backward(gzq, gloss, z.detach(), e.detach(), idx, beta, legacy)
    assert_close(dz, dz_ref, dtype=dtype, backend=backend, name="dz")
    rtol, atol = tolerance(dtype)
    # a code's gradient sums over its rows: allow for the group size
    assert_close(de, de_ref, dtype=dtype, backend=backend, name="dcodebook", atol=atol * max(1, n) ** 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("legacy", [True, False])
def test_quantize_gradients_match_taming_autograd(device_backend, legacy, dtype):
    """The fused backward equals torch autograd through taming's formulas. (The straight-through
    gradient is not the derivative of the forward, so gradcheck does not apply; fp64 here is
    the tight check.)"""
    device, backend = _setup(device_backend, "vq_quantize", dtype)
    z, e = _data(150, 40, 12, dtype, device)
    z1, e1 = z.clone().requires_grad_(), e.clone().requires_grad_()
    z2, e2 = z.clone().requires_grad_(), e.clone().requires_grad_()
    z_q, loss, idx = fastgen.ops.vq_quantize(z1, e1, 0.25, legacy, backend=backend)
    z_q2, loss2, idx2 = reference.vq_quantize(z2, e2, 0.25, legacy)
    assert idx.tolist() == idx2.tolist()
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    ((z_q * w).sum() + 3 * loss).backward()
    ((z_q2 * w).sum() + 3 * loss2).backward()
    assert_close(z1.grad, z2.grad, name="dz", backend=backend)
    assert_close(e1.grad, e2.grad, name="dcodebook", backend=backend)


def test_codebook_gradient_is_deterministic(device_backend):
    """Many rows on few codes: the per-code sums are grouped, not atomically added."""
    device, backend = _setup(device_backend, "vq_quantize")
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(3000, 8, generator=g) * 0.01 + 5).to(device).requires_grad_()
    e = torch.randn(20, 8, generator=g).to(device).requires_grad_()
    grads = []
    for _ in range(2):
        _, loss, idx = fastgen.ops.vq_quantize(z, e, backend=backend)
        grads.append(torch.autograd.grad(loss, e)[0])
    assert idx.unique().numel() <= 3  # the rows crowd onto a few codes
    assert torch.equal(grads[0], grads[1])


def test_quantize_empty_and_non_contiguous(device_backend):
    device, backend = _setup(device_backend, "vq_quantize")
    z_q, loss, idx = fastgen.ops.vq_quantize(torch.empty(0, 5, device=device), torch.randn(7, 5, device=device),
                                             backend=backend)
    assert z_q.shape == (0, 5) and idx.shape == (0,) and bool(loss.isnan())  # torch.mean of nothing
    zt = torch.randn(12, 30, device=device).t()[:, ::2].requires_grad_()  # (30, 6) strided
    et = torch.randn(6, 50, device=device).t().requires_grad_()           # (50, 6) transposed
    z_q, loss, idx = fastgen.ops.vq_quantize(zt, et, backend=backend)
    z_q2, loss2, idx2 = reference.vq_quantize(zt, et)
    assert idx.tolist() == idx2.tolist() and torch.equal(z_q, z_q2)
    g1 = torch.autograd.grad((z_q.sum() + loss), (zt, et))
    g2 = torch.autograd.grad((z_q2.sum() + loss2), (zt, et))
    for a, b in zip(g1, g2):
        assert_close(a, b, backend=backend)


# -- vq_code_sums / vq_ema_update -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_code_sums(device_backend, shape, dtype):
    device, backend = _setup(device_backend, "vq_code_sums", dtype)
    n, k, d = shape
    z, _ = _data(n, k, d, dtype, device)
    idx = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(n)).to(device)
    counts, sums = fastgen.ops.vq_code_sums(z, idx, k, backend=backend)
    counts_ref, sums_ref = reference.vq_code_sums(z, idx, k)
    assert counts.dtype == sums.dtype == reference.math_dtype(dtype)
    assert torch.equal(counts, counts_ref)
    assert_close(sums, sums_ref, backend=backend, name="sums", atol=1e-5 * max(1, n // k) ** 0.5)


@pytest.mark.parametrize("buffer_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ema_update(device_backend, shape, dtype, buffer_dtype):
    device, backend = _setup(device_backend, "vq_ema_update", buffer_dtype)
    n, k, d = shape
    z, _ = _data(n, k, d, dtype, device)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(0, k, (n,), generator=g).to(device)
    cs = (torch.rand(k, generator=g) * 3).to(device, buffer_dtype)
    es = torch.randn(k, d, generator=g).to(device, buffer_dtype)
    cs_ref, es_ref = cs.clone(), es.clone()
    codebook, perplexity = fastgen.ops.vq_ema_update(z, idx, cs, es, 0.9, 1e-5, backend=backend)
    codebook_ref, perplexity_ref = reference.vq_ema_update(z, idx, cs_ref, es_ref, 0.9, 1e-5)
    assert codebook.dtype == buffer_dtype and codebook.shape == (k, d)
    assert_close(cs, cs_ref, backend=backend, name="cluster_size (in place)")
    assert_close(es, es_ref, backend=backend, name="embed_sum (in place)")
    assert_close(codebook, codebook_ref, backend=backend, name="codebook", rtol=1e-4)
    assert_close(perplexity.double(), perplexity_ref.double(), backend=backend, name="perplexity", rtol=1e-5)


def test_code_sums_reject_out_of_range_indices():
    z = torch.randn(5, 3)
    for bad in (torch.tensor([0, 1, 2, 7, 1]), torch.tensor([0, -1, 2, 3, 1])):
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
            fastgen.ops.vq_code_sums(z, bad, 4)
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
            fastgen.ops.vq_ema_update(z, bad, torch.zeros(4), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):  # the kernel checks too
        torch.ops.fastgen.vq_code_sums_native(z, torch.tensor([0, 1, 2, 7, 1]), 4)


def test_bad_inputs_name_the_argument():
    z, e = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="codebook has D=4 but z has D=3"):
        fastgen.ops.vq_quantize(z, torch.randn(5, 4))
    with pytest.raises(TypeError, match="z must be float16"):
        fastgen.ops.vq_quantize(z.int(), e)
    with pytest.raises(ValueError, match=r"indices must be an int64 tensor of shape \(4,\)"):
        fastgen.ops.vq_code_sums(z, torch.zeros(4, dtype=torch.int32), 5)
    with pytest.raises(ValueError, match="num_codes must be a positive int"):
        fastgen.ops.vq_code_sums(z, torch.zeros(4, dtype=torch.long), 0)
    idx = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"cluster_size must have shape \(5,\)"):
        fastgen.ops.vq_ema_update(z, idx, torch.zeros(4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="embed_sum has D=2 but z has D=3"):
        fastgen.ops.vq_ema_update(z, idx, torch.zeros(5), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="embed_sum is updated in place and must be contiguous"):
        fastgen.ops.vq_ema_update(z, idx, torch.zeros(5), torch.zeros(3, 5).t())
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        fastgen.ops.vq_ema_update(z, idx, torch.zeros(5), torch.zeros(5, 3), decay=1.5)
    from fastgen.kernels import vq as triton_vq

    with pytest.raises(TypeError, match="triton kernels take float16, bfloat16 or float32"):
        triton_vq.vq_quantize(z.double(), e.double())


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    z, e = torch.randn(6, 3, device=device), torch.randn(5, 3, device=device)
    idx = torch.tensor([0, 4, 1, 1, 3, 0], device=device)
    cluster_size, embed_sum = torch.ones(5, device=device), torch.ones(5, 3, device=device)
    return [("vq_quantize_native", (z, e, 0.25, True), "z"),
            ("vq_code_sums_native", (z, idx, 5), "z"),
            ("vq_ema_update_native", (z, idx, cluster_size, embed_sum, 0.99, 1e-5), "z")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)


def _backward_args(device):
    z, e = torch.randn(6, 3, device=device), torch.randn(5, 3, device=device)
    idx = torch.tensor([0, 4, 1, 1, 3, 0], device=device)
    return (torch.randn_like(z), torch.ones((), device=device), z, e, idx, 0.25, True)


def _check_backward_devices(device, other):
    """vq_quantize_backward_native with one argument on `other`: grad_loss gets
    _check_quantize_backward's one message for its size and device, the others the common
    "<arg> is on <other> but z is on <device>" (conftest.check_native_devices)."""
    op = _native_op("vq_quantize_backward_native")
    args = _backward_args(device)
    z = args[2]
    for i, name in ((0, "grad_zq"), (1, "grad_loss"), (3, "codebook"), (4, "indices")):
        moved = list(args)
        moved[i] = args[i].to(other)
        if name == "grad_loss":
            match = rf"fastgen: grad_loss must be a one-element tensor on {z.device}, got shape \(\) on {moved[i].device}"
        else:
            match = f"fastgen: {name} is on {moved[i].device} but z is on {z.device}"
        with pytest.raises(ValueError, match=match):
            if z.device.type == "cpu":
                op.redispatch(CPU_KEYS, *moved)
            else:
                op(*moved)


def test_native_quantize_backward_checks_devices():
    _check_backward_devices("cpu", "meta")


@pytest.mark.gpu
def test_native_quantize_backward_checks_devices_two_gpus():
    two_gpus()
    _check_backward_devices("cuda:1", "cuda:0")
    check_native_on_second_gpu("vq_quantize_backward_native", _backward_args("cuda:1"))
