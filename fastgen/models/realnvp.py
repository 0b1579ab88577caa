"""RealNVP (Dinh et al. 2016): affine couplings (soft-clamped scale, fused with their logdet).
2D points: half-split couplings alternating sides, with ActNorm between them. Images: a
multi-scale flow — checkerboard couplings, squeeze, channel couplings, split half the
channels, then checkerboard couplings on the rest."""
from ..nn.flows import ActNorm, AffineCoupling, FlowSequential, Split, Squeeze
from .base import register
from .flowbase import FlowModel


@register("realnvp")
class RealNVP(FlowModel):
    kinds = ("points2d", "image")

    def __init__(self, data, couplings=None, hidden=None, scale_fn="tanh_exp"):
        image = data.kind == "image"
        couplings = couplings or (3 if image else 8)
        hidden = hidden or (32 if image else 64)
        super().__init__(data, couplings=couplings, hidden=hidden, scale_fn=scale_fn)
        self._setup_data(data)
        self.flow_shape = tuple(data.shape)
        kw = dict(hidden=hidden, scale_fn=scale_fn)
        if not image:
            d = data.shape[0]
            layers = []
            for i in range(couplings):
                layers += [ActNorm(d), AffineCoupling(d, "half", parity=i % 2, **kw)]
        else:
            c, h, w = data.shape
            if h % 2 or w % 2:
                raise ValueError(f"realnvp: images need an even height and width, got {data.shape}")
            layers = [AffineCoupling(c, "checkerboard", parity=i % 2, **kw) for i in range(couplings)]
            layers += [Squeeze()]
            layers += [AffineCoupling(4 * c, "channel", parity=i % 2, **kw) for i in range(couplings)]
            layers += [Split(4 * c)]
            rest = 4 * c - (4 * c) // 2
            layers += [AffineCoupling(rest, "checkerboard", parity=i % 2, **kw) for i in range(couplings + 1)]
        self.flow = FlowSequential(*layers, event_shape=self.flow_shape)
