"""fastgen: fused Triton / CUDA C++ / CPU kernels for generative models.

    import fastgen
    z, kl = fastgen.ops.gaussian_reparam_kl(mu, logvar, eps)
    with fastgen.use_backend("cuda"): ...
    fastgen.info()
"""
from . import _ext  # loads fastgen._C (if built) before the ops register around it
from ._backend import BACKENDS, current_backend, use_backend
from . import ops
from ._info import info

__version__ = "0.1.0"
__all__ = ["BACKENDS", "current_backend", "info", "ops", "use_backend", "__version__"]
