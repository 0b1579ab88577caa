"""A small DDPM-style UNet, eps_theta(x_t, t), on fastgen's fused ops.

The shape of Ho et al.'s network (and diffusers' UNet2DModel), scaled down for CPU-sized
images:

    t  -> sinusoidal(width) -> Linear -> SiLU -> Linear  = temb (4 * width)
    x  -> conv_in (width)
       -> per level l (channels width * channel_mults[l]):
              num_res_blocks x ResBlock (skip saved after each),
              stride-2 conv except at the last level (skip saved)
       -> mid: ResBlock, self-attention (the lowest resolution), ResBlock
       -> per level, lowest first: (num_res_blocks + 1) x ResBlock on cat(h, skip),
              nearest 2x up + conv except at level 0
       -> GroupNorm+SiLU -> conv_out (zero-initialised: the untrained net predicts eps = 0)

    ResBlock(x, temb) = skip(x) + conv2(dropout(GNSiLU(conv1(GNSiLU(x)) + Linear(SiLU(temb)))))

Every GroupNorm(+SiLU) is `fastgen.nn.GroupNormSiLU` (one fused kernel), the attention is
`fastgen.nn.functional.scaled_dot_product_attention` (flash_attention). Odd image sizes work:
the stride-2 convs round up and each up-sampling goes to the size of the skip it meets.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import GroupNormSiLU
from ..nn.functional import scaled_dot_product_attention


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding of (integer) timesteps (Transformer / DDPM style), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))  # odd dim: one zero column


def _norm(channels, groups, act=True):
    # the largest group count <= `groups` that divides the channels (GroupNorm needs it to)
    return GroupNormSiLU(math.gcd(groups, channels), channels, act=act)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, time_dim, groups=8, dropout=0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        """temb: the SiLU of the time embedding, (B, time_dim)."""
        h = self.conv1(self.norm1(x)) + self.time(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(self.dropout(self.norm2(h)))


class AttnBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels, heads=1, groups=8):
        super().__init__()
        if heads < 1 or channels % heads:
            raise ValueError(f"unet: attn_heads ({heads}) must be >= 1 and divide the attention channels ({channels})")
        self.heads = heads
        self.norm = _norm(channels, groups, act=False)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                  # pixels as tokens, (b, hw, c)
        # (b, hw, 3, heads, c/heads) viewed as q, k, v (b, heads, hw, c/heads), head dims contiguous
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """eps_theta(x, t) for images x (B, in_channels, H, W) and timesteps t (a number, a 0-d
    tensor or one per sample, shape (B,)); returns (B, out_channels, H, W).

    width: channels of the first level; channel_mults: one multiplier per resolution level
    (len(channel_mults) - 1 halvings); num_res_blocks: res blocks per level on the way down
    (one more on the way up); attn_heads: heads of the mid-block self-attention; groups: the
    GroupNorm group count (lowered to a divisor of the channels where needed)."""

    def __init__(self, in_channels, out_channels=None, width=32, channel_mults=(1, 2), num_res_blocks=1,
                 attn_heads=1, groups=8, dropout=0.0):
        super().__init__()
        channel_mults = tuple(channel_mults) if isinstance(channel_mults, (list, tuple)) else (channel_mults,)
        for name, value, lo in (("in_channels", in_channels, 1), ("width", width, 1),
                                ("num_res_blocks", num_res_blocks, 1), ("groups", groups, 1)):
            if not isinstance(value, int) or value < lo:
                raise ValueError(f"unet: {name} must be an int >= {lo}, got {value!r}")
        if not channel_mults or not all(isinstance(m, int) and m >= 1 for m in channel_mults):
            raise ValueError(f"unet: channel_mults must be a non-empty sequence of ints >= 1, got {channel_mults!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"unet: dropout must be in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.width = width
        time_dim = 4 * width
        self.time = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))

        def res(cin, cout):
            return ResBlock(cin, cout, time_dim, groups, dropout)

        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [width], width
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(res(ch, width * mult))
                ch = width * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([res(ch, ch), AttnBlock(ch, attn_heads, groups), res(ch, ch)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(res(ch + skips.pop(), width * channel_mults[level]))
                ch = width * channel_mults[level]
            if level > 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))  # after a nearest 2x up-sampling
        self.norm_out = _norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"unet: x must be (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, x.shape[0])):
            raise ValueError(f"unet: t must be a number, a 0-d tensor or shape ({x.shape[0]},), "
                             f"got shape {tuple(t.shape)}")
        t = t.reshape(-1).expand(x.shape[0])
        temb = F.silu(self.time(timestep_embedding(t, self.width).to(x.dtype)))
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, temb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, temb)), temb)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            else:  # up-sample to the size of the skip it meets next (odd sizes round trip)
                h = block(F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        return self.conv_out(self.norm_out(h))
