"""Helpers every family of the reference uses (the reference's own: runtime code has its
own copies in fastgen/ops/_common.py, so a bug in one is not hidden by the other)."""
import torch


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in for inputs of `dtype`: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample_sum(x):
    """Sum over every dim but the first (the batch); shape (B,)."""
    return x.reshape(x.shape[0], -1).sum(1) if x.numel() else x.new_zeros(x.shape[0])
