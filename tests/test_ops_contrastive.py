"""Contrastive family: info_nce_loss on every backend against the plain-PyTorch reference
(gradients: torch autograd through the reference)."""
import math

import pytest
import torch

import fastgen
from fastgen.ops import reference
from fastgen.testing import assert_close, tolerance

from conftest import native_device_tests
from test_ops_gan import DTYPES, _assert_native_kernels_registered, _grads_close, _randn, _setup

NCE = "info_nce_loss"
# (N, D): one pair (one candidate per anchor), odd sizes, D > 128 (several Triton D chunks),
# 2N large enough for several native tiles
NCE_SHAPES = [(1, 4), (5, 7), (37, 20), (70, 130), (300, 64)]


def _nce_inputs(shape, dtype, device, seed=0):
    return (_randn(shape, dtype, device, seed, 1.0, True), _randn(shape, dtype, device, seed + 1, 1.0, True))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NCE_SHAPES, ids=str)
def test_info_nce_loss_matches_reference(device_backend, shape, dtype, temperature):
    device, backend = _setup(NCE, device_backend, dtype)
    if backend == "cuda_emu" and shape == NCE_SHAPES[-1]:
        pytest.skip("cuda_emu: (300, 64) is there for several CPU / Triton tiles; the CUDA kernels' "
                    "tile is 4096 rows, so on the CUDA model it takes no path (70, 130) does not")
    z1, z2 = _nce_inputs(shape, dtype, device)
    loss = fastgen.ops.info_nce_loss(z1, z2, temperature, backend=backend)
    loss_ref = reference.info_nce_loss(z1, z2, temperature)[0]
    assert loss.shape == () and loss.dtype == reference.math_dtype(dtype)
    # the loss is computed in the math dtype from inputs rounded to `dtype`: fp32 tolerance,
    # times 1/temperature (logits are s / temperature)
    rtol, atol = tolerance(reference.math_dtype(dtype))
    assert_close(loss, loss_ref, backend=backend, name="loss", rtol=rtol, atol=atol / temperature)
    grads = torch.autograd.grad(loss, (z1, z2))
    grads_ref = torch.autograd.grad(loss_ref, (z1, z2))
    _grads_close(grads, grads_ref, dtype, backend, ("dz1", "dz2"))


def test_info_nce_loss_equals_the_plain_formula():
    """Against a per-anchor loop written straight from the SimCLR paper's l(i, j)."""
    z1, z2 = (t.detach() for t in _nce_inputs((6, 5), torch.float64, "cpu"))
    tau = 0.3
    z = torch.cat([z1, z2])
    total = 0.0
    for i in range(12):
        p = (i + 6) % 12
        sim = [float(torch.dot(z[i], z[k]) / (z[i].norm() * z[k].norm())) / tau for k in range(12)]
        denom = sum(math.exp(sim[k]) for k in range(12) if k != i)
        total += -math.log(math.exp(sim[p]) / denom)
    expected = torch.tensor(total / 12, dtype=torch.float64)
    for backend in ("reference", "cpu"):
        if fastgen.ops.REGISTRY[NCE].unavailable(backend, "cpu") is None:
            assert_close(fastgen.ops.info_nce_loss(z1, z2, tau, backend=backend), expected, backend=backend)


def test_info_nce_loss_gradcheck_fp64(device_backend):
    device, backend = _setup(NCE, device_backend, torch.float64)
    z1, z2 = _nce_inputs((5, 3), torch.float64, device)

    def f(a, b):
        return fastgen.ops.info_nce_loss(a, b, 0.4, backend=backend)

    assert torch.autograd.gradcheck(f, (z1, z2))


def test_info_nce_loss_zero_vector_and_non_contiguous(device_backend):
    device, backend = _setup(NCE, device_backend)
    base = _randn((16, 20), torch.float32, device, 0)
    z1 = base[:, ::2].detach().clone()  # (16, 10)
    z1[3] = 0.0  # a zero row: F.normalize's eps clamp
    z1 = z1.t().contiguous().t().detach().requires_grad_()  # column-major
    z2 = base[:, 1::2].detach().requires_grad_()
    assert not z1.is_contiguous() and not z2.is_contiguous()
    loss = fastgen.ops.info_nce_loss(z1, z2, 0.2, backend=backend)
    r1, r2 = (t.detach().contiguous().requires_grad_() for t in (z1, z2))
    loss_ref = reference.info_nce_loss(r1, r2, 0.2)[0]
    assert_close(loss, loss_ref, backend=backend, name="loss", atol=1e-4)
    for a, e in zip(torch.autograd.grad(loss, (z1, z2)), torch.autograd.grad(loss_ref, (r1, r2))):
        assert_close(a, e, backend=backend, name="grad", atol=1e-4)


def test_info_nce_loss_bad_inputs_name_the_argument():
    op = fastgen.ops.info_nce_loss
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="z2 has shape"):
        op(z, torch.randn(5, 3), 0.5)
    with pytest.raises(ValueError, match=r"z1 must have shape \(N, D\)"):
        op(torch.randn(4), torch.randn(4), 0.5)
    with pytest.raises(ValueError, match="at least one pair"):
        op(torch.randn(0, 3), torch.randn(0, 3), 0.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        op(z, z, 0.0)
    with pytest.raises(TypeError, match="z2 has dtype torch.float64 but z1 has torch.float32"):
        op(z, z.double(), 0.5)
    with pytest.raises(TypeError, match="z1 must be a torch.Tensor"):
        op([1.0], z, 0.5)
    if fastgen.ops.REGISTRY[NCE].unavailable("cpu", "cpu") is None:
        with pytest.raises(ValueError, match="temperature must be positive"):
            torch.ops.fastgen.info_nce_loss_native(z, z, -1.0)


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    z1, z2 = torch.randn(3, 5, device=device), torch.randn(3, 5, device=device)
    return [("info_nce_loss_native", (z1, z2, 0.5), "z1"),
            ("info_nce_loss_backward_native", (torch.ones((), device=device), z1, z2, torch.randn(6, device=device), 0.5),
             "z1")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)


def test_every_contrastive_op_has_native_kernels_registered():
    _assert_native_kernels_registered(("info_nce_loss", "info_nce_loss_backward"))


def test_info_nce_loss_reference_backward_matches_autograd():
    z1, z2 = _nce_inputs((6, 4), torch.float64, "cpu")
    z1.data[2] = 0.0  # the clamped-norm branch
    loss, lse = reference.info_nce_loss(z1, z2, 0.25)
    expected = torch.autograd.grad(loss * 1.7, (z1, z2))
    actual = reference.info_nce_loss_backward(torch.tensor(1.7, dtype=torch.float64), z1, z2, lse, 0.25)
    for a, e in zip(actual, expected):
        assert_close(a, e)
