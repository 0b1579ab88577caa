"""Reference models, one readable file per family, trained with `fastgen train` (fastgen/train.py).

A model registers itself with `@register("name")` and subclasses `GenerativeModel`.
"""
from .base import MODELS, DataSpec, GenerativeModel, get_model, register
from . import ddpm  # noqa: F401  (registers "ddpm")
from . import vae  # noqa: F401  (registers "vae")
from . import vqgan  # noqa: F401  (registers "vqgan")

__all__ = ["MODELS", "DataSpec", "GenerativeModel", "get_model", "register"]
