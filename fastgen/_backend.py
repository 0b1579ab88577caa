"""Which kernel family runs an op: the process default (FASTGEN_BACKEND), the innermost
`use_backend` block, or a per-call `backend=` argument, in increasing priority.

"auto" picks per device: Triton then CUDA C++ for CUDA tensors, the C++ CPU kernel for CPU
tensors; a missing one falls back to the next (and finally the reference) and says so once.
Any other name is a request: if it cannot run the tensors at hand, the op raises.
"""
import contextlib
import os

BACKENDS = ("auto", "triton", "cuda", "cpu", "reference", "cuda_emu")
# "cuda_emu": the CUDA C++ kernels run on CPU tensors by the CPU execution model (csrc/emu/,
# fastgen._C_emu, built with FASTGEN_CUDA_EMU=1); only on request, never chosen by "auto".


def _validate(name, what):
    if name not in BACKENDS:
        raise ValueError(f"fastgen: {what} must be one of {BACKENDS}, got {name!r}")
    return name


# A module global, not a contextvar: torch.compile can read (and guard on) a global.
_current = _validate(os.environ.get("FASTGEN_BACKEND", "auto").strip().lower() or "auto",
                     "FASTGEN_BACKEND")


def current_backend() -> str:
    return _current


def resolve(backend) -> str:
    """The backend an op call should use: the argument if given, else the current one."""
    if backend is None:
        return _current
    return _validate(backend, "backend")


@contextlib.contextmanager
def use_backend(name: str):
    """Run fastgen ops inside the block with the given backend, e.g.
    `with fastgen.use_backend("cuda"): ...`."""
    global _current
    previous, _current = _current, _validate(name, "use_backend(name)")
    try:
        yield
    finally:
        _current = previous
