"""GAN family: bias_act on every backend against the plain-PyTorch reference (gradients: torch
autograd through the reference). group_norm_silu: test_ops_norm.py; info_nce_loss:
test_ops_contrastive.py (both use the helpers here)."""
import pytest
import torch

import fastgen
from fastgen.ops import reference
from fastgen.testing import assert_close, tolerance

from conftest import emulated, native_device_tests, require_backend

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
ACTS = ["leaky_relu", "relu", "silu", "gelu"]


def _setup(op, device_backend, dtype=torch.float32):
    device, backend = device_backend
    require_backend(op, device, backend)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bf16 arithmetic is wrong under the Triton interpreter: GPU only "
                    "(docs/design.md, 'Limits of the Triton interpreter')")
    return device, backend


def _randn(shape, dtype, device, seed, scale=1.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def _grads_close(actual, expected, dtype, backend, names, atol_scale=None):
    for name, a, e, s in zip(names, actual, expected, atol_scale or [1.0] * len(names)):
        rtol, atol = tolerance(dtype)
        assert_close(a, e, dtype=dtype, backend=backend, name=name, atol=atol * s)


# -- bias_act ----------------------------------------------------------------------------------

BIAS_ACT = "bias_act"
# (shape, dim): a linear layer's (N, C), conv maps, a channel dim last / first / inner, a 1-D
# tensor, planes long enough to span several CPU flush blocks
BIAS_ACT_SHAPES = [((7, 33), 1), ((3, 5, 7, 9), 1), ((4, 6, 5), -1), ((5, 3), 0), ((13,), 0),
                   ((2, 3, 2, 1111), 1), ((67, 300), 1)]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_dim", BIAS_ACT_SHAPES, ids=str)
def test_bias_act_matches_reference(device_backend, shape_dim, dtype, act):
    device, backend = _setup(BIAS_ACT, device_backend, dtype)
    shape, dim = shape_dim
    x = _randn(shape, dtype, device, 0, 2.0, True)
    b = _randn((shape[dim],), dtype, device, 1, 1.0, True)
    y = fastgen.ops.bias_act(x, b, act, 0.1, 1.7, dim, backend=backend)
    y_ref = reference.bias_act(x, b, act, 0.1, 1.7, dim)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, y_ref, dtype=dtype, backend=backend, name="y")
    g = _randn(shape, dtype, device, 2)
    grads = torch.autograd.grad(y, (x, b), g)
    grads_ref = torch.autograd.grad(y_ref, (x, b), g)
    # dbias sums numel / C terms
    n = max(1, x.numel() // shape[dim])
    _grads_close(grads, grads_ref, dtype, backend, ("dx", "dbias"), [1.0, n ** 0.5])


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_without_bias(device_backend, act):
    device, backend = _setup(BIAS_ACT, device_backend)
    x = _randn((5, 6, 7), torch.float32, device, 0, 2.0, True)
    y = fastgen.ops.bias_act(x, None, act, backend=backend)
    y_ref = reference.bias_act(x, None, act)
    assert_close(y, y_ref, backend=backend, name="y")
    g = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0], backend=backend, name="dx")


def test_bias_act_reference_backward_matches_autograd():
    for act in ACTS:
        x = _randn((4, 3, 5), torch.float64, "cpu", 0, 2.0, True)
        b = _randn((3,), torch.float64, "cpu", 1, 1.0, True)
        y = reference.bias_act(x, b, act, 0.3, 1.5)
        g = torch.randn_like(y)
        expected = torch.autograd.grad(y, (x, b), g)
        actual = reference.bias_act_backward(g, x, b, act, 0.3, 1.5)
        for a, e in zip(actual, expected):
            assert_close(a, e, name=act)


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_gradcheck_fp64(device_backend, act):
    device, backend = _setup(BIAS_ACT, device_backend, torch.float64)
    x = _randn((3, 4, 5), torch.float64, device, 0, 2.0, True)
    b = _randn((4,), torch.float64, device, 1, 1.0, True)

    def f(x, b):
        return fastgen.ops.bias_act(x, b, act, 0.2, 1.3, backend=backend)

    # on an emulator every evaluation is a slow kernel launch: fast mode checks random
    # projections of the Jacobian instead of every column
    fast = emulated(device, backend)
    assert torch.autograd.gradcheck(f, (x, b), fast_mode=fast)
    # second order: the backward op's own autograd (zero curvature for relu / leaky_relu)
    assert torch.autograd.gradgradcheck(f, (x, b), fast_mode=fast)


@pytest.mark.parametrize("act", ["leaky_relu", "relu"])
def test_bias_act_gradient_penalty_matches_reference(device_backend, act):
    """WGAN-GP: || d critic / d x ||, differentiated again w.r.t. the critic's parameters."""
    device, backend = _setup(BIAS_ACT, device_backend)

    def penalty(fn):
        torch.manual_seed(0)
        w1 = torch.randn(6, 9, device=device, dtype=torch.float64, requires_grad=True)
        b1 = torch.randn(9, device=device, dtype=torch.float64, requires_grad=True)
        w2 = torch.randn(9, 1, device=device, dtype=torch.float64)
        x = torch.randn(8, 6, device=device, dtype=torch.float64, requires_grad=True)
        out = fn(x @ w1, b1) @ w2
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        gp = ((gx.norm(dim=1) - 1) ** 2).mean()
        # b1 reaches the penalty only through the activation's slope: zero (unused) gradient
        return gp, torch.autograd.grad(gp, (w1, b1), allow_unused=True, materialize_grads=True)

    gp, grads = penalty(lambda h, b: fastgen.ops.bias_act(h, b, act, backend=backend))
    gp_ref, grads_ref = penalty(lambda h, b: reference.bias_act(h, b, act))
    assert_close(gp, gp_ref, backend=backend, name="penalty")
    for a, e in zip(grads, grads_ref):
        assert_close(a, e, backend=backend, name="d penalty")
    assert float(grads[0].abs().sum()) > 0  # the penalty really reaches the weights


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (2, 4, 0)], ids=str)
def test_bias_act_empty(device_backend, shape):
    device, backend = _setup(BIAS_ACT, device_backend)
    x = torch.zeros(shape, device=device, requires_grad=True)
    b = torch.randn(shape[1], device=device, requires_grad=True)
    y = fastgen.ops.bias_act(x, b, "silu", backend=backend)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape
    assert_close(b.grad, torch.zeros_like(b), backend=backend, name="dbias")


def test_bias_act_non_contiguous(device_backend):
    device, backend = _setup(BIAS_ACT, device_backend)
    base = _randn((10, 12, 6), torch.float32, device, 0)
    x = base.transpose(0, 2)[:, ::2].detach().requires_grad_()  # (6, 6, 10), strided
    bbase = _randn((12,), torch.float32, device, 1)
    b = bbase[::2].detach().requires_grad_()
    assert not x.is_contiguous() and not b.is_contiguous()
    y = fastgen.ops.bias_act(x, b, "gelu", backend=backend)
    xr, br = x.detach().contiguous().requires_grad_(), b.detach().contiguous().requires_grad_()
    y_ref = reference.bias_act(xr, br, "gelu")
    assert_close(y, y_ref, backend=backend, name="y")
    g = torch.randn(y.shape, device=device).transpose(0, 1).contiguous().transpose(0, 1)
    y.backward(g)
    y_ref.backward(g)
    assert_close(x.grad, xr.grad, backend=backend, name="dx")
    assert_close(b.grad, br.grad, backend=backend, name="dbias", atol=1e-4)


def test_bias_act_non_finite_propagate(device_backend):
    device, backend = _setup(BIAS_ACT, device_backend)
    b = _randn((5,), torch.float32, device, 1)
    for act in ACTS:
        x = _randn((3, 5), torch.float32, device, 0)
        x[0, 1] = float("nan")
        if act != "gelu":  # torch's gelu(+inf) is NaN; the kernels return the limit, +inf
            x[1, 2], x[2, 3] = float("inf"), float("-inf")
        assert_close(fastgen.ops.bias_act(x, b, act, backend=backend), reference.bias_act(x, b, act),
                     backend=backend, name=act)


def test_bias_act_dbias_is_deterministic(device_backend):
    device, backend = _setup(BIAS_ACT, device_backend)
    x = _randn((300, 70), torch.float32, device, 0, 3.0)
    b = _randn((70,), torch.float32, device, 1)
    g = _randn((300, 70), torch.float32, device, 2)
    runs = [torch.ops.fastgen.bias_act_backward(g, x, b, "silu", backend=backend)[1] for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_bias_act_fp32_bias_under_half_x_is_cast():
    x = _randn((4, 3), torch.float16, "cpu", 0, 1.0, True)
    b = _randn((3,), torch.float32, "cpu", 1, 1.0, True)
    y = fastgen.ops.bias_act(x, b)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert b.grad.dtype == torch.float32 and x.grad.dtype == torch.float16


def test_bias_act_bad_inputs_name_the_argument():
    op = fastgen.ops.bias_act
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        op(x, torch.randn(3))
    with pytest.raises(ValueError, match="act must be one of"):
        op(x, torch.randn(4), "tanh")
    with pytest.raises(ValueError, match="dim must be in"):
        op(x, torch.randn(4), dim=2)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        op(torch.ones(3, 4, dtype=torch.int64), None)
    with pytest.raises(TypeError, match="bias must be a torch.Tensor"):
        op(x, [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        op(x, torch.empty(4, device="meta"))
    with pytest.raises(ValueError, match="alpha and gain must be finite"):
        op(x, None, gain=float("inf"))
    with pytest.raises(ValueError, match="at least one dim"):
        op(torch.tensor(1.0), None)
    with pytest.raises(ValueError, match="grad has shape"):
        torch.ops.fastgen.bias_act_backward(torch.randn(4, 3), x, None)


def test_bias_act_native_kernels_check_their_arguments():
    if fastgen.ops.REGISTRY[BIAS_ACT].unavailable("cpu", "cpu"):
        pytest.skip("native extension not built")
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="bias must have shape"):
        torch.ops.fastgen.bias_act_native(x, torch.randn(3), "relu", 0.2, 1.0, 1)
    with pytest.raises(ValueError, match="act must be one of"):
        torch.ops.fastgen.bias_act_native(x, None, "tanh", 0.2, 1.0, 1)


@pytest.mark.gpu
def test_bias_act_cuda_is_cuda_graph_capturable():
    """The CUDA C++ path makes no host copy and no host sync per call: forward and backward
    capture into one CUDA graph and replay on new values."""
    require_backend(BIAS_ACT, "cuda", "cuda")
    x, b = _randn((4, 8, 16, 16), torch.float32, "cuda", 0), _randn((8,), torch.float32, "cuda", 1)
    g = _randn((4, 8, 16, 16), torch.float32, "cuda", 2)

    def step():
        y = fastgen.ops.bias_act(x, b, "leaky_relu", 0.2, 2 ** 0.5, backend="cuda")
        return (y,) + tuple(torch.ops.fastgen.bias_act_backward(g, x, b, "leaky_relu", 0.2, 2 ** 0.5, 1,
                                                               backend="cuda"))

    step()  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for seed in (3, 4):
        x.copy_(_randn(x.shape, torch.float32, "cuda", seed))
        graph.replay()
        want = (reference.bias_act(x, b, "leaky_relu", 0.2, 2 ** 0.5),) + tuple(
            reference.bias_act_backward(g, x, b, "leaky_relu", 0.2, 2 ** 0.5))
        for name, got, ref in zip(("y", "dx", "dbias"), outs, want):
            assert_close(got, ref, backend="cuda", name=name, rtol=1e-4, atol=1e-4)


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    x, b = torch.randn(3, 4, device=device), torch.randn(4, device=device)
    return [("bias_act_native", (x, b, "leaky_relu", 0.2, 1.0, 1), "x"),
            ("bias_act_backward_native", (x, x, b, "leaky_relu", 0.2, 1.0, 1), "x")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)


def _assert_native_kernels_registered(names):
    """The C++ schemas and kernels exist for every op in `names` (CUDA ones where the build has CUDA)."""
    from fastgen import _ext
    if _ext.NATIVE is None:
        pytest.skip("native extension not built")
    for name in names:
        assert _ext.has_kernel(f"fastgen::{name}_native", "CPU"), name
        if _ext.WITH_CUDA:
            assert _ext.has_kernel(f"fastgen::{name}_native", "CUDA"), name


def test_every_gan_op_has_native_kernels_registered():
    _assert_native_kernels_registered(("bias_act", "bias_act_backward"))
