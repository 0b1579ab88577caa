"""Autoregressive density models on binary vectors: FVSBN, NADE and MADE.

Each factorizes p(x) = prod_d p(x_d | x_<d) (in a fixed variable order), so the log-likelihood
is exact and sampling is ancestral (one variable at a time):

- FVSBN (fully visible sigmoid belief net): p(x_d = 1 | x_<d) = sigmoid(b_d + sum_{j<d} W_dj x_j),
  a strictly lower-triangular logistic regression.
- NADE: h_d = sigmoid(c + W[:, <d] x_<d), p(x_d = 1 | x_<d) = sigmoid(b_d + V_d . h_d). The
  hidden pre-activations share W across d, so a_{d+1} = a_d + W[:, d] x_d: all D conditionals in
  O(H * D) per sample (an exclusive cumulative sum), not O(H * D^2).
- MADE: an MLP whose weights are masked so output d only sees inputs before d in the order
  (Germain et al.); `order="random"` draws the order from `seed`.

loss = mean over the batch of -log p(x) (nats).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from .base import GenerativeModel, register


class _ARModel(GenerativeModel):
    kinds = ("binary",)

    def __init__(self, data, **config):
        super().__init__(data, **config)
        self.dim = math.prod(data.shape)

    def logits(self, x):
        """(B, D) logits of p(x_d = 1 | x_<d) for flattened binary x (B, D)."""
        raise NotImplementedError

    def log_prob(self, x):
        """Exact log p(x) per sample, in nats."""
        x = x.reshape(x.shape[0], -1).to(self._param_dtype())
        return -F.binary_cross_entropy_with_logits(self.logits(x), x, reduction="none").sum(1)

    def _param_dtype(self):
        return next(self.parameters()).dtype

    def forward(self, x, y=None):
        nll = -self.log_prob(x)
        return nll.mean(), {"nll": nll.mean().detach()}

    def _order(self):
        return torch.arange(self.dim, device=self.device)

    @torch.no_grad()
    def sample(self, n, generator=None):
        x = torch.zeros(n, self.dim, device=self.device, dtype=self._param_dtype())
        for d in self._order().tolist():  # ancestral: variable d sees only the ones drawn before
            p = torch.sigmoid(self.logits(x)[:, d])
            x[:, d] = torch.bernoulli(p, generator=generator)
        return x.reshape(n, *self.data.shape)

    @torch.no_grad()
    def evaluate(self, dataset, generator=None, batch_size=1024):
        total = 0.0
        for x in dataset.x.split(batch_size):
            total += float(-self.log_prob(x.to(self.device)).sum())
        n = len(dataset.x)
        samples = self.sample(min(n, 2000), generator=generator).reshape(min(n, 2000), -1).cpu()
        real = dataset.x[: len(samples)].reshape(len(samples), -1).float()
        return {"nll": total / n, "bits_per_dim": float(metrics.bits_per_dim(total / n, self.dim)),
                "sliced_wasserstein": float(metrics.sliced_wasserstein(samples, real, seed=0))}


@register("fvsbn")
class FVSBN(_ARModel):
    def __init__(self, data):
        super().__init__(data)
        self.weight = nn.Parameter(torch.zeros(self.dim, self.dim))
        self.bias = nn.Parameter(torch.zeros(self.dim))
        self.register_buffer("mask", torch.ones(self.dim, self.dim).tril(-1))

    def logits(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


@register("nade")
class NADE(_ARModel):
    def __init__(self, data, hidden=64):
        super().__init__(data, hidden=hidden)
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(hidden, self.dim, generator=g) * 0.01)
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(self.dim, hidden, generator=g) * 0.01)
        self.b = nn.Parameter(torch.zeros(self.dim))

    def logits(self, x):
        # a_d = c + sum_{j<d} W[:, j] x_j for every d at once: exclusive cumulative sum (B, D, H)
        contrib = x[:, :, None] * self.W.t()[None]
        a = self.c + torch.cumsum(contrib, dim=1) - contrib
        h = torch.sigmoid(a)
        return (h * self.V[None]).sum(-1) + self.b


class _MaskedLinear(nn.Linear):
    def __init__(self, fan_in, fan_out, mask):
        super().__init__(fan_in, fan_out)
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


@register("made")
class MADE(_ARModel):
    def __init__(self, data, hidden=128, layers=2, order="natural", seed=0):
        if order not in ("natural", "random"):
            raise ValueError(f"made: order must be 'natural' or 'random', got {order!r}")
        super().__init__(data, hidden=hidden, layers=layers, order=order, seed=seed)
        d = self.dim
        g = torch.Generator().manual_seed(seed)
        order_t = torch.randperm(d, generator=g) if order == "random" else torch.arange(d)
        self.register_buffer("order", order_t)
        # degree of input / output unit i = its position in the order (1..D); hidden units get
        # degrees in [1, D-1]; a connection k -> l exists when deg(l) >= deg(k) (hidden) or
        # deg(out) > deg(k) (output), so output d depends only on inputs earlier in the order
        deg_in = torch.empty(d, dtype=torch.long)
        deg_in[order_t] = torch.arange(1, d + 1)
        degrees = [deg_in]
        for _ in range(layers):
            degrees.append(torch.randint(1, max(2, d), (hidden,), generator=g) if d > 1
                           else torch.ones(hidden, dtype=torch.long))
        mods = []
        for i in range(layers):
            mask = (degrees[i + 1][:, None] >= degrees[i][None, :]).float()
            mods += [_MaskedLinear(degrees[i].numel(), hidden, mask), nn.ReLU()]
        out_mask = (deg_in[:, None] > degrees[-1][None, :]).float()
        mods.append(_MaskedLinear(degrees[-1].numel(), d, out_mask))
        self.net = nn.Sequential(*mods)

    def _order(self):
        return self.order

    def logits(self, x):
        return self.net(x)
