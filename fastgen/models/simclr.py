"""SimCLR (Chen et al., 2020) on `shapes`: contrastive pre-training and a linear probe.

Two augmented views of every image (random resized crop, horizontal flip, colour jitter:
brightness, contrast, saturation; all batched torch ops) go through a conv encoder
(GroupNorm+SiLU blocks on `fastgen.nn.GroupNormSiLU`, global average pooling) and an MLP
projection head; `fastgen.ops.info_nce_loss` (NT-Xent, blockwise, no 2N x 2N matrix) pulls the
two views of an image together. `eval` fits a linear probe (ridge regression on one-hot labels,
closed form) on frozen encoder features of a training split and reports its accuracy on the
held-out split: the quality of the representation.

    fastgen train simclr --data shapes --steps 1000
"""
import torch
import torch.nn.functional as F
from torch import nn

from .. import data as fdata
from .. import ops
from ..nn import GroupNormSiLU
from .base import GenerativeModel, register


def augment(x, generator=None, min_scale=0.5, jitter=0.6):
    """A random view of each image in x [B, C, H, W] (values in [0, 1])."""
    b, c = x.shape[:2]
    dev = x.device

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=generator, device=dev)

    # random resized crop + horizontal flip as one affine resampling
    scale = u(min_scale, 1.0, b).sqrt()
    flip = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    shift = (1 - scale)[:, None] * u(-1.0, 1.0, b, 2)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # colour jitter: brightness, contrast (towards the image mean), saturation (towards grey)
    x = x * u(1 - jitter, 1 + jitter, b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(1 - jitter, 1 + jitter, b, 1, 1, 1)
    if c == 3:
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * u(1 - jitter, 1 + jitter, b, 1, 1, 1)
        # hue: a random permutation of the colour channels per image (SimCLR's point: colour
        # must not identify the image), and grey for 20% of the images
        perm = torch.rand(b, 3, generator=generator, device=dev).argsort(1)
        x = x.gather(1, perm[:, :, None, None].expand_as(x))
        x = torch.where(torch.rand(b, 1, 1, 1, generator=generator, device=dev) < 0.2, x.mean(1, keepdim=True), x)
    return x.clamp(0, 1)


class Encoder(nn.Module):
    def __init__(self, channels, width, out_dim):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), GroupNormSiLU(8, w),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), GroupNormSiLU(8, 2 * w),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), GroupNormSiLU(8, 2 * w),
            nn.Conv2d(2 * w, out_dim, 3, stride=2, padding=1), GroupNormSiLU(8, out_dim))

    def forward(self, x):
        return self.net(2 * x - 1).mean(dim=(2, 3))


@register("simclr")
class SimCLR(GenerativeModel):
    kinds = ("image",)

    def __init__(self, data, width=32, feature_dim=128, proj_dim=64, temperature=0.2, min_scale=0.5, jitter=0.6,
                 probe_train=2000, probe_ridge=1e-2):
        super().__init__(data, width=width, feature_dim=feature_dim, proj_dim=proj_dim, temperature=temperature,
                         min_scale=min_scale, jitter=jitter, probe_train=probe_train, probe_ridge=probe_ridge)
        if width % 8 or feature_dim % 8:
            raise ValueError(f"simclr: width ({width}) and feature_dim ({feature_dim}) must be multiples of 8")
        self.encoder = Encoder(data.shape[0], width, feature_dim)
        self.head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, proj_dim))

    def forward(self, x, y=None):
        cfg = self.config
        v1 = augment(x, min_scale=cfg["min_scale"], jitter=cfg["jitter"])
        v2 = augment(x, min_scale=cfg["min_scale"], jitter=cfg["jitter"])
        z = self.head(self.encoder(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        loss = ops.info_nce_loss(z1, z2, cfg["temperature"])
        with torch.no_grad():  # how often a view's nearest other view is its own partner
            u = F.normalize(z, dim=1)
            sim = u @ u.t()
            sim.fill_diagonal_(float("-inf"))
            n = z1.shape[0]
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
            top1 = (sim.argmax(1) == partner).float().mean()
        return loss, {"nt_xent": loss.detach(), "pair_top1": top1}

    @torch.no_grad()
    def features(self, x, batch_size=512):
        return torch.cat([self.encoder(b.to(self.device)) for b in x.split(batch_size)])

    @torch.no_grad()
    def sample(self, n, generator=None):
        """Not a generative model: n images next to two augmented views of each ([3n, C, H, W]),
        what the training plots show."""
        seed = int(torch.randint(1 << 30, (1,), generator=generator, device=generator.device if generator else None))
        x = fdata.make(self.data.name, n=n, seed=seed, split="test", size=self.data.shape[1],
                       channels=self.data.shape[0]).x.to(self.device)
        g = torch.Generator(self.device).manual_seed(seed)
        return torch.cat([x, augment(x, g, self.config["min_scale"], self.config["jitter"]),
                          augment(x, g, self.config["min_scale"], self.config["jitter"])])

    @torch.no_grad()
    def linear_probe(self, train_x, train_y, test_x, test_y):
        """Accuracy of a ridge-regression linear classifier on frozen, standardized features."""
        f_tr, f_te = self.features(train_x).double(), self.features(test_x).double()
        mu, sd = f_tr.mean(0), f_tr.std(0).clamp_min(1e-6)
        f_tr, f_te = (f_tr - mu) / sd, (f_te - mu) / sd
        f_tr = torch.cat([f_tr, torch.ones(len(f_tr), 1, dtype=f_tr.dtype, device=f_tr.device)], 1)
        f_te = torch.cat([f_te, torch.ones(len(f_te), 1, dtype=f_te.dtype, device=f_te.device)], 1)
        y = F.one_hot(train_y.to(self.device), self.data.num_classes).double()
        gram = f_tr.t() @ f_tr + self.config["probe_ridge"] * len(f_tr) * torch.eye(f_tr.shape[1], dtype=f_tr.dtype,
                                                                                    device=f_tr.device)
        w = torch.linalg.solve(gram, f_tr.t() @ y)
        return float(((f_te @ w).argmax(1).cpu() == test_y.cpu()).double().mean())

    @torch.no_grad()
    def evaluate(self, dataset, generator=None):
        """Linear-probe accuracy on the held-out split (probe fit on `probe_train` training
        images), next to chance (1 / classes)."""
        train = fdata.make(dataset.name, n=self.config["probe_train"], seed=dataset.seed, split="train",
                           **dataset.options)
        acc = self.linear_probe(train.x, train.y, dataset.x, dataset.y)
        return {"probe_acc": acc, "chance": 1.0 / self.data.num_classes}
