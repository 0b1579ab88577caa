"""fastgen's fused ops. Each is `torch.ops.fastgen.<name>` underneath (see _registry.py)."""
from ._registry import REGISTRY
from .attention import decode_attention, flash_attention, kv_cache_append
from .flow import actnorm, affine_coupling, flow_nll
from .vae import gaussian_reparam_kl
from .vq import vq_code_sums, vq_ema_update, vq_nearest, vq_quantize

__all__ = ["REGISTRY", "actnorm", "affine_coupling", "decode_attention", "flash_attention", "flow_nll",
           "gaussian_reparam_kl", "kv_cache_append", "vq_code_sums", "vq_ema_update", "vq_nearest",
           "vq_quantize"]
