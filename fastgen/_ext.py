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

# fastgen._C_emu: the CUDA kernels compiled as host C++ against the CPU execution model
# (csrc/emu/, built with FASTGEN_CUDA_EMU=1); its kernels are torch.ops.fastgen_emu.<name>_native
# on the CPU key, the "cuda_emu" backend. A test build: absent from normal installs.
try:
    from fastgen import _C_emu as EMU

    EMU_ERROR = None
except ImportError as exc:
    EMU = None
    EMU_ERROR = (f"CUDA-emulation extension fastgen._C_emu not built ({exc}); build it with "
                 "FASTGEN_CUDA_EMU=1 python scripts/build_ext.py")

WITH_CUDA = bool(NATIVE is not None and getattr(NATIVE, "WITH_CUDA", 0))
CPU_SIMD = getattr(NATIVE, "CPU_SIMD", "none") if NATIVE is not None else None
# The CUDA architectures the kernels were compiled for, e.g. "8.0;9.0+PTX" (setup.py records
# them); "" without CUDA, None for an extension built before they were recorded.
CUDA_ARCHS = getattr(NATIVE, "CUDA_ARCHS", None) if WITH_CUDA else ""


def _parse_arch(entry):
    """"9.0a+PTX" -> (9, 0, "a", True)."""
    ptx = entry.endswith("+PTX")
    number = entry[:-4] if ptx else entry
    major, _, rest = number.partition(".")
    digits = rest.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(major), int(digits), rest[len(digits):], ptx


def cuda_arch_coverage(archs, capability):
    """Whether kernels compiled for `archs` (a TORCH_CUDA_ARCH_LIST string such as "8.0;9.0+PTX")
    run on a GPU of compute capability `capability` = (major, minor), and how: (covered, how),
    `how` starting with "sass" (a cubin for that GPU: the same major.minor, or a lower minor of
    the same major, which CUDA runs unchanged; "a" cubins only on their exact arch), "ptx" (no
    cubin, but PTX of an arch <= the GPU's, which the driver JIT-compiles at first use) or "none"
    (no kernel image: every CUDA kernel launch fails)."""
    major, minor = capability
    sass, ptx = [], []
    for entry in (archs or "").replace(" ", ";").split(";"):
        if not entry:
            continue
        try:
            a_major, a_minor, suffix, has_ptx = _parse_arch(entry)
        except ValueError:
            continue  # an arch name torch resolves (e.g. "Ampere"); setup.py records numbers
        if a_major == major and (a_minor == minor or (a_minor < minor and suffix != "a")):
            sass.append((a_minor, f"sm_{a_major}{a_minor}{suffix}"))
        if has_ptx and suffix != "a" and (a_major, a_minor) <= (major, minor):
            ptx.append(((a_major, a_minor), f"compute_{a_major}{a_minor}{suffix}"))
    if sass:
        a_minor, name = max(sass)
        if a_minor == minor:
            return True, f"sass: {name} kernels"
        return True, f"sass: {name} kernels (binary-compatible with {major}.{minor})"
    if ptx:
        return True, f"ptx: JIT-compiled by the driver from {max(ptx)[1]} PTX at first use"
    return False, f"none: no kernel image for sm_{major}{minor} in {archs or 'an empty arch list'}"


def has_kernel(qualname: str, dispatch_key: str) -> bool:
    """Whether torch.ops.<qualname> exists and has a kernel for `dispatch_key`."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key))
    except RuntimeError:  # operator not registered at all
        return False
