"""The sampling loop: model call + fused scheduler step per timestep, with a tqdm bar; on CUDA
the whole loop is captured into one CUDA graph after a warm-up step and replayed, so a
sample costs one graph launch instead of (kernels per step x steps) launches from Python."""
import warnings

import torch
from tqdm.auto import tqdm

from .schedulers import FlowMatchEulerDiscreteScheduler, randn


def _guidance_kwargs(output, guidance_scale):
    """(model output for step, extra step kwargs): with guidance the step fuses
    uncond + guidance_scale * (cond - uncond) into its kernel."""
    if guidance_scale is None:
        return output, {}
    if not (isinstance(output, (tuple, list)) and len(output) == 2):
        raise TypeError("with guidance_scale, model(x, t) must return (uncond_output, cond_output)")
    uncond, cond = output
    return cond, dict(model_output_uncond=uncond, guidance_scale=float(guidance_scale))


def _reset(scheduler):
    # flow schedulers count steps on the host: start every pass (warm-up, capture) at index 0
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        scheduler.set_begin_index(0)
        scheduler._step_index = None


def _run_loop(model, scheduler, x, timesteps, generator, guidance_scale, step_kwargs, bar):
    _reset(scheduler)
    for t in timesteps:
        out, guide = _guidance_kwargs(model(scheduler.scale_model_input(x, t), t), guidance_scale)
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs, **guide).prev_sample
        if bar is not None:
            bar.update(1)
    return x


@torch.no_grad()
def sample(model, scheduler, shape, num_inference_steps, generator=None, cuda_graph=True, progress=True,
           guidance_scale=None, device=None, dtype=torch.float32, latents=None, noise="randn", **step_kwargs):
    """Draw samples: x_T ~ N(0, I) * init_noise_sigma, then for each of the scheduler's
    timesteps x = scheduler.step(model(x, t), t, x).

    Args:
        model: callable(x, t) -> model output like x (t: 0-d tensor on the device). With
            `guidance_scale`, it returns (uncond_output, cond_output) and the step uses
            uncond + guidance_scale * (cond - uncond) (classifier-free guidance, computed inside
            the fused step kernel: no extra pass over the outputs).
        scheduler: a fastgen.diffusion scheduler (DDPM, DDIM, FlowMatchEulerDiscrete).
        shape: shape of x, batch first.
        num_inference_steps: passed to scheduler.set_timesteps.
        generator: torch.Generator (or one per sample) for x_T and any step noise; x_T is drawn
            exactly as diffusers' pipelines draw it.
        cuda_graph: on CUDA, capture the loop (after one eager warm-up step) and replay it.
            Falls back to the eager loop, with a warning, when capture fails (e.g. a model that
            syncs, or a CPU generator feeding CUDA noise). Ignored on CPU.
        progress: show a tqdm bar (one tick per step; with a graph it fills at replay).
        device, dtype: of x (device defaults to the generator's, else CPU).
        latents: start from this x_T instead of drawing one.
        noise: "randn" (default) draws each stochastic step's noise like diffusers (same numbers
            for the same generator); "philox" lets the DDPM / DDIM step kernel make it (counter-based
            Philox seeded from `generator` each step: reproducible for a fixed generator seed, one
            pass less over memory, no noise tensor). x_T is drawn with randn either way.
        step_kwargs: extra arguments of scheduler.step (e.g. eta=0.5 for DDIM).
    Returns x_0 (the last step's prev_sample)."""
    if noise not in ("randn", "philox"):
        raise ValueError(f"noise must be 'randn' or 'philox', got {noise!r}")
    if noise == "philox":
        if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError("noise='philox' needs a DDPM or DDIM scheduler (the flow step takes passed noise only)")
        step_kwargs = dict(step_kwargs, noise_source="philox")
    first_gen = generator[0] if isinstance(generator, (list, tuple)) else generator
    device = torch.device(device if device is not None else (first_gen.device if first_gen is not None else "cpu"))
    scheduler.set_timesteps(num_inference_steps, device=device)
    if latents is None:
        latents = randn(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents has shape {tuple(latents.shape)}, expected {tuple(shape)}")
    x = latents.to(device=device, dtype=dtype) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    bar = tqdm(total=len(timesteps), disable=not progress, desc=type(scheduler).__name__)
    try:
        if cuda_graph and device.type == "cuda":
            out = _sample_graphed(model, scheduler, x, timesteps, generator, guidance_scale, step_kwargs, bar)
            if out is not None:
                return out
            bar.reset(total=len(timesteps))
        return _run_loop(model, scheduler, x, timesteps, generator, guidance_scale, step_kwargs, bar)
    finally:
        bar.close()


def _sample_graphed(model, scheduler, x, timesteps, generator, guidance_scale, step_kwargs, bar):
    """Capture the whole loop into a CUDA graph and replay it once; None if capture fails."""
    gens = [g for g in (generator if isinstance(generator, (list, tuple)) else [generator]) if g is not None]
    if any(g.device.type != "cuda" for g in gens):
        warnings.warn("fastgen.diffusion.sample: a CPU generator cannot feed a CUDA graph; sampling eagerly",
                      RuntimeWarning, stacklevel=3)
        return None
    if gens and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        warnings.warn("fastgen.diffusion.sample: this torch cannot capture a user generator in a CUDA graph; "
                      "sampling eagerly", RuntimeWarning, stacklevel=3)
        return None
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        # warm-up on a side stream (compiles Triton kernels, allocates) before capture
        with torch.cuda.stream(side):
            _run_loop(model, scheduler, static_x.clone(), timesteps[:1], None, guidance_scale, step_kwargs, None)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        for g in gens:
            graph.register_generator_state(g)
        with torch.cuda.graph(graph):
            static_out = _run_loop(model, scheduler, static_x, timesteps, generator, guidance_scale,
                                   step_kwargs, None)
    except Exception as exc:  # capture-unsafe model or op: the eager loop still works
        warnings.warn(f"fastgen.diffusion.sample: CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                      "sampling eagerly", RuntimeWarning, stacklevel=3)
        return None
    graph.replay()
    bar.update(len(timesteps))
    return static_out.clone()
