"""Loads the native extension `fastgen._C` if it was built; never raises.

`NATIVE` is the module or None; `NATIVE_ERROR` says why it is missing.
"""
import torch  # noqa: F401  (must be loaded before the extension's registrations run)

try:
    from fastgen import _C as NATIVE

    NATIVE_ERROR = None
except ImportError as exc:
    NATIVE = None
    NATIVE_ERROR = (f"native extension fastgen._C not built ({exc}); "
                    "install with `pip install -e . --no-build-isolation`")

WITH_CUDA = bool(NATIVE is not None and getattr(NATIVE, "WITH_CUDA", 0))
CPU_SIMD = getattr(NATIVE, "CPU_SIMD", "none") if NATIVE is not None else None


def has_kernel(qualname: str, dispatch_key: str) -> bool:
    """Whether torch.ops.<qualname> exists and has a kernel for `dispatch_key`."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key))
    except RuntimeError:  # operator not registered at all
        return False
