"""Runtime helpers every op family uses (fakes, backward formulas). The reference
(fastgen/ops/reference/) has its own copies: it is the spec the runtime is tested against, so
it shares no code with it."""
import torch


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in for inputs of `dtype`: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32
