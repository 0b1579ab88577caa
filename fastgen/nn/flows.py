"""Normalizing-flow layers (NICE, RealNVP, Glow) on fastgen's fused flow ops.

Convention everywhere: `layer(x) -> (z, logdet)` maps data to latent, `layer.inverse(z) ->
(x, logdet)` maps back; logdet is per sample (shape [B], fp32; fp64 for fp64 input) and the two
are exact negatives. `FlowSequential` chains layers and adds the prior: `log_prob(x)`, `nll(x)`,
`sample(n)`.

The additive coupling has no fused op: `x_b + shift` is already one eager kernel and its logdet
is 0, so a custom op could only add dispatch cost (measured: see docs/flows.md).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import flow as _flow_ops
from ..ops._common import math_dtype


def _zero_logdet(x):
    return x.new_zeros((x.shape[0],), dtype=math_dtype(x.dtype))


def checkerboard_mask(height, width, parity=0, device=None):
    """(H, W) bool mask, True where (row + col + parity) is even: the conditioning positions."""
    rows = torch.arange(height, device=device).view(-1, 1)
    cols = torch.arange(width, device=device).view(1, -1)
    return (rows + cols + parity) % 2 == 0


def _mlp(d_in, d_out, hidden, depth=2):
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    last = nn.Linear(d, d_out)
    nn.init.zeros_(last.weight)  # the coupling starts as the identity (Glow's trick)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def _convnet(c_in, c_out, hidden):
    last = nn.Conv2d(hidden, c_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)


class _Coupling(nn.Module):
    """Split x into a conditioning part x_a and a transformed part x_b by `mask`, run the
    conditioner on x_a, transform x_b, merge.

    mask: "half" (x of shape (N, D): the first or, with parity=1, the second half conditions),
          "channel" (x of shape (N, C, H, W): the first / second half of the channels),
          "checkerboard" (x of shape (N, C, H, W): alternating pixels, conditioner sees x with
          the transformed pixels zeroed), or a bool tensor of x's per-sample shape (True =
          conditioning) for (N, ...) input.
    conditioner: module mapping x_a (for "checkerboard" and tensor masks: the masked x) to
        `n_params` stacked tensors along dim 1, each shaped like x_b (checkerboard: like x).
        Default: a zero-initialized MLP (half) or conv net (channel / checkerboard).
    """
    n_params = 1

    def __init__(self, num_features, mask="half", conditioner=None, hidden=64, parity=0):
        super().__init__()
        if isinstance(mask, torch.Tensor):
            if mask.dtype != torch.bool:
                raise TypeError(f"fastgen: mask must be a bool tensor, got {mask.dtype}")
            if not bool(mask.any()) or bool(mask.all()):
                raise ValueError("fastgen: mask must have both conditioning (True) and transformed "
                                 "(False) entries")
            self.register_buffer("mask", mask.clone(), persistent=False)
            self.kind = "tensor"
        elif mask in ("half", "channel", "checkerboard"):
            self.kind = mask
            self.mask = None
        else:
            raise ValueError(f"fastgen: mask must be 'half', 'channel', 'checkerboard' or a bool tensor, "
                             f"got {mask!r}")
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"fastgen: num_features must be a positive int, got {num_features!r}")
        if self.kind in ("half", "channel") and num_features % 2:
            raise ValueError(f"fastgen: a {self.kind} split needs an even number of "
                             f"{'features' if self.kind == 'half' else 'channels'}, got {num_features}")
        if parity not in (0, 1):
            raise ValueError(f"fastgen: parity must be 0 or 1, got {parity!r}")
        self.num_features, self.parity = num_features, parity
        if conditioner is None:
            half, k = num_features // 2, self.n_params
            if self.kind == "half":
                conditioner = _mlp(half, k * half, hidden)
            elif self.kind == "channel":
                conditioner = _convnet(half, k * half, hidden)
            elif self.kind == "checkerboard":
                conditioner = _convnet(num_features, k * num_features, hidden)
            else:
                n = int(mask.numel())
                conditioner = _Flat(_mlp(n, k * n, hidden), mask.shape, k)
        self.conditioner = conditioner

    def _check_input(self, x):
        if self.kind == "half":
            if x.dim() != 2 or x.shape[1] != self.num_features:
                raise ValueError(f"fastgen: {type(self).__name__} with a half split expects x of shape "
                                 f"(N, {self.num_features}), got {tuple(x.shape)}")
        elif self.kind in ("channel", "checkerboard"):
            if x.dim() != 4 or x.shape[1] != self.num_features:
                raise ValueError(f"fastgen: {type(self).__name__} with a {self.kind} mask expects x of "
                                 f"shape (N, {self.num_features}, H, W), got {tuple(x.shape)}")
        elif tuple(x.shape[1:]) != tuple(self.mask.shape):
            raise ValueError(f"fastgen: the mask has shape {tuple(self.mask.shape)} but x has per-sample "
                             f"shape {tuple(x.shape[1:])}")

    def _positions(self, x):
        """Flat indices of the conditioning and transformed positions (checkerboard / tensor)."""
        if self.kind == "checkerboard":
            m = checkerboard_mask(x.shape[2], x.shape[3], self.parity, x.device).view(-1)
            m = m.repeat(x.shape[1])
        else:
            m = self.mask.to(x.device).reshape(-1)
        return m.nonzero().view(-1), (~m).nonzero().view(-1), m

    def _params(self, cond, shape_b):
        out = self.conditioner(cond)
        expected = (shape_b[0], self.n_params * shape_b[1]) + tuple(shape_b[2:])
        if tuple(out.shape) != expected:
            raise ValueError(f"fastgen: the conditioner returned shape {tuple(out.shape)}; expected "
                             f"{expected} ({self.n_params} tensor(s) shaped like x_b, stacked on dim 1)")
        return out.chunk(self.n_params, dim=1) if self.n_params > 1 else (out,)

    def _run(self, x, inverse):
        self._check_input(x)
        if self.kind in ("half", "channel"):
            x_a, x_b = x.chunk(2, dim=1)
            if self.parity:
                x_a, x_b = x_b, x_a
            params = self._params(x_a, x_b.shape)
            y_b, logdet = self._transform(x_b, params, inverse)
            parts = (y_b, x_a) if self.parity else (x_a, y_b)
            return torch.cat(parts, dim=1), logdet
        idx_a, idx_b, m = self._positions(x)
        flat = x.reshape(x.shape[0], -1)
        cond = (flat * m.to(x.dtype)).view_as(x)
        params = self._params(cond, x.shape)
        x_b = flat.index_select(1, idx_b)
        params = [p.reshape(x.shape[0], -1).index_select(1, idx_b) for p in params]
        y_b, logdet = self._transform(x_b, params, inverse)
        y = flat.index_copy(1, idx_b, y_b.to(x.dtype)).view_as(x)
        return y, logdet

    def forward(self, x):
        return self._run(x, False)

    def inverse(self, z):
        return self._run(z, True)


class _Flat(nn.Module):
    """Runs an MLP conditioner on flattened samples of any shape (tensor masks)."""

    def __init__(self, net, shape, k):
        super().__init__()
        self.net, self.shape, self.k = net, tuple(shape), k

    def forward(self, x):
        out = self.net(x.reshape(x.shape[0], -1))
        return out.view(x.shape[0], self.k * self.shape[0], *self.shape[1:])


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling: y_b = x_b + m(x_a), logdet = 0 (see _Coupling for masks)."""
    n_params = 1

    def _transform(self, x_b, params, inverse):
        (shift,) = params
        return (x_b - shift if inverse else x_b + shift), _zero_logdet(x_b)


class AffineCoupling(_Coupling):
    """RealNVP / Glow affine coupling: y_b = x_b * s + t with (t, raw) = conditioner(x_a) and s
    from raw by `scale_fn` ("exp", "sigmoid" (Glow), "tanh_exp", "atan_exp"; see
    fastgen.ops.affine_coupling), fused with its logdet. Masks as in _Coupling; the conditioner
    returns (shift, raw_scale) stacked on dim 1."""
    n_params = 2

    def __init__(self, num_features, mask="half", conditioner=None, hidden=64, parity=0,
                 scale_fn="sigmoid", clamp=2.0):
        super().__init__(num_features, mask, conditioner, hidden, parity)
        if scale_fn not in _flow_ops.COUPLING_SCALE_FNS:
            raise ValueError(f"fastgen: scale_fn must be one of {_flow_ops.COUPLING_SCALE_FNS}, got "
                             f"{scale_fn!r}")
        self.scale_fn, self.clamp = scale_fn, float(clamp)

    def _transform(self, x_b, params, inverse):
        shift, raw = params
        shift, raw = shift.to(x_b.dtype), raw.to(x_b.dtype)
        return ops.affine_coupling(x_b, shift, raw, self.scale_fn, self.clamp, inverse)


class NICEScaling(nn.Module):
    """NICE's diagonal scaling layer: y = x * exp(s) with one learned s per dimension,
    logdet = sum(s). x is (N, *shape); runs on fastgen.ops.actnorm with loc = 0."""

    def __init__(self, shape):
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_scale = nn.Parameter(torch.zeros(math.prod(self.shape)))

    def _run(self, x, inverse):
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"fastgen: NICEScaling expects x of shape (N, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        ls = self.log_scale.to(x.dtype)
        y, logdet = ops.actnorm(x.reshape(x.shape[0], -1), torch.zeros_like(ls), ls, inverse)
        return y.view_as(x), logdet

    def forward(self, x):
        return self._run(x, False)

    def inverse(self, z):
        return self._run(z, True)


class ActNorm(nn.Module):
    """Glow's ActNorm: y = (x + loc) * exp(log_scale) per channel of x (N, C, *spatial), with
    data-dependent initialization on the first forward call in training mode: loc = -mean,
    log_scale = -log(std + eps) over the batch (one pass), so the first batch comes out with zero
    mean and unit variance per channel. `initialized` is a buffer: it travels with state_dict,
    so a loaded model is not re-initialized."""

    def __init__(self, num_channels, eps=1e-6):
        super().__init__()
        self.num_channels, self.eps = num_channels, eps
        self.loc = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _check(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"fastgen: ActNorm({self.num_channels}) expects x of shape "
                             f"(N, {self.num_channels}, ...), got {tuple(x.shape)}")

    @torch.no_grad()
    def initialize(self, x):
        dims = [0] + list(range(2, x.dim()))
        var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(var.sqrt() + self.eps))
        self.initialized.fill_(True)

    def forward(self, x):
        self._check(x)
        if self.training and not bool(self.initialized):
            if x.shape[0] < 2:
                raise ValueError("fastgen: ActNorm's data-dependent initialization needs a batch of at "
                                 "least 2 samples")
            self.initialize(x)
        return ops.actnorm(x, self.loc.to(x.dtype), self.log_scale.to(x.dtype))

    def inverse(self, z):
        self._check(z)
        return ops.actnorm(z, self.loc.to(z.dtype), self.log_scale.to(z.dtype), True)


class InvConv2dLU(nn.Module):
    """Glow's invertible 1x1 convolution, LU-parametrized: W = P @ L @ (U + diag(sign * exp(log_s)))
    with P a fixed permutation, L unit lower-triangular, U strictly upper-triangular, so
    logdet = S * sum(log_s) (S = H * W) without a determinant. x is (N, C, *spatial) (also (N, C)).
    Runs on the fused `fastgen.ops.invertible_conv1x1` (weight build, product and logdet in one
    op); for an inverse that needs no graph (sampling) the inverse matrix is cached while the
    weights are unchanged (their version counters). fp16/bf16 inputs compute in fp32."""

    def __init__(self, num_channels, generator=None):
        super().__init__()
        c = num_channels
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(diag.abs()).float())
        self.num_channels = c
        self._inverse_cache = None

    def weight(self):
        eye = torch.eye(self.num_channels, device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.t() + torch.diag(self.sign * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _version(self):
        return tuple(p._version for p in (self.lower, self.upper, self.log_s)) + (
            self.lower.data_ptr(), self.lower.device)

    def inverse_weight(self):
        needs_graph = torch.is_grad_enabled() and any(
            p.requires_grad for p in (self.lower, self.upper, self.log_s))
        if needs_graph:
            return torch.linalg.inv(self.weight())
        version = self._version()
        if self._inverse_cache is None or self._inverse_cache[0] != version:
            with torch.no_grad():
                self._inverse_cache = (version, torch.linalg.inv(self.weight().double()).to(self.lower.dtype))
        return self._inverse_cache[1]

    def _check(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"fastgen: InvConv2dLU({self.num_channels}) expects x of shape "
                             f"(N, {self.num_channels}, ...), got {tuple(x.shape)}")

    def _fused(self, x, inverse):
        return ops.invertible_conv1x1(x, self.perm, self.lower, self.upper, self.sign, self.log_s, inverse)

    def forward(self, x):
        self._check(x)
        return self._fused(x, False)

    def inverse(self, z):
        self._check(z)
        needs_graph = torch.is_grad_enabled() and any(
            p.requires_grad for p in (self.lower, self.upper, self.log_s))
        if needs_graph or z.requires_grad and torch.is_grad_enabled():
            return self._fused(z, True)
        # sampling: the cached W^-1, no weight build or inversion per call
        t = math_dtype(z.dtype)
        y = torch.einsum("oc,nc...->no...", self.inverse_weight().to(t), z.to(t))
        logdet = (-z[0, 0].numel() * self.log_s.to(t).sum()).expand(z.shape[0])
        return y.to(z.dtype), logdet


class Squeeze(nn.Module):
    """(N, C, H, W) -> (N, C * f * f, H / f, W / f), the space-to-depth of RealNVP/Glow; logdet 0."""

    def __init__(self, factor=2):
        super().__init__()
        self.factor = factor

    def out_shape(self, shape):
        c, h, w = shape
        f = self.factor
        return (c * f * f, h // f, w // f)

    def forward(self, x):
        f = self.factor
        if x.dim() != 4 or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"fastgen: Squeeze({f}) expects (N, C, H, W) with H and W divisible by {f}, "
                             f"got {tuple(x.shape)}")
        n, c, h, w = x.shape
        y = x.view(n, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(n, c * f * f, h // f, w // f), _zero_logdet(x)

    def inverse(self, z):
        f = self.factor
        n, c, h, w = z.shape
        if c % (f * f):
            raise ValueError(f"fastgen: Squeeze({f}).inverse expects channels divisible by {f * f}, "
                             f"got {tuple(z.shape)}")
        x = z.view(n, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(n, c // (f * f), h * f, w * f), _zero_logdet(z)


class Split(nn.Module):
    """Glow's multi-scale split: x (N, C, ...) -> x1 (first C - C//2 channels) goes on; the rest,
    z2, is modelled by a learned prior N(mean, exp(log_std)) with (mean, log_std) from a
    zero-initialized conv on x1 (a linear layer for (N, C) input).

    forward returns (x1, log p(z2 | x1)) per sample: the term counts like a logdet in the
    flow's log-likelihood. inverse(x1, z2=None, temperature=1.0) returns (x, -log p(z2 | x1)),
    sampling z2 at the given temperature unless it is passed in."""

    def __init__(self, num_channels, image=True):
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"fastgen: Split needs at least 2 channels, got {num_channels}")
        self.num_channels = num_channels
        self.keep = num_channels - num_channels // 2
        out = 2 * (num_channels // 2)
        self.prior = nn.Conv2d(self.keep, out, 3, padding=1) if image else nn.Linear(self.keep, out)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)

    def out_shape(self, shape):
        return (self.keep,) + tuple(shape[1:])

    def _gaussian(self, x1):
        mean, log_std = self.prior(x1).chunk(2, dim=1)
        return mean, log_std

    def _log_prob(self, z2, mean, log_std):
        # log N(z2; mean, exp(log_std)) = log N(e; 0, 1) - sum(log_std), e = (z2 - mean) / std: an
        # inverse "exp" affine coupling (whose logdet is -sum(log_std)) and the fused Gaussian NLL
        e, logdet = ops.affine_coupling(z2, mean.to(z2.dtype), log_std.to(z2.dtype), "exp", inverse=True)
        return -ops.flow_nll(e, logdet, "gaussian")

    def forward(self, x):
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"fastgen: Split({self.num_channels}) expects x of shape "
                             f"(N, {self.num_channels}, ...), got {tuple(x.shape)}")
        x1, z2 = x[:, :self.keep], x[:, self.keep:]
        mean, log_std = self._gaussian(x1)
        self.last_z2 = z2
        return x1, self._log_prob(z2, mean, log_std)

    def inverse(self, x1, z2=None, temperature=1.0, generator=None):
        mean, log_std = self._gaussian(x1)
        if z2 is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z2 = mean + temperature * torch.exp(log_std) * noise
        return torch.cat([x1, z2.to(x1.dtype)], dim=1), -self._log_prob(z2, mean, log_std)


class FlowSequential(nn.Module):
    """A flow: layers applied in order (data -> latent), a standard prior on the final latent.

    prior: "gaussian" or "logistic" (NICE). event_shape: the shape of one data sample (needed
    by `sample`). Split layers contribute log p(z_i | ...) of the factored-out latents.
    """

    def __init__(self, *layers, prior="gaussian", event_shape=None):
        super().__init__()
        if prior not in _flow_ops.FLOW_PRIORS:
            raise ValueError(f"fastgen: prior must be one of {_flow_ops.FLOW_PRIORS}, got {prior!r}")
        self.layers = nn.ModuleList(layers)
        self.prior = prior
        self.event_shape = tuple(event_shape) if event_shape is not None else None

    def forward(self, x):
        """(z, total) with total = sum of the layers' logdets plus the splits' log-densities."""
        total = _zero_logdet(x)
        self.split_latents = []
        for layer in self.layers:
            x, ld = layer(x)
            if isinstance(layer, Split):
                self.split_latents.append(layer.last_z2)
            total = total + ld
        return x, total

    def inverse(self, z, split_latents=None, temperature=1.0, generator=None):
        total = _zero_logdet(z)
        latents = list(split_latents) if split_latents is not None else None
        for layer in reversed(self.layers):
            if isinstance(layer, Split):
                z2 = latents.pop() if latents else None
                z, ld = layer.inverse(z, z2, temperature, generator)
            else:
                z, ld = layer.inverse(z)
            total = total + ld
        return z, total

    def nll(self, x, n_bins=None):
        """Per-sample NLL (nats), or bits/dim with n_bins (see fastgen.ops.flow_nll)."""
        z, total = self(x)
        return ops.flow_nll(z, total, self.prior, n_bins)

    def log_prob(self, x):
        return -self.nll(x)

    def latent_shape(self):
        if self.event_shape is None:
            raise ValueError("fastgen: FlowSequential needs event_shape to sample")
        shape = self.event_shape
        for layer in self.layers:
            if hasattr(layer, "out_shape"):
                shape = layer.out_shape(shape)
        return shape

    @torch.no_grad()
    def sample(self, n, temperature=1.0, generator=None):
        param = next(self.parameters())
        kw = dict(generator=generator, device=param.device, dtype=param.dtype)
        shape = (n,) + tuple(self.latent_shape())
        if self.prior == "gaussian":
            z = temperature * torch.randn(shape, **kw)
        else:  # standard logistic: logit of a uniform
            u = torch.rand(shape, **kw).clamp(1e-6, 1 - 1e-6)
            z = temperature * (torch.log(u) - torch.log1p(-u))
        return self.inverse(z, temperature=temperature, generator=generator)[0]
