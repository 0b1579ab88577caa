"""Drop-in nn.Modules backed by fastgen's fused ops."""
from .vq import EMAVectorQuantizer, ResidualVQ, VectorQuantize, VectorQuantizer, vq_ema_update_

__all__ = ["EMAVectorQuantizer", "ResidualVQ", "VectorQuantize", "VectorQuantizer", "vq_ema_update_"]
