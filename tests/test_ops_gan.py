"""GAN / SimCLR family: bias_act, group_norm_silu, info_nce_loss on every backend against the
plain-PyTorch reference (gradients: torch autograd through the reference)."""
import math

import pytest
import torch

import fastgen
from fastgen.nn import GroupNormSiLU
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


# -- group_norm_silu ---------------------------------------------------------------------------

GN = "group_norm_silu"
# (shape, groups): NCHW, (N, C) with no spatial dims, 1-D and 3-D spatial, one group, one
# channel per group, a plane longer than a Triton / CUDA block
GN_SHAPES = [((2, 6, 5, 3), 3), ((3, 8), 4), ((2, 12, 7), 1), ((2, 4, 3, 2, 5), 2), ((3, 5, 4, 4), 5),
             ((1, 4, 37, 41), 2)]


def _gn_inputs(shape, dtype, device, affine=True, seed=0):
    x = _randn(shape, dtype, device, seed, 2.0, True)
    x.data += 0.5  # a non-zero mean
    w = _randn((shape[1],), dtype, device, seed + 1, 1.0, True) if affine else None
    b = _randn((shape[1],), dtype, device, seed + 2, 1.0, True) if affine else None
    return x, w, b


@pytest.mark.parametrize("act", [True, False], ids=["silu", "no_act"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape_groups", GN_SHAPES, ids=str)
def test_group_norm_silu_matches_reference(device_backend, shape_groups, dtype, act):
    device, backend = _setup(GN, device_backend, dtype)
    shape, groups = shape_groups
    x, w, b = _gn_inputs(shape, dtype, device)
    y = fastgen.ops.group_norm_silu(x, w, b, groups, 1e-5, act, backend=backend)
    y_ref = reference.group_norm_silu(x, w, b, groups, 1e-5, act)[0]
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, y_ref, dtype=dtype, backend=backend, name="y")
    g = _randn(shape, dtype, device, 5)
    grads = torch.autograd.grad(y, (x, w, b), g)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), g)
    per_channel = max(1, x.numel() // shape[1])
    # dx is a difference of group means (cancellation): scale atol with the group size's sqrt
    group = max(1, x.numel() // (shape[0] * groups))
    _grads_close(grads, grads_ref, dtype, backend, ("dx", "dweight", "dbias"),
                 [group ** 0.5, per_channel ** 0.5, per_channel ** 0.5])


def test_group_norm_silu_matches_nn_modules_and_closed_form_backward():
    """The reference is nn.GroupNorm + nn.SiLU, and its closed-form backward is autograd's."""
    for act in (True, False):
        x, w, b = _gn_inputs((3, 6, 5, 4), torch.float64, "cpu")
        gn = torch.nn.GroupNorm(3, 6, eps=1e-5).double()
        with torch.no_grad():
            gn.weight.copy_(w)
            gn.bias.copy_(b)
        expected = torch.nn.functional.silu(gn(x)) if act else gn(x)
        y, mean, rstd = reference.group_norm_silu(x, w, b, 3, 1e-5, act)
        assert_close(y, expected)
        g = torch.randn_like(y)
        want = torch.autograd.grad(expected, (x, gn.weight, gn.bias), g)
        got = reference.group_norm_silu_backward(g, x, w, b, mean, rstd, 3, act)
        for a, e in zip(got, want):
            assert_close(a, e)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_silu_gradcheck_fp64(device_backend, affine):
    device, backend = _setup(GN, device_backend, torch.float64)
    x, w, b = _gn_inputs((2, 4, 3, 3), torch.float64, device, affine)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def f(*ts):
        x, w, b = ts if affine else (ts[0], None, None)
        return fastgen.ops.group_norm_silu(x, w, b, 2, backend=backend)

    assert torch.autograd.gradcheck(f, inputs, fast_mode=emulated(device, backend))


@pytest.mark.parametrize("needs", ["x,w,b", "x", "w,b", "x-no-affine"])
def test_group_norm_silu_eager_gradient_runs_the_cpp_node(needs):
    """Eager calls needing a gradient run the native op's C++ autograd node (native_autograd):
    the same gradients as the reference, for whichever inputs require grad."""
    x, w, b = (t.detach() for t in _gn_inputs((2, 6, 5, 3), torch.float64, "cpu"))
    if needs == "x-no-affine":
        w = b = None
    for name, t in (("x", x), ("w", w), ("b", b)):
        if t is not None and name in needs:
            t.requires_grad_()
    fastgen.ops.group_norm_silu(x.detach(), None, None, 3, backend="cpu")  # resolves the kernel
    y = fastgen.ops.group_norm_silu(x, w, b, 3, backend="cpu")
    assert "GroupNormSiluFunction" in y.grad_fn.name(), y.grad_fn.name()
    y_ref = reference.group_norm_silu(x, w, b, 3, 1e-5, True)[0]
    assert_close(y, y_ref)
    wanted = [t for t in (x, w, b) if t is not None and t.requires_grad]
    g = torch.randn_like(y)
    for a, e in zip(torch.autograd.grad(y, wanted, g), torch.autograd.grad(y_ref, wanted, g)):
        assert_close(a, e)
    # a bad argument on this path still gets the Python checks' words
    with pytest.raises(ValueError, match="num_groups must be >= 1 and divide"):
        fastgen.ops.group_norm_silu(x, w, b, 4, backend="cpu")


def test_group_norm_silu_statistics(device_backend):
    device, backend = _setup(GN, device_backend)
    x, w, b = (t.detach() for t in _gn_inputs((3, 8, 6), torch.float32, device))
    _, mean, rstd = torch.ops.fastgen.group_norm_silu(x, w, b, 4, 1e-5, True, backend=backend)
    _, mean_ref, rstd_ref = reference.group_norm_silu(x, w, b, 4, 1e-5, True)
    assert mean.dtype == torch.float32 and mean.shape == (3, 4)
    assert_close(mean, mean_ref, backend=backend, name="mean")
    assert_close(rstd, rstd_ref, backend=backend, name="rstd")


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 0), (0, 4)], ids=str)
def test_group_norm_silu_empty(device_backend, shape):
    device, backend = _setup(GN, device_backend)
    x = torch.zeros(shape, device=device, requires_grad=True)
    w = torch.ones(4, device=device, requires_grad=True)
    b = torch.zeros(4, device=device, requires_grad=True)
    y = fastgen.ops.group_norm_silu(x, w, b, 2, backend=backend)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape
    assert_close(w.grad, torch.zeros_like(w), backend=backend, name="dweight")
    assert_close(b.grad, torch.zeros_like(b), backend=backend, name="dbias")


def test_group_norm_silu_non_contiguous(device_backend):
    device, backend = _setup(GN, device_backend)
    base = _randn((4, 8, 6, 5), torch.float32, device, 0)
    x = base.to(memory_format=torch.channels_last).detach().requires_grad_()  # channels_last
    x2 = base[:, :, ::2].detach().requires_grad_()  # strided
    w, b = (_randn((8,), torch.float32, device, s, 1.0, True) for s in (1, 2))
    for xi in (x, x2):
        assert not xi.is_contiguous()
        y = fastgen.ops.group_norm_silu(xi, w, b, 4, backend=backend)
        xr = xi.detach().contiguous().requires_grad_()
        y_ref = reference.group_norm_silu(xr, w, b, 4)[0]
        assert_close(y, y_ref, backend=backend, name="y")
        g = torch.randn_like(y)
        assert_close(torch.autograd.grad(y, xi, g)[0], torch.autograd.grad(y_ref, xr, g)[0], backend=backend,
                     name="dx", atol=1e-4)


def test_group_norm_silu_dweight_is_deterministic(device_backend):
    device, backend = _setup(GN, device_backend)
    x, w, b = (t.detach() for t in _gn_inputs((9, 8, 5, 5), torch.float32, device))
    _, mean, rstd = torch.ops.fastgen.group_norm_silu(x, w, b, 4, 1e-5, True, backend=backend)
    g = _randn(x.shape, torch.float32, device, 3)
    runs = [torch.ops.fastgen.group_norm_silu_backward(g, x, w, b, mean, rstd, 4, True, backend=backend)
            for _ in range(3)]
    assert all(torch.equal(runs[0][i], r[i]) for r in runs[1:] for i in range(3))


def test_group_norm_silu_bad_inputs_name_the_argument():
    op = fastgen.ops.group_norm_silu
    x = torch.randn(2, 6, 3)
    w = torch.ones(6)
    with pytest.raises(ValueError, match="num_groups must be >= 1 and divide the 6 channels"):
        op(x, w, w, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        op(x, torch.ones(5), w, 3)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        op(x, w, torch.ones(6, 1), 3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, \*\)"):
        op(torch.randn(6), None, None, 3)
    with pytest.raises(ValueError, match="eps must be a positive finite float"):
        op(x, w, w, 3, eps=0.0)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        op(torch.ones(2, 6, dtype=torch.int32), None, None, 3)
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        op(x, w, torch.empty(6, device="meta"), 3)
    with pytest.raises(ValueError, match="mean must be a"):
        torch.ops.fastgen.group_norm_silu_backward(x, x, w, w, torch.zeros(2, 2), torch.ones(2, 3), 3)


# -- info_nce_loss -----------------------------------------------------------------------------

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
    x, b = torch.randn(3, 4, device=device), torch.randn(4, device=device)
    xg, stats = torch.randn(2, 4, 3, device=device), torch.ones(2, 2, device=device)
    z1, z2 = torch.randn(3, 5, device=device), torch.randn(3, 5, device=device)
    return [("bias_act_native", (x, b, "leaky_relu", 0.2, 1.0, 1), "x"),
            ("bias_act_backward_native", (x, x, b, "leaky_relu", 0.2, 1.0, 1), "x"),
            ("group_norm_silu_native", (xg, b, b, 2, 1e-5, True), "x"),
            ("group_norm_silu_backward_native", (xg, xg, b, b, stats, stats, 2, True), "x"),
            ("info_nce_loss_native", (z1, z2, 0.5), "z1"),
            ("info_nce_loss_backward_native", (torch.ones((), device=device), z1, z2, torch.randn(6, device=device), 0.5),
             "z1")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)


def test_every_gan_op_has_native_kernels_registered():
    """The C++ schemas and kernels exist for every op (CUDA ones where the build has CUDA)."""
    from fastgen import _ext
    if _ext.NATIVE is None:
        pytest.skip("native extension not built")
    for name in ("bias_act", "bias_act_backward", "group_norm_silu", "group_norm_silu_backward",
                 "info_nce_loss", "info_nce_loss_backward"):
        assert _ext.has_kernel(f"fastgen::{name}_native", "CPU"), name
        if _ext.WITH_CUDA:
            assert _ext.has_kernel(f"fastgen::{name}_native", "CUDA"), name


def test_info_nce_loss_reference_backward_matches_autograd():
    z1, z2 = _nce_inputs((6, 4), torch.float64, "cpu")
    z1.data[2] = 0.0  # the clamped-norm branch
    loss, lse = reference.info_nce_loss(z1, z2, 0.25)
    expected = torch.autograd.grad(loss * 1.7, (z1, z2))
    actual = reference.info_nce_loss_backward(torch.tensor(1.7, dtype=torch.float64), z1, z2, lse, 0.25)
    for a, e in zip(actual, expected):
        assert_close(a, e)


# -- GroupNormSiLU ------------------------------------------------------------------

@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_silu_module_is_a_drop_in(affine):
    torch.manual_seed(0)
    unfused = torch.nn.Sequential(torch.nn.GroupNorm(4, 12, eps=1e-4, affine=affine), torch.nn.SiLU())
    if affine:
        with torch.no_grad():
            unfused[0].weight.normal_()
            unfused[0].bias.normal_()
    fused = GroupNormSiLU(4, 12, eps=1e-4, affine=affine)
    fused.load_state_dict(unfused[0].state_dict())  # same keys: loads strictly
    assert list(fused.state_dict()) == list(unfused[0].state_dict())
    x = torch.randn(3, 12, 5, 6, requires_grad=True)
    y, y_ref = fused(x), unfused(x)
    assert_close(y, y_ref, name="y")
    g = torch.randn_like(y)
    params = list(fused.parameters())
    ref_params = list(unfused.parameters())
    grads = torch.autograd.grad(y, [x] + params, g)
    grads_ref = torch.autograd.grad(y_ref, [x] + ref_params, g)
    for a, e in zip(grads, grads_ref):
        assert_close(a, e, name="grad", atol=1e-4)
    other = GroupNormSiLU.from_group_norm(unfused[0])
    assert_close(other(x), y_ref, name="from_group_norm")


def test_group_norm_silu_module_rejects_bad_groups():
    with pytest.raises(ValueError, match="must be >= 1 and divide num_channels"):
        GroupNormSiLU(5, 12)
