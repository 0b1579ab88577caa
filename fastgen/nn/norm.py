"""Drop-in normalization modules for the GAN / diffusion conv blocks: GroupNorm + SiLU."""
import torch
from torch import nn

from .. import ops


class GroupNormSiLU(nn.Module):
    """`nn.GroupNorm(num_groups, num_channels, eps, affine)` followed by `nn.SiLU()`, fused
    (fastgen.ops.group_norm_silu). Same constructor, same parameters and state-dict keys
    (`weight`, `bias`; none when affine=False), so a checkpoint of the unfused pair's GroupNorm
    loads as is. `act=False` gives a plain GroupNorm on the same kernels."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, act=True, device=None, dtype=None):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"fastgen.nn.GroupNormSiLU: num_groups ({num_groups}) must be >= 1 and divide "
                             f"num_channels ({num_channels})")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.act = act
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_group_norm(cls, group_norm: nn.GroupNorm, act=True):
        """The fused module with `group_norm`'s settings and (copied) parameters."""
        m = cls(group_norm.num_groups, group_norm.num_channels, group_norm.eps, group_norm.affine, act,
                device=group_norm.weight.device if group_norm.affine else None,
                dtype=group_norm.weight.dtype if group_norm.affine else None)
        m.load_state_dict(group_norm.state_dict())
        return m

    def forward(self, x):
        return ops.group_norm_silu(x, self.weight, self.bias, self.num_groups, self.eps, self.act)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, act={self.act}"
