"""Plain-PyTorch specification of every fastgen op: obviously correct, and the ground truth
every kernel is tested against. Math runs in fp32 (fp64 for fp64 inputs); outputs follow the
kernels' contract (per-element outputs in the input dtype, per-sample reductions in the math
dtype).
"""
import torch


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in for inputs of `dtype`: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample_sum(x):
    """Sum over every dim but the first (the batch); shape (B,)."""
    return x.reshape(x.shape[0], -1).sum(1) if x.numel() else x.new_zeros(x.shape[0])


def gaussian_reparam_kl(mu, logvar, eps):
    """z = mu + exp(logvar/2) * eps; kl[b] = -1/2 * sum_j (1 + logvar - mu^2 - exp(logvar)),
    summed over every non-batch dim. Returns (z in mu's dtype, kl[B] in the math dtype)."""
    t = math_dtype(mu.dtype)
    m, lv, e = mu.to(t), logvar.to(t), eps.to(t)
    z = m + torch.exp(0.5 * lv) * e
    kl = -0.5 * per_sample_sum(1 + lv - m * m - torch.exp(lv))
    return z.to(mu.dtype).contiguous(), kl


def gaussian_reparam_kl_backward(grad_z, grad_kl, mu, logvar, eps):
    """Gradients of gaussian_reparam_kl w.r.t. (mu, logvar), in mu's dtype."""
    t = math_dtype(mu.dtype)
    gz, m, lv, e = grad_z.to(t), mu.to(t), logvar.to(t), eps.to(t)
    gkl = grad_kl.to(t).reshape((-1,) + (1,) * (mu.dim() - 1))
    sd = torch.exp(0.5 * lv)
    d_mu = gz + gkl * m
    d_logvar = 0.5 * (gz * e * sd + gkl * (sd * sd - 1))
    return d_mu.to(mu.dtype).contiguous(), d_logvar.to(mu.dtype).contiguous()


# -- vector quantization -----------------------------------------------------------------------

VQ_METRICS = ("l2", "cosine")


def vq_distances(z, codebook, metric="l2"):
    """Full [N, K] squared distances in the math dtype (the eager path the fused op avoids).
    metric="cosine" measures between the L2-normalized vectors (2 - 2 cos)."""
    t = math_dtype(z.dtype)
    z, e = z.to(t), codebook.to(t)
    if metric == "cosine":
        z = torch.nn.functional.normalize(z, dim=1)
        e = torch.nn.functional.normalize(e, dim=1)
    return (z * z).sum(1, keepdim=True) - 2 * (z @ e.t()) + (e * e).sum(1)


def vq_nearest(z, codebook, metric="l2"):
    """Index of the nearest code per row of z [N, D] among codebook [K, D] and its squared
    distance (fp32; fp64 for fp64 inputs), clamped at 0. Ties go to the lowest index; NaN
    distances count as +inf (a NaN code is never chosen; an all-NaN row maps to code 0 with
    distance inf)."""
    d = vq_distances(z, codebook, metric)
    d = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)
    if d.shape[1] == 0 or d.shape[0] == 0:
        return (torch.zeros(d.shape[0], dtype=torch.int64, device=z.device),
                torch.full((d.shape[0],), float("inf"), dtype=d.dtype, device=z.device))
    dist, idx = d.min(1)  # first minimum on ties, like argmin
    return idx, dist.clamp_min(0)


def vq_quantize(z, codebook, beta, legacy=True):
    """Nearest code, straight-through and taming's VectorQuantizer2 loss, for z [N, D]:
    z_q = z + (codebook[idx] - z).detach();
    legacy:     loss = mean((sg(z_q) - z)^2) + beta * mean((z_q - sg(z))^2)
    not legacy: loss = beta * mean((sg(z_q) - z)^2) + mean((z_q - sg(z))^2)."""
    idx, _ = vq_nearest(z.detach(), codebook.detach())
    e = codebook[idx]
    commit = torch.mean((e.detach() - z) ** 2)
    embed = torch.mean((e - z.detach()) ** 2)
    loss = commit + beta * embed if legacy else beta * commit + embed
    z_q = z + (e - z).detach()
    return z_q, loss, idx


# -- diffusion: noise schedules and sampler steps ---------------------------------------------
# Written the way the DDPM/DDIM papers (and diffusers' schedulers) state them, one quantity at
# a time; the kernels fold the same math into a few per-step coefficients.

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


def _per_sample(values, like):
    """(B,) or (1,) per-sample values shaped to broadcast against `like` (B, ...)."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def _timestep_alphas(timesteps, alphas_cumprod, like):
    t = math_dtype(like.dtype)
    a = alphas_cumprod.to(t)[timesteps.to(alphas_cumprod.device).reshape(-1).long()]
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


def ddim_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
              threshold, model_output_uncond, guidance_scale=1.0, eta=0.0, prediction_type="epsilon",
              clip_sample=False, clip_sample_range=1.0, use_clipped_model_output=False):
    """One DDIM update x_t -> x_prev (Song et al. eq. 12). `threshold`: per-sample dynamic
    threshold s (B,), or empty for none (then `clip_sample` clamps x0 to +-clip_sample_range).
    `noise`: like sample, or empty when eta == 0. `model_output_uncond` (or empty): the
    unconditional output for classifier-free guidance with `guidance_scale`.
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
        prev = prev + std * noise.to(t)
    return prev.to(sample.dtype).contiguous(), x0.to(sample.dtype).contiguous()


def ddpm_step(model_output, sample, noise, timestep, alphas_cumprod, alphas_cumprod_prev,
              threshold, model_output_uncond, guidance_scale=1.0, prediction_type="epsilon",
              variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0):
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
    if noise.numel() and int(timestep) > 0:
        prev = prev + std * noise.to(t)
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
