"""fastgen's fused ops. Each is `torch.ops.fastgen.<name>` underneath (see _registry.py)."""
from ._registry import REGISTRY
from .flow import actnorm, affine_coupling, flow_nll
from .vae import gaussian_reparam_kl
from .vq import vq_nearest, vq_quantize

__all__ = ["REGISTRY", "actnorm", "affine_coupling", "flow_nll", "gaussian_reparam_kl", "vq_nearest", "vq_quantize"]
