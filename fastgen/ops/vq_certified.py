"""The certified two-stage nearest-code search inside `vq_nearest` (docs/vq_certified.md).

Stage 1 ranks the codes with bf16 products (AMX / AVX512-BF16 through oneDNN on CPU, tensor
cores on GPU) and keeps, per row, every code within a rigorous error bound of the row's
approximate minimum; stage 2 recomputes those candidates with the exact kernel's arithmetic.
`vq_nearest`, `vq_quantize` and the VQ modules return bit-identical results either way.

The CPU kernel is `csrc/cpu/vq_certified.cpp`, the Triton one `kernels/vq.py`
(`vq_nearest_certified`). This module holds the switches and the test/bench entry point.
"""
import contextlib
import os

import torch

from .. import _ext

EXACT_ONLY_ENV = "FASTGEN_VQ_EXACT_ONLY"
CPU_MODES = ("auto", "exact", "bf16", "bf16_emulated")
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


def vq_nearest_search(z, codebook, metric="l2", mode="auto"):
    """vq_nearest on CPU with the stage-1 mode named: 'auto' (what vq_nearest runs), 'exact',
    'bf16' (at::mm in bf16: oneDNN on AMX / AVX512-BF16, a slow generic kernel elsewhere) or
    'bf16_emulated' (fp32 GEMM of bf16-rounded inputs: the same bound logic on any CPU).

    Returns (indices, distances, status): status[i] is the number of stage-2 candidates of row
    i, -1 where the row fell back to the exact kernel, 0 everywhere when the whole call ran it.
    """
    if mode not in CPU_MODES:
        raise ValueError(f"fastgen: mode must be one of {CPU_MODES}, got {mode!r}")
    if z.device.type != "cpu":
        raise ValueError(f"fastgen: vq_nearest_search is the CPU kernel's entry point, got z on {z.device}")
    return torch.ops.fastgen.vq_nearest_search_native(z, codebook, metric, mode)
