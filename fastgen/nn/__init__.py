"""Drop-in nn.Modules backed by fastgen's fused ops."""
from .gan import GroupNormSiLU
from .vq import EMAVectorQuantizer, ResidualVQ, VectorQuantize, VectorQuantizer, vq_ema_update_

__all__ = ["EMAVectorQuantizer", "GroupNormSiLU", "ResidualVQ", "VectorQuantize", "VectorQuantizer", "vq_ema_update_"]
