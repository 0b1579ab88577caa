"""fastgen's fused ops. Each is `torch.ops.fastgen.<name>` underneath (see _registry.py)."""
from ._registry import REGISTRY
from .attention import decode_attention, flash_attention, kv_cache_append
from .contrastive import info_nce_loss
from .diffusion import add_noise, ddim_step, ddpm_step, flow_euler_step, flow_heun_step, get_velocity
from .flow import actnorm, affine_coupling, flow_nll, invertible_conv1x1
from .gan import bias_act
from .norm import group_norm_silu
from .vae import gaussian_reparam_kl
from .vq import vq_code_sums, vq_ema_update, vq_nearest, vq_quantize

__all__ = ["REGISTRY", "actnorm", "add_noise", "affine_coupling", "bias_act", "ddim_step", "ddpm_step",
           "decode_attention", "flash_attention", "flow_euler_step", "flow_heun_step", "flow_nll",
           "gaussian_reparam_kl", "get_velocity", "group_norm_silu", "info_nce_loss",
           "invertible_conv1x1", "kv_cache_append",
           "vq_code_sums", "vq_ema_update", "vq_nearest", "vq_quantize"]
