"""Diffusion ops (add_noise, get_velocity, ddim_step, ddpm_step, flow_euler_step, flow_heun_step)
on every backend against the plain-PyTorch reference."""
import pytest
import torch

import fastgen
from fastgen import _ext
from fastgen.kernels import diffusion as triton_diffusion
from fastgen.ops import reference
from fastgen.testing import assert_close

from conftest import DispatchLog, check_native_devices, check_native_on_second_gpu, require_backend, two_gpus

OPS = ("add_noise", "get_velocity", "ddim_step", "ddpm_step", "flow_euler_step", "flow_heun_step")
# odd sizes, a 1-D batch, >2-D samples, and enough elements for several Triton programs / CPU chunks
SHAPES = [(1, 1), (3, 5, 7), (17,), (2, 3, 9, 11), (2, 9001)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
PREDICTIONS = reference.PREDICTION_TYPES
T = 1000


def _setup(device_backend, op, dtype=None):
    device, backend = device_backend
    require_backend(op, device, backend)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("bf16 arithmetic is wrong under the Triton interpreter: GPU only "
                    "(docs/design.md, 'Limits of the Triton interpreter')")
    return device, backend


def _tables(device, zero_snr=False):
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float32)
    ac = torch.cumprod(1 - betas, 0)
    if zero_snr:
        ac = ac.clone()
        ac[-1] = 0.0
    prev = torch.arange(T) - 37  # an arbitrary stride; before 0 the step lands on abar = 1
    acp = torch.where(prev >= 0, ac[prev.clamp_min(0)], torch.ones(()))
    return ac.to(device), acp.to(device)


def _randn(shape, dtype, device, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _tol(dtype, t_alpha):
    """Tolerance for a step's outputs: the dtype's, widened by the 1/sqrt(abar_t) that epsilon
    prediction multiplies rounding by (kernels and reference fold the coefficients differently)."""
    rtol, atol = fastgen.testing.tolerance(dtype)
    amp = float(t_alpha) ** -0.5 if t_alpha > 0 else 1.0
    return dict(rtol=rtol, atol=atol * amp)


# -- add_noise / get_velocity ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", ["add_noise", "get_velocity"])
def test_mix_matches_reference(device_backend, op, shape, dtype):
    device, backend = _setup(device_backend, op, dtype)
    ac, _ = _tables(device)
    x, z = _randn(shape, dtype, device, 0), _randn(shape, dtype, device, 1)
    per_sample = torch.randint(0, T, (shape[0],), generator=torch.Generator().manual_seed(2)).to(device)
    for timesteps in (per_sample, per_sample[:1], per_sample.int()):
        out = getattr(fastgen.ops, op)(x, z, timesteps, ac, backend=backend)
        expected = getattr(reference, op)(x, z, timesteps, ac)
        assert out.dtype == dtype and out.shape == shape and out.is_contiguous()
        assert_close(out, expected, dtype=dtype, backend=backend, name=op)


@pytest.mark.parametrize("op", ["add_noise", "get_velocity"])
def test_mix_gradients(device_backend, op):
    device, backend = _setup(device_backend, op)
    ac, _ = _tables(device)
    x = _randn((3, 4), torch.float64, device, 0).requires_grad_()
    z = _randn((3, 4), torch.float64, device, 1).requires_grad_()
    t = torch.tensor([0, 500, 999], device=device)
    assert torch.autograd.gradcheck(lambda a, b: getattr(fastgen.ops, op)(a, b, t, ac, backend=backend), (x, z))


def test_add_noise_moves_host_timesteps_and_accepts_ints():
    ac, _ = _tables("cpu")
    x, z = _randn((3, 4), torch.float32, "cpu", 0), _randn((3, 4), torch.float32, "cpu", 1)
    a = fastgen.ops.add_noise(x, z, [1, 2, 3], ac)
    assert_close(a, reference.add_noise(x, z, torch.tensor([1, 2, 3]), ac))
    assert_close(fastgen.ops.add_noise(x, z, 7, ac), reference.add_noise(x, z, torch.tensor(7), ac))


# -- DDIM / DDPM -----------------------------------------------------------------------------------

TIMESTEPS = [0, 1, 37, 637, 999]  # 37: the first step whose target is not abar = 1
LIMITS = ["none", "clip", "threshold"]


def _timesteps_for(shape):
    # the long shape is there for multi-program / multi-chunk indexing, not for the math
    return (37, 999) if shape[-1] > 1000 else TIMESTEPS


def _step_shape(shape, backend):
    """The long shape on cuda_emu, where every thread is a fiber: (2, 1301) still spans eleven
    256-thread blocks with a partial last one, at a seventh of the emulation time."""
    return (2, 1301) if backend == "cuda_emu" and shape == (2, 9001) else shape


def _step_inputs(shape, dtype, device, seed=0):
    return (_randn(shape, dtype, device, seed), _randn(shape, dtype, device, seed + 1, 1.3),
            _randn(shape, dtype, device, seed + 2))


def _limit_kwargs(limit):
    return dict(clip_sample=limit == "clip", clip_sample_range=0.8, thresholding=limit == "threshold",
                dynamic_thresholding_ratio=0.9, sample_max_value=1.6)


def _threshold_for(limit, m, x, t, ac, prediction, model_output_uncond=None, guidance_scale=1.0):
    if limit != "threshold":
        return x.new_empty((0,), dtype=reference.math_dtype(x.dtype))
    a = ac[t].to(reference.math_dtype(x.dtype))
    u = x.new_empty(0) if model_output_uncond is None else model_output_uncond
    m = reference.guided(m, u, guidance_scale, a.dtype)
    x0, _ = reference.pred_original_and_epsilon(m, x.to(a.dtype), a, prediction)
    return reference.dynamic_threshold(x0, 0.9, 1.6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ddim_step_matches_reference(device_backend, shape, dtype):
    device, backend = _setup(device_backend, "ddim_step", dtype)
    shape = _step_shape(shape, backend)
    ac, acp = _tables(device)
    m, x, z = _step_inputs(shape, dtype, device)
    u = _randn(shape, dtype, device, 30)  # an unconditional output for guided steps
    for prediction in PREDICTIONS:
        for limit in LIMITS:
            for eta, use_clipped, guided in ((0.0, False, False), (0.6, True, True), (1.0, False, False)):
                for t in _timesteps_for(shape):
                    kw = _limit_kwargs(limit)
                    g = dict(model_output_uncond=u, guidance_scale=3.5) if guided else {}
                    prev, x0 = fastgen.ops.ddim_step(m, x, t, ac, acp, eta=eta, noise=z if eta else None,
                                                     prediction_type=prediction, use_clipped_model_output=use_clipped,
                                                     backend=backend, **kw, **g)
                    thr = _threshold_for(limit, m, x, t, ac, prediction, **g)
                    prev_ref, x0_ref = reference.ddim_step(
                        m, x, z if eta else x.new_empty(0), torch.tensor(t), ac, acp, thr,
                        u if guided else x.new_empty(0), 3.5, eta, prediction, kw["clip_sample"], 0.8, use_clipped)
                    what = f"ddim {prediction} {limit} eta={eta} clipped_eps={use_clipped} guided={guided} t={t}"
                    tol = _tol(dtype, ac[t])
                    assert prev.dtype == dtype and x0.dtype == dtype
                    assert_close(x0, x0_ref, backend=backend, name=f"{what} x0", **tol)
                    assert_close(prev, prev_ref, backend=backend, name=f"{what} prev", **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ddpm_step_matches_reference(device_backend, shape, dtype):
    device, backend = _setup(device_backend, "ddpm_step", dtype)
    shape = _step_shape(shape, backend)
    ac, acp = _tables(device)
    m, x, z = _step_inputs(shape, dtype, device, seed=5)
    u = _randn(shape, dtype, device, 31)
    for prediction in PREDICTIONS:
        for variance in reference.VARIANCE_TYPES:
            guided = variance == "fixed_large"
            g = dict(model_output_uncond=u, guidance_scale=-0.7) if guided else {}
            for limit in LIMITS:
                for t in _timesteps_for(shape):
                    kw = _limit_kwargs(limit)
                    noise = z if t % 2 else None  # also steps without noise (the last one, or deterministic)
                    prev, x0 = fastgen.ops.ddpm_step(m, x, t, ac, acp, noise=noise, prediction_type=prediction,
                                                     variance_type=variance, backend=backend, **kw, **g)
                    thr = _threshold_for(limit, m, x, t, ac, prediction, **g)
                    prev_ref, x0_ref = reference.ddpm_step(
                        m, x, z if noise is not None else x.new_empty(0), torch.tensor(t), ac, acp, thr,
                        u if guided else x.new_empty(0), -0.7, prediction, variance, kw["clip_sample"], 0.8)
                    what = f"ddpm {prediction} {variance} {limit} guided={guided} t={t}"
                    tol = _tol(dtype, ac[t])
                    assert_close(x0, x0_ref, backend=backend, name=f"{what} x0", **tol)
                    assert_close(prev, prev_ref, backend=backend, name=f"{what} prev", **tol)


def test_ddpm_adds_no_noise_at_t0(device_backend):
    device, backend = _setup(device_backend, "ddpm_step")
    ac, acp = _tables(device)
    m, x, z = _step_inputs((2, 9), torch.float32, device)
    with_noise = fastgen.ops.ddpm_step(m, x, 0, ac, acp, noise=z, backend=backend)[0]
    without = fastgen.ops.ddpm_step(m, x, 0, ac, acp, backend=backend)[0]
    assert torch.equal(with_noise, without)
    # (at t = 1 the step lands on abar = 1 here, whose variance is 0: check a later t)
    assert not torch.equal(fastgen.ops.ddpm_step(m, x, 100, ac, acp, noise=z, backend=backend)[0],
                           fastgen.ops.ddpm_step(m, x, 100, ac, acp, backend=backend)[0])


@pytest.mark.parametrize("prediction", ["sample", "v_prediction", "epsilon"])
def test_zero_terminal_snr_stays_finite(device_backend, prediction):
    """abar_T = 0: epsilon's x0 is +-inf before clipping (like diffusers), clipped to the range;
    DDIM with eta = 1 lands exactly on sigma^2 = 1 - abar_prev without a NaN."""
    device, backend = _setup(device_backend, "ddim_step")
    ac, acp = _tables(device, zero_snr=True)
    m, x, z = _step_inputs((2, 33), torch.float32, device)
    prev, x0 = fastgen.ops.ddim_step(m, x, T - 1, ac, acp, eta=1.0, noise=z, prediction_type=prediction,
                                     clip_sample=True, backend=backend)
    assert torch.isfinite(prev).all() and torch.isfinite(x0).all()
    prev_ref, x0_ref = reference.ddim_step(m, x, z, torch.tensor(T - 1), ac, acp, x.new_empty(0), x.new_empty(0), 1.0,
                                           1.0, prediction,
                                           True, 1.0, False)
    assert_close(x0, x0_ref, backend=backend, name="x0")
    assert_close(prev, prev_ref, backend=backend, name="prev")


def test_triton_reads_a_device_timestep_through_a_pointer(monkeypatch):
    """On the interpreter every tensor is on the host, which takes the by-value path; force the
    pointer path (what CUDA tensors take) and check it agrees."""
    require_backend("ddim_step", "cpu", "triton")
    ac, acp = _tables("cpu")
    m, x, z = _step_inputs((3, 50), torch.float32, "cpu")
    monkeypatch.setattr(triton_diffusion, "_index_arg", lambda index, dummy: (index, 0, True))
    for t in (0, 37, 999):
        prev, x0 = fastgen.ops.ddim_step(m, x, t, ac, acp, eta=0.5, noise=z, backend="triton")
        ref = reference.ddim_step(m, x, z, torch.tensor(t), ac, acp, x.new_empty(0), x.new_empty(0), 1.0, 0.5,
                                  "epsilon", False, 1.0,
                                  False)
        assert_close(prev, ref[0], backend="triton", name="prev", **_tol(torch.float32, ac[t]))
        out = fastgen.ops.flow_euler_step(m, x, torch.tensor(t % 9), torch.linspace(1, 0, 10), backend="triton")
        assert_close(out, reference.flow_euler_step(m, x, x.new_empty(0), torch.tensor(t % 9),
                                                    torch.linspace(1, 0, 10), x.new_empty(0)), backend="triton")


# -- flow matching ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_flow_steps_match_reference(device_backend, shape, dtype):
    device, backend = _setup(device_backend, "flow_euler_step", dtype)
    sigmas = torch.tensor([1.0, 0.93, 0.7, 0.41, 0.12, 0.0], device=device)
    v, x, z = _step_inputs(shape, dtype, device, seed=9)
    v2 = _randn(shape, dtype, device, 20)
    for i in range(5):
        for noise, uncond in ((None, None), (z, None), (None, v2), (z, v2)):
            out = fastgen.ops.flow_euler_step(v, x, i, sigmas, noise=noise, model_output_uncond=uncond,
                                              guidance_scale=4.5, backend=backend)
            empty = x.new_empty(0)
            ref = reference.flow_euler_step(v, x, empty if noise is None else noise, torch.tensor(i), sigmas,
                                            empty if uncond is None else uncond, 4.5)
            assert_close(out, ref, dtype=dtype, backend=backend,
                         name=f"euler i={i} stochastic={noise is not None} guided={uncond is not None}")
        out = fastgen.ops.flow_heun_step(v, v2, x, torch.tensor(i), sigmas, backend=backend)
        assert_close(out, reference.flow_heun_step(v, v2, x, torch.tensor(i), sigmas), dtype=dtype, backend=backend,
                     name=f"heun i={i}")


def test_heun_integrates_a_linear_ode_exactly(device_backend):
    """For dx/ds = -x (velocity -x), Heun's step is the trapezoid rule: x * (1 - h + h^2 / 2)."""
    device, backend = _setup(device_backend, "flow_heun_step")
    sigmas = torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64, device=device)
    x = _randn((4, 5), torch.float64, device, 0)
    v = -x
    h = -0.4
    x_pred = fastgen.ops.flow_euler_step(v, x, 0, sigmas, backend=backend)
    out = fastgen.ops.flow_heun_step(v, -x_pred, x, 0, sigmas, backend=backend)
    assert_close(out, x * (1 - h + h * h / 2), backend=backend)


# -- shared properties -----------------------------------------------------------------------------

def _sample_args(op, device, requires_grad=False):
    ac, acp = _tables(device)
    m, x, z = _step_inputs((3, 5, 2), torch.float32, device)
    empty = x.new_empty(0)
    thr = torch.full((3,), 1.2, device=device)
    t = torch.tensor(637)
    sig = torch.linspace(1, 0, 8, device=device)
    if op in ("add_noise", "get_velocity"):
        return (x.requires_grad_(requires_grad), z.requires_grad_(requires_grad),
                torch.tensor([3, 600, 999], device=device), ac), {}
    if op == "ddim_step":
        return (m, x, z, t, ac, acp, empty, z), dict(guidance_scale=2.0, eta=0.5, prediction_type="v_prediction",
                                                     clip_sample=True)
    if op == "ddpm_step":
        return (m, x, z, t, ac, acp, thr, empty), dict(prediction_type="sample", variance_type="fixed_small_log")
    if op == "flow_euler_step":
        return (m, x, z, torch.tensor(3), sig, m * 0.5), dict(guidance_scale=3.0)
    return (m, z, x, torch.tensor(3), sig), {}


@pytest.mark.parametrize("op", OPS)
def test_empty_inputs(device_backend, op):
    device, backend = _setup(device_backend, op)
    args, kwargs = _sample_args(op, device)
    shape = (0, 5) if op in ("add_noise", "get_velocity") else (3, 0)
    args = tuple(torch.empty(shape, device=device) if a.dim() == 3 else a for a in args)
    if op in ("add_noise", "get_velocity"):
        args = (args[0], args[1], torch.zeros(0, dtype=torch.int64, device=device), args[3])
    if op == "ddpm_step":
        args = args[:6] + (torch.empty(0, device=device), torch.empty(0, device=device))
    out = getattr(torch.ops.fastgen, op)(*args, **kwargs, backend=backend)
    for o in (out if isinstance(out, tuple) else (out,)):
        assert o.shape == shape


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs(device_backend, op):
    device, backend = _setup(device_backend, op)
    args, kwargs = _sample_args(op, device)
    transposed = tuple(a.transpose(1, 2).contiguous().transpose(1, 2) if a.dim() == 3 else a for a in args)
    assert any(a.dim() == 3 and not a.is_contiguous() for a in transposed)
    out = getattr(torch.ops.fastgen, op)(*transposed, **kwargs, backend=backend)
    ref = getattr(torch.ops.fastgen, op)(*args, **kwargs, backend="reference")
    for a, e in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        assert a.is_contiguous()
        assert_close(a, e, backend=backend, rtol=1e-5, atol=1e-5 / 0.1)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(backend):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and backend == "cpu":
        backend = "cuda"
    require_backend("ddim_step", device, backend)
    torch._dynamo.reset()
    ac, acp = _tables(device)
    sig = torch.linspace(1, 0, 8, device=device)

    def step(m, x, z, t, i):
        prev, x0 = fastgen.ops.ddim_step(m, x, t, ac, acp, eta=0.3, noise=z, clip_sample=True)
        prev2, _ = fastgen.ops.ddpm_step(m, prev, t, ac, acp, noise=z, prediction_type="v_prediction")
        noisy = fastgen.ops.add_noise(prev2, z, t.reshape(1), ac)
        return fastgen.ops.flow_euler_step(m, noisy, i, sig) + x0

    compiled = torch.compile(step, fullgraph=True)
    m, x, z = _step_inputs((2, 3, 7), torch.float32, device)
    t, i = torch.tensor(411, device=device), torch.tensor(2, device=device)
    with fastgen.use_backend(backend):
        out = compiled(m, x, z, t, i)
    with fastgen.use_backend("reference"):
        ref = step(m, x, z, t, i)
    assert_close(out, ref, backend=backend, atol=1e-4)


def test_every_diffusion_op_is_registered_with_cpu_cuda_and_meta():
    for name in OPS:
        assert name in fastgen.ops.REGISTRY
        for key in ("CPU", "CUDA", "Meta"):
            assert _ext.has_kernel(f"fastgen::{name}", key), (name, key)
        if _ext.NATIVE is not None:
            assert _ext.has_kernel(f"fastgen::{name}_native", "CPU"), name
            if _ext.WITH_CUDA:
                assert _ext.has_kernel(f"fastgen::{name}_native", "CUDA"), name


# -- bad input -------------------------------------------------------------------------------------

def test_bad_inputs_name_the_argument():
    ac, acp = _tables("cpu")
    x = torch.randn(3, 4)
    ddim = fastgen.ops.ddim_step
    with pytest.raises(ValueError, match="model_output has shape"):
        ddim(torch.randn(3, 5), x, 5, ac, acp)
    with pytest.raises(TypeError, match="model_output has dtype torch.float64 but sample has torch.float32"):
        ddim(x.double(), x, 5, ac, acp)
    with pytest.raises(TypeError, match="sample must be float16, bfloat16, float32 or float64"):
        ddim(x.long(), x.long(), 5, ac, acp)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 1000\)"):
        ddim(x, x, 1000, ac, acp)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 1000\)"):
        ddim(x, x, -1, ac, acp)
    with pytest.raises(TypeError, match="timestep must be an integer tensor"):
        ddim(x, x, torch.tensor(3.0), ac, acp)
    with pytest.raises(TypeError, match="timestep must be an int or an integer tensor"):
        ddim(x, x, 3.5, ac, acp)
    with pytest.raises(ValueError, match="timestep must hold one value"):
        ddim(x, x, torch.tensor([1, 2]), ac, acp)
    with pytest.raises(ValueError, match="noise .* is required when eta > 0"):
        ddim(x, x, 5, ac, acp, eta=0.5)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim(x, x, 5, ac, acp, eta=-1.0)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        ddim(x, x, 5, ac, acp, prediction_type="noise")
    with pytest.raises(ValueError, match="clip_sample_range must be > 0"):
        ddim(x, x, 5, ac, acp, clip_sample_range=0.0)
    with pytest.raises(ValueError, match="dynamic_thresholding_ratio must be in"):
        ddim(x, x, 5, ac, acp, thresholding=True, dynamic_thresholding_ratio=1.5)
    with pytest.raises(TypeError, match="alphas_cumprod must be float32 or float64"):
        ddim(x, x, 5, ac.half(), acp)
    with pytest.raises(ValueError, match="alphas_cumprod_prev has shape"):
        ddim(x, x, 5, ac, acp[:10])
    with pytest.raises(ValueError, match="alphas_cumprod must be a 1-D table"):
        ddim(x, x, 5, ac.reshape(10, 100), acp)
    with pytest.raises(ValueError, match="noise has shape"):
        ddim(x, x, 5, ac, acp, eta=0.5, noise=torch.randn(4, 3))
    with pytest.raises(ValueError, match="alphas_cumprod is on meta but sample is on cpu"):
        ddim(x, x, 5, ac.to("meta"), acp)
    with pytest.raises(ValueError, match="leading batch dim"):
        ddim(torch.tensor(1.0), torch.tensor(1.0), 5, ac, acp)
    with pytest.raises(ValueError, match="model_output_uncond has shape"):
        ddim(x, x, 5, ac, acp, model_output_uncond=torch.randn(3, 5), guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        ddim(x, x, 5, ac, acp, model_output_uncond=x, guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="variance_type must be one of"):
        fastgen.ops.ddpm_step(x, x, 5, ac, acp, variance_type="learned")
    with pytest.raises(ValueError, match=r"timesteps must have shape \(3,\)"):
        fastgen.ops.add_noise(x, x, torch.tensor([1, 2]), ac)
    with pytest.raises(TypeError, match="timesteps must be an integer tensor"):
        fastgen.ops.add_noise(x, x, torch.tensor([1.0, 2.0, 3.0]), ac)
    with pytest.raises(ValueError, match=r"step_index must be in \[0, 7\)"):
        fastgen.ops.flow_euler_step(x, x, 7, torch.linspace(1, 0, 8))
    with pytest.raises(ValueError, match="sigmas must be a 1-D table with at least 2 entries"):
        fastgen.ops.flow_euler_step(x, x, 0, torch.ones(1))
    with pytest.raises(ValueError, match="model_output_next has shape"):
        fastgen.ops.flow_heun_step(x, torch.randn(2, 4), x, 0, torch.linspace(1, 0, 8))
    with pytest.raises(TypeError, match="sample must be a torch.Tensor"):
        fastgen.ops.flow_euler_step(x, [1.0], 0, torch.linspace(1, 0, 8))


def test_native_kernels_check_their_arguments():
    """Direct callers of the C++ kernels get a clear error too, not a crash."""
    if fastgen.ops.REGISTRY["ddim_step"].unavailable("cpu", "cpu"):
        pytest.skip("native extension not built")
    ac, acp = _tables("cpu")
    x, e = torch.randn(3, 4), torch.empty(0)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 1000\)"):
        torch.ops.fastgen.ddim_step_native(x, x, e, torch.tensor(5000), ac, acp, e, e, 1.0, 0.0, "epsilon", False, 1.0,
                                           False)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        torch.ops.fastgen.ddim_step_native(x, x, e, torch.tensor(5), ac, acp, e, e, 1.0, 0.0, "eps", False, 1.0, False)
    with pytest.raises(ValueError, match="variance_type must be one of"):
        torch.ops.fastgen.ddpm_step_native(x, x, e, torch.tensor(5), ac, acp, e, e, 1.0, "epsilon", "big", False, 1.0)
    with pytest.raises(ValueError, match="model_output has shape"):
        torch.ops.fastgen.ddpm_step_native(torch.randn(4, 3), x, e, torch.tensor(5), ac, acp, e, e, 1.0, "epsilon",
                                           "fixed_small", False, 1.0)
    with pytest.raises(ValueError, match=r"noise \(like sample\) or a seed / generator for in-kernel noise is "
                                         "required when eta > 0"):
        torch.ops.fastgen.ddim_step_native(x, x, e, torch.tensor(5), ac, acp, e, e, 1.0, 0.5, "epsilon", False, 1.0,
                                           False)
    with pytest.raises(ValueError, match="model_output_uncond has shape"):
        torch.ops.fastgen.ddim_step_native(x, x, e, torch.tensor(5), ac, acp, e, torch.randn(2, 2), 1.0, 0.0,
                                           "epsilon", False, 1.0, False)
    with pytest.raises(ValueError, match="timesteps must have shape"):
        torch.ops.fastgen.add_noise_native(x, x, torch.tensor([1, 2]), ac)
    with pytest.raises(ValueError, match=r"step_index must be in \[0, 1\)"):
        torch.ops.fastgen.flow_euler_step_native(x, x, e, torch.tensor(1), torch.ones(2), e, 1.0)


def _device_cases(device):
    """(native op, arguments on `device`, the argument the others must share a device with)."""
    x, ac = torch.randn(3, 4, device=device), torch.linspace(0.99, 0.01, 10, device=device)
    t, thr = torch.tensor(5, device=device), torch.full((3,), 1.5, device=device)
    empty, seed = x.new_empty(0), torch.tensor(7, device=device)
    sigmas = torch.linspace(1.0, 0.0, 10, device=device)
    return [("add_noise_native", (x, x, torch.tensor([1, 2, 3], device=device), ac), "original_samples"),
            ("get_velocity_native", (x, x, torch.tensor([1, 2, 3], device=device), ac), "sample"),
            ("ddim_step_native", (x, x, x, t, ac, ac, thr, x, 2.0, 0.5, "epsilon", False, 1.0, False), "sample"),
            ("ddim_step_native", (x, x, empty, t, ac, ac, thr, x, 2.0, 0.5, "epsilon", False, 1.0, False, seed, 0),
             "sample"),
            ("ddpm_step_native", (x, x, x, t, ac, ac, thr, x, 2.0, "epsilon", "fixed_small", False, 1.0), "sample"),
            ("flow_euler_step_native", (x, x, x, torch.tensor(2, device=device), sigmas, x, 2.0), "sample"),
            ("flow_heun_step_native", (x, x, x, torch.tensor(2, device=device), sigmas), "sample")]


def _check_devices(native_name, args, main, other):
    """conftest.check_native_devices; the one-value index arguments (timestep, step_index, seed:
    these may also be host tensors) are worded as _check_index / _check_seed word them: the C++
    checks say what the Python checks say (issue 18)."""
    check_native_devices(native_name, args, main, other, host_ok=("timestep", "step_index", "seed"))


def test_native_kernels_check_devices():
    for name, args, main in _device_cases("cpu"):
        _check_devices(name, args, main, "meta")


@pytest.mark.gpu
def test_native_kernels_check_devices_two_gpus():
    two_gpus()
    for name, args, main in _device_cases("cuda:1"):
        _check_devices(name, args, main, "cuda:0")
        check_native_on_second_gpu(name, args)


def test_eager_calls_skip_the_outer_dispatch_and_keep_its_behaviour():
    """Once ddim_step on CPU resolved to its C++ kernel, eager calls go to `ddim_step_native`
    directly (FusedOp._direct): same numbers, same error messages; a dispatch mode (as tracing
    uses) still sees `fastgen::ddim_step` itself."""
    op = fastgen.ops.REGISTRY["ddim_step"]
    if op.unavailable("cpu", "cpu"):
        pytest.skip("native extension not built")
    ac, acp = _tables("cpu")
    x, m = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    first = fastgen.ops.ddim_step(m, x, 17, ac, acp, backend="cpu")
    assert ("cpu", "cpu") in op._direct
    again = fastgen.ops.ddim_step(m, x, 17, ac, acp, backend="cpu")
    for a, b in zip(first, again):
        assert torch.equal(a, b)

    with DispatchLog() as log:
        logged = fastgen.ops.ddim_step(m, x, 17, ac, acp, backend="cpu")
    assert "fastgen.ddim_step.default" in log.ops
    for a, b in zip(first, logged):
        assert torch.equal(a, b)
    with fastgen.use_backend("cpu"):
        fastgen.ops.ddim_step(m, x, 17, ac, acp)
        test_bad_inputs_name_the_argument()


# -- GPU only ----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_device_timestep_matches_host_timestep(backend):
    require_backend("ddim_step", "cuda", backend)
    ac, acp = _tables("cuda")
    m, x, z = _step_inputs((2, 4, 33, 33), torch.float16, "cuda")
    sig = torch.linspace(1, 0, 8, device="cuda")
    for t in (0, 37, 999):
        for op, extra in ((fastgen.ops.ddim_step, dict(eta=0.5, noise=z)), (fastgen.ops.ddpm_step, dict(noise=z))):
            host = op(m, x, t, ac, acp, backend=backend, **extra)
            dev = op(m, x, torch.tensor(t, device="cuda"), ac, acp, backend=backend, **extra)
            for a, b in zip(host, dev):
                assert torch.equal(a, b)
        assert torch.equal(fastgen.ops.flow_euler_step(m, x, t % 7, sig, backend=backend),
                           fastgen.ops.flow_euler_step(m, x, torch.tensor(t % 7, device="cuda"), sig, backend=backend))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_step_is_cuda_graph_capturable(backend):
    require_backend("ddim_step", "cuda", backend)
    ac, acp = _tables("cuda")
    m, x, z = _step_inputs((2, 4, 64, 64), torch.float32, "cuda")
    t = torch.tensor(500, device="cuda")
    fastgen.ops.ddim_step(m, x, t, ac, acp, eta=0.5, noise=z, backend=backend)  # warm-up (Triton compile)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        prev, _ = fastgen.ops.ddim_step(m, x, t, ac, acp, eta=0.5, noise=z, backend=backend)
    for value in (500, 37):
        t.fill_(value)
        graph.replay()
        e = x.new_empty(0)
        expected, _ = reference.ddim_step(m, x, z, t, ac, acp, e, e, 1.0, 0.5, "epsilon", False, 1.0, False)
        assert_close(prev, expected, backend=backend, **_tol(torch.float32, ac[value]))
