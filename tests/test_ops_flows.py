"""Normalizing-flow ops (affine_coupling, actnorm, flow_nll) on every backend against the
plain-PyTorch reference."""
import math

import pytest
import torch

import fastgen
from fastgen.ops import reference
from fastgen.testing import assert_close, tolerance

from conftest import DispatchLog, emulated, native_device_tests, require_backend

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SCALE_FNS = ["exp", "sigmoid", "tanh_exp", "atan_exp"]
# odd sizes, a 1-D batch, >2-D samples, and samples long enough to span several chunks of the
# CPU (16384 elements) and Triton (8192) kernels
SHAPES = [(1, 1), (5, 7), (17,), (3, 5, 7, 9), (3, 20001)]


def _setup(op, device_backend, dtype=None):
    device, backend = device_backend
    require_backend(op, device, backend)
    if dtype == torch.bfloat16 and backend == "triton" and device == "cpu" and _interpreter_bf16_broken():
        pytest.skip("bf16 arithmetic is wrong under the Triton interpreter: GPU only "
                    "(docs/design.md, 'Limits of the Triton interpreter')")
    return device, backend


_BF16_PROBE = {}


def _interpreter_bf16_broken():
    """The kernels widen bf16 to fp32 right after loading, which the interpreter gets right; the
    skip above only applies if this probe of that exact path ever fails."""
    if "broken" not in _BF16_PROBE:
        x = torch.linspace(-3, 3, 64).to(torch.bfloat16).reshape(2, 32)
        y, _ = fastgen.ops.affine_coupling(x, x, x, backend="triton")
        y_ref, _ = reference.affine_coupling(x, x, x)
        _BF16_PROBE["broken"] = not torch.equal(y, y_ref)
    return _BF16_PROBE["broken"]


def _randn(shape, dtype, device, seed, scale=1.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64).mul_(scale)
    return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def _sum_atol(dtype, n):
    """A per-sample sum of n terms: the element tolerance grown by sqrt(n)."""
    return tolerance(dtype)[1] * max(1, n) ** 0.5


# -- affine coupling ----------------------------------------------------------------------------

COUPLING = "affine_coupling"


def _coupling_inputs(shape, dtype, device, requires_grad=False):
    return [_randn(shape, dtype, device, seed, scale, requires_grad)
            for seed, scale in ((0, 1.0), (1, 1.0), (2, 1.5))]


def _check_coupling(shape, dtype, device, backend, scale_fn, inverse, clamp=1.7):
    x, t, r = _coupling_inputs(shape, dtype, device, requires_grad=True)
    y, logdet = fastgen.ops.affine_coupling(x, t, r, scale_fn, clamp, inverse, backend=backend)
    y_ref, logdet_ref = reference.affine_coupling(x, t, r, scale_fn, clamp, inverse)
    assert y.dtype == dtype and y.shape == x.shape
    assert logdet.dtype == reference.math_dtype(dtype) and logdet.shape == (shape[0],)
    assert_close(y, y_ref, dtype=dtype, backend=backend, name="y")
    n = x.numel() // max(1, shape[0])
    assert_close(logdet, logdet_ref, dtype=dtype, backend=backend, name="logdet",
                 atol=_sum_atol(dtype, n))
    gy = _randn(shape, dtype, device, 10)
    gl = _randn((shape[0],), logdet.dtype, device, 11)
    grads = torch.autograd.grad((y, logdet), (x, t, r), (gy, gl))
    # the reference's gradients come from torch autograd through its forward formula
    grads_ref = torch.autograd.grad((y_ref, logdet_ref), (x, t, r), (gy, gl))
    for name, a, e in zip(("d_x_b", "d_shift", "d_raw_scale"), grads, grads_ref):
        assert_close(a, e, dtype=dtype, backend=backend, name=name)


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("scale_fn", SCALE_FNS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_coupling_every_scale_fn_matches_reference(device_backend, dtype, scale_fn, inverse):
    device, backend = _setup(COUPLING, device_backend, dtype)
    _check_coupling((3, 5, 37), dtype, device, backend, scale_fn, inverse)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_coupling_shapes_match_reference(device_backend, shape, dtype):
    device, backend = _setup(COUPLING, device_backend, dtype)
    _check_coupling(shape, dtype, device, backend, "sigmoid", False)


def test_reference_coupling_backward_matches_autograd():
    for scale_fn in SCALE_FNS:
        for inverse in (False, True):
            x, t, r = _coupling_inputs((4, 3, 5), torch.float64, "cpu", requires_grad=True)
            y, logdet = reference.affine_coupling(x, t, r, scale_fn, 1.3, inverse)
            gy, gl = torch.randn_like(y), torch.randn_like(logdet)
            d_x, d_t, d_r = torch.autograd.grad((y, logdet), (x, t, r), (gy, gl))
            a_x, a_r = reference.affine_coupling_backward(gy, gl, x, t, r, scale_fn, 1.3, inverse)
            assert_close(a_x, d_x, name=f"{scale_fn} inverse={inverse} d_x")
            assert_close(a_r, d_r, name=f"{scale_fn} inverse={inverse} d_raw")
            assert_close(-a_x if inverse else gy, d_t, name=f"{scale_fn} inverse={inverse} d_shift")


@pytest.mark.parametrize("scale_fn", SCALE_FNS)
def test_coupling_gradcheck_fp64(device_backend, scale_fn):
    device, backend = _setup(COUPLING, device_backend)
    for inverse in (False, True):
        inputs = _coupling_inputs((3, 4), torch.float64, device, requires_grad=True)

        def f(x, t, r):
            return fastgen.ops.affine_coupling(x, t, r, scale_fn, 1.5, inverse, backend=backend)

        # the interpreter runs a kernel launch per evaluation: fast mode checks random projections
        assert torch.autograd.gradcheck(f, inputs, fast_mode=emulated(device, backend))


@pytest.mark.parametrize("scale_fn", SCALE_FNS)
def test_coupling_inverse_undoes_forward(device_backend, scale_fn):
    device, backend = _setup(COUPLING, device_backend)
    x, t, r = _coupling_inputs((4, 3, 11), torch.float64, device)
    y, ld = fastgen.ops.affine_coupling(x, t, r, scale_fn, backend=backend)
    x2, ld_inv = fastgen.ops.affine_coupling(y, t, r, scale_fn, inverse=True, backend=backend)
    assert_close(x2, x, name="inverse(forward(x))")
    assert_close(ld + ld_inv, torch.zeros_like(ld), name="logdet sum")


@pytest.mark.parametrize("scale_fn", SCALE_FNS)
def test_coupling_logdet_is_log_abs_det_jacobian(device_backend, scale_fn):
    """The map x_b -> y_b (shift and raw_scale fixed) has logdet = log|det dy/dx| per sample."""
    device, backend = _setup(COUPLING, device_backend)
    x, t, r = _coupling_inputs((2, 3, 2), torch.float64, device)
    for inverse in (False, True):
        for b in range(2):
            def f(xb, b=b):
                y, _ = fastgen.ops.affine_coupling(xb.unsqueeze(0), t[b:b + 1], r[b:b + 1], scale_fn,
                                                   1.5, inverse, backend=backend)
                return y.reshape(-1)

            jac = torch.autograd.functional.jacobian(f, x[b])
            _, logabsdet = torch.linalg.slogdet(jac.reshape(6, 6))
            _, ld = fastgen.ops.affine_coupling(x, t, r, scale_fn, 1.5, inverse, backend=backend)
            assert_close(ld[b], logabsdet, name=f"logdet[{b}] inverse={inverse}")


def test_coupling_grad_through_one_output_only(device_backend):
    device, backend = _setup(COUPLING, device_backend)
    for out in (0, 1):
        for inverse in (False, True):
            x, t, r = _coupling_inputs((3, 6), torch.float32, device, requires_grad=True)
            xr, tr, rr = (v.detach().clone().requires_grad_() for v in (x, t, r))
            fastgen.ops.affine_coupling(x, t, r, "tanh_exp", inverse=inverse,
                                        backend=backend)[out].sum().backward()
            reference.affine_coupling(xr, tr, rr, "tanh_exp", inverse=inverse)[out].sum().backward()
            for a, e in ((x, xr), (t, tr), (r, rr)):
                expected = e.grad if e.grad is not None else torch.zeros_like(e)
                actual = a.grad if a.grad is not None else torch.zeros_like(a)
                assert_close(actual, expected, backend=backend, name=f"grad via output {out}")


def test_coupling_grad_of_shift_only(device_backend):
    """Only shift needs a gradient: it comes from grad_y alone (forward) or -d x_b (inverse)."""
    device, backend = _setup(COUPLING, device_backend)
    for inverse in (False, True):
        x, r = _coupling_inputs((3, 6), torch.float32, device)[::2]
        t = _randn((3, 6), torch.float32, device, 5, requires_grad=True)
        y, _ = fastgen.ops.affine_coupling(x, t, r, inverse=inverse, backend=backend)
        (g,) = torch.autograd.grad(y, t, torch.ones_like(y))
        tr = t.detach().clone().requires_grad_()
        y_ref, _ = reference.affine_coupling(x, tr, r, inverse=inverse)
        (g_ref,) = torch.autograd.grad(y_ref, tr, torch.ones_like(y_ref))
        assert_close(g, g_ref, backend=backend, name="d_shift")


@pytest.mark.parametrize("shape", [(0, 5), (0,), (3, 0), (2, 0, 4)], ids=str)
def test_coupling_empty(device_backend, shape):
    device, backend = _setup(COUPLING, device_backend)
    x, t, r = _coupling_inputs(shape, torch.float32, device, requires_grad=True)
    for inverse in (False, True):
        y, logdet = fastgen.ops.affine_coupling(x, t, r, "sigmoid", inverse=inverse, backend=backend)
        assert y.shape == shape and logdet.shape == (shape[0],)
        assert_close(logdet, torch.zeros(shape[0], device=device), backend=backend, name="logdet")
        (y.sum() + logdet.sum()).backward()
        assert x.grad.shape == shape and t.grad.shape == shape and r.grad.shape == shape


def test_coupling_non_contiguous(device_backend):
    device, backend = _setup(COUPLING, device_backend)
    base = [v.detach() for v in _coupling_inputs((9, 12), torch.float32, device)]
    views = [b.t()[:, 1::2] for b in base]  # (12, 9) transposed, then every other column
    assert not any(v.is_contiguous() for v in views)
    for inverse in (False, True):
        leaves = [v.detach().requires_grad_() for v in views]  # leaves keep the views' strides
        y, ld = fastgen.ops.affine_coupling(*leaves, "atan_exp", inverse=inverse, backend=backend)
        ref_leaves = [v.contiguous().requires_grad_() for v in views]
        y_ref, ld_ref = reference.affine_coupling(*ref_leaves, "atan_exp", inverse=inverse)
        assert_close(y, y_ref, backend=backend, name="y")
        assert_close(ld, ld_ref, backend=backend, name="logdet")
        gy = torch.randn(y.shape, device=device).t().contiguous().t()  # non-contiguous grad too
        torch.autograd.backward((y, ld), (gy, torch.ones_like(ld)))
        torch.autograd.backward((y_ref, ld_ref), (gy, torch.ones_like(ld_ref)))
        for a, e in zip(leaves, ref_leaves):
            assert_close(a.grad, e.grad, backend=backend, name="grad")


def test_coupling_extreme_raw_scale(device_backend):
    """Saturating scales stay finite where the math is finite (sigmoid of -100 is tiny, not 0)."""
    device, backend = _setup(COUPLING, device_backend)
    r = torch.tensor([[-100.0, -30.0, 0.0, 30.0, 100.0]], device=device)
    x = torch.ones_like(r)
    for scale_fn in ("sigmoid", "tanh_exp", "atan_exp"):
        y, ld = fastgen.ops.affine_coupling(x, x, r, scale_fn, backend=backend)
        y_ref, ld_ref = reference.affine_coupling(x, x, r, scale_fn)
        assert torch.isfinite(ld).all(), scale_fn
        assert_close(y, y_ref, backend=backend, name=f"{scale_fn} y")
        assert_close(ld, ld_ref, backend=backend, name=f"{scale_fn} logdet")


def test_coupling_non_finite_inputs_propagate(device_backend):
    device, backend = _setup(COUPLING, device_backend)
    x, t, r = (v.detach() for v in _coupling_inputs((3, 5), torch.float32, device))
    x[0, 1] = float("nan")
    t[1, 2] = float("inf")
    r[2, 3] = float("nan")
    for scale_fn in SCALE_FNS:
        y, ld = fastgen.ops.affine_coupling(x, t, r, scale_fn, backend=backend)
        y_ref, ld_ref = reference.affine_coupling(x, t, r, scale_fn)
        assert_close(y, y_ref, backend=backend, name=f"{scale_fn} y")
        assert_close(ld, ld_ref, backend=backend, name=f"{scale_fn} logdet")


def test_coupling_bad_inputs_name_the_argument():
    op = fastgen.ops.affine_coupling
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="shift has shape"):
        op(x, torch.randn(3, 5), x)
    with pytest.raises(TypeError, match="x_b must be float16, bfloat16, float32 or float64"):
        op(torch.ones(3, 4, dtype=torch.int64), x, x)
    with pytest.raises(TypeError, match="raw_scale has dtype torch.float64 but x_b has torch.float32"):
        op(x, x, x.double())
    with pytest.raises(ValueError, match="raw_scale is on meta but x_b is on cpu"):
        op(x, x, torch.empty(3, 4, device="meta"))
    with pytest.raises(ValueError, match="leading batch dim"):
        op(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TypeError, match="shift must be a torch.Tensor"):
        op(x, [1.0], x)
    with pytest.raises(ValueError, match="scale_fn must be one of"):
        op(x, x, x, "softplus")
    with pytest.raises(TypeError, match="scale_fn must be a str"):
        op(x, x, x, 1)
    with pytest.raises(ValueError, match="clamp must be a finite float > 0"):
        op(x, x, x, "tanh_exp", 0.0)
    with pytest.raises(ValueError, match="clamp must be a finite float > 0"):
        op(x, x, x, "tanh_exp", float("inf"))
    with pytest.raises(TypeError, match="clamp must be a float"):
        op(x, x, x, "tanh_exp", "2")
    with pytest.raises(TypeError, match="inverse must be a bool"):
        op(x, x, x, "exp", 2.0, 1)
    with pytest.raises(ValueError, match="backend must be one of"):
        op(x, x, x, backend="tpu")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run cpu tensors"):
        op(x, x, x, backend="cuda")


def test_coupling_bad_inputs_to_backward():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"grad_logdet must have shape \(3,\)"):
        torch.ops.fastgen.affine_coupling_backward(x, torch.ones(4), x, x, x)
    with pytest.raises(ValueError, match="grad_y has shape"):
        torch.ops.fastgen.affine_coupling_backward(torch.ones(3, 5), torch.ones(3), x, x, x)


def test_coupling_native_kernels_check_their_arguments():
    """Direct callers of the C++ kernels get a clear error too, not a crash."""
    if fastgen.ops.REGISTRY[COUPLING].unavailable("cpu", "cpu"):
        pytest.skip("native extension not built")
    x = torch.randn(3, 4)
    native = torch.ops.fastgen.affine_coupling_native
    with pytest.raises(ValueError, match="shift has shape"):
        native(x, torch.randn(4, 3), x, "exp", 2.0, False)
    with pytest.raises(ValueError, match="scale_fn must be one of"):
        native(x, x, x, "relu", 2.0, False)
    with pytest.raises(ValueError, match="clamp must be a finite float > 0"):
        native(x, x, x, "exp", -1.0, False)
    with pytest.raises(TypeError, match="x_b must be float16, bfloat16, float32 or float64, got torch.int32"):
        i = torch.ones(3, 4, dtype=torch.int32)
        native(i, i, i, "exp", 2.0, False)
    with pytest.raises(ValueError, match=r"grad_logdet must have shape \(3,\)"):
        torch.ops.fastgen.affine_coupling_backward_native(x, torch.ones(2), x, x, x, "exp", 2.0, False)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_coupling_offsets_past_int32(backend):
    require_backend(COUPLING, "cuda", backend)
    rows, cols = 2, 2**30 + 7  # the second row starts past 2**31 - 1
    try:
        x = torch.randn(rows, cols, device="cuda", dtype=torch.float16)
        t, r = torch.randn_like(x), torch.randn_like(x)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for a 2**31-element test")
    y, ld = fastgen.ops.affine_coupling(x, t, r, "sigmoid", backend=backend)
    tail = slice(cols - 4096, cols)
    y_ref, _ = reference.affine_coupling(x[:, tail], t[:, tail], r[:, tail], "sigmoid")
    assert_close(y[:, tail], y_ref, dtype=torch.float16, backend=backend, name="y tail")
    ld_ref = torch.stack([reference.affine_coupling(x[i:i + 1], t[i:i + 1], r[i:i + 1], "sigmoid")[1][0]
                          for i in range(rows)])
    assert_close(ld, ld_ref, rtol=1e-4, atol=1.0, backend=backend, name="logdet")


# -- actnorm ------------------------------------------------------------------------------------

ACTNORM = "actnorm"
# NCHW with odd sizes, (N, D) features, a 1x1 spatial, 3-D (N, C, L), and planes long enough
# for several CPU tasks / Triton tiles
ACTNORM_SHAPES = [(3, 5, 4, 7), (6, 5), (2, 3, 1, 1), (4, 70, 33), (2, 3, 130, 131), (1, 1)]


def _actnorm_inputs(shape, dtype, device, requires_grad=False):
    c = shape[1]
    return (_randn(shape, dtype, device, 0, 1.0, requires_grad),
            _randn((c,), dtype, device, 1, 1.0, requires_grad),
            _randn((c,), dtype, device, 2, 0.5, requires_grad))


def _check_actnorm_case(shape, dtype, device, backend, inverse):
    x, loc, ls = _actnorm_inputs(shape, dtype, device, requires_grad=True)
    y, logdet = fastgen.ops.actnorm(x, loc, ls, inverse, backend=backend)
    y_ref, logdet_ref = reference.actnorm(x, loc, ls, inverse)
    assert y.dtype == dtype and y.shape == x.shape
    assert logdet.dtype == reference.math_dtype(dtype) and logdet.shape == (shape[0],)
    assert_close(y, y_ref, dtype=dtype, backend=backend, name="y")
    spatial = x.numel() // (shape[0] * shape[1])
    assert_close(logdet, logdet_ref, dtype=dtype, backend=backend, name="logdet",
                 atol=_sum_atol(dtype, shape[1]) * spatial)
    gy = _randn(shape, dtype, device, 10)
    gl = _randn((shape[0],), logdet.dtype, device, 11)
    grads = torch.autograd.grad((y, logdet), (x, loc, ls), (gy, gl))
    grads_ref = torch.autograd.grad((y_ref, logdet_ref), (x, loc, ls), (gy, gl))
    per_channel = x.numel() // shape[1]
    for name, a, e in zip(("d_x", "d_loc", "d_log_scale"), grads, grads_ref):
        # d_loc / d_log_scale sum over the batch and spatial positions of a channel
        atol = tolerance(dtype)[1] * (1 if name == "d_x" else per_channel ** 0.5 + spatial)
        if name != "d_x" and dtype in (torch.float16, torch.bfloat16):
            # the reference rounds each product to the input dtype before summing
            atol *= 4
        assert_close(a, e, dtype=dtype, backend=backend, name=name, atol=atol)


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ACTNORM_SHAPES, ids=str)
def test_actnorm_matches_reference(device_backend, shape, dtype, inverse):
    device, backend = _setup(ACTNORM, device_backend, dtype)
    _check_actnorm_case(shape, dtype, device, backend, inverse)


def test_reference_actnorm_backward_matches_autograd():
    for shape in ((4, 3, 5, 2), (7, 3)):
        for inverse in (False, True):
            x, loc, ls = _actnorm_inputs(shape, torch.float64, "cpu", requires_grad=True)
            y, logdet = reference.actnorm(x, loc, ls, inverse)
            gy, gl = torch.randn_like(y), torch.randn_like(logdet)
            expected = torch.autograd.grad((y, logdet), (x, loc, ls), (gy, gl))
            actual = reference.actnorm_backward(gy, gl, x, loc, ls, inverse)
            for a, e in zip(actual, expected):
                assert_close(a, e, name=f"{shape} inverse={inverse}")


@pytest.mark.parametrize("shape", [(3, 2, 3, 2), (4, 3)], ids=str)
def test_actnorm_gradcheck_fp64(device_backend, shape):
    device, backend = _setup(ACTNORM, device_backend)
    for inverse in (False, True):
        inputs = _actnorm_inputs(shape, torch.float64, device, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, loc, ls: fastgen.ops.actnorm(x, loc, ls, inverse, backend=backend), inputs,
            fast_mode=emulated(device, backend))


def test_actnorm_inverse_and_jacobian(device_backend):
    device, backend = _setup(ACTNORM, device_backend)
    x, loc, ls = _actnorm_inputs((2, 3, 2, 1), torch.float64, device)
    y, ld = fastgen.ops.actnorm(x, loc, ls, backend=backend)
    x2, ld_inv = fastgen.ops.actnorm(y, loc, ls, True, backend=backend)
    assert_close(x2, x, name="inverse(forward(x))")
    assert_close(ld + ld_inv, torch.zeros_like(ld), name="logdet sum")
    for inverse in (False, True):
        jac = torch.autograd.functional.jacobian(
            lambda v: fastgen.ops.actnorm(v.unsqueeze(0), loc, ls, inverse, backend=backend)[0].reshape(-1),
            x[0])
        _, logabsdet = torch.linalg.slogdet(jac.reshape(6, 6))
        _, ld = fastgen.ops.actnorm(x, loc, ls, inverse, backend=backend)
        assert_close(ld[0], logabsdet, name=f"logdet inverse={inverse}")


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (0, 5), (2, 3, 0, 4)], ids=str)
def test_actnorm_empty(device_backend, shape):
    device, backend = _setup(ACTNORM, device_backend)
    x, loc, ls = _actnorm_inputs(shape, torch.float32, device, requires_grad=True)
    y, logdet = fastgen.ops.actnorm(x, loc, ls, backend=backend)
    _, logdet_ref = reference.actnorm(x, loc, ls)
    assert y.shape == shape and logdet.shape == (shape[0],)
    assert_close(logdet, logdet_ref, backend=backend, name="logdet")
    (y.sum() + logdet.sum()).backward()
    assert x.grad.shape == shape and loc.grad.shape == (shape[1],) and ls.grad.shape == (shape[1],)


def test_actnorm_non_contiguous(device_backend):
    device, backend = _setup(ACTNORM, device_backend)
    base = _randn((2, 6, 5, 4), torch.float32, device, 0)
    x = base.permute(0, 3, 2, 1)[:, ::2]  # channels-last-like strides, every other channel
    assert not x.is_contiguous()
    c = x.shape[1]
    loc = _randn((2 * c,), torch.float32, device, 1)[::2]
    ls = _randn((2 * c,), torch.float32, device, 2)[::2]
    for inverse in (False, True):
        leaves = [v.detach().requires_grad_() for v in (x, loc, ls)]
        y, ld = fastgen.ops.actnorm(*leaves, inverse, backend=backend)
        ref_leaves = [v.detach().contiguous().requires_grad_() for v in (x, loc, ls)]
        y_ref, ld_ref = reference.actnorm(*ref_leaves, inverse)
        assert_close(y, y_ref, backend=backend, name="y")
        assert_close(ld, ld_ref, backend=backend, name="logdet")
        gy = torch.randn(y.shape, device=device).transpose(2, 3).contiguous().transpose(2, 3)
        torch.autograd.backward((y, ld), (gy, torch.ones_like(ld)))
        torch.autograd.backward((y_ref, ld_ref), (gy, torch.ones_like(ld_ref)))
        for a, e in zip(leaves, ref_leaves):
            assert_close(a.grad, e.grad, backend=backend, name="grad", atol=1e-4)


def test_actnorm_bad_inputs_name_the_argument():
    op = fastgen.ops.actnorm
    x, c = torch.randn(2, 3, 4, 4), torch.zeros(3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, \*spatial\)"):
        op(torch.randn(5), torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match=r"loc must have shape \(3,\)"):
        op(x, torch.zeros(4), c)
    with pytest.raises(ValueError, match=r"log_scale must have shape \(3,\)"):
        op(x, c, torch.zeros(1, 3))
    with pytest.raises(TypeError, match="log_scale has dtype torch.float64 but x has torch.float32"):
        op(x, c, c.double())
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        op(x.int(), c, c)
    with pytest.raises(ValueError, match="loc is on meta but x is on cpu"):
        op(x, torch.empty(3, device="meta"), c)
    with pytest.raises(TypeError, match="inverse must be a bool"):
        op(x, c, c, "yes")
    with pytest.raises(ValueError, match=r"grad_logdet must have shape \(2,\)"):
        torch.ops.fastgen.actnorm_backward(x, torch.ones(3), x, c, c)
    if not fastgen.ops.REGISTRY[ACTNORM].unavailable("cpu", "cpu"):
        with pytest.raises(ValueError, match=r"loc must have shape \(3,\)"):
            torch.ops.fastgen.actnorm_native(x, torch.zeros(2), c, False)
        with pytest.raises(ValueError, match=r"x must have shape \(N, C, \*spatial\)"):
            torch.ops.fastgen.actnorm_native(torch.zeros(3), c, c, False)


# -- invertible 1x1 convolution ------------------------------------------------------------------

INVCONV = "invertible_conv1x1"
# C = 1, odd C, C past the CPU kernel's 64-channel loops (BLAS path), (N, C) input, and spatial
# sizes that are not a multiple of the CPU kernel's 256-position blocks or the Triton tiles
INVCONV_SHAPES = [(3, 5, 4, 3), (2, 1, 3, 3), (5, 7), (2, 33, 17, 17), (2, 70, 3, 5), (1, 12, 1, 300)]


def _lu_params(c, dtype, device, seed, requires_grad=False):
    """(perm, lower, upper, sign, log_s) near the LU factors of a random rotation (as
    InvConv2dLU starts), perturbed so every entry matters and W stays well conditioned."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=g, dtype=torch.float64))
    p, lo, up = torch.linalg.lu(q)
    d = torch.diagonal(up)
    noise = lambda *shape: 0.1 * torch.randn(*shape, generator=g, dtype=torch.float64)
    params = (p, lo + noise(c, c), up + noise(c, c), torch.sign(d), torch.log(d.abs()) + noise(c))
    out = [v.to(device=device, dtype=dtype) for v in params]
    for i in (1, 2, 4):
        out[i].requires_grad_(requires_grad)
    return out


def _invconv_inputs(shape, dtype, device, requires_grad=False, param_dtype=None):
    x = _randn(shape, dtype, device, 0, requires_grad=requires_grad)
    pdt = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    return [x] + _lu_params(shape[1], pdt, device, 1, requires_grad)


def _invconv_leaves(inputs):
    return [inputs[i] for i in (0, 2, 3, 5)]


def _check_invconv_case(shape, dtype, device, backend, inverse):
    inputs = _invconv_inputs(shape, dtype, device, requires_grad=True)
    y, logdet = fastgen.ops.invertible_conv1x1(*inputs, inverse, backend=backend)
    y_ref, logdet_ref = reference.invertible_conv1x1(*inputs, inverse)
    assert y.dtype == dtype and y.shape == tuple(shape) and y.is_contiguous()
    assert logdet.dtype == reference.math_dtype(dtype) and logdet.shape == (shape[0],)
    c = shape[1]
    assert_close(y, y_ref, dtype=dtype, backend=backend, name="y", atol=_sum_atol(dtype, c))
    assert_close(logdet, logdet_ref, backend=backend, name="logdet", atol=1e-4 * math.prod(shape[2:]))
    gy = _randn(shape, dtype, device, 10)
    gl = _randn((shape[0],), logdet.dtype, device, 11)
    leaves = _invconv_leaves(inputs)
    grads = torch.autograd.grad((y, logdet), leaves, (gy, gl))
    grads_ref = torch.autograd.grad((y_ref, logdet_ref), leaves, (gy, gl))
    per_entry = math.prod(shape) // c  # terms in each entry of the weight gradient
    for name, a, e in zip(("d_x", "d_lower", "d_upper", "d_log_s"), grads, grads_ref):
        scale = max(1.0, float(e.abs().max()))
        atol = _sum_atol(dtype, c) if name == "d_x" else _sum_atol(dtype, per_entry * c) * scale
        assert_close(a, e, dtype=dtype, backend=backend, name=name, atol=atol)


@pytest.mark.parametrize("inverse", [False, True], ids=["fwd", "inv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", INVCONV_SHAPES, ids=str)
def test_invconv_matches_reference(device_backend, shape, dtype, inverse):
    device, backend = _setup(INVCONV, device_backend, dtype)
    _check_invconv_case(shape, dtype, device, backend, inverse)


def test_reference_invconv_backward_matches_autograd():
    for shape in ((4, 3, 5, 2), (7, 6)):
        for inverse in (False, True):
            inputs = _invconv_inputs(shape, torch.float64, "cpu", requires_grad=True)
            y, logdet = reference.invertible_conv1x1(*inputs, inverse)
            gy, gl = torch.randn_like(y), torch.randn_like(logdet)
            expected = torch.autograd.grad((y, logdet), _invconv_leaves(inputs), (gy, gl))
            actual = reference.invertible_conv1x1_backward(gy, gl, *(v.detach() for v in inputs), inverse)
            for a, e in zip(actual, expected):
                assert_close(a, e, name=f"{shape} inverse={inverse}")


@pytest.mark.parametrize("shape", [(3, 4, 3, 2), (4, 3)], ids=str)
def test_invconv_gradcheck_fp64(device_backend, shape):
    device, backend = _setup(INVCONV, device_backend)
    for inverse in (False, True):
        x, perm, lower, upper, sign, log_s = _invconv_inputs(shape, torch.float64, device, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, lo, up, ls: fastgen.ops.invertible_conv1x1(x, perm, lo, up, sign, ls, inverse,
                                                                 backend=backend),
            (x, lower, upper, log_s), fast_mode=emulated(device, backend))


def test_invconv_inverse_and_jacobian(device_backend):
    """inverse(forward(x)) = x, the logdets cancel, and logdet = log|det| of the Jacobian."""
    device, backend = _setup(INVCONV, device_backend)
    x, *params = _invconv_inputs((2, 3, 2, 1), torch.float64, device)
    y, ld = fastgen.ops.invertible_conv1x1(x, *params, backend=backend)
    x2, ld_inv = fastgen.ops.invertible_conv1x1(y, *params, True, backend=backend)
    assert_close(x2, x, name="inverse(forward(x))")
    assert_close(ld + ld_inv, torch.zeros_like(ld), name="logdet sum")
    for inverse in (False, True):
        jac = torch.autograd.functional.jacobian(
            lambda v: fastgen.ops.invertible_conv1x1(v.unsqueeze(0), *params, inverse, backend=backend)[0]
            .reshape(-1), x[0])
        _, logabsdet = torch.linalg.slogdet(jac.reshape(6, 6))
        _, ld = fastgen.ops.invertible_conv1x1(x, *params, inverse, backend=backend)
        assert_close(ld[0], logabsdet, name=f"logdet inverse={inverse}")


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (0, 5), (2, 3, 0, 4)], ids=str)
def test_invconv_empty(device_backend, shape):
    device, backend = _setup(INVCONV, device_backend)
    inputs = _invconv_inputs(shape, torch.float32, device, requires_grad=True)
    y, logdet = fastgen.ops.invertible_conv1x1(*inputs, backend=backend)
    _, logdet_ref = reference.invertible_conv1x1(*inputs)
    assert y.shape == shape and logdet.shape == (shape[0],)
    assert_close(logdet, logdet_ref, backend=backend, name="logdet")
    (y.sum() + logdet.sum()).backward()
    x, _, lower, upper, _, log_s = inputs
    assert x.grad.shape == shape and lower.grad.shape == upper.grad.shape == (shape[1], shape[1])
    assert_close(log_s.grad, torch.full_like(log_s, float(shape[0] * math.prod(shape[2:]))),
                 name="d log_s of an empty batch: only the logdet term")


def test_invconv_non_contiguous_and_mixed_dtypes(device_backend):
    """Strided x; bf16 x with fp32 parameters (as a module under autocast-free mixed precision)."""
    device, backend = _setup(INVCONV, device_backend)
    base = _randn((2, 6, 5, 4), torch.float32, device, 0)
    x = base.permute(0, 3, 2, 1)[:, ::2]  # channels-last-like strides, every other channel
    assert not x.is_contiguous()
    params = _lu_params(x.shape[1], torch.float32, device, 3, requires_grad=True)
    for inverse in (False, True):
        leaves = [x.detach().requires_grad_()] + [p.detach().requires_grad_(p.requires_grad) for p in params]
        y, ld = fastgen.ops.invertible_conv1x1(*leaves, inverse, backend=backend)
        ref = [v.detach().contiguous().requires_grad_(v.requires_grad) for v in leaves]
        y_ref, ld_ref = reference.invertible_conv1x1(*ref, inverse)
        assert_close(y, y_ref, backend=backend, name="y", atol=1e-5)
        assert_close(ld, ld_ref, backend=backend, name="logdet")
        gy = torch.randn(y.shape, device=device).transpose(2, 3).contiguous().transpose(2, 3)
        torch.autograd.backward((y, ld), (gy, torch.ones_like(ld)))
        torch.autograd.backward((y_ref, ld_ref), (gy, torch.ones_like(ld_ref)))
        for a, e in zip(_invconv_leaves(leaves), _invconv_leaves(ref)):
            assert_close(a.grad, e.grad, backend=backend, name="grad", atol=1e-4)
    if not (backend == "triton" and device == "cpu" and _interpreter_bf16_broken()):
        xb = _randn((3, 4, 5, 2), torch.bfloat16, device, 5)
        params = _lu_params(4, torch.float32, device, 4)
        y, ld = fastgen.ops.invertible_conv1x1(xb, *params, backend=backend)
        y_ref, ld_ref = reference.invertible_conv1x1(xb, *params)
        assert y.dtype == torch.bfloat16 and ld.dtype == torch.float32
        assert_close(y, y_ref, dtype=torch.bfloat16, backend=backend, name="bf16 y")
        assert_close(ld, ld_ref, backend=backend, name="bf16 logdet")


def test_invconv_weight_grad_does_not_depend_on_thread_count():
    if fastgen.ops.REGISTRY[INVCONV].unavailable("cpu", "cpu"):
        pytest.skip("native extension not built")
    inputs = _invconv_inputs((37, 12, 9, 30), torch.float32, "cpu")
    gy, gl = torch.randn(37, 12, 9, 30), torch.randn(37)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(torch.ops.fastgen.invertible_conv1x1_backward_native(gy, gl, *inputs, False))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_invconv_perm_and_sign_take_no_gradient():
    x, perm, lower, upper, sign, log_s = _invconv_inputs((2, 3, 2, 2), torch.float32, "cpu")
    perm.requires_grad_()
    y, ld = fastgen.ops.invertible_conv1x1(x, perm, lower.requires_grad_(), upper, sign, log_s)
    with pytest.raises(RuntimeError, match="perm and sign are constants"):
        (y.sum() + ld.sum()).backward()


def test_invconv_bad_inputs_name_the_argument():
    op = fastgen.ops.invertible_conv1x1
    x, perm, lower, upper, sign, log_s = _invconv_inputs((2, 3, 4, 4), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, \*spatial\)"):
        op(torch.randn(3), perm, lower, upper, sign, log_s)
    with pytest.raises(ValueError, match=r"lower must have shape \(3, 3\)"):
        op(x, perm, lower[:2], upper, sign, log_s)
    with pytest.raises(ValueError, match=r"log_s must have shape \(3,\)"):
        op(x, perm, lower, upper, sign, log_s[:2])
    with pytest.raises(TypeError, match="upper has dtype torch.float64 but log_s has torch.float32"):
        op(x, perm, lower, upper.double(), sign, log_s)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        op(x.int(), perm, lower, upper, sign, log_s)
    with pytest.raises(ValueError, match="sign is on meta but x is on cpu"):
        op(x, perm, lower, upper, torch.empty(3, device="meta"), log_s)
    with pytest.raises(TypeError, match="inverse must be a bool"):
        op(x, perm, lower, upper, sign, log_s, "yes")
    with pytest.raises(ValueError, match=r"grad_logdet must have shape \(2,\)"):
        torch.ops.fastgen.invertible_conv1x1_backward(x, torch.ones(3), x, perm, lower, upper, sign, log_s)
    if not fastgen.ops.REGISTRY[INVCONV].unavailable("cpu", "cpu"):
        with pytest.raises(ValueError, match=r"perm must have shape \(3, 3\) \(C = 3, the channels of x\), got \(3, 2\)"):
            torch.ops.fastgen.invertible_conv1x1_native(x, perm[:, :2], lower, upper, sign, log_s, False)
        with pytest.raises(ValueError, match=r"grad_logdet must have shape \(2,\)"):
            torch.ops.fastgen.invertible_conv1x1_backward_native(x, torch.ones(3), x, perm, lower, upper,
                                                                 sign, log_s, False)


def test_eager_calls_with_autograd_skip_the_dispatcher_and_keep_its_behaviour():
    """Eager calls of an op with autograd run its kernel in an autograd.Function
    (FusedOp._functions): the same numbers and gradients as through `torch.ops.fastgen.<name>`,
    which a dispatch mode (as tracing uses) still sees."""
    op = fastgen.ops.REGISTRY[INVCONV]
    if op.unavailable("cpu", "cpu"):
        pytest.skip("native extension not built")
    inputs = _invconv_inputs((3, 4, 5, 2), torch.float32, "cpu", requires_grad=True)
    y, ld = fastgen.ops.invertible_conv1x1(*inputs, backend="cpu")
    assert ("cpu", "cpu") in op._functions and type(y.grad_fn).__name__.startswith("EagerBackwardFor")
    leaves = _invconv_leaves(inputs)
    gy, gl = torch.randn_like(y), torch.randn_like(ld)
    direct = torch.autograd.grad((y, ld), leaves, (gy, gl))
    y2, ld2 = torch.ops.fastgen.invertible_conv1x1(*inputs, backend="cpu")
    assert type(y2.grad_fn).__name__.startswith("GeneratedBackwardFor")
    dispatched = torch.autograd.grad((y2, ld2), leaves, (gy, gl))
    assert torch.equal(y, y2) and torch.equal(ld, ld2)
    for a, b in zip(direct, dispatched):
        assert torch.equal(a, b)

    with DispatchLog() as log:
        fastgen.ops.invertible_conv1x1(*inputs, backend="cpu")
    assert "fastgen.invertible_conv1x1.default" in log.ops
    with pytest.raises(TypeError, match="lower must be a torch.Tensor"):
        fastgen.ops.invertible_conv1x1(inputs[0], inputs[1], "lower", *inputs[3:], backend="cpu")


# -- flow NLL -----------------------------------------------------------------------------------

NLL = "flow_nll"
NLL_SHAPES = [(1, 1), (5, 7), (17,), (3, 3, 5, 7), (3, 20001)]


def _nll_inputs(shape, dtype, device, requires_grad=False):
    z = _randn(shape, dtype, device, 0, 1.3, requires_grad)
    logdet = _randn((shape[0],), reference.math_dtype(dtype), device, 1, 5.0, requires_grad)
    return z, logdet


@pytest.mark.parametrize("n_bins", [None, 256], ids=["nats", "bpd"])
@pytest.mark.parametrize("prior", ["gaussian", "logistic"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", NLL_SHAPES, ids=str)
def test_flow_nll_matches_reference(device_backend, shape, dtype, prior, n_bins):
    device, backend = _setup(NLL, device_backend, dtype)
    z, logdet = _nll_inputs(shape, dtype, device, requires_grad=True)
    nll = fastgen.ops.flow_nll(z, logdet, prior, n_bins, backend=backend)
    nll_ref = reference.flow_nll(z, logdet, prior, n_bins)
    assert nll.shape == (shape[0],) and nll.dtype == reference.math_dtype(dtype)
    n = z.numel() // shape[0]
    assert_close(nll, nll_ref, dtype=dtype, backend=backend, name="nll", atol=_sum_atol(dtype, n))
    g = _randn((shape[0],), nll.dtype, device, 2)
    grads = torch.autograd.grad(nll, (z, logdet), g)
    grads_ref = torch.autograd.grad(nll_ref, (z, logdet), g)
    for name, a, e in zip(("d_z", "d_logdet"), grads, grads_ref):
        assert_close(a, e, dtype=dtype, backend=backend, name=name)


def test_flow_nll_formula():
    """The spec against closed forms: a standard normal's density and the bits/dim identity."""
    z = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    logdet = torch.tensor([0.7], dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert_close(reference.flow_nll(z, logdet), -(normal + logdet))
    logistic = torch.distributions.TransformedDistribution(
        torch.distributions.Uniform(0.0, 1.0),
        [torch.distributions.SigmoidTransform().inv]).log_prob(z.double()).sum(1)
    assert_close(reference.flow_nll(z, logdet, "logistic"), -(logistic + logdet))
    bpd = reference.flow_nll(z, logdet, "gaussian", 256)
    assert_close(bpd, (-(normal + logdet) + 3 * math.log(256)) / (3 * math.log(2)))


@pytest.mark.parametrize("prior", ["gaussian", "logistic"])
def test_flow_nll_gradcheck_fp64(device_backend, prior):
    device, backend = _setup(NLL, device_backend)
    for n_bins in (None, 32):
        z, logdet = _nll_inputs((3, 4), torch.float64, device, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda z, ld: fastgen.ops.flow_nll(z, ld, prior, n_bins, backend=backend), (z, logdet))


def test_flow_nll_mixed_dtypes_and_non_contiguous(device_backend):
    device, backend = _setup(NLL, device_backend)
    z = _randn((6, 10), torch.float16, device, 0).t()[:, ::2]  # (10, 3) fp16, strided
    logdet = _randn((20,), torch.float64, device, 1)[::2].requires_grad_()  # fp64 logdet
    z = z.detach().requires_grad_()
    nll = fastgen.ops.flow_nll(z, logdet, "logistic", backend=backend)
    zr, lr = z.detach().contiguous().requires_grad_(), logdet.detach().clone().requires_grad_()
    nll_ref = reference.flow_nll(zr, lr, "logistic")
    assert nll.dtype == torch.float32
    assert_close(nll, nll_ref, dtype=torch.float16, backend=backend, name="nll")
    nll.sum().backward()
    nll_ref.sum().backward()
    assert logdet.grad.dtype == torch.float64
    assert_close(z.grad, zr.grad, backend=backend, name="d_z")
    assert_close(logdet.grad, lr.grad, backend=backend, name="d_logdet")


@pytest.mark.parametrize("shape", [(0, 4), (0,), (3, 0)], ids=str)
def test_flow_nll_empty(device_backend, shape):
    device, backend = _setup(NLL, device_backend)
    z, logdet = _nll_inputs(shape, torch.float32, device, requires_grad=True)
    nll = fastgen.ops.flow_nll(z, logdet, backend=backend)
    assert_close(nll, reference.flow_nll(z, logdet), backend=backend, name="nll")
    nll.sum().backward()
    assert z.grad.shape == shape and logdet.grad.shape == (shape[0],)


def test_flow_nll_bad_inputs_name_the_argument():
    op = fastgen.ops.flow_nll
    z, ld = torch.randn(3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match=r"logdet must have shape \(3,\)"):
        op(z, torch.zeros(4))
    with pytest.raises(ValueError, match="prior must be one of"):
        op(z, ld, "laplace")
    with pytest.raises(TypeError, match="prior must be a str"):
        op(z, ld, None)
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        op(z, ld, "gaussian", 0)
    with pytest.raises(TypeError, match="n_bins must be an int or None"):
        op(z, ld, "gaussian", 256.0)
    with pytest.raises(ValueError, match="bits per dim need at least one dim per sample"):
        op(torch.zeros(3, 0), ld, "gaussian", 256)
    with pytest.raises(TypeError, match="z must be float16, bfloat16, float32 or float64"):
        op(z.long(), ld)
    with pytest.raises(ValueError, match="leading batch dim"):
        op(torch.tensor(1.0), ld)
    if not fastgen.ops.REGISTRY[NLL].unavailable("cpu", "cpu"):
        with pytest.raises(ValueError, match="prior must be one of"):
            torch.ops.fastgen.flow_nll_native(z, ld, "cauchy", None)
        with pytest.raises(ValueError, match=r"grad_nll must have shape \(3,\)"):
            torch.ops.fastgen.flow_nll_backward_native(torch.ones(2), z, "gaussian", None)


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    x, ld = torch.randn(3, 4, device=device), torch.randn(3, device=device)
    xi, c = torch.randn(2, 3, 4, 5, device=device), torch.randn(3, device=device) * 0.1
    perm = torch.eye(3, device=device)[[2, 0, 1]]
    lu = (perm, torch.randn(3, 3, device=device), torch.randn(3, 3, device=device), torch.ones(3, device=device), c)
    return [("affine_coupling_native", (x, x, x, "exp", 2.0, False), "x_b"),
            ("affine_coupling_backward_native", (x, ld, x, x, x, "exp", 2.0, False), "x_b"),
            ("actnorm_native", (xi, c, c, False), "x"),
            ("actnorm_backward_native", (xi, ld[:2], xi, c, c, False), "x"),
            ("invertible_conv1x1_native", (xi,) + lu + (False,), "x"),
            ("invertible_conv1x1_backward_native", (xi, ld[:2], xi) + lu + (False,), "x"),
            ("flow_nll_native", (x, ld, "gaussian", None), "z"),
            ("flow_nll_backward_native", (ld, x, "gaussian", None), "z")]


test_native_kernels_check_devices, test_native_kernels_check_devices_two_gpus = native_device_tests(_device_cases)
