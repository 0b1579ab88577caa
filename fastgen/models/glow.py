"""Glow (Kingma & Dhariwal 2018) on images: `levels` scales of squeeze -> `steps` x (ActNorm ->
InvConv2dLU -> affine coupling on half the channels, Glow's sigmoid scale) -> split (learned
prior), the last level without a split. Trained in bits/dim on dequantized 8-bit images;
`sample(n, temperature=0.7)` draws at reduced temperature, and evaluate reports sample quality
at temperatures 0.7 and 1.0."""
from ..nn.flows import ActNorm, AffineCoupling, FlowSequential, InvConv2dLU, Split, Squeeze
from .base import register
from .flowbase import FlowModel


@register("glow")
class Glow(FlowModel):
    kinds = ("image",)

    def __init__(self, data, levels=None, steps=4, hidden=64):
        if levels is None and data.kind in self.kinds:  # else the base class says why not
            levels = 2 if data.shape[1] <= 16 else 3
        super().__init__(data, levels=levels, steps=steps, hidden=hidden)
        c, h, w = data.shape
        self._setup_data(data)
        if h % (2 ** levels) or w % (2 ** levels):
            raise ValueError(f"glow: {levels} levels need height and width divisible by {2 ** levels}, "
                             f"got {data.shape}")
        self.flow_shape = tuple(data.shape)
        layers, channels = [], c
        for level in range(levels):
            layers.append(Squeeze())
            channels *= 4
            for _ in range(steps):
                layers += [ActNorm(channels), InvConv2dLU(channels),
                           AffineCoupling(channels, "channel", hidden=hidden, scale_fn="sigmoid")]
            if level < levels - 1:
                layers.append(Split(channels))
                channels -= channels // 2
        self.flow = FlowSequential(*layers, event_shape=self.flow_shape)

    def evaluate(self, dataset, generator=None, batch_size=256, temperatures=(0.7, 1.0)):
        return super().evaluate(dataset, generator, batch_size, temperatures)
