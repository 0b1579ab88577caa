"""fastgen's fused ops. Each is `torch.ops.fastgen.<name>` underneath (see _registry.py)."""
from ._registry import REGISTRY
from .vae import gaussian_reparam_kl
from .vq import vq_nearest, vq_quantize
from .gan import bias_act, group_norm_silu, info_nce_loss

__all__ = ["REGISTRY", "bias_act", "group_norm_silu", "info_nce_loss", "gaussian_reparam_kl", "vq_nearest", "vq_quantize"]
