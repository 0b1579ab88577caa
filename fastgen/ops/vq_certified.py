"""The certified two-stage nearest-code search inside `vq_nearest` (docs/vq_certified.md).

Stage 1 ranks the codes with bf16 products (AMX / AVX512-BF16 through oneDNN on CPU, tensor
cores on GPU) and keeps, per row, every code within a rigorous error bound of the row's
approximate minimum; stage 2 recomputes those candidates with the exact kernel's arithmetic.
`vq_nearest`, `vq_quantize` and the VQ modules return bit-identical results either way.

The CPU kernel is `csrc/cpu/vq_certified.cpp`, the Triton one `kernels/vq.py`
(`vq_nearest_certified`), the CUDA C++ one `csrc/cuda/vq.cuh` (bf16 WMMA stage 1; the bound of
all three: `csrc/common/vq_bound.h`). This module holds the switches and the test/bench entry
point.
"""
import contextlib
import os

import torch

from .. import _ext

EXACT_ONLY_ENV = "FASTGEN_VQ_EXACT_ONLY"
CPU_MODES = ("auto", "exact", "bf16", "bf16_emulated")
CUDA_MODES = ("auto", "exact", "bf16")
# The CUDA C++ kernel's `auto` runs the two-stage search from these sizes on (csrc/cuda/vq.cu,
# kAutoMinD / kAutoMinK), on sm_80+.
CUDA_AUTO_MIN_D = 32
CUDA_AUTO_MIN_K = 1024
_ISA_NAMES = {0: "none", 1: "AVX512-BF16", 2: "AMX-BF16"}


def exact_only() -> bool:
    """Whether FASTGEN_VQ_EXACT_ONLY forces the plain exact search (read on every call, by the
    C++ kernel too)."""
    v = os.environ.get(EXACT_ONLY_ENV, "")
    return v not in ("", "0")


@contextlib.contextmanager
def exact_search(enabled: bool = True):
    """Within the block, vq_nearest / vq_quantize run the plain exact search (for comparison;
    results are the same bits). Sets FASTGEN_VQ_EXACT_ONLY for the process, so it is not
    thread-local."""
    saved = os.environ.get(EXACT_ONLY_ENV)
    os.environ[EXACT_ONLY_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(EXACT_ONLY_ENV, None)
        else:
            os.environ[EXACT_ONLY_ENV] = saved


def cpu_bf16_isa() -> str:
    """The bf16 dot-product ISA the CPU kernel found by CPUID: 'AMX-BF16', 'AVX512-BF16' or 'none'."""
    if not _ext.NATIVE:
        return "none"
    return _ISA_NAMES[int(torch.ops.fastgen.vq_cpu_bf16_isa(torch.empty(0)))]


def cpu_search_path(d=None) -> str:
    """Which search vq_nearest runs on CPU tensors (fp32/fp16/bf16; fp64 is always exact)."""
    if not _ext.NATIVE:
        return "reference (native extension not built)"
    if exact_only():
        return f"exact ({EXACT_ONLY_ENV} set)"
    isa = cpu_bf16_isa()
    if isa == "none":
        return "exact (no AMX-BF16 / AVX512-BF16 on this CPU: the fp32 kernels are faster here)"
    return f"certified two-stage: bf16 stage 1 on {isa} (oneDNN) at D >= 32, exact fp32 re-rank"


def gpu_search_path() -> str:
    from ..kernels import vq as _triton_vq
    if exact_only():
        return f"exact ({EXACT_ONLY_ENV} set)"
    return _triton_vq.CERTIFIED_NOTE


def cuda_search_path() -> str:
    """Which search the CUDA C++ kernel (backend 'cuda') runs."""
    if exact_only():
        return f"exact ({EXACT_ONLY_ENV} set)"
    return (f"certified two-stage for D >= {CUDA_AUTO_MIN_D}, K >= {CUDA_AUTO_MIN_K} on sm_80+, every dtype: "
            "bf16 WMMA stage 1, exact re-rank (fp32; fp64 for fp64)")


def vq_nearest_search(z, codebook, metric="l2", mode="auto", *, backend=None):
    """vq_nearest with the search mode named, and each row's stage-2 status.

    CPU tensors (the CPU kernel): 'auto' (what vq_nearest runs), 'exact', 'bf16' (at::mm in
    bf16: oneDNN on AMX / AVX512-BF16, a slow generic kernel elsewhere) or 'bf16_emulated' (fp32
    GEMM of bf16-rounded inputs: the same bound logic on any CPU). CUDA tensors, or CPU tensors
    with backend='cuda_emu' (the same CUDA C++ kernel on the CPU execution model): 'auto',
    'exact' or 'bf16' (stage 1 on bf16 WMMA tensor cores).

    Returns (indices, distances, status): status[i] is the number of stage-2 candidates of row
    i, -1 where the row fell back to the exact kernel, 0 everywhere when the whole call ran it.
    """
    if backend not in (None, "cuda_emu"):
        raise ValueError(f"fastgen: backend must be None or 'cuda_emu', got {backend!r}")
    cuda = backend == "cuda_emu" or z.device.type == "cuda"
    modes = CUDA_MODES if cuda else CPU_MODES
    if mode not in modes:
        raise ValueError(f"fastgen: mode must be one of {modes}, got {mode!r}")
    if backend == "cuda_emu":
        if _ext.EMU is None:
            raise RuntimeError(_ext.EMU_ERROR)
        if z.device.type != "cpu":
            raise ValueError(f"fastgen: the cuda_emu backend runs CPU tensors, got z on {z.device}")
        return torch.ops.fastgen_emu.vq_nearest_search_native(z, codebook, metric, mode)
    if z.device.type not in ("cpu", "cuda"):
        raise ValueError(f"fastgen: vq_nearest_search runs CPU or CUDA tensors, got z on {z.device}")
    return torch.ops.fastgen.vq_nearest_search_native(z, codebook, metric, mode)
