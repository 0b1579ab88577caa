"""Diffusion samplers: diffusers-compatible schedulers whose steps are fused fastgen ops, and a
sampling loop that captures model + step into one CUDA graph.

    from fastgen.diffusion import DDIMScheduler, sample
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    x = sample(unet_fn, scheduler, (1, 4, 64, 64), num_inference_steps=50)
"""
from ._config import BaseOutput, FrozenConfig
from .sampling import sample
from .schedulers import (DDIMScheduler, DDIMSchedulerOutput, DDPMScheduler, DDPMSchedulerOutput,
                         FlowMatchEulerDiscreteScheduler, FlowMatchEulerDiscreteSchedulerOutput, randn)

__all__ = ["BaseOutput", "DDIMScheduler", "DDIMSchedulerOutput", "DDPMScheduler", "DDPMSchedulerOutput",
           "FlowMatchEulerDiscreteScheduler", "FlowMatchEulerDiscreteSchedulerOutput", "FrozenConfig",
           "randn", "sample"]
