"""`fastgen.info()` / `fastgen info`: versions, device, and which backends are live per op."""
import platform

import torch

from . import _backend, _ext
from .kernels import _compat as _triton


def device_name(device=None) -> str:
    """A human-readable name for `device` (default: the GPU if visible, else the CPU)."""
    device = torch.device(device) if device is not None else None
    if (device is None and torch.cuda.is_available()) or (device is not None and device.type == "cuda"):
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU ({name}, {torch.get_num_threads()} threads)"


def cuda_build_report():
    """(the CUDA architectures the extension holds kernels for, whether and how the visible GPU
    is covered by them), each None where it does not apply (no CUDA build / no GPU)."""
    if not _ext.WITH_CUDA:
        return None, None
    archs = _ext.CUDA_ARCHS
    if archs is None:
        return "unknown (extension built before fastgen recorded it; rebuild)", None
    if not torch.cuda.is_available():
        return archs, None
    major, minor = torch.cuda.get_device_capability()
    covered, how = _ext.cuda_arch_coverage(archs, (major, minor))
    gpu = f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    if covered:
        return archs, f"{gpu}: covered, {how}"
    return archs, (f"{gpu}: NOT covered ({how}): the cuda backend will fail on this GPU with "
                   f"'no kernel image is available'; rebuild with TORCH_CUDA_ARCH_LIST="
                   f"\"{archs};{major}.{minor}\" bash scripts/setup.sh (or pip install -e . "
                   f"--no-build-isolation with that variable set)")


def info(print_report: bool = True) -> dict:
    """Report torch/triton versions, the device, the native build, and per op which backends
    are live (and why not). Returns the report as a dict; prints it unless print_report=False."""
    from .ops import REGISTRY

    cuda_archs, cuda_gpu = cuda_build_report()
    report = {
        "fastgen": __import__("fastgen").__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton.TRITON_VERSION or _triton.TRITON_ERROR,
        "triton_interpreter": _triton.INTERPRET,
        "device": device_name(),
        "gpu_visible": torch.cuda.is_available(),
        "native_extension": ("built" + (" with CUDA" if _ext.WITH_CUDA else " (CPU only)")
                             + f", CPU SIMD: {_ext.CPU_SIMD}") if _ext.NATIVE else _ext.NATIVE_ERROR,
        "cuda_archs": cuda_archs,
        "cuda_gpu_coverage": cuda_gpu,
        "default_backend": _backend.current_backend(),
        "vq_nearest_search": _vq_search_paths(),
        "ops": {name: {b: {"live": live, "note": note} for b, (live, note) in op.status().items()}
                for name, op in sorted(REGISTRY.items())},
    }
    if print_report:
        print(format_info(report))
    return report


def _vq_search_paths() -> str:
    """Which nearest-code search vq_nearest runs (docs/vq_certified.md)."""
    from .ops import vq_certified
    return (f"CPU: {vq_certified.cpu_search_path()}; Triton: {vq_certified.gpu_search_path()}; "
            f"CUDA C++: {vq_certified.cuda_search_path()}")


def format_info(report: dict) -> str:
    lines = [f"fastgen {report['fastgen']}"]
    for key in ("torch", "torch_cuda", "triton", "triton_interpreter", "device", "gpu_visible",
                "native_extension", "cuda_archs", "cuda_gpu_coverage", "default_backend",
                "vq_nearest_search"):
        if report.get(key) is not None:
            lines.append(f"  {key:<19} {report[key]}")
    lines.append("ops (backend: live / why not):")
    for name, backends in report["ops"].items():
        lines.append(f"  {name}")
        for backend, s in backends.items():
            mark = "live" if s["live"] else "  - "
            lines.append(f"    {backend:<10} {mark}  {s['note']}")
    return "\n".join(lines)
