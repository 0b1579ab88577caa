"""Gaussian VAE (Kingma & Welling): an MLP for 2D points and binary vectors, a small conv net
for images. The encoder gives (mu, logvar); `fastgen.ops.gaussian_reparam_kl` draws
z = mu + exp(logvar/2) * eps and the KL to N(0, I) in one fused op (forward and backward).

Decoders: "bernoulli" (logits; binary data, and images in [0, 1]) or "gaussian" (mean and a
per-dimension log-variance). loss = -ELBO = reconstruction NLL + KL, averaged over the batch.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..ops import gaussian_reparam_kl
from .base import GenerativeModel, register


def _mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class _ConvEncoder(nn.Module):
    def __init__(self, channels, size, width, out_dim):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.SiLU(),          # size/2
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.SiLU(),         # size/4
            nn.Flatten(), nn.Linear(2 * width * (size // 4) ** 2, out_dim))

    def forward(self, x):
        return self.net(x)


class _ConvDecoder(nn.Module):
    def __init__(self, latent, channels, size, width):
        super().__init__()
        self.width, self.size = width, size
        self.fc = nn.Linear(latent, 2 * width * (size // 4) ** 2)
        self.net = nn.Sequential(
            nn.SiLU(), nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.SiLU(), nn.ConvTranspose2d(width, channels, 4, 2, 1))

    def forward(self, z):
        h = self.fc(z).view(z.shape[0], 2 * self.width, self.size // 4, self.size // 4)
        return self.net(h)


@register("vae")
class VAE(GenerativeModel):
    kinds = ("points2d", "binary", "image")

    def __init__(self, data, latent_dim=None, hidden=None, decoder=None):
        image = data.kind == "image"
        latent_dim = latent_dim or {"points2d": 2, "binary": 16, "image": 32}[data.kind]
        hidden = hidden or (32 if image else 128)
        decoder = decoder or ("gaussian" if data.kind == "points2d" else "bernoulli")
        if decoder not in ("gaussian", "bernoulli"):
            raise ValueError(f"vae: decoder must be 'gaussian' or 'bernoulli', got {decoder!r}")
        super().__init__(data, latent_dim=latent_dim, hidden=hidden, decoder=decoder)
        self.latent_dim, self.decoder_kind = latent_dim, decoder
        self.dim = math.prod(data.shape)
        out = self.dim * (2 if decoder == "gaussian" else 1)
        if image:
            c, h, w = data.shape
            if h != w or h % 4:
                raise ValueError(f"vae: images must be square with a side divisible by 4, got {data.shape}")
            self.encoder = _ConvEncoder(c, h, hidden, 2 * latent_dim)
            self.decoder = _ConvDecoder(latent_dim, c * (2 if decoder == "gaussian" else 1), h, hidden)
        else:
            self.encoder = _mlp([self.dim, hidden, hidden, 2 * latent_dim])
            self.decoder = _mlp([latent_dim, hidden, hidden, out])

    def _flat(self, x):
        return x if self.data.kind == "image" else x.reshape(x.shape[0], -1)

    def encode(self, x):
        mu, logvar = self.encoder(self._flat(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z):
        """Decoder output per sample: logits (bernoulli) or (mean, logvar) (gaussian), data-shaped."""
        out = self.decoder(z).reshape(z.shape[0], -1)
        if self.decoder_kind == "bernoulli":
            return out.view(z.shape[0], *self.data.shape)
        mean, logvar = out.chunk(2, dim=1)
        return mean.reshape(z.shape[0], *self.data.shape), logvar.reshape(z.shape[0], *self.data.shape)

    def _recon_nll(self, x, decoded):
        """-log p(x|z) per sample, in nats."""
        if self.decoder_kind == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(decoded, x, reduction="none")
        else:
            mean, logvar = decoded
            nll = 0.5 * (logvar + (x - mean) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi))
        return nll.reshape(x.shape[0], -1).sum(1)

    def elbo_terms(self, x, generator=None):
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z, kl = gaussian_reparam_kl(mu, logvar, eps)
        decoded = self.decode(z)
        return self._recon_nll(x, decoded), kl, decoded

    def forward(self, x, y=None):
        recon, kl, _ = self.elbo_terms(x)
        loss = (recon + kl).mean()
        return loss, {"recon": recon.mean().detach(), "kl": kl.mean().detach()}

    def _mean(self, decoded):
        return torch.sigmoid(decoded) if self.decoder_kind == "bernoulli" else decoded[0]

    @torch.no_grad()
    def reconstruct(self, x):
        """Decoder mean at z = mu (no sampling)."""
        mu, _ = self.encode(x)
        return self._mean(self.decode(mu))

    @torch.no_grad()
    def sample(self, n, generator=None):
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        decoded = self.decode(z)
        if self.data.kind == "points2d":  # a point cloud is only right with the decoder's noise
            mean, logvar = decoded
            noise = torch.randn(mean.shape, generator=generator, device=self.device)
            return mean + torch.exp(0.5 * logvar) * noise
        if self.data.kind == "binary":
            return torch.bernoulli(torch.sigmoid(decoded), generator=generator)
        return self._mean(decoded).clamp(0, 1)

    @torch.no_grad()
    def evaluate(self, dataset, generator=None, batch_size=512):
        x_all = dataset.x
        recon_sum = kl_sum = mse_sum = 0.0
        for x in x_all.split(batch_size):
            x = x.to(self.device)
            recon, kl, decoded = self.elbo_terms(x, generator=generator)
            recon_sum += float(recon.sum())
            kl_sum += float(kl.sum())
            mse_sum += float(metrics.reconstruction_mse(x, self.reconstruct(x), reduction="none").sum())
        n = len(x_all)
        samples = self.sample(min(n, 2000), generator=generator).reshape(min(n, 2000), -1).cpu()
        real = x_all[: len(samples)].reshape(len(samples), -1)
        out = {
            "elbo": -(recon_sum + kl_sum) / n,
            "recon_nll": recon_sum / n,
            "kl": kl_sum / n,
            "recon_mse": mse_sum / n,
            "sliced_wasserstein": float(metrics.sliced_wasserstein(samples, real, seed=0)),
            "mmd_rbf": float(metrics.mmd_rbf(samples, real)),
        }
        if self.data.kind == "binary":  # -ELBO bounds the NLL of discrete data: a bits/dim bound
            out["nll_bound_bits_per_dim"] = float(metrics.bits_per_dim(-out["elbo"], self.dim))
        if self.data.kind == "image":
            out.update({f"knn_{k}": v for k, v in metrics.precision_recall_knn(real, samples).items()})
        return out
