"""NICE (Dinh et al. 2014): additive couplings on alternating halves of the flattened input,
a diagonal scaling layer, and a standard logistic prior. 2D toys, binary vectors and images
(flattened; discrete data dequantized, trained in bits/dim)."""
import math

from ..nn.flows import AdditiveCoupling, FlowSequential, NICEScaling
from .base import register
from .flowbase import FlowModel


@register("nice")
class NICE(FlowModel):
    kinds = ("points2d", "binary", "image")

    def __init__(self, data, couplings=4, hidden=None, depth=None):
        hidden = hidden or (64 if data.kind == "points2d" else 256)
        super().__init__(data, couplings=couplings, hidden=hidden)
        self._setup_data(data)
        d = math.prod(data.shape)
        if d % 2:
            raise ValueError(f"nice: the flattened data needs an even size for its half split, got {d}")
        self.flow_shape = (d,)
        layers = [AdditiveCoupling(d, "half", hidden=hidden, parity=i % 2) for i in range(couplings)]
        self.flow = FlowSequential(*layers, NICEScaling(d), prior="logistic", event_shape=(d,))
