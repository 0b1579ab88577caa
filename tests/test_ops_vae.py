"""gaussian_reparam_kl on every backend against the plain-PyTorch reference."""
import pytest
import torch

import fastgen
from fastgen.ops import reference
from fastgen.testing import assert_close

from conftest import native_device_tests, require_backend

OP = "gaussian_reparam_kl"
# odd sizes, a 1-D batch, >2-D samples, and samples long enough to span several chunks of
# the CPU (16384 elements) and Triton (8192) kernels
SHAPES = [(1, 1), (5, 7), (17,), (3, 5, 7, 9), (2, 3000), (3, 40001)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _inputs(shape, dtype, device, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g, dtype=torch.float64)
    logvar = torch.randn(shape, generator=g, dtype=torch.float64).mul_(1.5)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    out = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad) for t in (mu, logvar, eps)]
    return out


def _setup(device_backend):
    device, backend = device_backend
    require_backend(OP, device, backend)
    return device, backend


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_match_reference(device_backend, shape, dtype):
    device, backend = _setup(device_backend)
    mu, logvar, eps = _inputs(shape, dtype, device, requires_grad=True)
    z, kl = fastgen.ops.gaussian_reparam_kl(mu, logvar, eps, backend=backend)
    z_ref, kl_ref = reference.gaussian_reparam_kl(mu, logvar, eps)
    assert z.dtype == dtype and kl.dtype == reference.math_dtype(dtype) and kl.shape == (shape[0],)
    assert_close(z, z_ref, dtype=dtype, backend=backend, name="z")
    # kl sums many terms: allow the per-element tolerance times the sample size's sqrt
    n = max(1, z.numel() // shape[0])
    rtol, atol = fastgen.testing.tolerance(dtype)
    assert_close(kl, kl_ref, dtype=dtype, backend=backend, name="kl", atol=atol * n ** 0.5)

    g = torch.Generator().manual_seed(1)
    gz = torch.randn(shape, generator=g).to(device, dtype)
    gkl = torch.randn(shape[0], generator=g).to(device, kl.dtype)
    grads = torch.autograd.grad((z, kl), (mu, logvar), (gz, gkl))
    # the reference's gradients come from torch autograd through its forward formula
    grads_ref = torch.autograd.grad((z_ref, kl_ref), (mu, logvar), (gz, gkl))
    for name, a, e in zip(("d_mu", "d_logvar"), grads, grads_ref):
        assert_close(a, e, dtype=dtype, backend=backend, name=name)


def test_reference_backward_matches_autograd():
    mu, logvar, eps = _inputs((4, 3, 5), torch.float64, "cpu", requires_grad=True)
    z, kl = reference.gaussian_reparam_kl(mu, logvar, eps)
    gz, gkl = torch.randn_like(z), torch.randn_like(kl)
    expected = torch.autograd.grad((z, kl), (mu, logvar), (gz, gkl))
    actual = reference.gaussian_reparam_kl_backward(gz, gkl, mu, logvar, eps)
    for a, e in zip(actual, expected):
        assert_close(a, e)


def test_gradcheck_fp64(device_backend):
    device, backend = _setup(device_backend)
    mu, logvar, eps = _inputs((3, 4), torch.float64, device, requires_grad=True)

    def f(mu, logvar, eps):
        return fastgen.ops.gaussian_reparam_kl(mu, logvar, eps, backend=backend)

    assert torch.autograd.gradcheck(f, (mu, logvar, eps))


def test_grad_through_one_output_only(device_backend):
    device, backend = _setup(device_backend)
    mu, logvar, eps = _inputs((3, 6), torch.float32, device, requires_grad=True)
    mu_r, lv_r, eps_r = (t.detach().clone().requires_grad_() for t in (mu, logvar, eps))
    z, kl = fastgen.ops.gaussian_reparam_kl(mu, logvar, eps, backend=backend)
    kl.sum().backward()
    reference.gaussian_reparam_kl(mu_r, lv_r, eps_r)[1].sum().backward()
    for a, e in ((mu, mu_r), (logvar, lv_r), (eps, eps_r)):
        expected = e.grad if e.grad is not None else torch.zeros_like(e)  # kl does not use eps
        assert_close(a.grad, expected, backend=backend)


@pytest.mark.parametrize("shape", [(0, 5), (0,), (3, 0), (2, 0, 4)], ids=str)
def test_empty(device_backend, shape):
    device, backend = _setup(device_backend)
    mu, logvar, eps = _inputs(shape, torch.float32, device, requires_grad=True)
    z, kl = fastgen.ops.gaussian_reparam_kl(mu, logvar, eps, backend=backend)
    assert z.shape == shape and kl.shape == (shape[0],)
    assert_close(kl, torch.zeros(shape[0], device=device), backend=backend, name="kl")
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == shape and logvar.grad.shape == shape


def test_non_contiguous(device_backend):
    device, backend = _setup(device_backend)
    base = [t.detach() for t in _inputs((9, 12), torch.float32, device)]
    views = [b.t()[:, 1::2] for b in base]  # (12, 9) transposed, then every other column
    assert not any(v.is_contiguous() for v in views)
    leaves = [v.detach().requires_grad_() for v in views]  # leaves keep the views' strides
    z, kl = fastgen.ops.gaussian_reparam_kl(*leaves, backend=backend)
    z_ref, kl_ref = reference.gaussian_reparam_kl(*[v.contiguous() for v in views])
    assert_close(z, z_ref, backend=backend, name="z")
    assert_close(kl, kl_ref, backend=backend, name="kl")
    gz = torch.randn(z.shape, device=device).t().contiguous().t()  # non-contiguous grad too
    torch.autograd.backward((z, kl), (gz, torch.ones_like(kl)))
    ref_leaves = [v.contiguous().requires_grad_() for v in views]
    z2, kl2 = reference.gaussian_reparam_kl(*ref_leaves)
    torch.autograd.backward((z2, kl2), (gz, torch.ones_like(kl2)))
    for a, e in zip(leaves, ref_leaves):
        assert_close(a.grad, e.grad, backend=backend, name="grad")


def test_non_finite_inputs_propagate(device_backend):
    device, backend = _setup(device_backend)
    mu, logvar, eps = (t.detach() for t in _inputs((3, 5), torch.float32, device))
    mu[0, 1] = float("nan")
    logvar[1, 2] = float("inf")
    eps[2, 3] = float("-inf")
    z, kl = fastgen.ops.gaussian_reparam_kl(mu, logvar, eps, backend=backend)
    z_ref, kl_ref = reference.gaussian_reparam_kl(mu, logvar, eps)
    assert_close(z, z_ref, backend=backend, name="z")
    assert_close(kl, kl_ref, backend=backend, name="kl")


# -- bad input -------------------------------------------------------------------------------

def test_bad_inputs_name_the_argument():
    op = fastgen.ops.gaussian_reparam_kl
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="logvar has shape"):
        op(x, torch.randn(3, 5), x)
    with pytest.raises(TypeError, match="mu must be float16, bfloat16, float32 or float64"):
        op(torch.ones(3, 4, dtype=torch.int64), x, x)
    with pytest.raises(TypeError, match="eps has dtype torch.float64 but mu has torch.float32"):
        op(x, x, x.double())
    with pytest.raises(ValueError, match="eps is on meta but mu is on cpu"):
        op(x, x, torch.empty(3, 4, device="meta"))
    with pytest.raises(ValueError, match="leading batch dim"):
        op(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TypeError, match="logvar must be a torch.Tensor"):
        op(x, [1.0], x)
    with pytest.raises(ValueError, match="backend must be one of"):
        op(x, x, x, backend="tpu")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run cpu tensors"):
        op(x, x, x, backend="cuda")


def test_bad_inputs_to_backward():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"grad_kl must have shape \(3,\)"):
        torch.ops.fastgen.gaussian_reparam_kl_backward(x, torch.ones(4), x, x, x)


def test_native_kernels_check_their_arguments():
    """Direct callers of the C++ kernels get a clear error too, not a crash."""
    if fastgen.ops.REGISTRY[OP].unavailable("cpu", "cpu"):
        pytest.skip("native extension not built")
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="logvar has shape"):
        torch.ops.fastgen.gaussian_reparam_kl_native(x, torch.randn(4, 3), x)
    with pytest.raises(TypeError, match="mu must be float16, bfloat16, float32 or float64, got torch.int32"):
        i = torch.ones(3, 4, dtype=torch.int32)
        torch.ops.fastgen.gaussian_reparam_kl_native(i, i, i)


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    x = torch.randn(3, 4, device=device)
    return [("gaussian_reparam_kl_native", (x, x, x), "mu"),
            ("gaussian_reparam_kl_backward_native", (x, torch.ones(3, device=device), x, x, x), "mu")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)


# -- GPU only: big tensors whose offsets pass 2**31 ------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_offsets_past_int32(backend):
    require_backend(OP, "cuda", backend)
    rows, cols = 2, 2**30 + 7  # 2**31 + 14 elements: the second row starts past 2**31 - 1
    try:
        mu = torch.randn(rows, cols, device="cuda", dtype=torch.float16)
        logvar = torch.randn_like(mu)
        eps = torch.randn_like(mu)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for a 2**31-element test")
    z, kl = fastgen.ops.gaussian_reparam_kl(mu, logvar, eps, backend=backend)
    tail = slice(cols - 4096, cols)
    z_ref, _ = reference.gaussian_reparam_kl(mu[:, tail], logvar[:, tail], eps[:, tail])
    assert_close(z[:, tail], z_ref, dtype=torch.float16, backend=backend, name="z tail")
    kl_ref = torch.stack([reference.gaussian_reparam_kl(mu[r:r + 1], logvar[r:r + 1], eps[r:r + 1])[1][0]
                          for r in range(rows)])
    assert_close(kl, kl_ref, rtol=1e-4, atol=1.0, backend=backend, name="kl")
