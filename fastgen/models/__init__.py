"""Reference models, one readable file per family, trained with `fastgen train` (fastgen/train.py).

A model registers itself with `@register("name")` and subclasses `GenerativeModel`.
"""
from .base import MODELS, DataSpec, GenerativeModel, get_model, register
from . import glow, nice, realnvp  # noqa: F401  (register "glow", "nice", "realnvp")
from . import ddpm  # noqa: F401  (registers "ddpm")
from . import vae  # noqa: F401  (registers "vae")
from . import vqgan  # noqa: F401  (registers "vqgan")
from . import gpt_prior  # noqa: F401  (registers "gpt_prior"; after vqgan, which it loads)
from . import oadtr  # noqa: F401  (registers "oadtr")
from . import autoregressive  # noqa: F401  (registers "fvsbn", "nade", "made")
from . import gan  # noqa: F401  (registers "gan", "wgan")
from . import simclr  # noqa: F401  (registers "simclr")
from . import rectified_flow  # noqa: F401  (registers "rectified_flow")

__all__ = ["MODELS", "DataSpec", "GenerativeModel", "get_model", "register"]
