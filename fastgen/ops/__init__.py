"""fastgen's fused ops. Each is `torch.ops.fastgen.<name>` underneath (see _registry.py)."""
from ._registry import REGISTRY
from .attention import flash_attention
from .vae import gaussian_reparam_kl
from .vq import vq_code_sums, vq_ema_update, vq_nearest, vq_quantize

__all__ = ["REGISTRY", "flash_attention", "gaussian_reparam_kl", "vq_code_sums", "vq_ema_update", "vq_nearest", "vq_quantize"]
