"""Noise schedules and timestep spacings, with the exact float32 / float64 arithmetic diffusers
uses, so that schedulers built from the same config produce the same tables bit for bit."""
import math

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def _alpha_bar_cosine(t):
    # Nichol & Dhariwal's cosine schedule, s = 0.008
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _alpha_bar_laplace(t):
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def betas_for_alpha_bar(num_steps, alpha_bar, max_beta=0.999):
    """beta_i = 1 - alpha_bar((i+1)/N) / alpha_bar(i/N), capped at max_beta (float32)."""
    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
             for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas=None):
    if trained_betas is not None:
        return torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":  # linear in sqrt(beta): latent diffusion's schedule
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n, _alpha_bar_cosine)
    if beta_schedule == "laplace":
        return betas_for_alpha_bar(n, _alpha_bar_laplace)
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def rescale_zero_terminal_snr(betas):
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alphas_cumprod) so the last timestep
    has zero SNR (pure noise) while the first keeps its value."""
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root -= last
    root *= first / (first - last)
    alphas_bar = root ** 2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def spaced_timesteps(spacing, num_train_timesteps, num_inference_steps, steps_offset=0):
    """Descending int64 inference timesteps (Lin et al. 2023, Table 2 spacings)."""
    n, steps = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = n // steps
        return (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
