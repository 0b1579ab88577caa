"""The reference for diffusion: noise schedules and sampler steps.

Part of the spec every backend is tested against (fastgen/ops/reference/__init__.py)."""
import torch

from .. import _philox  # the counter-based RNG every backend draws from
from ._common import math_dtype


# Written the way the DDPM/DDIM papers (and diffusers' schedulers) state them, one quantity at
# a time; the kernels fold the same math into a few per-step coefficients.

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


def _per_sample(values, like):
    """(B,) or (1,) per-sample values shaped to broadcast against `like` (B, ...)."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def _timestep_alphas(timesteps, alphas_cumprod, like):
    t = math_dtype(like.dtype)
    i = timesteps.to(alphas_cumprod.device).reshape(-1).long()
    n = alphas_cumprod.shape[0]
    # a t outside [0, T) gives NaN (the op's check rejects host values first; device values are
    # not read on the host, and the kernels give NaN for them too)
    a = alphas_cumprod.to(t)[i.clamp(0, n - 1)].masked_fill((i < 0) | (i >= n), float("nan"))
    return _per_sample(a, like)


def add_noise(original_samples, noise, timesteps, alphas_cumprod):
    """q(x_t | x_0): sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise, abar_t = alphas_cumprod[t]
    per sample (timesteps: integer tensor with B entries, or one shared by all)."""
    t = math_dtype(original_samples.dtype)
    a = _timestep_alphas(timesteps, alphas_cumprod, original_samples)
    out = a.sqrt() * original_samples.to(t) + (1 - a).sqrt() * noise.to(t)
    return out.to(original_samples.dtype).contiguous()


def get_velocity(sample, noise, timesteps, alphas_cumprod):
    """v-prediction target: sqrt(abar_t) * noise - sqrt(1 - abar_t) * sample."""
    t = math_dtype(sample.dtype)
    a = _timestep_alphas(timesteps, alphas_cumprod, sample)
    out = a.sqrt() * noise.to(t) - (1 - a).sqrt() * sample.to(t)
    return out.to(sample.dtype).contiguous()


def _step_alphas(timestep, alphas_cumprod, alphas_cumprod_prev, dtype):
    """abar_t and abar_prev as 0-d tensors of the math dtype. alphas_cumprod_prev[t] holds the
    cumulative alpha of the timestep the sampler steps to from t (set by the scheduler)."""
    t = timestep.to(alphas_cumprod.device).reshape(()).long()
    return alphas_cumprod[t].to(dtype), alphas_cumprod_prev[t].to(dtype)


def pred_original_and_epsilon(model_output, sample, alpha_prod_t, prediction_type):
    """(x0, eps) implied by the model output, in the math dtype (before any clipping)."""
    a, b = alpha_prod_t, 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - b.sqrt() * model_output) / a.sqrt(), model_output
    if prediction_type == "sample":
        return model_output, (sample - a.sqrt() * model_output) / b.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * sample - b.sqrt() * model_output, a.sqrt() * model_output + b.sqrt() * sample
    raise ValueError(f"fastgen: prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def dynamic_threshold(x0, ratio, max_value):
    """Imagen's dynamic thresholding scale per sample: s = clamp(quantile(|x0|, ratio), 1, max),
    shape (B,), in fp32 (fp64 for fp64)."""
    flat = x0.reshape(x0.shape[0], -1).abs().to(math_dtype(x0.dtype))
    return torch.quantile(flat, ratio, dim=1).clamp(1, max_value)


def guided(model_output, model_output_uncond, guidance_scale, dtype):
    """Classifier-free guidance u + s (c - u) in `dtype` when an unconditional output is given
    (not empty); the model output itself otherwise."""
    m = model_output.to(dtype)
    if model_output_uncond.numel() == 0:
        return m
    u = model_output_uncond.to(dtype)
    return u + guidance_scale * (m - u)


def _limit_x0(x0, threshold, clip_sample, clip_sample_range):
    if threshold.numel():
        s = _per_sample(threshold.to(x0.dtype), x0)
        return torch.clamp(x0, -s, s) / s
    if clip_sample:
        return x0.clamp(-clip_sample_range, clip_sample_range)
    return x0


def step_noise(noise, seed, seed_offset, sample):
    """The noise a stochastic step adds: `noise` as passed, or, with a `seed` (0-d integer
    tensor or int), in-kernel noise: element i (flat, row-major) of the step gets
    Philox randn(seed, seed_offset + i) in float32 (fastgen/ops/_philox.py, Triton's tl.randn)."""
    if seed is None:
        return noise
    return _philox.randn_like(sample, seed, seed_offset)


def ddim_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
              threshold, model_output_uncond, guidance_scale=1.0, eta=0.0, prediction_type="epsilon",
              clip_sample=False, clip_sample_range=1.0, use_clipped_model_output=False, seed=None,
              seed_offset=0):
    """One DDIM update x_t -> x_prev (Song et al. eq. 12). `threshold`: per-sample dynamic
    threshold s (B,), or empty for none (then `clip_sample` clamps x0 to +-clip_sample_range).
    `noise`: like sample, or empty when eta == 0. `model_output_uncond` (or empty): the
    unconditional output for classifier-free guidance with `guidance_scale`. `seed` (or None):
    in-kernel noise instead of `noise`, see `step_noise`.
    Returns (prev_sample, pred_original_sample)."""
    t = math_dtype(sample.dtype)
    a, a_prev = _step_alphas(timestep, alphas_cumprod, alphas_cumprod_prev, t)
    x, m = sample.to(t), guided(model_output, model_output_uncond, guidance_scale, t)
    x0, eps = pred_original_and_epsilon(m, x, a, prediction_type)
    x0 = _limit_x0(x0, threshold, clip_sample, clip_sample_range)
    # sigma_t^2 = eta^2 (1 - a_prev) r, r = (1 - a / a_prev) / (1 - a)
    r = (a_prev - a) / (a_prev * (1 - a))
    std = eta * ((1 - a_prev) * r).sqrt()
    if use_clipped_model_output:
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    # the direction's weight sqrt(1 - a_prev - sigma^2) with 1 - r = a (1 - a_prev) /
    # (a_prev (1 - a)) written out: the plain difference cancels when it is tiny (eta ~ 1 with
    # a ~ 0 or a_prev ~ 1) and its square root turns an ulp into ~1e-4 (diffusers computes it
    # that way; at zero terminal SNR with eta = 1 it even gets NaN). Clamped at 0: negative
    # only for eta > 1.
    one_minus_r = a * (1 - a_prev) / (a_prev * (1 - a))
    direction = ((1 - a_prev) * ((1 - eta * eta) + eta * eta * one_minus_r)).clamp_min(0).sqrt()
    prev = a_prev.sqrt() * x0 + direction * eps
    if eta > 0:
        prev = prev + std * step_noise(noise, seed, seed_offset, sample).to(t)
    return prev.to(sample.dtype).contiguous(), x0.to(sample.dtype).contiguous()


def ddpm_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
              threshold, model_output_uncond, guidance_scale=1.0, prediction_type="epsilon",
              variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0, seed=None,
              seed_offset=0):
    """One ancestral DDPM update (Ho et al. eq. 6-7): the posterior mean of q(x_prev | x_t, x0)
    plus std * noise when t > 0 and `noise` is not empty. fixed_small: the posterior variance
    (clamped at 1e-20); fixed_large: beta_t; the *_log variants compute the same std through
    the log (exp(log(var) / 2)). Guidance as in `ddim_step`.
    Returns (prev_sample, pred_original_sample)."""
    t = math_dtype(sample.dtype)
    a, a_prev = _step_alphas(timestep, alphas_cumprod, alphas_cumprod_prev, t)
    x, m = sample.to(t), guided(model_output, model_output_uncond, guidance_scale, t)
    x0, _ = pred_original_and_epsilon(m, x, a, prediction_type)
    x0 = _limit_x0(x0, threshold, clip_sample, clip_sample_range)
    alpha_t = a / a_prev
    beta_t = 1 - alpha_t
    mean = (a_prev.sqrt() * beta_t / (1 - a)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a)) * x
    posterior_var = ((1 - a_prev) / (1 - a) * beta_t).clamp_min(1e-20)
    if variance_type == "fixed_small":
        std = posterior_var.sqrt()
    elif variance_type == "fixed_small_log":
        std = torch.exp(0.5 * torch.log(posterior_var))
    elif variance_type == "fixed_large":
        std = beta_t.sqrt()
    elif variance_type == "fixed_large_log":
        std = torch.exp(0.5 * torch.log(beta_t))
    else:
        raise ValueError(f"fastgen: variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
    prev = mean
    if (noise.numel() or seed is not None) and int(timestep) > 0:
        prev = prev + std * step_noise(noise, seed, seed_offset, sample).to(t)
    return prev.to(sample.dtype).contiguous(), x0.to(sample.dtype).contiguous()


def flow_euler_step(model_output, sample, noise, step_index, sigmas, model_output_uncond,
                    guidance_scale=1.0):
    """Flow matching / rectified flow Euler step from sigma = sigmas[i] to sigma_next =
    sigmas[i + 1] with velocity v = model_output: x + (sigma_next - sigma) * v. With `noise`
    (not empty), the stochastic variant: (1 - sigma_next) * (x - sigma * v) + sigma_next * noise.
    Guidance as in `ddim_step`."""
    t = math_dtype(sample.dtype)
    i = step_index.to(sigmas.device).reshape(()).long()
    s, s_next = sigmas[i].to(t), sigmas[i + 1].to(t)
    x, v = sample.to(t), guided(model_output, model_output_uncond, guidance_scale, t)
    if noise.numel():
        prev = (1 - s_next) * (x - s * v) + s_next * noise.to(t)
    else:
        prev = x + (s_next - s) * v
    return prev.to(sample.dtype).contiguous()


def flow_heun_step(model_output, model_output_next, sample, step_index, sigmas):
    """Heun's (trapezoidal) corrector: x + (sigma_next - sigma) * (v + v_next) / 2, where v_next
    is the velocity at the Euler predictor x + (sigma_next - sigma) * v."""
    t = math_dtype(sample.dtype)
    i = step_index.to(sigmas.device).reshape(()).long()
    dt = sigmas[i + 1].to(t) - sigmas[i].to(t)
    prev = sample.to(t) + dt * 0.5 * (model_output.to(t) + model_output_next.to(t))
    return prev.to(sample.dtype).contiguous()
