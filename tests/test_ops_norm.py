"""Normalization family: group_norm_silu and the GroupNormSiLU module on every backend against
the plain-PyTorch reference (gradients: torch autograd through the reference)."""
import pytest
import torch

import fastgen
from fastgen.nn import GroupNormSiLU
from fastgen.ops import reference
from fastgen.testing import assert_close

from conftest import emulated, native_device_tests
from test_ops_gan import DTYPES, _assert_native_kernels_registered, _grads_close, _randn, _setup

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
    with pytest.raises(ValueError, match=r"mean must be the forward's \(2, 3\) torch.float32 statistics, got \(2, 2\)"):
        torch.ops.fastgen.group_norm_silu_backward(x, x, w, w, torch.zeros(2, 2), torch.ones(2, 3), 3)


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    b = torch.randn(4, device=device)
    xg, stats = torch.randn(2, 4, 3, device=device), torch.ones(2, 2, device=device)
    return [("group_norm_silu_native", (xg, b, b, 2, 1e-5, True), "x"),
            ("group_norm_silu_backward_native", (xg, xg, b, b, stats, stats, 2, True), "x")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)


def test_every_norm_op_has_native_kernels_registered():
    _assert_native_kernels_registered(("group_norm_silu", "group_norm_silu_backward"))


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
