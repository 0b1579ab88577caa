"""What the flow models (nice, realnvp, glow) share: dequantization of discrete data, the
training loss (per-sample NLL from `fastgen.ops.flow_nll`, bits/dim for discrete data), sampling
back to data space, and evaluation (NLL, bits/dim, and for 2D points a full-covariance Gaussian
fit of the training data as the baseline a flow must beat)."""
import math

import torch

from .. import metrics
from .base import GenerativeModel

IMAGE_BINS = 256  # shapes images are treated as 8-bit: x in [0, 1] -> k = round(255 x)


class FlowModel(GenerativeModel):
    """A GenerativeModel around `self.flow` (a fastgen.nn.FlowSequential on the preprocessed
    data shape). Discrete data (images, binary) are dequantized to (k + u) / n_bins - 1/2 with
    u ~ U[0, 1)^D; continuous 2D points are modelled as they are."""

    def _setup_data(self, data):
        self.dim = math.prod(data.shape)
        self.n_bins = {"image": IMAGE_BINS, "binary": 2}.get(data.kind)

    def _to_flow_space(self, x, generator=None):
        if self.n_bins is None:
            return x
        k = torch.round(x * (self.n_bins - 1))
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (k + u) / self.n_bins - 0.5

    def _to_data_space(self, v):
        if self.n_bins is None:
            return v
        k = torch.floor((v + 0.5) * self.n_bins).clamp(0, self.n_bins - 1)
        return k / (self.n_bins - 1)

    def nll(self, x, generator=None):
        """Per-sample NLL: nats for 2D points, bits/dim for discrete data."""
        v = self._to_flow_space(x, generator)
        return self.flow.nll(v.reshape((v.shape[0],) + self.flow_shape), self.n_bins)

    def forward(self, x, y=None):
        loss = self.nll(x).mean()
        return loss, {("bits_per_dim" if self.n_bins else "nll"): loss.detach()}

    @torch.no_grad()
    def sample_flow_space(self, n, generator=None, temperature=1.0):
        """Raw samples of the flow, before mapping to data space; a young flow's inverse can
        overflow to inf/NaN at high temperature (evaluate counts how often)."""
        return self.flow.sample(n, temperature=temperature, generator=generator).reshape(
            (n,) + tuple(self.data.shape))

    @torch.no_grad()
    def sample(self, n, generator=None, temperature=1.0):
        v = self.sample_flow_space(n, generator, temperature)
        if self.n_bins is not None:  # an overflowed pixel is still a pixel: the nearest valid value
            v = torch.nan_to_num(v, nan=0.0, posinf=0.5, neginf=-0.5)
        return self._to_data_space(v)

    @torch.no_grad()
    def reconstruct(self, x):
        """Data -> latent -> data: the identity up to float rounding (a check, and a plot row)."""
        v = self._to_flow_space(x, torch.Generator(x.device).manual_seed(0))
        z, _ = self.flow(v.reshape((v.shape[0],) + self.flow_shape))
        back, _ = self.flow.inverse(z, self.flow.split_latents)
        return self._to_data_space(back.reshape(x.shape))

    @torch.no_grad()
    def evaluate(self, dataset, generator=None, batch_size=512, temperatures=(1.0,)):
        total, n = 0.0, len(dataset.x)
        for x in dataset.x.split(batch_size):
            total += float(self.nll(x.to(self.device), generator).double().sum())
        out = {}
        if self.n_bins is None:
            out["nll"] = total / n
            out["gaussian_fit_nll"] = gaussian_fit_nll(dataset.x.double())
        else:
            out["bits_per_dim"] = total / n
        real = dataset.x[:2000].reshape(min(n, 2000), -1).float()
        for t in temperatures:
            raw = self.sample_flow_space(len(real), generator=generator, temperature=t)
            finite = torch.isfinite(raw.reshape(len(real), -1)).all(1).cpu()
            suffix = "" if len(temperatures) == 1 else f"_t{t:g}"
            out["nonfinite_samples" + suffix] = float(1 - finite.float().mean())
            if self.n_bins is not None:
                raw = torch.nan_to_num(raw, nan=0.0, posinf=0.5, neginf=-0.5)
                samples = self._to_data_space(raw).reshape(len(real), -1).cpu()
            else:  # a non-finite point has no distance to the data: measure the finite ones
                samples = raw.reshape(len(real), -1).cpu()[finite]
            out["sliced_wasserstein" + suffix] = float(metrics.sliced_wasserstein(samples.float(), real, seed=0))
        return out


def gaussian_fit_nll(x):
    """Mean NLL (nats) of x (N, D) under the maximum-likelihood full-covariance Gaussian of x
    itself: the baseline a flow must beat on 2D toys."""
    x = x.reshape(x.shape[0], -1)
    dist = torch.distributions.MultivariateNormal(x.mean(0), torch.cov(x.t(), correction=0).reshape(
        x.shape[1], x.shape[1]))
    return float(-dist.log_prob(x).mean())
