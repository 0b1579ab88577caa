"""GAN (Goodfellow et al., non-saturating generator loss) and WGAN (Arjovsky et al.: weight
clipping; Gulrajani et al.: gradient penalty), on 2D point clouds or on images.

- 2D points (`points2d`): MLPs whose hidden layers are a bias-free matmul followed by
  `fastgen.ops.bias_act` (bias + leaky ReLU in one pass; its double backward carries WGAN-GP's
  penalty gradient).
- images (`image`, e.g. `shapes`), DCGAN-style (Radford et al.): the generator projects the
  latent to a 4x4 feature map and doubles the resolution with stride-2 transposed convolutions,
  each followed by GroupNorm + SiLU fused (`fastgen.nn.GroupNormSiLU`), then a 3x3 convolution
  and a sigmoid (the data are in [0, 1]); the discriminator / critic halves the resolution with
  stride-2 convolutions without bias, each followed by `bias_act` (bias + leaky ReLU(0.2) along
  the channel dim), down to 4x4, then one linear layer. No normalization in the critic: WGAN-GP's
  penalty is per sample, and batch statistics would couple the samples. The image side must be
  4 * 2**k (8, 16, 32, ...).

Both own their training step (two networks, two optimizers; see fastgen/train.py). WGAN runs
`n_critic` critic updates per generator update, each on its own slice of the batch (or on the
whole batch with critic_batch="full"), and logs the critic's estimate of the Wasserstein-1
distance, E[f(real)] - E[f(fake)] (a lower bound on W1 when f is 1-Lipschitz: the
Kantorovich-Rubinstein duality), next to an independent sliced-Wasserstein estimate between the
same batches, so one can watch the two move together. `evaluate` reports the sliced-Wasserstein
distance between generated and held-out samples (images flattened).

    fastgen train gan --data 8gaussians --steps 600 --lr 1e-3
    fastgen train wgan --data 8gaussians --steps 600 --lr 3e-4            # WGAN-GP
    fastgen train gan --data shapes --steps 400 --batch 64 --lr 5e-4
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..nn import GroupNormSiLU
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


class BiasActConv(nn.Module):
    """Stride-2 4x4 convolution without bias, then bias + leaky_relu(0.2) along the channels
    fused by bias_act (dim=1): half the resolution."""

    def __init__(self, fan_in, fan_out):
        super().__init__()
        self.conv = nn.Conv2d(fan_in, fan_out, 4, stride=2, padding=1, bias=False)
        self.bias = nn.Parameter(torch.zeros(fan_out))

    def forward(self, x):
        return bias_act(self.conv(x), self.bias, "leaky_relu", 0.2, dim=1)


def _doublings(size):
    """k with size == 4 * 2**k, k >= 1."""
    k = int(round(math.log2(max(size, 1) / 4)))
    if k < 1 or size != 4 * 2 ** k:
        raise ValueError(f"gan/wgan on images: the image side must be 4 * 2**k (8, 16, 32, ...), got {size}")
    return k


class ConvGenerator(nn.Module):
    """latent [B, L] -> images [B, C, S, S] in (0, 1). Each doubling is a nearest-neighbour
    upsample and a 3x3 convolution (a stride-2 transposed convolution gave checkerboard artifacts
    in a few hundred steps), then GroupNorm + SiLU fused. Channels halve as the resolution
    doubles: width * 2**k at 4x4, width at S x S."""

    def __init__(self, latent_dim, channels, size, width):
        super().__init__()
        k = _doublings(size)
        c = width * 2 ** k
        self.top = c
        self.project = nn.Linear(latent_dim, c * 16, bias=False)  # GroupNorm's shift is the bias
        layers = [GroupNormSiLU(8, c)]
        for _ in range(k):
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c, c // 2, 3, padding=1, bias=False),
                       GroupNormSiLU(8, c // 2)]
            c //= 2
        layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return torch.sigmoid(self.net(self.project(z).view(z.shape[0], self.top, 4, 4)))


def minibatch_std(h):
    """h [B, C, H, W] with one more channel: the features' standard deviation over the batch,
    averaged (Karras et al., ProGAN). It lets the critic see a batch of fakes that all look
    alike, which no single image shows. The critic appends it twice: to the 4x4 features (as in
    ProGAN) and to the input pixels, where a batch that has collapsed to one colour scheme shows
    it directly (with the 4x4 one alone, the generator still drew every image in the same two
    colours after 300 steps on `shapes`). The 1e-8 under the square root keeps the gradient
    finite when every sample agrees on a feature (a saturated pixel): d sqrt(v) / dv at v = 0."""
    s = (h.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
    return torch.cat([h, s.expand(h.shape[0], 1, *h.shape[2:])], dim=1)


class ConvCritic(nn.Module):
    """images [B, C, S, S] in [0, 1] -> one score per image [B, 1]."""

    def __init__(self, channels, size, width, batch_std=True):
        super().__init__()
        k = _doublings(size)
        sizes = [channels + batch_std] + [width * 2 ** i for i in range(k)]
        self.net = nn.Sequential(*[BiasActConv(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.batch_std = batch_std
        self.out = nn.Linear((sizes[-1] + batch_std) * 16, 1)

    def forward(self, x):
        std = minibatch_std if self.batch_std else (lambda h: h)
        return self.out(std(self.net(std(2 * x - 1))).flatten(1))


class _GANBase(GenerativeModel):
    """Generator + critic for points (MLPs) or images (DCGAN-style convnets). Options that do not
    apply to the data kind must be left unset: hidden / layers are the MLPs', width the convnets'
    (a multiple of 8: GroupNorm uses 8 groups) and batch_std (the critic's minibatch-stddev
    channel, default on). latent_dim defaults to 2 (points) / 64 (images)."""
    kinds = ("points2d", "image")

    def __init__(self, data, latent_dim=None, hidden=None, layers=None, width=None, batch_std=None, **config):
        image = data.kind == "image"
        unused = [k for k, v in ((("hidden", hidden), ("layers", layers)) if image else
                                 (("width", width), ("batch_std", batch_std))) if v is not None]
        if unused and data.kind in self.kinds:
            raise ValueError(f"{self.name}: option(s) {', '.join(unused)} do not apply to {data.kind} data "
                             f"(points use hidden/layers, images use width/batch_std)")
        latent_dim = latent_dim if latent_dim is not None else (64 if image else 2)
        if image:
            width = 32 if width is None else width
            if width < 8 or width % 8:
                raise ValueError(f"{self.name}: width must be a positive multiple of 8, got {width}")
            arch = dict(width=width, batch_std=True if batch_std is None else bool(batch_std))
        else:
            arch = dict(hidden=128 if hidden is None else hidden, layers=3 if layers is None else layers)
        super().__init__(data, latent_dim=latent_dim, **arch, **config)
        if latent_dim < 1:
            raise ValueError(f"{self.name}: latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        if image:
            channels, h, w = data.shape
            if h != w:
                raise ValueError(f"{self.name}: images must be square, got {h}x{w}")
            self.generator = ConvGenerator(latent_dim, channels, h, width)
            self.critic = ConvCritic(channels, h, width, arch["batch_std"])
        else:
            dim = math.prod(data.shape)
            self.generator = mlp(latent_dim, arch["hidden"], arch["layers"], dim)
            self.critic = mlp(dim, arch["hidden"], arch["layers"], 1)

    def _noise(self, n, generator=None):
        return torch.randn(n, self.latent_dim, generator=generator, device=self.device)

    def _fake(self, n):
        return self.generator(self._noise(n)).view(n, *self.data.shape)

    def forward(self, x, y=None):
        raise RuntimeError(f"{self.name} trains through training_step (two optimizers)")

    @torch.no_grad()
    def sample(self, n, generator=None, chunk=1024):
        z = self._noise(n, generator)
        return torch.cat([self.generator(c) for c in z.split(chunk)] or [z.new_zeros(0)]).view(n, *self.data.shape)

    @torch.no_grad()
    def evaluate(self, dataset, generator=None, chunk=1024):
        real = dataset.x.float().to(self.device)
        fake = self.sample(len(real), generator=generator)

        def score(x):
            return torch.cat([self.critic(c) for c in x.split(chunk)]).mean()

        return {"sliced_wasserstein": float(metrics.sliced_wasserstein(fake.flatten(1).cpu(), real.flatten(1).cpu(),
                                                                       seed=0)),
                "critic_w1_estimate": float(score(real) - score(fake))}


@register("gan")
class GAN(_GANBase):
    """Non-saturating GAN: D maximizes log D(x) + log(1 - D(G(z))), G maximizes log D(G(z)).
    Adam(0.5, 0.999) as in DCGAN."""

    def configure_optimizers(self, lr):
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
                torch.optim.Adam(self.critic.parameters(), lr=lr, betas=(0.5, 0.999))]

    def training_step(self, x, y, optimizers, step):
        opt_g, opt_d = optimizers
        fake = self._fake(x.shape[0])
        # -log sigmoid(l) = softplus(-l), -log(1 - sigmoid(l)) = softplus(l)
        d_loss = F.softplus(-self.critic(x)).mean() + F.softplus(self.critic(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-self.critic(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return d_loss.detach() + g_loss.detach(), {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}


@register("wgan")
class WGAN(_GANBase):
    """mode="gp": gradient penalty gp_weight * (||grad_x f(x_hat)|| - 1)^2 on random
    interpolates, Adam(beta1, beta2) (default (0.5, 0.9), Gulrajani et al.); mode="clip": critic
    weights clipped to [-clip, clip] after each update, RMSprop (as in the WGAN paper).

    gp_weight defaults to 1 on 2D points and 10 on images. Gulrajani et al. use 10 for images;
    on the 2D toys 10 keeps the critic so close to exactly 1-Lipschitz that the generator is
    pushed as hard where it already matches the data as where it does not, and its samples swing
    around the modes without settling (docs/gan_ops.md has the runs; their own toy script uses
    0.1). critic_batch: "slice" gives each of the n_critic updates its own 1/n_critic of the
    batch; "full" reuses the whole batch for every update (n_critic times the work)."""

    def __init__(self, data, mode="gp", n_critic=5, gp_weight=None, clip=0.01, beta1=0.5, beta2=0.9,
                 critic_batch="slice", **kw):
        if mode not in ("gp", "clip"):
            raise ValueError(f"wgan: mode must be 'gp' or 'clip', got {mode!r}")
        if critic_batch not in ("slice", "full"):
            raise ValueError(f"wgan: critic_batch must be 'slice' or 'full', got {critic_batch!r}")
        if int(n_critic) != n_critic or n_critic < 1:
            raise ValueError(f"wgan: n_critic must be an integer >= 1, got {n_critic!r}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"wgan: beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        if gp_weight is None:
            gp_weight = 10.0 if data.kind == "image" else 1.0
        if gp_weight < 0 or clip <= 0:
            raise ValueError(f"wgan: gp_weight must be >= 0 and clip > 0, got {gp_weight}, {clip}")
        super().__init__(data, mode=mode, n_critic=int(n_critic), gp_weight=gp_weight, clip=clip, beta1=beta1,
                         beta2=beta2, critic_batch=critic_batch, **kw)
        self.mode, self.n_critic, self.gp_weight, self.clip = mode, int(n_critic), gp_weight, clip
        self.betas, self.critic_batch = (beta1, beta2), critic_batch

    def configure_optimizers(self, lr):
        if self.mode == "clip":
            return [torch.optim.RMSprop(self.generator.parameters(), lr=lr),
                    torch.optim.RMSprop(self.critic.parameters(), lr=lr)]
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=self.betas),
                torch.optim.Adam(self.critic.parameters(), lr=lr, betas=self.betas)]

    def gradient_penalty(self, real, fake):
        t = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device)
        x_hat = (t * real + (1 - t) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic(x_hat).sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    def training_step(self, x, y, optimizers, step):
        opt_g, opt_c = optimizers
        if self.critic_batch == "slice" and x.shape[0] < self.n_critic:
            raise ValueError(f"wgan: the batch ({x.shape[0]}) must hold at least n_critic ({self.n_critic}) "
                             f"samples with critic_batch='slice'")
        chunks = x.chunk(self.n_critic) if self.critic_batch == "slice" else [x] * self.n_critic
        logs = {}
        for real in chunks:
            fake = self._fake(real.shape[0]).detach()
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
        fake = self._fake(x.shape[0])
        g_loss = -self.critic(fake).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        logs.update(critic_w1=w1.detach(), g_loss=g_loss.detach(),
                    sliced_w=metrics.sliced_wasserstein(fake.detach().flatten(1), x.flatten(1), n_projections=64,
                                                        seed=step))
        return c_loss.detach(), logs
