"""Triton import, interpreter switches and launch helpers shared by every kernel file.

Triton reads TRITON_INTERPRET when it is imported: set it before `import fastgen` (the test
suite's conftest does) to run the kernels on CPU tensors.
"""
import os

import torch

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


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# per-sample reductions: grid axis 0 = sample, axis 1 = chunk of that sample's elements
MAX_GRID_Y = 65535      # CUDA's limit on grid axis 1
MAX_BLOCK = 1024
BLOCKS_PER_CHUNK = 8


def row_tiling(x: torch.Tensor):
    """(rows, cols, block, chunk, chunks) for a per-sample pass over x viewed as (rows, cols):
    each program walks `chunk` elements of one row in blocks of `block`; the chunk grows for
    huge rows so that `chunks` stays within grid axis 1."""
    rows = x.shape[0]
    cols = x.numel() // rows if rows else 0
    block = min(MAX_BLOCK, next_power_of_2(max(cols, 16)))
    chunk = block * BLOCKS_PER_CHUNK
    if cols > chunk * MAX_GRID_Y:
        chunk = -(-cols // (MAX_GRID_Y * block)) * block
    chunks = max(1, -(-cols // chunk))
    return rows, cols, block, chunk, chunks
