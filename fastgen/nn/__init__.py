"""Drop-in nn.Modules backed by fastgen's fused ops."""
from . import functional
from .attention import KVCache, MultiheadAttention, scaled_dot_product_attention
from .flows import (ActNorm, AdditiveCoupling, AffineCoupling, FlowSequential, InvConv2dLU,
                    NICEScaling, Split, Squeeze)
from .norm import GroupNormSiLU
from .vq import EMAVectorQuantizer, ResidualVQ, VectorQuantize, VectorQuantizer, vq_ema_update_

__all__ = ["ActNorm", "AdditiveCoupling", "AffineCoupling", "EMAVectorQuantizer", "FlowSequential",
           "GroupNormSiLU", "InvConv2dLU", "KVCache", "MultiheadAttention", "NICEScaling", "ResidualVQ",
           "Split", "Squeeze", "VectorQuantize", "VectorQuantizer", "scaled_dot_product_attention",
           "vq_ema_update_"]
