"""fastgen's fused ops. Each is `torch.ops.fastgen.<name>` underneath (see _registry.py)."""
from ._registry import REGISTRY
from .vae import gaussian_reparam_kl
from .diffusion import add_noise, ddim_step, ddpm_step, flow_euler_step, flow_heun_step, get_velocity
from .vq import vq_nearest, vq_quantize

__all__ = ["REGISTRY", "gaussian_reparam_kl", "vq_nearest", "vq_quantize", "add_noise", "get_velocity",
           "ddim_step", "ddpm_step", "flow_euler_step", "flow_heun_step"]
