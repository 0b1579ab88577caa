"""Triton import and interpreter switches shared by every kernel file.

Triton reads TRITON_INTERPRET when it is imported: set it before `import fastgen` (the test
suite's conftest does) to run the kernels on CPU tensors.
"""
import os

try:
    import triton
    import triton.language as tl

    TRITON_VERSION = triton.__version__
    TRITON_ERROR = None
except Exception as exc:  # no triton (CPU-only torch builds) or a broken install
    triton = None
    tl = None
    TRITON_VERSION = None
    TRITON_ERROR = f"triton not importable ({type(exc).__name__}: {exc})"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def jit(fn):
    """`triton.jit`, or the plain function when triton is missing (so this module imports)."""
    return triton.jit(fn) if triton is not None else fn


def autotune(configs, key, **kwargs):
    """`triton.autotune` that collapses to the first config under the interpreter, where more
    than one config fails without a GPU and timing means nothing anyway."""
    def wrap(fn):
        if triton is None:
            return fn
        return triton.autotune(configs[:1] if INTERPRET else configs, key=key, **kwargs)(fn)
    return wrap


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
