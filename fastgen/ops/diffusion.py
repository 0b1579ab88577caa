"""Diffusion family: the forward-process noising (add_noise, get_velocity) and one sampler step
(DDPM, DDIM, flow-matching Euler / Heun), each one fused elementwise kernel per call.

Per-step scalars are gathered on the device from schedule tables indexed by the timestep, and
the timestep is a Python int or a 0-d tensor (host or device): no host-device sync in a step,
so a sampling loop can be captured in a CUDA graph. Math in fp32 (fp64 for fp64 samples);
outputs in the sample's dtype, contiguous.
"""
import torch

from ..kernels import diffusion as _triton_diffusion
from . import _checks, _philox
from ._common import math_dtype
from ._registry import FusedOp

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
_TABLE_DTYPES = (torch.float32, torch.float64)


def _is_fake(t):
    return isinstance(t, torch._subclasses.FakeTensor) or t.device.type == "meta"


def _check_table(name, table, sample, min_len=1):
    _checks.tensor(name, table)
    if table.dtype not in _TABLE_DTYPES:
        raise TypeError(f"fastgen: {name} must be float32 or float64, got {table.dtype}")
    if table.dim() != 1 or table.shape[0] < min_len:
        raise ValueError(f"fastgen: {name} must be a 1-D table with at least {min_len} entries, "
                         f"got shape {tuple(table.shape)}")
    if table.device != sample.device:
        raise ValueError(f"fastgen: {name} is on {table.device} but sample is on {sample.device}")


def _check_index(name, index, sample, upper):
    """A 0-d integer index on the host or the sample's device; host values are range-checked
    here (free), device values cannot be without a sync (the kernels clamp nothing: see docs)."""
    _checks.tensor(name, index)
    if index.dtype not in _INT_DTYPES:
        raise TypeError(f"fastgen: {name} must be an integer tensor (or a Python int), got {index.dtype}")
    if index.numel() != 1:
        raise ValueError(f"fastgen: {name} must hold one value, got shape {tuple(index.shape)}")
    if index.device != sample.device and index.device.type != "cpu":
        raise ValueError(f"fastgen: {name} is on {index.device}; expected the host or {sample.device}")
    if index.device.type == "cpu" and not _is_fake(index):
        value = int(index)
        if not 0 <= value < upper:
            raise ValueError(f"fastgen: {name} must be in [0, {upper}), got {value}")


def _check_optional_like(name, t, sample):
    """`t` is like sample, or empty (absent)."""
    _checks.tensor(name, t)
    if t.numel() == 0 and t.dim() == 1:
        return False
    _checks.like("sample", sample, name, t)
    return True


def _check_sample(sample, model_output, model_output_name="model_output"):
    _checks.float_tensor("sample", sample)
    _checks.batched("sample", sample)
    _checks.like("sample", sample, model_output_name, model_output)


# -- add_noise / get_velocity ------------------------------------------------------------------

def _check_mix(first_name):
    def check(first, noise, timesteps, alphas_cumprod):
        _checks.float_tensor(first_name, first)
        _checks.batched(first_name, first)
        _checks.like(first_name, first, "noise", noise)
        _checks.tensor("timesteps", timesteps)
        if timesteps.dtype not in _INT_DTYPES:
            raise TypeError(f"fastgen: timesteps must be an integer tensor, got {timesteps.dtype}")
        if timesteps.numel() not in (1, first.shape[0]) or timesteps.dim() > 1:
            raise ValueError(f"fastgen: timesteps must have shape ({first.shape[0]},) or hold one "
                             f"value, got {tuple(timesteps.shape)}")
        if timesteps.device != first.device:
            raise ValueError(f"fastgen: timesteps is on {timesteps.device} but {first_name} is on {first.device}")
        _check_table("alphas_cumprod", alphas_cumprod, first)
        # host values here, like the cpu kernel; on a GPU the kernels give NaN for a t out of range
        _checks.in_range("timesteps", timesteps, 0, alphas_cumprod.shape[0])
    return check


def _fake_like_first(first, *rest):
    return torch.empty_like(first, memory_format=torch.contiguous_format)


def _mix_backward(velocity):
    # d/d first and d/d noise are the per-sample coefficients times the incoming gradient;
    # plain torch ops here (training backward, not the sampling hot path).
    # Only the gradients autograd asks for (a diffusion loss needs d/d x0 alone), each one
    # broadcast multiply by a per-sample coefficient in the math dtype.
    def backward(ctx, grad):
        first, timesteps, table = ctx.saved_tensors
        a = _saved_alphas(timesteps, table, first)
        d_first = d_noise = None
        if ctx.needs_input_grad[0]:
            d_first = (grad * (-(1 - a).sqrt() if velocity else a.sqrt())).to(first.dtype)
        if ctx.needs_input_grad[1]:
            d_noise = (grad * (a.sqrt() if velocity else (1 - a).sqrt())).to(first.dtype)
        return d_first, d_noise, None, None
    return backward


def _saved_alphas(timesteps, table, like):
    """abar[t] per sample, shaped (B, 1, ...) in the math dtype, for the backward. Host timesteps
    were range-checked by the forward, so one index_select does (~25 us less than the reference's
    clamp-and-mask gather, which device timesteps still take: their NaN rule is the kernels')."""
    t = math_dtype(like.dtype)
    i = timesteps.reshape(-1)
    if timesteps.device.type != "cpu" or table.device.type != "cpu":  # NaN outside [0, T)
        i = i.to(table.device).long()
        outside = (i < 0) | (i >= table.shape[0])
        a = table.to(t).index_select(0, i.clamp(0, table.shape[0] - 1)).masked_fill(outside, float("nan"))
        return a.view((-1,) + (1,) * (like.dim() - 1))
    a = table.index_select(0, i if i.dtype in (torch.int32, torch.int64) else i.long())
    return (a if a.dtype == t else a.to(t)).view((-1,) + (1,) * (like.dim() - 1))


def _mix_setup_context(ctx, inputs, keyword_only_inputs, output):
    first, _, timesteps, table = inputs
    ctx.save_for_backward(first, timesteps, table)


_add_noise = FusedOp(
    "add_noise", "Tensor original_samples, Tensor noise, Tensor timesteps, Tensor alphas_cumprod",
    "Tensor", reference="diffusion.add_noise", fake=_fake_like_first,
    check=_check_mix("original_samples"), triton=_triton_diffusion.add_noise, native=True,
    autograd=(_mix_backward(False), _mix_setup_context))

_get_velocity = FusedOp(
    "get_velocity", "Tensor sample, Tensor noise, Tensor timesteps, Tensor alphas_cumprod",
    "Tensor", reference="diffusion.get_velocity", fake=_fake_like_first, check=_check_mix("sample"),
    triton=_triton_diffusion.get_velocity, native=True,
    autograd=(_mix_backward(True), _mix_setup_context))


def _timesteps_on(timesteps, like):
    if not isinstance(timesteps, torch.Tensor):
        return torch.as_tensor(timesteps, dtype=torch.int64, device=like.device)
    if timesteps.device != like.device and isinstance(like, torch.Tensor):
        return timesteps.to(like.device, non_blocking=True)
    return timesteps


def add_noise(original_samples, noise, timesteps, alphas_cumprod, *, backend=None):
    """Forward diffusion q(x_t | x_0) in one kernel:
    x_t = sqrt(abar[t_b]) * x0 + sqrt(1 - abar[t_b]) * noise, abar = alphas_cumprod.

    Args:
        original_samples, noise: (B, ...) float tensors of one dtype and device.
        timesteps: integer tensor of shape (B,) (or one value for all); host tensors are moved
            to the samples' device. The coefficients are gathered on the device.
        alphas_cumprod: 1-D float32/float64 table on the samples' device.
        backend: see `fastgen.use_backend`.
    Returns x_t like original_samples (contiguous); differentiable w.r.t. x0 and noise."""
    if isinstance(original_samples, torch.Tensor):
        timesteps = _timesteps_on(timesteps, original_samples)
    return _add_noise(original_samples, noise, timesteps, alphas_cumprod, backend=backend)


def get_velocity(sample, noise, timesteps, alphas_cumprod, *, backend=None):
    """The v-prediction target sqrt(abar_t) * noise - sqrt(1 - abar_t) * sample, per sample
    (arguments as in `add_noise`)."""
    if isinstance(sample, torch.Tensor):
        timesteps = _timesteps_on(timesteps, sample)
    return _get_velocity(sample, noise, timesteps, alphas_cumprod, backend=backend)


# -- DDIM / DDPM -------------------------------------------------------------------------------

def _check_guidance(model_output_uncond, sample, guidance_scale):
    _check_optional_like("model_output_uncond", model_output_uncond, sample)
    if guidance_scale != guidance_scale or guidance_scale in (float("inf"), float("-inf")):
        raise ValueError(f"fastgen: guidance_scale must be finite, got {guidance_scale}")


def _check_seed(seed, seed_offset, sample, has_noise):
    """In-kernel noise: a seed (one int64-compatible value on the host or the sample's device,
    read by the kernel, never synced) instead of a noise tensor, and a non-negative offset."""
    if seed is None:
        return False
    _checks.tensor("seed", seed)
    if seed.dtype not in _INT_DTYPES:
        raise TypeError(f"fastgen: seed must be an integer tensor (or a Python int), got {seed.dtype}")
    if seed.numel() != 1:
        raise ValueError(f"fastgen: seed must hold one value, got shape {tuple(seed.shape)}")
    if seed.device != sample.device and seed.device.type != "cpu":
        raise ValueError(f"fastgen: seed is on {seed.device}; expected the host or {sample.device}")
    if not 0 <= seed_offset < 2 ** 62:
        raise ValueError(f"fastgen: seed_offset must be in [0, 2**62), got {seed_offset}")
    if has_noise:
        raise ValueError("fastgen: pass either noise or seed (in-kernel noise), not both")
    return True


def _check_common_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                       threshold, model_output_uncond, guidance_scale, prediction_type, clip_sample_range,
                       seed=None, seed_offset=0):
    _check_sample(sample, model_output)
    _check_guidance(model_output_uncond, sample, guidance_scale)
    has_noise = _check_optional_like("noise", noise, sample)
    has_noise = _check_seed(seed, seed_offset, sample, has_noise) or has_noise
    _check_table("alphas_cumprod", alphas_cumprod, sample)
    _check_table("alphas_cumprod_prev", alphas_cumprod_prev, sample)
    if alphas_cumprod_prev.shape != alphas_cumprod.shape:
        raise ValueError(f"fastgen: alphas_cumprod_prev has shape {tuple(alphas_cumprod_prev.shape)} "
                         f"but alphas_cumprod has {tuple(alphas_cumprod.shape)}")
    _check_index("timestep", timestep, sample, alphas_cumprod.shape[0])
    _checks.tensor("threshold", threshold)
    if threshold.numel() or threshold.dim() != 1:
        _checks.per_sample("sample", sample, "threshold", threshold)
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"fastgen: prediction_type must be one of {PREDICTION_TYPES}, "
                         f"got {prediction_type!r}")
    if not clip_sample_range > 0:
        raise ValueError(f"fastgen: clip_sample_range must be > 0, got {clip_sample_range}")
    return has_noise


def _check_ddim(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                threshold, model_output_uncond, guidance_scale=1.0, eta=0.0, prediction_type="epsilon",
                clip_sample=False, clip_sample_range=1.0, use_clipped_model_output=False, seed=None,
                seed_offset=0):
    has_noise = _check_common_step(model_output, sample, noise, timestep, alphas_cumprod,
                                   alphas_cumprod_prev, threshold, model_output_uncond, guidance_scale,
                                   prediction_type, clip_sample_range, seed, seed_offset)
    if not eta >= 0:
        raise ValueError(f"fastgen: eta must be >= 0, got {eta}")
    if eta > 0 and not has_noise:
        raise ValueError("fastgen: noise (like sample) or a seed / generator for in-kernel noise is "
                         "required when eta > 0")


def _check_ddpm(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                threshold, model_output_uncond, guidance_scale=1.0, prediction_type="epsilon",
                variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0, seed=None, seed_offset=0):
    _check_common_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
                       threshold, model_output_uncond, guidance_scale, prediction_type, clip_sample_range,
                       seed, seed_offset)
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"fastgen: variance_type must be one of {VARIANCE_TYPES}, "
                         f"got {variance_type!r}")


def _fake_step(model_output, sample, *rest):
    return (torch.empty_like(sample, memory_format=torch.contiguous_format),
            torch.empty_like(sample, memory_format=torch.contiguous_format))


_STEP_TABLES = ("Tensor noise, Tensor timestep, Tensor alphas_cumprod, Tensor alphas_cumprod_prev, "
                "Tensor threshold, Tensor model_output_uncond, float guidance_scale=1.0")

_ddim = FusedOp(
    "ddim_step",
    f"Tensor model_output, Tensor sample, {_STEP_TABLES}, float eta=0.0, "
    "str prediction_type='epsilon', bool clip_sample=False, float clip_sample_range=1.0, "
    "bool use_clipped_model_output=False, Tensor? seed=None, int seed_offset=0",
    "(Tensor, Tensor)", reference="diffusion.ddim_step", fake=_fake_step, check=_check_ddim,
    triton=_triton_diffusion.ddim_step, native=True, native_checks=True)

_ddpm = FusedOp(
    "ddpm_step",
    f"Tensor model_output, Tensor sample, {_STEP_TABLES}, str prediction_type='epsilon', "
    "str variance_type='fixed_small', bool clip_sample=True, float clip_sample_range=1.0, "
    "Tensor? seed=None, int seed_offset=0",
    "(Tensor, Tensor)", reference="diffusion.ddpm_step", fake=_fake_step, check=_check_ddpm,
    triton=_triton_diffusion.ddpm_step, native=True, native_checks=True)


# A step costs ~10 us of kernel on a 64x64 latent, so the per-call tensors the wrappers make
# (host index tensors, empty "absent" markers) are cached: each costs 1-2 us to create. Never
# while torch.compile traces (it must see the tensors made, not Python-side state).
_INDEX_CACHE = {}
_EMPTY_CACHE = {}
_CACHE_LIMIT = 4096


def _is_compiling():
    return torch.compiler.is_compiling()


def _as_index(value, name):
    """A Python int becomes a host 0-d tensor: the kernels take it as an argument (no copy to
    the device, nothing to sync)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"fastgen: {name} must be an int or an integer tensor, got {type(value).__name__}")
    value = value.__index__()
    if _is_compiling():
        return torch.tensor(value, dtype=torch.int64)
    index = _INDEX_CACHE.get(value)
    if index is None:
        if len(_INDEX_CACHE) >= _CACHE_LIMIT:
            _INDEX_CACHE.clear()
        index = _INDEX_CACHE[value] = torch.tensor(value, dtype=torch.int64)
    return index


def _empty(like, dtype):
    """A 1-D empty tensor on like's device: the ops' marker for an absent optional tensor."""
    if _is_compiling():
        return like.new_empty((0,), dtype=dtype)
    key = (like.device, dtype)
    empty = _EMPTY_CACHE.get(key)
    if empty is None:
        empty = _EMPTY_CACHE[key] = like.new_empty((0,), dtype=dtype)
    return empty


def _threshold(thresholding, model_output, sample, timestep, alphas_cumprod, prediction_type,
               ratio, max_value, model_output_uncond, guidance_scale):
    """Per-sample dynamic-threshold scale, or an empty tensor. Needs a quantile over each sample
    of x0 (a selection, not an elementwise op): computed here before the fused step."""
    if not thresholding:
        return _empty(sample, math_dtype(sample.dtype))
    if not 0 < ratio <= 1:
        raise ValueError(f"fastgen: dynamic_thresholding_ratio must be in (0, 1], got {ratio}")
    t = math_dtype(sample.dtype)
    a = alphas_cumprod[timestep.to(alphas_cumprod.device).reshape(()).long()].to(t)
    m = model_output.to(t)
    if model_output_uncond.numel():  # classifier-free guidance u + s (c - u)
        u = model_output_uncond.to(t)
        m = u + guidance_scale * (m - u)
    x = sample.to(t)
    if prediction_type == "epsilon":
        x0 = (x - (1 - a).sqrt() * m) / a.sqrt()
    elif prediction_type == "sample":
        x0 = m
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * m
    else:
        raise ValueError(f"fastgen: prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return dynamic_threshold(x0, ratio, max_value)


def dynamic_threshold(x0, ratio, max_value):
    """Imagen's dynamic thresholding scale per sample, clamp(quantile(|x0|, ratio), 1, max_value),
    shape (B,), in the math dtype of x0."""
    flat = x0.reshape(x0.shape[0], -1).abs().to(math_dtype(x0.dtype))
    return torch.quantile(flat, ratio, dim=1).clamp(1, max_value)


def _step_seed(noise, generator, seed, sample):
    """The seed tensor for in-kernel noise, or None. A generator gives a fresh seed drawn on its
    own device (its state advances: consecutive steps get independent noise, and re-seeding
    the generator repeats them; no host-device sync, a CUDA generator is graph-capturable)."""
    if (generator is not None or seed is not None) and noise is not None:
        raise ValueError("fastgen: pass either noise or a generator / seed (in-kernel noise), not both")
    return _philox.seed_tensor(generator, seed)


def _or_empty(noise, sample):
    _checks.tensor("sample", sample)
    return _empty(sample, sample.dtype) if noise is None else noise


def ddim_step(model_output, sample, timestep, alphas_cumprod, alphas_cumprod_prev, *, eta=0.0,
              noise=None, prediction_type="epsilon", clip_sample=False, clip_sample_range=1.0,
              thresholding=False, dynamic_thresholding_ratio=0.995, sample_max_value=1.0,
              use_clipped_model_output=False, model_output_uncond=None, guidance_scale=1.0, generator=None,
              seed=None, seed_offset=0, backend=None):
    """One DDIM step x_t -> x_prev in one kernel (Song et al. 2021, eq. 12), diffusers'
    DDIMScheduler.step math.

    Args:
        model_output, sample: (B, ...) float tensors of one dtype and device.
        timestep: Python int or 0-d integer tensor (host or the sample's device).
        alphas_cumprod: 1-D float table abar[t]; alphas_cumprod_prev[t]: abar of the timestep
            the sampler steps to from t (DDIMScheduler builds both).
        eta: 0 = deterministic DDIM, 1 = DDPM-like; > 0 needs `noise` (like sample), or
            in-kernel noise from `generator` / `seed` (see `ddpm_step`).
        prediction_type: "epsilon", "sample" or "v_prediction".
        clip_sample / clip_sample_range: clamp the predicted x0; `thresholding` (Imagen's dynamic
            thresholding with `dynamic_thresholding_ratio`, `sample_max_value`) replaces it.
        use_clipped_model_output: re-derive eps from the clipped x0.
        model_output_uncond, guidance_scale: classifier-free guidance fused into the step: the
            step uses model_output_uncond + guidance_scale * (model_output - model_output_uncond).
    Returns (prev_sample, pred_original_sample), like sample."""
    _checks.tensor("sample", sample)
    _checks.tensor("model_output", model_output)
    timestep = _as_index(timestep, "timestep")
    uncond = _or_empty(model_output_uncond, sample)
    threshold = _threshold(thresholding, model_output, sample, timestep, alphas_cumprod,
                           prediction_type, dynamic_thresholding_ratio, sample_max_value, uncond,
                           guidance_scale)
    seed = _step_seed(noise, generator, seed, sample)
    return _ddim(model_output, sample, _or_empty(noise, sample), timestep, alphas_cumprod,
                 alphas_cumprod_prev, threshold, uncond, float(guidance_scale), float(eta),
                 prediction_type, bool(clip_sample),
                 float(clip_sample_range), bool(use_clipped_model_output), seed, int(seed_offset),
                 backend=backend)


def ddpm_step(model_output, sample, timestep, alphas_cumprod, alphas_cumprod_prev, *, noise=None,
              prediction_type="epsilon", variance_type="fixed_small", clip_sample=True,
              clip_sample_range=1.0, thresholding=False, dynamic_thresholding_ratio=0.995,
              sample_max_value=1.0, model_output_uncond=None, guidance_scale=1.0, generator=None, seed=None,
              seed_offset=0, backend=None):
    """One ancestral DDPM step in one kernel (Ho et al. 2020), diffusers' DDPMScheduler.step math:
    posterior mean from the predicted x0 (clipped or thresholded as in `ddim_step`) plus
    std * noise when timestep > 0 and `noise` is given (decided on the device).
    variance_type: "fixed_small" (posterior variance), "fixed_small_log", "fixed_large" (beta_t),
    "fixed_large_log" (the same std through exp(log(var) / 2)). Guidance as in `ddim_step`.

    In-kernel noise (instead of `noise`): with `generator` (a torch.Generator) a fresh 64-bit
    seed is drawn from it on its device (one tiny random op, no host-device sync; the
    generator advances, so a re-seeded generator reproduces the run), or `seed` (int or 0-d
    integer tensor on the host or the sample's device) is used as is. Element i of the
    (flattened) sample gets Philox randn(seed, seed_offset + i), the same float32 value on every
    backend (fastgen/ops/_philox.py; Triton's tl.randn), whatever the kernel's tiling.
    Returns (prev_sample, pred_original_sample), like sample."""
    _checks.tensor("sample", sample)
    _checks.tensor("model_output", model_output)
    timestep = _as_index(timestep, "timestep")
    uncond = _or_empty(model_output_uncond, sample)
    threshold = _threshold(thresholding, model_output, sample, timestep, alphas_cumprod,
                           prediction_type, dynamic_thresholding_ratio, sample_max_value, uncond,
                           guidance_scale)
    seed = _step_seed(noise, generator, seed, sample)
    return _ddpm(model_output, sample, _or_empty(noise, sample), timestep, alphas_cumprod,
                 alphas_cumprod_prev, threshold, uncond, float(guidance_scale), prediction_type,
                 variance_type, bool(clip_sample),
                 float(clip_sample_range), seed, int(seed_offset), backend=backend)


# -- flow matching -------------------------------------------------------------------------------

def _check_flow_euler(model_output, sample, noise, step_index, sigmas, model_output_uncond,
                      guidance_scale=1.0):
    _check_sample(sample, model_output)
    _check_guidance(model_output_uncond, sample, guidance_scale)
    _check_optional_like("noise", noise, sample)
    _check_table("sigmas", sigmas, sample, min_len=2)
    _check_index("step_index", step_index, sample, sigmas.shape[0] - 1)


def _check_flow_heun(model_output, model_output_next, sample, step_index, sigmas):
    _check_sample(sample, model_output)
    _checks.like("sample", sample, "model_output_next", model_output_next)
    _check_table("sigmas", sigmas, sample, min_len=2)
    _check_index("step_index", step_index, sample, sigmas.shape[0] - 1)




_flow_euler = FusedOp(
    "flow_euler_step", "Tensor model_output, Tensor sample, Tensor noise, Tensor step_index, Tensor sigmas, "
    "Tensor model_output_uncond, float guidance_scale=1.0",
    "Tensor", reference="diffusion.flow_euler_step",
    fake=lambda model_output, sample, *rest: torch.empty_like(sample, memory_format=torch.contiguous_format),
    check=_check_flow_euler, triton=_triton_diffusion.flow_euler_step, native=True, native_checks=True)

_flow_heun = FusedOp(
    "flow_heun_step",
    "Tensor model_output, Tensor model_output_next, Tensor sample, Tensor step_index, Tensor sigmas",
    "Tensor", reference="diffusion.flow_heun_step",
    fake=lambda model_output, model_output_next, sample, *rest: torch.empty_like(
        sample, memory_format=torch.contiguous_format),
    check=_check_flow_heun, triton=_triton_diffusion.flow_heun_step, native=True, native_checks=True)


def flow_euler_step(model_output, sample, step_index, sigmas, *, noise=None, model_output_uncond=None,
                    guidance_scale=1.0, backend=None):
    """Flow matching / rectified flow Euler step from sigmas[i] to sigmas[i + 1] (i = step_index,
    Python int or 0-d integer tensor) with velocity model_output: x + (s_next - s) * v. With
    `noise`, the stochastic variant (1 - s_next) * (x - s * v) + s_next * noise. Guidance as in
    `ddim_step` (v = uncond + guidance_scale * (cond - uncond)). One kernel; returns like sample."""
    step_index = _as_index(step_index, "step_index")
    return _flow_euler(model_output, sample, _or_empty(noise, sample), step_index, sigmas,
                       _or_empty(model_output_uncond, sample), float(guidance_scale), backend=backend)


def flow_heun_step(model_output, model_output_next, sample, step_index, sigmas, *, backend=None):
    """Heun's corrector for the flow ODE: x + (s_next - s) * (v + v_next) / 2, where v_next is
    the velocity at the Euler predictor `flow_euler_step(v, x, i, sigmas)`. One kernel."""
    step_index = _as_index(step_index, "step_index")
    return _flow_heun(model_output, model_output_next, sample, step_index, sigmas, backend=backend)
