"""DDPM (Ho et al. 2020): a network predicts the noise of x_t from (x_t, t) -- an MLP for 2D
point clouds, a small UNet (fastgen/models/unet.py) for images; training noises data with the
fused `add_noise`, sampling runs fastgen.diffusion.sample with the DDPM (ancestral) or DDIM
(deterministic, eta = 0, or any eta) scheduler on the same checkpoint.

    fastgen train ddpm --data moons --model-opt sampler=ddim --model-opt sample_steps=50
    fastgen train ddpm --data shapes --model-opt width=32 --model-opt "channel_mults=(1,2)"
"""
import torch
from torch import nn

from .. import diffusion, metrics
from .base import GenerativeModel, register
from .unet import UNet, timestep_embedding


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


ARCHS = ("auto", "mlp", "unet")


@register("ddpm")
class DDPM(GenerativeModel):
    """Points (and any data, flattened) go through the MLP denoiser, images through the UNet
    (`arch=auto`); `arch=mlp` / `arch=unet` forces one. Images are in [0, 1] outside the model
    and [-1, 1] inside, where sampling clips the predicted x0 to [-1, 1] (diffusers' image default);
    points are not clipped."""
    kinds = ("points2d", "image")

    def __init__(self, data, hidden=128, depth=3, num_train_timesteps=1000, beta_schedule="linear",
                 sampler="ddpm", sample_steps=100, eta=0.0, arch="auto", width=32, channel_mults=(1, 2),
                 num_res_blocks=1, attn_heads=1, dropout=0.0, eval_samples=2000):
        super().__init__(data, hidden=hidden, depth=depth, num_train_timesteps=num_train_timesteps,
                         beta_schedule=beta_schedule, sampler=sampler, sample_steps=sample_steps, eta=eta,
                         arch=arch, width=width, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                         attn_heads=attn_heads, dropout=dropout, eval_samples=eval_samples)
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if not 1 <= sample_steps <= num_train_timesteps:
            raise ValueError(f"sample_steps must be in [1, {num_train_timesteps}], got {sample_steps}")
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if not isinstance(eval_samples, int) or eval_samples < 2:
            raise ValueError(f"eval_samples must be an int >= 2, got {eval_samples!r}")
        self.images = data.kind == "image"
        self.arch = ("unet" if self.images else "mlp") if arch == "auto" else arch
        if self.arch == "unet" and not self.images:
            raise ValueError(f"arch='unet' needs image data (C, H, W); {data.name!r} is {data.kind} "
                             f"of shape {tuple(data.shape)}")
        self.dim = int(torch.tensor(data.shape).prod())
        # the network's own input shape: (C, H, W) for the UNet, flat for the MLP
        self.net_shape = tuple(data.shape) if self.arch == "unet" else (self.dim,)
        if self.arch == "unet":
            self.net = UNet(data.shape[0], width=width, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                            attn_heads=attn_heads, dropout=dropout)
        else:
            self.net = MLPDenoiser(self.dim, hidden, depth)
        # points are not in [-1, 1]: no x0 clipping for them (diffusers' default is for images)
        self.train_scheduler = diffusion.DDPMScheduler(num_train_timesteps=num_train_timesteps,
                                                       beta_schedule=beta_schedule, clip_sample=self.images)

    def make_scheduler(self, sampler=None):
        """The sampling scheduler for this checkpoint: same betas, DDPM or DDIM stepping."""
        config = dict(self.train_scheduler.config)
        if (sampler or self.config["sampler"]) == "ddim":
            return diffusion.DDIMScheduler.from_config(config, set_alpha_to_one=True)
        return diffusion.DDPMScheduler.from_config(config)

    def _to_net(self, x):
        """Data-shaped batch -> what the network sees (images scaled to [-1, 1])."""
        x = x.reshape((x.shape[0],) + self.net_shape)
        return 2 * x - 1 if self.images else x

    def denoising_loss(self, x, t, noise):
        """Per-sample mean squared error of the predicted noise at timesteps t, (B,)."""
        x0 = self._to_net(x)
        x_t = self.train_scheduler.add_noise(x0, noise.reshape(x0.shape), t)
        return ((self.net(x_t, t) - noise.reshape(x0.shape)) ** 2).reshape(x0.shape[0], -1).mean(1)

    def forward(self, x, y=None):
        t = torch.randint(0, self.config["num_train_timesteps"], (x.shape[0],), device=x.device)
        loss = self.denoising_loss(x, t, torch.randn_like(x)).mean()
        return loss, {"eps_mse": loss.detach()}

    @torch.no_grad()
    def sample(self, n, generator=None, sampler=None, steps=None, eta=None, progress=False):
        scheduler = self.make_scheduler(sampler)
        kwargs = {}
        if isinstance(scheduler, diffusion.DDIMScheduler):
            kwargs["eta"] = self.config["eta"] if eta is None else eta
        out = diffusion.sample(self.net, scheduler, (n,) + self.net_shape, steps or self.config["sample_steps"],
                               generator=generator, device=self.device, progress=progress, **kwargs)
        if self.images:
            out = ((out + 1) / 2).clamp_(0, 1)
        return out.reshape((n,) + tuple(self.data.shape))

    @torch.no_grad()
    def heldout_denoising_loss(self, x, seed=0, batch_size=256):
        """The training loss on held-out data, with timesteps spread evenly over [0, T) and
        noise from `seed`: the same number for the same weights, whatever the RNG state."""
        g = torch.Generator().manual_seed(seed)
        T = self.config["num_train_timesteps"]
        total = 0.0
        for i, xb in enumerate(x.split(batch_size)):
            b = xb.shape[0]
            t = (torch.arange(i * batch_size, i * batch_size + b) * T // len(x)).clamp_(max=T - 1)
            noise = torch.randn(xb.shape, generator=g)
            total += float(self.denoising_loss(xb.to(self.device), t.to(self.device), noise.to(self.device)).sum())
        return total / len(x)

    @torch.no_grad()
    def evaluate(self, dataset, generator=None):
        """Points: sliced-Wasserstein and MMD of `eval_samples` samples to held-out data. Images:
        sliced-Wasserstein between generated and real flattened images, the same for per-image
        pixel statistics (mean colour, contrast) and the held-out denoising loss."""
        n = min(len(dataset.x), self.config["eval_samples"])
        real = dataset.x[:n].reshape(n, -1).float()
        samples = self.sample(n, generator=generator).reshape(n, -1).cpu()
        out = {"sliced_wasserstein": float(metrics.sliced_wasserstein(samples, real, seed=0))}
        if not self.images:
            out["mmd_rbf"] = float(metrics.mmd_rbf(samples, real))
            return out
        out["denoise_mse"] = self.heldout_denoising_loss(dataset.x[:n])
        out["pixel_stats_sw"] = float(metrics.sliced_wasserstein(_pixel_stats(samples, self.data.shape),
                                                                 _pixel_stats(real, self.data.shape), seed=0))
        return out


def _pixel_stats(x, shape):
    """Per image: mean and std of each channel, (N, 2C). Two colours per shapes image make these
    a cheap check that samples have the data's colour and contrast distribution."""
    x = x.reshape((x.shape[0], shape[0], -1))
    return torch.cat([x.mean(-1), x.std(-1)], dim=1)
