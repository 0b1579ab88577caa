"""VQGAN stage 1 (Esser, Rombach & Ommer, "Taming Transformers"): a conv autoencoder whose
latent grid is snapped to a learned codebook (`fastgen.nn.VectorQuantizer`, taming's
VectorQuantizer2), trained with L1 reconstruction + the codebook/commitment loss + a PatchGAN
hinge loss whose weight adapts to the gradient norms at the decoder's last layer.

    encoder: conv_in -> per level [res blocks, stride-2 conv] -> mid (res, attn, res) -> conv_out
             -> 1x1 quant_conv -> quantize (n_e codes of e_dim)
    decoder: 1x1 post_quant_conv -> conv_in -> mid -> per level [res blocks, 2x nearest + conv]
             -> conv_out
    loss_ae   = |x - x_rec| + codebook_loss + d_weight * disc_factor * (-mean D(x_rec))
    loss_disc = disc_factor * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))
    d_weight  = disc_weight * clamp(|grad_L rec| / (|grad_L gan| + 1e-4), 0, 1e4), L = conv_out.weight
    disc_factor = 0 before `disc_start` steps (the discriminator is neither run nor trained),
                  `disc_factor` after.

Left out from taming: the LPIPS perceptual term (it needs downloaded VGG weights; the
reconstruction loss here is L1 alone), and the discriminator's BatchNorm (GroupNorm instead:
taming's BatchNorm normalises all-real and all-fake batches separately and keeps running
statistics that differ per replica under DDP).

Two networks, two optimizers: the model owns its step through `configure_optimizers(lr)` and
`training_step(x, y, optimizers, step)`, which fastgen/train.py calls instead of its plain
forward / backward / Adam step. Images are in [0, 1] outside the model and [-1, 1] inside.

Stage 1 has no prior over the codes: `sample` decodes uniformly random code grids, which shows
what the codebook holds, not the data distribution. A GPT over `encode_indices` grids is the
prior (stage 2).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..nn import VectorQuantizer
from .base import GenerativeModel, register


def _norm(channels):
    # taming: GroupNorm(32, eps=1e-6); gcd keeps that for widths that are multiples of 32
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class _ResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class _AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of the lowest-resolution grid."""

    def __init__(self, channels):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)          # (b, 1, hw, c)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _mid(channels, attn):
    return nn.Sequential(_ResBlock(channels, channels),
                         _AttnBlock(channels) if attn else nn.Identity(),
                         _ResBlock(channels, channels))


class _Encoder(nn.Module):
    def __init__(self, in_ch, ch, ch_mult, num_res_blocks, z_channels, attn):
        super().__init__()
        layers, c = [nn.Conv2d(in_ch, ch, 3, padding=1)], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                layers.append(_ResBlock(c, ch * mult))
                c = ch * mult
            if level != len(ch_mult) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [_mid(c, attn), _norm(c), nn.SiLU(), nn.Conv2d(c, z_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class _Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Decoder(nn.Module):
    def __init__(self, out_ch, ch, ch_mult, num_res_blocks, z_channels, attn):
        super().__init__()
        c = ch * ch_mult[-1]
        layers = [nn.Conv2d(z_channels, c, 3, padding=1), _mid(c, attn)]
        for level in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):   # taming's decoder has one block more per level
                layers.append(_ResBlock(c, ch * ch_mult[level]))
                c = ch * ch_mult[level]
            if level != 0:
                layers.append(_Upsample(c))
        layers += [_norm(c), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(c, out_ch, 3, padding=1)  # the adaptive weight's "last layer"

    def forward(self, z):
        return self.conv_out(self.net(z))


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator (pix2pix PatchGAN): 4x4 convs, `n_layers` of them stride 2,
    then two stride 1; one logit per overlapping patch. GroupNorm where taming has BatchNorm."""

    def __init__(self, in_ch, ndf=32, n_layers=2):
        super().__init__()
        layers = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ndf
        for n in range(1, n_layers + 1):
            stride = 2 if n < n_layers else 1
            cout = ndf * min(2 ** n, 8)
            layers += [nn.Conv2d(c, cout, 4, stride, 1, bias=False), _norm(cout), nn.LeakyReLU(0.2)]
            c = cout
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # taming's weights_init (DCGAN)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    @staticmethod
    def output_side(side, n_layers):
        """Side of the logit grid for a `side` x `side` input."""
        for _ in range(n_layers):
            side //= 2            # 4x4, stride 2, pad 1 halves an even side
        return side - 2           # two 4x4, stride 1, pad 1 convs take one pixel each

    def forward(self, x):
        return self.net(x)


def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_disc_weight(rec_loss, g_loss, last_layer, disc_weight=1.0):
    """taming's balance of the GAN term: disc_weight * |d rec / d L| / (|d g / d L| + 1e-4),
    clamped to [0, 1e4] and detached (L = the decoder's last weight). Keeps the graph."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    ratio = torch.linalg.vector_norm(rec_grad) / (torch.linalg.vector_norm(g_grad) + 1e-4)
    return ratio.clamp(0.0, 1e4).detach() * disc_weight


@register("vqgan")
class VQGAN(GenerativeModel):
    kinds = ("image",)

    def __init__(self, data, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn=True, n_e=128, e_dim=32,
                 beta=0.25, codebook_weight=1.0, disc_start=500, disc_weight=0.8, disc_factor=1.0,
                 disc_ndf=32, disc_layers=2):
        ch_mult = tuple(int(m) for m in ch_mult)
        super().__init__(data, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn=attn, n_e=n_e,
                         e_dim=e_dim, beta=beta, codebook_weight=codebook_weight, disc_start=disc_start,
                         disc_weight=disc_weight, disc_factor=disc_factor, disc_ndf=disc_ndf,
                         disc_layers=disc_layers)
        c, h, w = data.shape
        factor = 2 ** (len(ch_mult) - 1)
        if h % factor or w % factor:
            raise ValueError(f"vqgan: image sides must be divisible by {factor} (ch_mult={ch_mult}), "
                             f"got {data.shape}")
        if min(PatchDiscriminator.output_side(h, disc_layers),
               PatchDiscriminator.output_side(w, disc_layers)) < 1:
            raise ValueError(f"vqgan: {h}x{w} images are too small for disc_layers={disc_layers}; "
                             f"use fewer layers")
        self.grid = (h // factor, w // factor)
        self.n_e, self.e_dim = n_e, e_dim
        self.codebook_weight = codebook_weight
        self.disc_start, self.disc_weight, self.disc_factor = disc_start, disc_weight, disc_factor
        self.encoder = _Encoder(c, ch, ch_mult, num_res_blocks, e_dim, attn)
        self.quant_conv = nn.Conv2d(e_dim, e_dim, 1)
        self.quantize = VectorQuantizer(n_e, e_dim, beta, legacy=True)
        self.post_quant_conv = nn.Conv2d(e_dim, e_dim, 1)
        self.decoder = _Decoder(c, ch, ch_mult, num_res_blocks, e_dim, attn)
        self.discriminator = PatchDiscriminator(c, disc_ndf, disc_layers)

    # -- the autoencoder ([-1, 1] inside) ----------------------------------------------------------

    def encode(self, x):
        """Images in [0, 1] -> (z_q BCHW, codebook loss, indices [B, h, w])."""
        z_q, qloss, (_, _, idx) = self.quantize(self.quant_conv(self.encoder(2 * x - 1)))
        return z_q, qloss, idx.reshape(x.shape[0], *z_q.shape[2:])

    def decode(self, z_q):
        """Quantized latents -> images in [-1, 1] (unclamped)."""
        return self.decoder(self.post_quant_conv(z_q))

    def autoencoder_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]

    def _autoencoder_loss(self, x):
        """(x_rec in [-1, 1], L1 + codebook loss, L1 alone, logs)."""
        z_q, qloss, _ = self.encode(x)
        x_rec = self.decode(z_q)
        rec = (2 * x - 1 - x_rec).abs().mean()
        logs = {"rec_l1": rec.detach(), "quant_loss": qloss.detach()}
        return x_rec, rec + self.codebook_weight * qloss, rec, logs

    def forward(self, x, y=None):
        """Autoencoder loss without the GAN term (L1 + codebook), e.g. for a plain Adam step."""
        _, loss, _, logs = self._autoencoder_loss(x)
        return loss, logs

    # -- the harness's two-optimizer hook ------------------------------------------------------------

    def configure_optimizers(self, lr):
        # taming: Adam with betas (0.5, 0.9) for both networks, same learning rate
        return [torch.optim.Adam(self.autoencoder_parameters(), lr=lr, betas=(0.5, 0.9)),
                torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))]

    def disc_active(self, step):
        return step >= self.disc_start and self.disc_factor > 0

    def training_step(self, x, y, optimizers, step):
        """One autoencoder step, then (from `disc_start` on) one discriminator step on the same
        batch. `step` is the number of steps done before this one."""
        opt_ae, opt_disc = optimizers
        x_rec, loss, rec, logs = self._autoencoder_loss(x)
        active = self.disc_active(step)
        if active:
            g_loss = -self.discriminator(x_rec).mean()
            d_weight = adaptive_disc_weight(rec, g_loss, self.decoder.conv_out.weight, self.disc_weight)
            loss = loss + d_weight * self.disc_factor * g_loss
            logs.update(g_loss=g_loss.detach(), d_weight=d_weight)
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        opt_ae.step()
        if active:
            # x_rec from before the autoencoder's update (taming recomputes it; one decode saved)
            opt_disc.zero_grad(set_to_none=True)  # drops the generator loss's gradients
            logits_real = self.discriminator(2 * x - 1)
            logits_fake = self.discriminator(x_rec.detach())
            d_loss = self.disc_factor * hinge_d_loss(logits_real, logits_fake)
            d_loss.backward()
            opt_disc.step()
            logs.update(d_loss=d_loss.detach(), logits_real=logits_real.detach().mean(),
                        logits_fake=logits_fake.detach().mean())
        else:
            zero = torch.zeros((), device=x.device)
            logs.update(g_loss=zero, d_weight=zero, d_loss=zero, logits_real=zero, logits_fake=zero)
        return loss.detach(), logs

    # -- sampling, reconstruction, evaluation ----------------------------------------------------------

    def _image(self, z_q):
        return ((self.decode(z_q) + 1) / 2).clamp(0, 1)

    def decode_indices(self, idx):
        """Code grids [B, h, w] -> images [B, C, H, W] in [0, 1]."""
        shape = (idx.shape[0], idx.shape[1], idx.shape[2], self.e_dim)
        return self._image(self.quantize.get_codebook_entry(idx.reshape(-1), shape))

    @torch.no_grad()
    def reconstruct(self, x):
        return self._image(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, n, generator=None):
        """Decoded uniformly random code grids: NOT samples of the data distribution (stage 1 has
        no prior; the GPT over code grids is stage 2)."""
        idx = torch.randint(self.n_e, (n, *self.grid), generator=generator, device=self.device)
        return self.decode_indices(idx)

    @torch.no_grad()
    def evaluate(self, dataset, generator=None, batch_size=256):
        counts = torch.zeros(self.n_e, dtype=torch.float64)
        mse_sum = l1_sum = qloss_sum = 0.0
        for x in dataset.x.split(batch_size):
            x = x.to(self.device)
            z_q, qloss, idx = self.encode(x)
            x_hat = self._image(z_q)
            mse_sum += float(metrics.reconstruction_mse(x, x_hat, reduction="sum"))
            l1_sum += float((x - x_hat).abs().reshape(len(x), -1).mean(1).sum())
            qloss_sum += float(qloss) * len(x)
            counts += torch.bincount(idx.reshape(-1).cpu(), minlength=self.n_e).double()
        n = len(dataset.x)
        p = counts / counts.sum()
        return {
            "recon_mse": mse_sum / n,
            "recon_l1": l1_sum / n,
            "quant_loss": qloss_sum / n,
            # exp(entropy) of code usage: the effective number of codes in use
            "perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())),
            "codes_used": int((counts > 0).sum()),
            "dead_codes": int((counts == 0).sum()),   # never chosen on this data
            "codebook_size": self.n_e,
        }


def encode_indices(model, x):
    """Code grid of images x in [0, 1]: LongTensor [B, h, w] (what a stage-2 prior trains on)."""
    with torch.no_grad():
        return model.encode(x)[2].long()


def decode_indices(model, idx):
    """Images in [0, 1] [B, C, H, W] from code grids [B, h, w]."""
    with torch.no_grad():
        return model.decode_indices(idx)
