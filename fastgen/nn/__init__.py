"""Drop-in nn.Modules backed by fastgen's fused ops."""
from .attention import KVCache, MultiheadAttention, scaled_dot_product_attention
from .vq import EMAVectorQuantizer, ResidualVQ, VectorQuantize, VectorQuantizer, vq_ema_update_

__all__ = ["KVCache", "MultiheadAttention", "scaled_dot_product_attention", "EMAVectorQuantizer", "ResidualVQ", "VectorQuantize", "VectorQuantizer", "vq_ema_update_"]
