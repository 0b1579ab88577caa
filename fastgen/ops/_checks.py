"""Argument checks shared by every op: cheap, and they name the argument and what was expected.
They run in the op's eager kernels and in its fake (so torch.compile traces report them too)."""
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastgen: {name} must be a torch.Tensor, got {type(t).__name__}")


def float_tensor(name, t):
    tensor(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastgen: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def batched(name, t):
    if t.dim() < 1:
        raise ValueError(f"fastgen: {name} must have a leading batch dim, got a 0-d tensor")


def like(ref_name, ref, name, t):
    """`t` must match `ref` in dtype, shape and device."""
    float_tensor(name, t)
    if t.dtype != ref.dtype:
        raise TypeError(f"fastgen: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
    if t.shape != ref.shape:
        raise ValueError(f"fastgen: {name} has shape {tuple(t.shape)} but {ref_name} has {tuple(ref.shape)}")
    if t.device != ref.device:
        raise ValueError(f"fastgen: {name} is on {t.device} but {ref_name} is on {ref.device}")


def per_sample(ref_name, ref, name, t):
    """`t` must be a float vector with one entry per sample of `ref`, on ref's device."""
    float_tensor(name, t)
    if t.dim() != 1 or t.shape[0] != ref.shape[0]:
        raise ValueError(f"fastgen: {name} must have shape ({ref.shape[0]},), got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"fastgen: {name} is on {t.device} but {ref_name} is on {ref.device}")


def host_readable(t):
    """True when t's values can be read here for free: a real CPU tensor (not a fake or
    functional tensor being traced, and no device tensor, which would cost a host sync)."""
    return type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"


def in_range(name, t, low, high):
    """Every value of the integer tensor t lies in [low, high) (checked where host_readable)."""
    if t.numel() and host_readable(t):
        lo, hi = t.aminmax()
        lo, hi = int(lo), int(hi)
        if lo < low or hi >= high:
            raise ValueError(f"fastgen: {name} must be in [{low}, {high}), got {lo if lo < low else hi}")
