"""Benchmark cases, one per op. A new op registers its `Case` here; a peer implementation
(faiss, SDPA, diffusers, ...) is one entry of `peers`: name -> factory(device) that returns a
callable taking the case's inputs by name, or a string saying why it cannot run (not installed,
wrong device), which the table reports as skipped."""
import torch

import fastgen
from fastgen.ops import reference

from .harness import Case, register_case


def _reparam_inputs(shape, dtype, device, requires_grad):
    g = torch.Generator(device).manual_seed(0)
    mu, logvar, eps = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
    return {"mu": mu.requires_grad_(requires_grad), "logvar": logvar.requires_grad_(requires_grad),
            "eps": eps}


register_case(Case(
    op="gaussian_reparam_kl",
    shapes=[(64, 65536), (16384, 256)],     # 2**22 elements each: few large samples, many VAE latents
    quick_shapes=[(32, 8192)],
    make_inputs=_reparam_inputs,
    reference=reference.gaussian_reparam_kl,
    fastgen=lambda backend, **kw: fastgen.ops.gaussian_reparam_kl(**kw, backend=backend),
    grad_inputs=("mu", "logvar"),
))


# -- vector quantization ---------------------------------------------------------------------

def _vq_inputs(shape, dtype, device, requires_grad):
    n, k, d = shape
    g = torch.Generator(device).manual_seed(0)
    return {"z": torch.randn(n, d, generator=g, device=device, dtype=dtype),
            "codebook": torch.randn(k, d, generator=g, device=device, dtype=dtype)}


def _vq_check(actual, expected, dtype, what):
    """Distances must agree; indices may differ only on rounding-level near-ties."""
    from fastgen import testing

    idx, dist = actual[:2]
    idx_ref, dist_ref = expected[:2]
    testing.assert_close(dist.to(dist_ref.dtype), dist_ref, rtol=1e-3, atol=1e-3, name=f"{what} distances")
    agree = float((idx.to(idx_ref.device) == idx_ref).float().mean())
    if agree < 0.999:
        raise AssertionError(f"{what}: only {agree:.4%} of the indices agree with the reference")


def _faiss_peer(device):
    if device != "cpu":
        return "faiss-cpu searches CPU tensors"
    try:
        import faiss
    except ImportError:
        return "faiss not installed (pip install faiss-cpu)"

    def search(z, codebook):
        index = faiss.IndexFlatL2(codebook.shape[1])
        index.add(codebook.float().numpy())  # faiss searches fp32
        dist, idx = index.search(z.float().numpy(), 1)
        return torch.from_numpy(idx[:, 0]), torch.from_numpy(dist[:, 0])
    return search


def _cdist_peer(device):
    def search(z, codebook):  # in fp32, like the fused op's accumulation
        dist, idx = torch.cdist(z.float(), codebook.float()).min(1)
        return idx, dist * dist
    return search


register_case(Case(
    op="vq_nearest",
    # (N, K, D): the grid, N = 65536
    shapes=[(65536, k, d) for k in (512, 1024, 8192) for d in (8, 64, 256)],
    quick_shapes=[(4096, 512, 64)],
    make_inputs=_vq_inputs,
    reference=reference.vq_nearest,
    fastgen=lambda backend, **kw: fastgen.ops.vq_nearest(**kw, backend=backend),
    peers={"faiss": _faiss_peer, "cdist": _cdist_peer},
    check=_vq_check,
    modes=("fwd",),
))


def _vq_quantize_inputs(shape, dtype, device, requires_grad):
    inputs = _vq_inputs(shape, dtype, device, requires_grad)
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


register_case(Case(
    op="vq_quantize",
    shapes=[(65536, 1024, 64)],
    quick_shapes=[(4096, 512, 64)],
    make_inputs=_vq_quantize_inputs,
    reference=lambda z, codebook: reference.vq_quantize(z, codebook, 0.25),
    fastgen=lambda backend, **kw: fastgen.ops.vq_quantize(**kw, beta=0.25, backend=backend),
    grad_inputs=("z", "codebook"),
    registry_op="vq_nearest",
))


# -- diffusion ---------------------------------------------------------------------------------
# One sampler step on latents (B, C, H, W), the (4, 4, 64, 64) by default. Peers:
# diffusers' scheduler step() (when installed) and fastgen's own scheduler step() (the fused op
# plus the Python scheduler around it), both given the same noise as the bare op.

import functools  # noqa: E402  (kept in this section: the file grows by appending cases)

_DIFFUSION_STEPS = 50
_DIFFUSION_T = 500  # a timestep of the 50-step leading schedule


@functools.lru_cache(maxsize=None)
def _diffusion_tables_on(device):
    from fastgen import diffusion

    s = diffusion.DDIMScheduler()
    s.set_timesteps(_DIFFUSION_STEPS, device=device)
    ddim = s._device_tables(device)
    p = diffusion.DDPMScheduler()
    p.set_timesteps(_DIFFUSION_STEPS, device=device)
    return ddim, p._device_tables(device)


def _diffusion_tables(device):
    """((ddim abar, abar_prev), (ddpm abar, abar_prev)) on `device`, built once (not timed)."""
    return _diffusion_tables_on(str(device))


def _diffusion_inputs(shape, dtype, device, requires_grad):
    g = torch.Generator(device).manual_seed(0)
    out = {name: torch.randn(shape, generator=g, device=device, dtype=dtype)
           for name in ("model_output", "sample")}
    out["noise"] = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    return out


def _scheduler_peer(library, name, config, step_kwargs=None, seeded=False, step_index=None):
    """factory(device) -> callable(model_output, sample, noise) running `name`.step of `library`
    ("diffusers" or "fastgen") on the case's timestep; `seeded`: a fresh generator seeded 0 per
    call, so stochastic steps draw the case's `noise`."""
    def factory(device):
        if library == "diffusers":
            try:
                import diffusers
            except ImportError:
                return "diffusers not installed (pip install diffusers)"
            cls = getattr(diffusers, name)
        else:
            from fastgen import diffusion
            cls = getattr(diffusion, name)
        s = cls(**config)
        s.set_timesteps(_DIFFUSION_STEPS, device=device)
        t = s.timesteps[step_index] if step_index is not None else _DIFFUSION_T

        def step(model_output, sample, noise):
            kwargs = dict(step_kwargs or {})
            if seeded:
                kwargs["generator"] = torch.Generator().manual_seed(0)
            if step_index is not None:
                s._step_index = step_index  # FlowMatch counts steps; replay the same one
            return s.step(model_output, t, sample, return_dict=False, **kwargs)
        return step
    return factory


def _ddim_reference(model_output, sample, noise, device=None):
    (ac, acp), _ = _diffusion_tables(model_output.device)
    empty = sample.new_empty(0)
    return reference.ddim_step(model_output, sample, empty, torch.tensor(_DIFFUSION_T), ac, acp,
                               empty.float(), empty, 1.0, 0.0, "epsilon", True, 1.0, False)


def _ddim_fastgen(backend, model_output, sample, noise):
    (ac, acp), _ = _diffusion_tables(model_output.device)
    return fastgen.ops.ddim_step(model_output, sample, _DIFFUSION_T, ac, acp, clip_sample=True, backend=backend)


register_case(Case(
    op="ddim_step",
    shapes=[(4, 4, 64, 64), (1, 4, 64, 64), (16, 4, 128, 128)],
    quick_shapes=[(4, 4, 64, 64)],
    make_inputs=_diffusion_inputs,
    reference=_ddim_reference,
    fastgen=_ddim_fastgen,
    peers={"diffusers": _scheduler_peer("diffusers", "DDIMScheduler", {}),
           "fastgen-scheduler": _scheduler_peer("fastgen", "DDIMScheduler", {})},
    modes=("fwd",),
))


def _ddpm_reference(model_output, sample, noise):
    _, (ac, acp) = _diffusion_tables(model_output.device)
    return reference.ddpm_step(model_output, sample, noise, torch.tensor(_DIFFUSION_T), ac, acp,
                               sample.new_empty(0).float(), sample.new_empty(0), 1.0, "epsilon", "fixed_small",
                               True, 1.0)


def _ddpm_fastgen(backend, model_output, sample, noise):
    _, (ac, acp) = _diffusion_tables(model_output.device)
    return fastgen.ops.ddpm_step(model_output, sample, _DIFFUSION_T, ac, acp, noise=noise, backend=backend)


register_case(Case(
    op="ddpm_step",
    shapes=[(4, 4, 64, 64), (1, 4, 64, 64), (16, 4, 128, 128)],
    quick_shapes=[(4, 4, 64, 64)],
    make_inputs=_diffusion_inputs,
    reference=_ddpm_reference,
    fastgen=_ddpm_fastgen,
    peers={"diffusers": _scheduler_peer("diffusers", "DDPMScheduler", {}, seeded=True),
           "fastgen-scheduler": _scheduler_peer("fastgen", "DDPMScheduler", {}, seeded=True)},
    modes=("fwd",),
))


def _add_noise_inputs(shape, dtype, device, requires_grad):
    g = torch.Generator(device).manual_seed(0)
    x0 = torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_(requires_grad)
    noise = torch.randn(shape, generator=g, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (shape[0],), generator=torch.Generator().manual_seed(0)).to(device)
    return {"original_samples": x0, "noise": noise, "timesteps": t}


def _add_noise_peer(library):
    def factory(device):
        if library == "diffusers":
            try:
                import diffusers
            except ImportError:
                return "diffusers not installed (pip install diffusers)"
            s = diffusers.DDPMScheduler()
        else:
            from fastgen import diffusion
            s = diffusion.DDPMScheduler()
        return s.add_noise
    return factory


def _add_noise_table(device):
    (ac, _), _ = _diffusion_tables(device)
    return ac


register_case(Case(
    op="add_noise",
    shapes=[(64, 4, 64, 64), (4, 4, 64, 64)],
    quick_shapes=[(16, 4, 32, 32)],
    make_inputs=_add_noise_inputs,
    reference=lambda original_samples, noise, timesteps: reference.add_noise(
        original_samples, noise, timesteps, _add_noise_table(original_samples.device)),
    fastgen=lambda backend, original_samples, noise, timesteps: fastgen.ops.add_noise(
        original_samples, noise, timesteps, _add_noise_table(original_samples.device), backend=backend),
    peers={"diffusers": _add_noise_peer("diffusers"), "fastgen-scheduler": _add_noise_peer("fastgen")},
    grad_inputs=("original_samples",),
))

_FLOW_INDEX = 10


def _flow_sigmas(device):
    return _flow_sigmas_on(str(device))


@functools.lru_cache(maxsize=None)
def _flow_sigmas_on(device):
    from fastgen import diffusion

    s = diffusion.FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(_DIFFUSION_STEPS, device=device)
    return s.sigmas


register_case(Case(
    op="flow_euler_step",
    shapes=[(4, 4, 64, 64), (1, 16, 128, 128)],
    quick_shapes=[(4, 4, 64, 64)],
    make_inputs=_diffusion_inputs,
    reference=lambda model_output, sample, noise: reference.flow_euler_step(
        model_output, sample, sample.new_empty(0), torch.tensor(_FLOW_INDEX), _flow_sigmas(sample.device),
        sample.new_empty(0)),
    fastgen=lambda backend, model_output, sample, noise: fastgen.ops.flow_euler_step(
        model_output, sample, _FLOW_INDEX, _flow_sigmas(sample.device), backend=backend),
    peers={"diffusers": _scheduler_peer("diffusers", "FlowMatchEulerDiscreteScheduler", dict(shift=3.0),
                                        step_index=_FLOW_INDEX),
           "fastgen-scheduler": _scheduler_peer("fastgen", "FlowMatchEulerDiscreteScheduler", dict(shift=3.0),
                                                step_index=_FLOW_INDEX)},
    modes=("fwd",),
))
