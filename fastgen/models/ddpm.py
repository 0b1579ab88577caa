"""DDPM (Ho et al. 2020) on 2D point clouds: an MLP predicts the noise of x_t from (x_t, t);
training noises data with the fused `add_noise`, sampling runs fastgen.diffusion.sample with
the DDPM (ancestral) or DDIM (deterministic, eta = 0, or any eta) scheduler on the same
checkpoint.

    fastgen train ddpm --data moons --model-opt sampler=ddim --model-opt sample_steps=50
"""
import math

import torch
from torch import nn

from .. import diffusion, metrics
from .base import GenerativeModel, register


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding of integer timesteps (Transformer / DDPM style), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t): the point and the time embedding through SiLU MLP blocks with residuals."""

    def __init__(self, dim, hidden=128, depth=3, time_dim=64):
        super().__init__()
        self.time_dim = time_dim
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, t):
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        h = self.inp(x) + self.time(timestep_embedding(t, self.time_dim))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


@register("ddpm")
class DDPM(GenerativeModel):
    kinds = ("points2d",)

    def __init__(self, data, hidden=128, depth=3, num_train_timesteps=1000, beta_schedule="linear",
                 sampler="ddpm", sample_steps=100, eta=0.0):
        super().__init__(data, hidden=hidden, depth=depth, num_train_timesteps=num_train_timesteps,
                         beta_schedule=beta_schedule, sampler=sampler, sample_steps=sample_steps, eta=eta)
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if not 1 <= sample_steps <= num_train_timesteps:
            raise ValueError(f"sample_steps must be in [1, {num_train_timesteps}], got {sample_steps}")
        self.dim = int(torch.tensor(data.shape).prod())
        self.net = MLPDenoiser(self.dim, hidden, depth)
        # points are not in [-1, 1]: no x0 clipping (diffusers' default is for images)
        self.train_scheduler = diffusion.DDPMScheduler(num_train_timesteps=num_train_timesteps,
                                                       beta_schedule=beta_schedule, clip_sample=False)

    def make_scheduler(self, sampler=None):
        """The sampling scheduler for this checkpoint: same betas, DDPM or DDIM stepping."""
        config = dict(self.train_scheduler.config)
        if (sampler or self.config["sampler"]) == "ddim":
            return diffusion.DDIMScheduler.from_config(config, set_alpha_to_one=True)
        return diffusion.DDPMScheduler.from_config(config)

    def forward(self, x, y=None):
        x0 = x.reshape(x.shape[0], -1)
        t = torch.randint(0, self.config["num_train_timesteps"], (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        loss = torch.mean((self.net(x_t, t) - noise) ** 2)
        return loss, {"eps_mse": loss.detach()}

    @torch.no_grad()
    def sample(self, n, generator=None, sampler=None, steps=None, eta=None):
        scheduler = self.make_scheduler(sampler)
        kwargs = {}
        if isinstance(scheduler, diffusion.DDIMScheduler):
            kwargs["eta"] = self.config["eta"] if eta is None else eta
        out = diffusion.sample(self.net, scheduler, (n, self.dim), steps or self.config["sample_steps"],
                               generator=generator, device=self.device, progress=False, **kwargs)
        return out.reshape((n,) + tuple(self.data.shape))

    @torch.no_grad()
    def evaluate(self, dataset, generator=None):
        n = min(len(dataset.x), 2000)
        samples = self.sample(n, generator=generator).reshape(n, -1).cpu()
        real = dataset.x[:n].reshape(n, -1)
        return {"sliced_wasserstein": float(metrics.sliced_wasserstein(samples, real, seed=0)),
                "mmd_rbf": float(metrics.mmd_rbf(samples, real))}
