"""Drop-in replacements for diffusers' DDPMScheduler, DDIMScheduler and
FlowMatchEulerDiscreteScheduler: same constructor arguments and defaults, same tables, same
`set_timesteps` / `step` / `add_noise` results, with each step one fused kernel
(fastgen.ops.ddpm_step / ddim_step / flow_euler_step) and no host-device sync.

Where they differ from diffusers (documented in docs/diffusion.md):
- a step whose timestep is a device tensor cannot look at its value, so DDPM draws the
  variance noise even at t == 0 (where it is multiplied by 0); the generator then advances one
  draw more at the end of a loop than diffusers' does. Python ints and host tensors behave
  exactly like diffusers.
- math runs in fp32 for fp16/bf16 samples (diffusers runs add_noise in the sample's dtype).
- DDPM variance_type="fixed_large_log" gives std = exp(log(beta_t) / 2) = sqrt(beta_t);
  diffusers 0.42 takes the square root of log(beta_t) there and returns NaN for t > 0.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .. import ops
from ..ops import _philox
from ..ops import diffusion as _diffusion_ops
from . import schedules
from ._config import HAVE_DIFFUSERS, KARRAS_COMPATIBLES, BaseOutput, SchedulerBase, make_output, register_to_config

if HAVE_DIFFUSERS:
    # diffusers' own output classes; SchedulerMixin in this module's namespace is what a
    # pipeline's from_pretrained looks for to load a scheduler saved as
    # ("fastgen.diffusion.schedulers", "DDIMScheduler")
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
    from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401


NOISE_SOURCES = ("randn", "philox")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
VARIANCE_TYPES = _diffusion_ops.VARIANCE_TYPES + LEARNED_VARIANCE_TYPES


def _in_kernel_noise(noise_source, generator, device):
    """Step arguments for in-kernel noise (`noise_source="philox"`): the step's kernel draws its
    own normals from a fresh seed taken from `generator` (or the default generator of the
    sample's device), so no noise tensor is drawn, written and read back. None for "randn"."""
    if noise_source == "randn":
        return None
    if noise_source != "philox":
        raise ValueError(f"noise_source must be one of {NOISE_SOURCES}, got {noise_source!r}")
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise ValueError("noise_source='philox' takes one generator (the kernel seeds every sample "
                             "from it), not one per sample")
        generator = generator[0]
    if generator is not None:
        return dict(generator=generator)
    return dict(seed=_philox.seed_from_generator(None, device))


def randn(shape, generator=None, device=None, dtype=None):
    """Standard normal noise drawn exactly as diffusers' randn_tensor draws it: on the
    generator's device (a CPU generator feeds any device), one generator per sample when a list
    is given; then moved to `device`."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if generator is not None:
        gen_type = (generator[0] if isinstance(generator, (list, tuple)) else generator).device.type
        if gen_type != device.type:
            if gen_type != "cpu":
                raise ValueError(f"cannot draw a {device} tensor from a generator on {gen_type}")
            rand_device = torch.device("cpu")
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        draws = [torch.randn((1,) + shape[1:], generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(draws, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


if not HAVE_DIFFUSERS:
    @dataclass
    class DDPMSchedulerOutput(BaseOutput):
        prev_sample: torch.Tensor
        pred_original_sample: Optional[torch.Tensor] = None

    @dataclass
    class DDIMSchedulerOutput(BaseOutput):
        prev_sample: torch.Tensor
        pred_original_sample: Optional[torch.Tensor] = None

    @dataclass
    class FlowMatchEulerDiscreteSchedulerOutput(BaseOutput):
        prev_sample: torch.Tensor


def _host_int(timestep):
    """The timestep's value when reading it is free (int, numpy, host tensor), else None."""
    if isinstance(timestep, torch.Tensor):
        return int(timestep) if timestep.device.type == "cpu" and timestep.numel() == 1 else None
    return int(timestep)


def _check_timestep_range(t, num_train_timesteps):
    """diffusers indexes its tables with the timestep, so one outside them raises IndexError."""
    if t is not None and not 0 <= t < num_train_timesteps:
        raise IndexError(f"timestep {t} is outside the schedule: expected 0 <= timestep < "
                         f"num_train_timesteps={num_train_timesteps}")


class _TableCache:
    """Schedule tables copied to each device once (per set_timesteps), not once per step."""

    def __init__(self):
        self._tables = {}

    def get(self, device, build):
        device = torch.device(device)
        tables = self._tables.get(device)
        if tables is None:
            tables = self._tables[device] = tuple(t.to(device) for t in build())
        return tables

    def clear(self):
        self._tables.clear()


class _DiscreteScheduler(SchedulerBase):
    """What DDPM and DDIM share: the beta schedule, add_noise / get_velocity, thresholding."""

    order = 1
    _compatibles = list(KARRAS_COMPATIBLES)

    def _init_schedule(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                       prediction_type, timestep_spacing, rescale_betas_zero_snr, clip_sample_range,
                       dynamic_thresholding_ratio):
        if prediction_type not in _diffusion_ops.PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {_diffusion_ops.PREDICTION_TYPES}, got {prediction_type!r}")
        if timestep_spacing not in schedules.TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {schedules.TIMESTEP_SPACINGS}, "
                             f"got {timestep_spacing!r}")
        if not clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
        if not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError(f"dynamic_thresholding_ratio must be in (0, 1], got {dynamic_thresholding_ratio}")
        betas = schedules.make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        if rescale_betas_zero_snr:
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        self._tables = _TableCache()

    def __len__(self):
        return self.config.num_train_timesteps

    def scale_model_input(self, sample, timestep=None):
        """Identity: DDPM/DDIM models take x_t unscaled (kept for API compatibility)."""
        return sample

    def _device_tables(self, device):
        # (alphas_cumprod, alphas_cumprod_prev) on `device`; alphas_cumprod_prev[t] is abar of
        # the timestep a step from t lands on (each subclass's _alphas_cumprod_prev); the
        # cache is cleared by set_timesteps
        return self._tables.get(device, lambda: (self.alphas_cumprod, self._alphas_cumprod_prev()))

    def _step_kwargs(self):
        c = self.config
        return dict(prediction_type=c.prediction_type, clip_sample=c.clip_sample,
                    clip_sample_range=c.clip_sample_range, thresholding=c.thresholding,
                    dynamic_thresholding_ratio=c.dynamic_thresholding_ratio,
                    sample_max_value=c.sample_max_value)

    def add_noise(self, original_samples, noise, timesteps):
        """q(x_t | x_0) for a batch (timesteps: one per sample), one fused kernel."""
        alphas_cumprod, _ = self._device_tables(original_samples.device)
        return ops.add_noise(original_samples, noise, timesteps, alphas_cumprod)

    def get_velocity(self, sample, noise, timesteps):
        """v-prediction target sqrt(abar_t) * noise - sqrt(1 - abar_t) * sample, one kernel."""
        alphas_cumprod, _ = self._device_tables(sample.device)
        return ops.get_velocity(sample, noise, timesteps, alphas_cumprod)

    def _threshold_sample(self, sample):
        """Dynamic thresholding of a predicted x0 (the fused steps do this themselves)."""
        s = _diffusion_ops.dynamic_threshold(sample, self.config.dynamic_thresholding_ratio,
                                             self.config.sample_max_value)
        s = s.reshape((-1,) + (1,) * (sample.dim() - 1))
        x = sample.to(s.dtype)
        return (torch.clamp(x, -s, s) / s).to(sample.dtype)


class DDPMScheduler(_DiscreteScheduler):
    """Denoising diffusion probabilistic models (Ho et al. 2020): ancestral sampling, drop-in for
    diffusers.DDPMScheduler.

    variance_type "learned" / "learned_range" (improved DDPM, DeepFloyd IF): the model predicts
    2 * C channels, the second half its variance ("learned": the variance itself;
    "learned_range": v in [-1, 1] interpolating log beta_t and the log posterior variance). The
    posterior mean and x0 still come from the fused step; the learned std * noise is added after
    it in PyTorch (one extra elementwise pass), because the fused kernel takes a per-timestep
    std, not a per-element one."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                            prediction_type, timestep_spacing, rescale_betas_zero_snr, clip_sample_range,
                            dynamic_thresholding_ratio)
        self.custom_timesteps = False
        self.variance_type = variance_type

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        """Inference timesteps from `num_inference_steps` and the configured spacing, or the
        given descending `timesteps`."""
        n_train = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass only one of num_inference_steps and timesteps")
        if timesteps is not None:
            timesteps = np.array([int(t) for t in timesteps], dtype=np.int64)
            if np.any(timesteps[1:] >= timesteps[:-1]):
                raise ValueError("timesteps must be in descending order")
            if len(timesteps) and timesteps[0] >= n_train:
                raise ValueError(f"timesteps must start before num_train_timesteps={n_train}")
            self.custom_timesteps = True
            self.num_inference_steps = len(timesteps)
        else:
            if num_inference_steps is None or not 0 < num_inference_steps <= n_train:
                raise ValueError(f"num_inference_steps must be in [1, {n_train}], got {num_inference_steps}")
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            timesteps = schedules.spaced_timesteps(self.config.timestep_spacing, n_train, num_inference_steps,
                                                   self.config.steps_offset)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._schedule_host = timesteps
        self._schedule_set = frozenset(timesteps.tolist())
        self._tables.clear()
        if device is not None:
            self._device_tables(device)

    def previous_timestep(self, timestep):
        t = int(timestep)
        if self.custom_timesteps or self.num_inference_steps:
            matches = np.nonzero(self._schedule_host == t)[0]
            if len(matches) == 0:
                raise IndexError(f"timestep {t} is not in the schedule set by set_timesteps "
                                 f"({len(self._schedule_host)} steps)")
            index = int(matches[0])
            prev = -1 if index == len(self._schedule_host) - 1 else int(self._schedule_host[index + 1])
        else:
            prev = t - 1
        return torch.tensor(prev) if isinstance(timestep, torch.Tensor) else prev

    def _alphas_cumprod_prev(self):
        n = self.config.num_train_timesteps
        prev = np.arange(n) - 1
        if self.custom_timesteps or self.num_inference_steps:
            schedule = self._schedule_host
            # the first occurrence of a timestep decides its successor, as a search would
            for i in range(len(schedule) - 1, -1, -1):
                if 0 <= schedule[i] < n:
                    prev[schedule[i]] = schedule[i + 1] if i + 1 < len(schedule) else -1
        prev = torch.from_numpy(prev)
        return torch.where(prev >= 0, self.alphas_cumprod[prev.clamp_min(0)], self.one)

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        """diffusers' DDPMScheduler._get_variance, same return values: the posterior variance
        (fixed_small), its square root (fixed_small_log), beta_t (fixed_large), log beta_t
        (fixed_large_log), `predicted_variance` itself (learned) or the interpolated log variance
        (learned_range). The step itself does not call this (it is fused)."""
        variance_type = self.variance_type if variance_type is None else variance_type
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * beta_t, min=1e-20)
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if variance_type == "fixed_large":
            return beta_t
        if variance_type == "fixed_large_log":
            return torch.log(beta_t)
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(beta_t) + (1 - frac) * torch.log(variance)
        return variance

    def _split_learned(self, output, sample, name):
        if output.dim() < 2 or output.shape[1] != 2 * sample.shape[1]:
            raise ValueError(f"variance_type={self.variance_type!r}: {name} must have 2 * sample channels "
                             f"(mean, then variance) on dim 1, got shape {tuple(output.shape)} for a sample of "
                             f"shape {tuple(sample.shape)}")
        return torch.split(output, sample.shape[1], dim=1)

    def _learned_std(self, timestep, predicted_variance, alphas_cumprod, alphas_cumprod_prev):
        # tables indexed on the device: a device timestep costs no sync
        index = torch.as_tensor(timestep, device=alphas_cumprod.device).long().reshape(())
        a, a_prev = alphas_cumprod[index], alphas_cumprod_prev[index]
        beta_t = 1 - a / a_prev
        if self.variance_type == "learned":
            std = predicted_variance ** 0.5
        else:
            log_var = torch.log(torch.clamp((1 - a_prev) / (1 - a) * beta_t, min=1e-20))
            frac = (predicted_variance + 1) / 2
            std = torch.exp(0.5 * (frac * torch.log(beta_t) + (1 - frac) * log_var))
        return torch.where(index > 0, std, torch.zeros_like(std))

    def step(self, model_output, timestep, sample, generator=None, return_dict=True, *,
             model_output_uncond=None, guidance_scale=1.0, noise_source="randn"):
        """x_t -> x_{t-1}: posterior mean from the predicted x0 plus std * noise (t > 0).
        fastgen extension: `model_output_uncond` + `guidance_scale` apply classifier-free
        guidance inside the fused step (model_output is then the conditional output).
        `noise_source="philox"`: the kernel makes the noise itself (Philox, seeded from
        `generator`; reproducible for a fixed generator seed, but other numbers than diffusers'
        randn draws, see docs/diffusion.md); "randn" (default) matches diffusers exactly."""
        alphas_cumprod, alphas_cumprod_prev = self._device_tables(sample.device)
        t = _host_int(timestep)
        _check_timestep_range(t, self.config.num_train_timesteps)
        if t is not None and (self.custom_timesteps or self.num_inference_steps) and t not in self._schedule_set:
            # diffusers looks the step's predecessor up in the schedule and raises IndexError
            raise IndexError(f"timestep {t} is not in the schedule set by set_timesteps")
        predicted_variance = None
        learned = self.variance_type in LEARNED_VARIANCE_TYPES
        if learned:
            model_output, predicted_variance = self._split_learned(model_output, sample, "model_output")
            if model_output_uncond is not None:  # guidance acts on the mean; the variance is the conditional one
                model_output_uncond, _ = self._split_learned(model_output_uncond, sample, "model_output_uncond")
        noise, in_kernel = None, None
        if t is None or t > 0:
            in_kernel = None if learned else _in_kernel_noise(noise_source, generator, sample.device)
            if in_kernel is None:
                noise = randn(model_output.shape, generator=generator, device=model_output.device,
                              dtype=model_output.dtype)
        prev, x0 = ops.ddpm_step(model_output, sample, timestep, alphas_cumprod, alphas_cumprod_prev,
                                 noise=None if learned else noise, **(in_kernel or {}),
                                 variance_type="fixed_small" if learned else self.variance_type,
                                 model_output_uncond=model_output_uncond, guidance_scale=guidance_scale,
                                 **self._step_kwargs())
        if learned and noise is not None:
            std = self._learned_std(timestep, predicted_variance, alphas_cumprod, alphas_cumprod_prev)
            prev = (prev + std * noise).to(prev.dtype)
        if not return_dict:
            return prev, x0
        return make_output(DDPMSchedulerOutput, prev_sample=prev, pred_original_sample=x0)


class DDIMScheduler(_DiscreteScheduler):
    """Denoising diffusion implicit models (Song et al. 2021), drop-in for diffusers.DDIMScheduler."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0,
                 timestep_spacing: str = "leading", rescale_betas_zero_snr: bool = False):
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                            prediction_type, timestep_spacing, rescale_betas_zero_snr, clip_sample_range,
                            dynamic_thresholding_ratio)
        # abar "before" timestep 0: 1 (the step to t = -1 lands on clean data) or abar_0
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps, device=None):
        n_train = self.config.num_train_timesteps
        if not 0 < num_inference_steps <= n_train:
            raise ValueError(f"num_inference_steps must be in [1, {n_train}], got {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        timesteps = schedules.spaced_timesteps(self.config.timestep_spacing, n_train, num_inference_steps,
                                               self.config.steps_offset)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._tables.clear()
        if device is not None:
            self._device_tables(device)

    def _alphas_cumprod_prev(self):
        # DDIM steps from t to t - num_train_timesteps // num_inference_steps for every spacing
        if self.num_inference_steps is None:
            return self.alphas_cumprod  # placeholder until set_timesteps (step refuses to run)
        prev = torch.arange(self.config.num_train_timesteps) - self.config.num_train_timesteps // self.num_inference_steps
        return torch.where(prev >= 0, self.alphas_cumprod[prev.clamp_min(0)], self.final_alpha_cumprod)

    def _get_variance(self, timestep, prev_timestep):
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True, *, model_output_uncond=None, guidance_scale=1.0,
             noise_source="randn"):
        """x_t -> x_prev with the DDIM update; eta > 0 adds eta-scaled posterior noise
        (`variance_noise`, or drawn from `generator`). fastgen extensions: classifier-free
        guidance fused into the step and `noise_source`, as in DDPMScheduler.step."""
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps before step")
        _check_timestep_range(_host_int(timestep), self.config.num_train_timesteps)
        alphas_cumprod, alphas_cumprod_prev = self._device_tables(sample.device)
        noise, in_kernel = None, None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise is None:
                in_kernel = _in_kernel_noise(noise_source, generator, sample.device)
            if variance_noise is not None or in_kernel is None:
                noise = variance_noise if variance_noise is not None else randn(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        prev, x0 = ops.ddim_step(model_output, sample, timestep, alphas_cumprod, alphas_cumprod_prev, eta=eta,
                                 noise=noise, **(in_kernel or {}), use_clipped_model_output=use_clipped_model_output,
                                 model_output_uncond=model_output_uncond, guidance_scale=guidance_scale,
                                 **self._step_kwargs())
        if not return_dict:
            return prev, x0
        return make_output(DDIMSchedulerOutput, prev_sample=prev, pred_original_sample=x0)


class FlowMatchEulerDiscreteScheduler(SchedulerBase):
    """Euler sampler for flow matching / rectified flow (x_t = (1 - sigma) x0 + sigma noise,
    the model predicts the velocity noise - x0), drop-in for
    diffusers.FlowMatchEulerDiscreteScheduler. `per_token_timesteps` is not supported."""

    order = 1
    _compatibles = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, use_dynamic_shifting: bool = False,
                 base_shift: Optional[float] = 0.5, max_shift: Optional[float] = 1.15,
                 base_image_seq_len: int = 256, max_image_seq_len: int = 4096, invert_sigmas: bool = False,
                 shift_terminal: Optional[float] = None, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 time_shift_type: str = "exponential", stochastic_sampling: bool = False):
        if use_beta_sigmas:
            try:
                import scipy.stats  # noqa: F401
            except ImportError:
                raise ImportError("use_beta_sigmas needs scipy (pip install scipy)") from None
        if use_beta_sigmas + use_exponential_sigmas + use_karras_sigmas > 1:
            raise ValueError("use at most one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas")
        if time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {time_shift_type!r}")
        timesteps = torch.from_numpy(
            np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy())
        sigmas = timesteps / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self.timesteps = sigmas * num_train_timesteps
        self._step_index = None
        self._begin_index = None
        self._shift = shift
        self.sigmas = sigmas.to("cpu")
        self.sigma_min = self.sigmas[-1].item()
        self.sigma_max = self.sigmas[0].item()
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self._timesteps_host = self.timesteps.numpy().copy()
        self._tables = _TableCache()

    def __len__(self):
        return self.config.num_train_timesteps

    @property
    def shift(self):
        return self._shift

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start stepping at this index (skips looking the first timestep up in the schedule)."""
        self._begin_index = begin_index

    def set_shift(self, shift: float):
        self._shift = shift

    def scale_model_input(self, sample, timestep=None):
        return sample

    # -- schedule --------------------------------------------------------------------------------

    def time_shift(self, mu, sigma, t):
        if self.config.time_shift_type == "exponential":
            return np.exp(mu) / (np.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t):
        """Rescale so the last sigma equals shift_terminal."""
        one_minus = 1 - t
        scale = one_minus[-1] / (1 - self.config.shift_terminal)
        return 1 - (one_minus / scale)

    def _sigma_bounds(self, sigmas):
        lo = getattr(self.config, "sigma_min", None)
        hi = getattr(self.config, "sigma_max", None)
        lo = lo if lo is not None else float(sigmas[-1])
        hi = hi if hi is not None else float(sigmas[0])
        return lo, hi

    def _karras(self, sigmas, n, rho=7.0):
        lo, hi = self._sigma_bounds(sigmas)
        ramp = np.linspace(0, 1, n)
        return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho

    def _exponential(self, sigmas, n):
        lo, hi = self._sigma_bounds(sigmas)
        return np.exp(np.linspace(np.log(hi), np.log(lo), n))

    def _beta(self, sigmas, n, alpha=0.6, beta=0.6):
        import scipy.stats

        lo, hi = self._sigma_bounds(sigmas)
        return np.array([lo + scipy.stats.beta.ppf(t, alpha, beta) * (hi - lo)
                         for t in 1 - np.linspace(0, 1, n)])

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        c = self.config
        if c.use_dynamic_shifting and mu is None:
            raise ValueError("mu is required when use_dynamic_shifting=True")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError("sigmas and timesteps must have the same length")
        if num_inference_steps is not None:
            if (sigmas is not None and len(sigmas) != num_inference_steps) or (
                    timesteps is not None and len(timesteps) != num_inference_steps):
                raise ValueError("sigmas / timesteps must have num_inference_steps entries")
        elif sigmas is None and timesteps is None:
            raise ValueError("pass num_inference_steps, sigmas or timesteps")
        else:
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        self.num_inference_steps = num_inference_steps
        given_timesteps = timesteps is not None
        if given_timesteps:
            timesteps = np.array(timesteps).astype(np.float32)
        if sigmas is None:
            if timesteps is None:
                timesteps = np.linspace(self.sigma_max * c.num_train_timesteps,
                                        self.sigma_min * c.num_train_timesteps, num_inference_steps)
            sigmas = timesteps / c.num_train_timesteps
        else:
            sigmas = np.array(sigmas).astype(np.float32)
            num_inference_steps = len(sigmas)
        if c.use_dynamic_shifting:
            sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        if c.shift_terminal:
            sigmas = self.stretch_shift_to_terminal(sigmas)
        if c.use_karras_sigmas:
            sigmas = self._karras(sigmas, num_inference_steps)
        elif c.use_exponential_sigmas:
            sigmas = self._exponential(sigmas, num_inference_steps)
        elif c.use_beta_sigmas:
            sigmas = self._beta(sigmas, num_inference_steps)
        sigmas = torch.from_numpy(np.asarray(sigmas)).to(dtype=torch.float32, device=device)
        if given_timesteps:
            timesteps = torch.from_numpy(timesteps).to(dtype=torch.float32, device=device)
        else:
            timesteps = sigmas * c.num_train_timesteps
        end = torch.ones(1, device=sigmas.device) if c.invert_sigmas else torch.zeros(1, device=sigmas.device)
        if c.invert_sigmas:
            sigmas = 1.0 - sigmas
            timesteps = sigmas * c.num_train_timesteps
        self.sigmas = torch.cat([sigmas, end])
        self.timesteps = timesteps
        self._timesteps_host = timesteps.detach().cpu().numpy().copy()  # once per schedule, not per step
        self._step_index = None
        self._begin_index = None
        self._tables.clear()

    # -- stepping ----------------------------------------------------------------------------------

    def index_for_timestep(self, timestep, schedule_timesteps=None):
        """Position of `timestep` in the schedule; the second match when it appears twice (so a
        schedule started mid-way, e.g. image-to-image, does not skip a sigma)."""
        if schedule_timesteps is None:
            schedule = self._timesteps_host
        else:
            schedule = schedule_timesteps.detach().cpu().numpy()
        value = timestep.detach().cpu().item() if isinstance(timestep, torch.Tensor) else float(timestep)
        matches = np.nonzero(schedule == np.float32(value))[0]
        if len(matches) == 0:
            raise IndexError(f"timestep {value} is not in the schedule (scheduler.timesteps)")
        return int(matches[1 if len(matches) > 1 else 0])

    def _init_step_index(self, timestep):
        # A device timestep costs one sync here (the first step only); set_begin_index avoids it.
        self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)

    def scale_noise(self, sample, timestep, noise):
        """Forward process for flow matching: sigma * noise + (1 - sigma) * sample."""
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        timestep = torch.as_tensor(timestep).reshape(-1)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timestep]
        elif self._step_index is not None:
            indices = [self._step_index] * timestep.shape[0]
        else:
            indices = [self._begin_index] * timestep.shape[0]
        sigma = sigmas[indices].flatten().reshape((-1,) + (1,) * (sample.dim() - 1))
        return sigma * noise + (1.0 - sigma) * sample

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, per_token_timesteps=None,
             return_dict=True, *, model_output_uncond=None, guidance_scale=1.0):
        """Euler step from sigmas[i] to sigmas[i + 1] (or, with stochastic_sampling, re-noise the
        predicted x0 to sigmas[i + 1]). s_churn / s_tmin / s_tmax / s_noise are accepted and
        unused, as in diffusers. fastgen extension: classifier-free guidance fused into the step
        (`model_output_uncond`, `guidance_scale`)."""
        if isinstance(timestep, (int, np.integer)) or (
                isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("pass one of scheduler.timesteps as timestep, not an integer index")
        if per_token_timesteps is not None:
            raise ValueError("per_token_timesteps is not supported by fastgen's FlowMatchEulerDiscreteScheduler")
        if self._step_index is None:
            self._init_step_index(timestep)
        sigmas = self._tables.get(sample.device, lambda: (self.sigmas.to(torch.float32),))[0]
        out_dtype = model_output.dtype
        if sample.dtype != model_output.dtype:  # diffusers steps in fp32 and returns the model's dtype
            sample, model_output = sample.float(), model_output.float()
            if model_output_uncond is not None:
                model_output_uncond = model_output_uncond.float()
        noise = None
        if self.config.stochastic_sampling:
            noise = randn(sample.shape, generator=generator, device=sample.device,
                          dtype=torch.float32).to(sample.dtype)
        prev = ops.flow_euler_step(model_output, sample, self._step_index, sigmas, noise=noise,
                                   model_output_uncond=model_output_uncond, guidance_scale=guidance_scale)
        self._step_index += 1
        prev = prev.to(out_dtype)
        if not return_dict:
            return (prev,)
        return make_output(FlowMatchEulerDiscreteSchedulerOutput, prev_sample=prev)
