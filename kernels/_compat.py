"""Triton import, interpreter switches and launch helpers shared by every kernel file.

Triton reads TRITON_INTERPRET when it is imported: set it before `import fastgen` (the test
suite's conftest does) to run the kernels on CPU tensors.
"""
import contextlib
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


# -- the GPU a launch is for --------------------------------------------------------------------
# Block sizes that use shared memory are picked from the target's per-block limit. On a GPU the
# target is the tensor's device; fastgen.compile_check forces one (sm_80, sm_90, ...) to compile
# for it without a GPU; the interpreter on CPU tensors gets the sm_90 choices.

SMEM_OPTIN = {(8, 0): 166912, (8, 6): 101376, (8, 7): 166912, (8, 9): 101376, (9, 0): 232448,
              (10, 0): 232448, (10, 3): 232448, (12, 0): 101376}
_FORCED_CAPABILITY = None
_CAPABILITY = {}


@contextlib.contextmanager
def target_capability(capability):
    """Within the block, launchers size their blocks for this (major, minor)."""
    global _FORCED_CAPABILITY
    saved, _FORCED_CAPABILITY = _FORCED_CAPABILITY, tuple(capability)
    try:
        yield
    finally:
        _FORCED_CAPABILITY = saved


def capability(device: torch.device):
    if _FORCED_CAPABILITY is not None:
        return _FORCED_CAPABILITY
    if device.type != "cuda":
        return (9, 0)
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = _CAPABILITY.get(index)
    if cap is None:
        cap = _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return cap


def smem_limit(device: torch.device) -> int:
    """Shared memory one block may use on `device` (opt-in maximum), bytes."""
    cap = capability(device)
    if cap in SMEM_OPTIN:
        return SMEM_OPTIN[cap]
    # an arch not in the table: the largest known limit not above its major's
    same = [v for (major, _), v in SMEM_OPTIN.items() if major == cap[0]]
    return min(same) if same else 101376


def fp32_dot_ieee() -> bool:
    """fp32 tl.dot precision follows torch's matmul rule: exact fp32 ("ieee") unless the user
    allowed TF32 (`torch.backends.cuda.matmul.allow_tf32` / `set_float32_matmul_precision`)."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")  # torch >= 2.9
    if precision in ("ieee", "tf32"):
        return precision == "ieee"
    try:
        return (torch.get_float32_matmul_precision() == "highest"
                and not torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:  # torch refuses to read the legacy flag after the new API set another
        return True


def on_device(launcher):
    """Run a Triton launcher under its first tensor argument's CUDA device: Triton launches on
    the current device, which need not be the tensor's (a tensor on cuda:1 while cuda:0 is
    current)."""
    def run(*args, **kwargs):
        t = args[0]
        if t.device.type == "cuda" and t.device.index != torch.cuda.current_device():
            with torch.cuda.device(t.device):
                return launcher(*args, **kwargs)
        return launcher(*args, **kwargs)

    run.__name__ = getattr(launcher, "__name__", "run")
    run.__wrapped__ = launcher
    return run


# the dtypes of kernels that accumulate in fp32 and have no fp64 path (attention, VQ)
FP32_ACCUMULATED = (torch.float16, torch.bfloat16, torch.float32)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def split_double(value):
    """Triton passes Python floats as fp32: send a double as hi + lo fp32 parts so fp64 kernels
    see it exactly (`double_arg` reassembles hi + lo in fp64; fp32 kernels get hi). Plain kernel
    arguments, unlike a small parameter tensor, cost no host-to-device copy and can be captured
    in a CUDA graph."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, float(torch.tensor(value - hi, dtype=torch.float32))


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


if triton is not None:
    @triton.jit
    def double_arg(hi, lo, dtype: tl.constexpr):
        """A scalar sent by `split_double`, in `dtype`."""
        return (tl.zeros([], dtype) + hi) + lo

    @triton.jit
    def to_int64(x):
        """`x` as int64; unlike `x.to(tl.int64)` also when the launch specialized x == 1 into a
        constexpr."""
        return tl.zeros([], tl.int64) + x
