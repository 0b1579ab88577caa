"""fastgen: fused Triton / CUDA C++ / CPU kernels for generative models.

    import fastgen
    z, kl = fastgen.ops.gaussian_reparam_kl(mu, logvar, eps)
    with fastgen.use_backend("cuda"): ...
    fastgen.info()

The subpackages (fastgen.nn, fastgen.diffusion, fastgen.models, fastgen.patch, ...) load on
first use, so `import fastgen` stays cheap.
"""
import importlib
from . import _ext  # loads fastgen._C (if built) before the ops register around it
from ._backend import BACKENDS, current_backend, use_backend
from . import ops
from ._info import info

__version__ = "0.1.0"
_LAZY = ("bench", "data", "diffusion", "metrics", "models", "nn", "patch", "plotting", "testing", "train")
__all__ = ["BACKENDS", "current_backend", "info", "ops", "use_backend", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'fastgen' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
