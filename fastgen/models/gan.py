"""GAN (Goodfellow et al., non-saturating generator loss) and WGAN (Arjovsky et al.: weight
clipping; Gulrajani et al.: gradient penalty) on 2D point clouds, with MLPs whose hidden layers
are a bias-free matmul followed by `fastgen.ops.bias_act` (bias + leaky ReLU in one pass; its
double backward carries WGAN-GP's penalty gradient).

Both own their training step (two networks, two optimizers; see fastgen/train.py). WGAN runs
`n_critic` critic updates per generator update, each on its own slice of the batch, and logs
the critic's estimate of the Wasserstein-1 distance, E[f(real)] - E[f(fake)] (a lower bound on
W1 when f is 1-Lipschitz: the Kantorovich-Rubinstein duality), next to an independent
sliced-Wasserstein estimate between the same batches, so one can watch the two move together.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..ops import bias_act
from .base import GenerativeModel, register


class BiasActLinear(nn.Module):
    """nn.Linear (same init and parameters) followed by leaky_relu(0.2), the bias add and the
    activation fused by bias_act."""

    def __init__(self, fan_in, fan_out):
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out)

    def forward(self, x):
        return bias_act(F.linear(x, self.linear.weight), self.linear.bias, "leaky_relu", 0.2)


def mlp(fan_in, hidden, layers, fan_out):
    sizes = [fan_in] + [hidden] * layers
    return nn.Sequential(*[BiasActLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:])],
                         nn.Linear(sizes[-1], fan_out))


class _PointGAN(GenerativeModel):
    kinds = ("points2d",)

    def __init__(self, data, latent_dim=2, hidden=128, layers=3, **config):
        super().__init__(data, latent_dim=latent_dim, hidden=hidden, layers=layers, **config)
        self.latent_dim = latent_dim
        self.dim = math.prod(data.shape)
        self.generator = mlp(latent_dim, hidden, layers, self.dim)
        self.critic = mlp(self.dim, hidden, layers, 1)

    def _noise(self, n, generator=None):
        return torch.randn(n, self.latent_dim, generator=generator, device=self.device)

    def forward(self, x, y=None):
        raise RuntimeError(f"{self.name} trains through training_step (two optimizers)")

    @torch.no_grad()
    def sample(self, n, generator=None):
        return self.generator(self._noise(n, generator)).reshape(n, *self.data.shape)

    @torch.no_grad()
    def evaluate(self, dataset, generator=None):
        real = dataset.x.reshape(len(dataset.x), -1).float().to(self.device)
        fake = self.sample(len(real), generator=generator).reshape(len(real), -1)
        return {"sliced_wasserstein": float(metrics.sliced_wasserstein(fake.cpu(), real.cpu(), seed=0)),
                "critic_w1_estimate": float(self.critic(real).mean() - self.critic(fake).mean())}


@register("gan")
class GAN(_PointGAN):
    """Non-saturating GAN: D maximizes log D(x) + log(1 - D(G(z))), G maximizes log D(G(z))."""

    def configure_optimizers(self, lr):
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
                torch.optim.Adam(self.critic.parameters(), lr=lr, betas=(0.5, 0.999))]

    def training_step(self, x, y, optimizers, step):
        opt_g, opt_d = optimizers
        real = x.reshape(x.shape[0], -1)
        fake = self.generator(self._noise(real.shape[0]))
        # -log sigmoid(l) = softplus(-l), -log(1 - sigmoid(l)) = softplus(l)
        d_loss = F.softplus(-self.critic(real)).mean() + F.softplus(self.critic(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-self.critic(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return d_loss.detach() + g_loss.detach(), {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}


@register("wgan")
class WGAN(_PointGAN):
    """mode="gp": gradient penalty lambda * (||grad_x f(x_hat)|| - 1)^2 on random interpolates,
    Adam(0.5, 0.9); mode="clip": critic weights clipped to [-clip, clip] after each update,
    RMSprop (as in the WGAN paper)."""

    def __init__(self, data, mode="gp", n_critic=5, gp_weight=10.0, clip=0.01, **kw):
        if mode not in ("gp", "clip"):
            raise ValueError(f"wgan: mode must be 'gp' or 'clip', got {mode!r}")
        super().__init__(data, mode=mode, n_critic=n_critic, gp_weight=gp_weight, clip=clip, **kw)
        self.mode, self.n_critic, self.gp_weight, self.clip = mode, n_critic, gp_weight, clip

    def configure_optimizers(self, lr):
        if self.mode == "clip":
            return [torch.optim.RMSprop(self.generator.parameters(), lr=lr),
                    torch.optim.RMSprop(self.critic.parameters(), lr=lr)]
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.9)),
                torch.optim.Adam(self.critic.parameters(), lr=lr, betas=(0.5, 0.9))]

    def gradient_penalty(self, real, fake):
        t = torch.rand(real.shape[0], 1, device=real.device)
        x_hat = (t * real + (1 - t) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(x_hat).sum(), x_hat, create_graph=True)
        return ((grad.norm(dim=1) - 1) ** 2).mean()

    def training_step(self, x, y, optimizers, step):
        opt_g, opt_c = optimizers
        real_all = x.reshape(x.shape[0], -1)
        logs = {}
        for real in real_all.chunk(self.n_critic):
            fake = self.generator(self._noise(real.shape[0])).detach()
            w1 = self.critic(real).mean() - self.critic(fake).mean()
            c_loss = -w1
            if self.mode == "gp":
                gp = self.gradient_penalty(real, fake)
                c_loss = c_loss + self.gp_weight * gp
                logs["gp"] = gp.detach()
            opt_c.zero_grad(set_to_none=True)
            c_loss.backward()
            opt_c.step()
            if self.mode == "clip":
                with torch.no_grad():
                    for p in self.critic.parameters():
                        p.clamp_(-self.clip, self.clip)
        fake = self.generator(self._noise(real_all.shape[0]))
        g_loss = -self.critic(fake).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        logs.update(critic_w1=w1.detach(), g_loss=g_loss.detach(),
                    sliced_w=metrics.sliced_wasserstein(fake.detach(), real_all, n_projections=64, seed=step))
        return c_loss.detach(), logs
