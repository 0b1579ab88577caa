"""Drop-in nn.Modules backed by fastgen's fused ops."""
from .flows import (ActNorm, AdditiveCoupling, AffineCoupling, FlowSequential, InvConv2dLU,
                    NICEScaling, Split, Squeeze)
from .vq import EMAVectorQuantizer, ResidualVQ, VectorQuantize, VectorQuantizer, vq_ema_update_

__all__ = ["ActNorm", "AdditiveCoupling", "AffineCoupling", "FlowSequential", "InvConv2dLU",
           "NICEScaling", "Split", "Squeeze", "EMAVectorQuantizer", "ResidualVQ", "VectorQuantize", "VectorQuantizer", "vq_ema_update_"]
