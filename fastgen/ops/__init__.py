"""fastgen's fused ops. Each is `torch.ops.fastgen.<name>` underneath (see _registry.py)."""
from ._registry import REGISTRY
from .attention import decode_attention, flash_attention, kv_cache_append
from .vae import gaussian_reparam_kl
from .vq import vq_code_sums, vq_ema_update, vq_nearest, vq_quantize

__all__ = ["REGISTRY", "decode_attention", "flash_attention", "kv_cache_append", "gaussian_reparam_kl", "vq_code_sums", "vq_ema_update", "vq_nearest", "vq_quantize"]
