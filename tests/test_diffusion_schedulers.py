"""fastgen.diffusion schedulers against diffusers' (the test peer): full sampling loops with the
same fake model and the same noise must agree to a relative error of 1e-5 in fp32, for every
combination of the options the schedulers share with diffusers."""
import itertools
import warnings

import numpy as np
import pytest
import torch

import fastgen
from fastgen import diffusion

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 5, 4)
RTOL = 1e-5


def fake_model(x, t):
    """A fixed smooth function of (x, t), of the size a real model's output has."""
    tf = torch.as_tensor(t, device=x.device).to(x.dtype)
    return 0.8 * torch.tanh(x) + 0.3 * torch.cos(1.7 * x + tf / 97.0)


def assert_rel_close(actual, expected, what):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    assert torch.isfinite(expected).all(), f"{what}: the peer's result is not finite"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= RTOL * max(scale, 1e-30), f"{what}: max |diff| {err:.3g} > {RTOL} * max |expected| {scale:.3g}"


def run_loop(scheduler, steps, seed, step_kwargs=None, set_kwargs=None):
    """A diffusers-style sampling loop; noise comes from one seeded CPU generator, drawn the same
    way by both libraries. Returns (final sample, every pred_original_sample)."""
    g = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps, **(set_kwargs or {}))
    x = torch.randn(SHAPE, generator=g) * getattr(scheduler, "init_noise_sigma", 1.0)
    preds = []
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)  # diffusers' flow has none
    for t in scheduler.timesteps:
        out = scheduler.step(fake_model(scale(x, t), t), t, x, generator=g,
                             **(step_kwargs or {}))
        x = out.prev_sample
        if getattr(out, "pred_original_sample", None) is not None:
            preds.append(out.pred_original_sample)
    return x, preds


def compare_loops(ours, theirs, steps, what, step_kwargs=None, seed=0):
    assert torch.equal(ours.timesteps, theirs.timesteps), what
    x, preds = run_loop(ours, steps, seed, step_kwargs)
    x_ref, preds_ref = run_loop(theirs, steps, seed, step_kwargs)
    assert torch.equal(ours.timesteps, theirs.timesteps), f"{what}: timesteps"
    if (step_kwargs or {}).get("eta") == 1.0 and ours.config.rescale_betas_zero_snr and not torch.isfinite(x_ref).all():
        # DDIM at abar_t = 0 with eta = 1: 1 - abar_prev - sigma^2 is exactly 0, diffusers rounds
        # it to -ulp and takes its square root (NaN); fastgen clamps it at 0 (docs/diffusion.md)
        assert int(ours.timesteps[0]) == ours.config.num_train_timesteps - 1, what
        assert torch.isfinite(x).all() and all(torch.isfinite(p).all() for p in preds), what
        return
    assert len(preds) == len(preds_ref)
    try:
        assert_rel_close(x, x_ref, f"{what}: final sample")
        for i, (p, e) in enumerate(zip(preds, preds_ref)):
            assert_rel_close(p, e, f"{what}: pred_original_sample at step {i}")
    except AssertionError:
        if not isinstance(ours, diffusion.DDIMScheduler):
            raise
        # DDIM with eta near 1 and abar_t near 0 (e.g. squaredcos_cap_v2 at t = 999): diffusers
        # forms sqrt(1 - abar_prev - sigma^2) by cancellation, ~1e-4 off; fastgen forms it
        # without (docs/diffusion.md). Where the two differ by more than 1e-5, fastgen must be
        # the one within 1e-5 of an fp64 evaluation of the same loop, and closer than diffusers.
        truth = _ddim_loop_fp64(ours, steps, seed, step_kwargs)
        scale = truth.abs().max().item()
        err_ours = (x.double() - truth).abs().max().item()
        err_theirs = (x_ref.double() - truth).abs().max().item()
        assert err_ours <= RTOL * scale and err_ours < err_theirs, (what, err_ours, err_theirs, scale)


def _ddim_loop_fp64(scheduler, steps, seed, step_kwargs):
    """run_loop in fp64 (the reference backend, fp64 model), with the same fp32 noise draws."""
    g = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=g).double()
    eta = (step_kwargs or {}).get("eta", 0.0)
    with fastgen.use_backend("reference"):
        for t in scheduler.timesteps:
            m = fake_model(x, t).double()
            noise = torch.randn(SHAPE, generator=g).double() if eta > 0 else None
            x = scheduler.step(m, t, x, variance_noise=noise, **(step_kwargs or {})).prev_sample
    return x


def both(name, **config):
    return getattr(diffusion, name)(**config), getattr(diffusers, name)(**config)


# -- the option grids ---------------------------------------------------------------------------

BETAS = ["linear", "scaled_linear", "squaredcos_cap_v2"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
# (clip_sample, thresholding); thresholding overrides clipping in both libraries
LIMITS = [(False, False), (True, False), (False, True)]
SPACINGS = [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)]
ZERO_SNR = [False, True]


def _grid(*axes):
    return list(itertools.product(*axes))


def _zero_snr_ok(prediction, limit, zero_snr):
    # With zero terminal SNR, abar_T = 0 and an epsilon model's x0 = (x - eps) / 0 is infinite:
    # both libraries return inf/NaN unless x0 is clipped (the quantile of dynamic thresholding
    # is NaN there too); the paper pairs zero SNR with v-prediction.
    return not (zero_snr and prediction == "epsilon" and limit != (True, False))


def _config(beta, prediction, limit, spacing, zero_snr):
    clip, thresholding = limit
    return dict(beta_schedule=beta, prediction_type=prediction, clip_sample=clip, thresholding=thresholding,
                clip_sample_range=1.5 if clip else 1.0, sample_max_value=1.7,
                dynamic_thresholding_ratio=0.9, timestep_spacing=spacing[0], steps_offset=spacing[1],
                rescale_betas_zero_snr=zero_snr)


DDIM_GRID = [c for c in _grid(BETAS, PREDICTIONS, LIMITS, SPACINGS, ZERO_SNR) if _zero_snr_ok(c[1], c[2], c[4])]


def _ids(grid):
    return ["-".join(str(v).replace(" ", "") for v in c) for c in grid]


@pytest.mark.parametrize("beta,prediction,limit,spacing,zero_snr", DDIM_GRID, ids=_ids(DDIM_GRID))
@pytest.mark.parametrize("eta,use_clipped,set_alpha_to_one", [(0.0, False, True), (0.0, True, False),
                                                              (0.5, False, False), (1.0, True, True)])
def test_ddim_loop_matches_diffusers(beta, prediction, limit, spacing, zero_snr, eta, use_clipped,
                                     set_alpha_to_one):
    config = _config(beta, prediction, limit, spacing, zero_snr)
    ours, theirs = both("DDIMScheduler", set_alpha_to_one=set_alpha_to_one, **config)
    compare_loops(ours, theirs, 7, f"DDIM {config}",
                  step_kwargs=dict(eta=eta, use_clipped_model_output=use_clipped))


DDPM_GRID = [c for c in _grid(BETAS, PREDICTIONS, LIMITS, SPACINGS, ZERO_SNR) if _zero_snr_ok(c[1], c[2], c[4])]


@pytest.mark.parametrize("beta,prediction,limit,spacing,zero_snr", DDPM_GRID, ids=_ids(DDPM_GRID))
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large"])
def test_ddpm_loop_matches_diffusers(beta, prediction, limit, spacing, zero_snr, variance_type):
    config = _config(beta, prediction, limit, spacing, zero_snr)
    ours, theirs = both("DDPMScheduler", variance_type=variance_type, **config)
    compare_loops(ours, theirs, 6, f"DDPM {variance_type} {config}")


def test_ddpm_fixed_large_log_is_sqrt_beta():
    """diffusers 0.42 takes sqrt(log(beta_t)) for fixed_large_log (NaN for t > 0); fastgen uses
    the log variance as the name says: std = exp(log(beta_t) / 2), i.e. fixed_large's std."""
    ours_log, ours_large = diffusion.DDPMScheduler(variance_type="fixed_large_log"), \
        diffusion.DDPMScheduler(variance_type="fixed_large")
    x_log, _ = run_loop(ours_log, 8, 3)
    x_large, _ = run_loop(ours_large, 8, 3)
    assert torch.isfinite(x_log).all()
    assert_rel_close(x_log, x_large, "fixed_large_log vs fixed_large")
    theirs = diffusers.DDPMScheduler(variance_type="fixed_large_log")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x_theirs, _ = run_loop(theirs, 8, 3)
    assert torch.isnan(x_theirs).any(), "diffusers fixed diffusers' fixed_large_log: compare directly again"


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_ddpm_full_chain_without_set_timesteps(schedule):
    """Stepping the training timesteps directly (no set_timesteps): prev = t - 1."""
    ours, theirs = both("DDPMScheduler", beta_schedule=schedule, num_train_timesteps=40)
    for s in (ours, theirs):
        s.timesteps = torch.arange(39, -1, -1)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x1 = torch.randn(SHAPE, generator=g1)
    x2 = torch.randn(SHAPE, generator=g2)
    for t in range(39, -1, -1):
        x1 = ours.step(fake_model(x1, t), t, x1, generator=g1).prev_sample
        x2 = theirs.step(fake_model(x2, t), t, x2, generator=g2).prev_sample
    assert_rel_close(x1, x2, f"DDPM {schedule} full chain")


def test_ddpm_custom_timesteps_and_trained_betas():
    betas = np.linspace(1e-4, 0.03, 100)
    ours, theirs = both("DDPMScheduler", num_train_timesteps=100, trained_betas=betas)
    custom = [90, 71, 50, 22, 9, 3, 0]
    for s in (ours, theirs):
        s.set_timesteps(timesteps=custom)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert [ours.previous_timestep(t) for t in custom] == [int(theirs.previous_timestep(t)) for t in custom]
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(SHAPE, generator=g1), torch.randn(SHAPE, generator=g2)
    for t in custom:
        x1 = ours.step(fake_model(x1, t), t, x1, generator=g1).prev_sample
        x2 = theirs.step(fake_model(x2, t), torch.tensor(t), x2, generator=g2).prev_sample
    assert_rel_close(x1, x2, "DDPM custom timesteps")


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("beta", BETAS + ["zero_snr"])
def test_tables_add_noise_and_velocity_match(name, beta):
    config = dict(rescale_betas_zero_snr=True) if beta == "zero_snr" else dict(beta_schedule=beta)
    ours, theirs = both(name, **config)
    for attr in ("betas", "alphas", "alphas_cumprod"):
        assert torch.equal(getattr(ours, attr), getattr(theirs, attr)), attr
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = torch.tensor([0, 999])
    assert_rel_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), "add_noise")
    assert_rel_close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t), "get_velocity")


def test_ddim_variance_noise_and_tuple_output():
    ours, theirs = both("DDIMScheduler")
    for s in (ours, theirs):
        s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    m = fake_model(x, 500)
    a = ours.step(m, 501, x, eta=0.7, variance_noise=noise, return_dict=False)
    b = theirs.step(m, 501, x, eta=0.7, variance_noise=noise, return_dict=False)
    assert isinstance(a, tuple) and len(a) == 2
    for u, v in zip(a, b):
        assert_rel_close(u, v, "DDIM tuple output")
    out = ours.step(m, 501, x, eta=0.7, variance_noise=noise)
    assert torch.equal(out[0], out.prev_sample) and torch.equal(out["pred_original_sample"], a[1])
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        ours.step(m, 501, x, eta=0.7, variance_noise=noise, generator=g)
    with pytest.raises(ValueError, match="set_timesteps"):
        diffusion.DDIMScheduler().step(m, 501, x)


def test_step_accepts_int_host_and_0d_tensors_alike():
    s = diffusion.DDIMScheduler()
    s.set_timesteps(10)
    x = torch.randn(SHAPE)
    m = fake_model(x, 301)
    ref = s.step(m, 301, x).prev_sample
    for t in (torch.tensor(301), torch.tensor(301, dtype=torch.int32), np.int64(301), s.timesteps[6] + 1):
        assert torch.equal(s.step(m, t, x).prev_sample, ref)


# -- flow matching ---------------------------------------------------------------------------------

FLOW_CONFIGS = [dict(shift=shift, stochastic_sampling=stochastic, invert_sigmas=invert)
                for shift in (1.0, 3.0) for stochastic in (False, True) for invert in (False, True)]
FLOW_CONFIGS += [dict(shift_terminal=0.1, shift=2.0), dict(use_karras_sigmas=True),
                 dict(use_exponential_sigmas=True), dict(use_dynamic_shifting=True, time_shift_type="exponential"),
                 dict(use_dynamic_shifting=True, time_shift_type="linear"), dict(num_train_timesteps=100, shift=0.5)]


@pytest.mark.parametrize("config", FLOW_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("steps", [1, 4, 13])
def test_flow_match_loop_matches_diffusers(config, steps):
    if steps == 1 and "shift_terminal" in config:
        steps = 2  # one step has no terminal stretch to make (both libraries divide by 0)
    ours, theirs = both("FlowMatchEulerDiscreteScheduler", **config)
    set_kwargs = dict(mu=0.7) if config.get("use_dynamic_shifting") else {}
    if config.get("time_shift_type") == "linear":
        set_kwargs = dict(mu=1.3)
    for s in (ours, theirs):
        s.set_timesteps(steps, **set_kwargs)
    assert torch.equal(ours.sigmas, theirs.sigmas) and torch.equal(ours.timesteps, theirs.timesteps)
    x, _ = run_loop(ours, steps, 4, set_kwargs=set_kwargs)
    x_ref, _ = run_loop(theirs, steps, 4, set_kwargs=set_kwargs)
    assert_rel_close(x, x_ref, f"flow {config}")


def test_flow_match_mid_schedule_start_and_scale_noise():
    ours, theirs = both("FlowMatchEulerDiscreteScheduler", shift=3.0)
    for s in (ours, theirs):
        s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = ours.timesteps[4:5]
    x = ours.scale_noise(x0, t, noise)
    assert_rel_close(x, theirs.scale_noise(x0, t, noise), "scale_noise")
    y = x.clone()
    for tt in ours.timesteps[4:]:
        x = ours.step(fake_model(x, tt), tt, x).prev_sample
        y = theirs.step(fake_model(y, tt), tt, y).prev_sample
    assert ours.step_index == theirs.step_index == 10
    assert_rel_close(x, y, "flow from step 4")
    with pytest.raises(ValueError, match="integer index"):
        ours.step(x, 3, x)


# -- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_config_round_trips_with_diffusers(name, tmp_path):
    ours, theirs = both(name)
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
            assert getattr(ours.config, key) == value
    ours_keys = {k for k in ours.config if not k.startswith("_")}
    assert ours_keys == {k for k in theirs.config if not k.startswith("_")}
    # diffusers' config -> ours, ours -> diffusers', and a file round trip
    rebuilt = getattr(diffusion, name).from_config(theirs.config, num_train_timesteps=500)
    assert rebuilt.config.num_train_timesteps == 500
    assert getattr(diffusers, name).from_config(dict(ours.config)).config.num_train_timesteps == 1000
    theirs.save_config(tmp_path)
    loaded = getattr(diffusion, name).from_pretrained(tmp_path)
    assert {k: loaded.config[k] for k in ours_keys} == {k: ours.config[k] for k in ours_keys}
    with pytest.raises(Exception, match="FrozenDict"):  # diffusers' own read-only config
        ours.config.pop("num_train_timesteps")


def test_from_config_across_scheduler_kinds():
    ddpm = diffusion.DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    ddim = diffusion.DDIMScheduler.from_config(ddpm.config)
    assert ddim.config.beta_schedule == "scaled_linear" and ddim.config.prediction_type == "v_prediction"
    assert torch.equal(ddim.alphas_cumprod, ddpm.alphas_cumprod)


def test_bad_scheduler_arguments():
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion.DDIMScheduler(prediction_type="x")
    with pytest.raises(ValueError, match="variance_type"):
        diffusion.DDPMScheduler(variance_type="learnt")
    with pytest.raises(ValueError, match="beta_schedule"):
        diffusion.DDIMScheduler(beta_schedule="cubic")
    with pytest.raises(ValueError, match="timestep_spacing"):
        diffusion.DDIMScheduler(timestep_spacing="random")
    with pytest.raises(ValueError, match="num_inference_steps"):
        diffusion.DDIMScheduler().set_timesteps(1001)
    with pytest.raises(ValueError, match="descending"):
        diffusion.DDPMScheduler().set_timesteps(timesteps=[1, 5])
    with pytest.raises(ValueError, match="mu"):
        diffusion.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).set_timesteps(4)
    s = diffusion.DDIMScheduler()
    s.set_timesteps(10)
    with pytest.raises(IndexError, match="num_train_timesteps=1000"):  # diffusers raises IndexError too
        s.step(torch.zeros(SHAPE), 1000, torch.zeros(SHAPE))


# -- the sampler -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kwargs", [("DDIMScheduler", dict(eta=0.0)), ("DDIMScheduler", dict(eta=1.0)),
                                         ("DDPMScheduler", {}), ("FlowMatchEulerDiscreteScheduler", {})])
def test_sample_matches_a_diffusers_loop(name, kwargs):
    ours, theirs = both(name)
    shape = (3, 2, 4, 4)
    x = diffusion.sample(fake_model, ours, shape, 9, generator=torch.Generator().manual_seed(11), progress=False,
                         **kwargs)
    g = torch.Generator().manual_seed(11)
    theirs.set_timesteps(9)
    y = torch.randn(shape, generator=g) * getattr(theirs, "init_noise_sigma", 1.0)  # flow has none
    for t in theirs.timesteps:
        y = theirs.step(fake_model(y, t), t, y, generator=g, **kwargs).prev_sample
    assert_rel_close(x, y, f"sample() with {name}")


def test_sample_classifier_free_guidance():
    s = diffusion.DDIMScheduler()

    def guided_model(x, t):
        return fake_model(x, t), fake_model(0.5 * x, t)

    x = diffusion.sample(guided_model, s, (2, 3, 4), 5, generator=torch.Generator().manual_seed(0),
                         guidance_scale=3.0, progress=False)
    s2 = diffusers.DDIMScheduler()
    s2.set_timesteps(5)
    y = torch.randn((2, 3, 4), generator=torch.Generator().manual_seed(0))
    for t in s2.timesteps:
        u, c = guided_model(y, t)
        y = s2.step(u + 3.0 * (c - u), t, y).prev_sample
    assert_rel_close(x, y, "guided sample")
    with pytest.raises(TypeError, match="uncond_output, cond_output"):
        diffusion.sample(fake_model, s, (2, 3, 4), 5, guidance_scale=2.0, progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_sample_cuda_graph_matches_eager(name):
    shape = (2, 4, 16, 16)
    sched = getattr(diffusion, name)()
    kwargs = dict(eta=0.0) if name == "DDIMScheduler" else {}
    latents = torch.randn(shape, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture would warn and fall back
        graphed = diffusion.sample(fake_model, sched, shape, 10, latents=latents, device="cuda", progress=False,
                                   **kwargs)
    eager = diffusion.sample(fake_model, sched, shape, 10, latents=latents, device="cuda", cuda_graph=False,
                             progress=False, **kwargs)
    if name == "DDPMScheduler":  # noise differs between the graph's and eager RNG draws
        assert torch.isfinite(graphed).all()
    else:
        assert_rel_close(graphed, eager, f"graphed {name}")


# -- genuine diffusers schedulers (issue 21) -------------------------------------------------------

from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: E402


def public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_schedulers_are_diffusers_schedulers(name, tmp_path):
    cls = getattr(diffusion, name)
    ours = cls(num_train_timesteps=500)
    assert isinstance(ours, SchedulerMixin) and isinstance(ours, diffusers.ConfigMixin)
    # save_pretrained / from_pretrained with subfolder, both ways with diffusers' own class
    ours.save_pretrained(tmp_path / "scheduler")
    loaded = cls.from_pretrained(tmp_path, subfolder="scheduler")
    assert type(loaded) is cls and public(loaded.config) == public(ours.config)
    theirs = getattr(diffusers, name).from_pretrained(tmp_path, subfolder="scheduler")
    assert theirs.config.num_train_timesteps == 500
    assert type(cls.from_config(theirs.config)) is cls
    # diffusers' compatibles machinery: every compatible class builds from our config
    assert getattr(diffusers, name) in ours.compatibles
    # outputs are diffusers' output classes (dict-like)
    x = torch.randn(1, 2, 3, 3)
    ours.set_timesteps(4)
    out = ours.step(fake_model(x, ours.timesteps[0]), ours.timesteps[0], x)
    assert isinstance(out, diffusers.utils.BaseOutput)
    assert list(out.keys())[0] == "prev_sample" and list(out.values())[0] is out.prev_sample


def tiny_unet():
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))


@pytest.mark.parametrize("pipeline", ["DDPMPipeline", "DDIMPipeline"])
def test_pipeline_with_fastgen_scheduler_saves_and_reloads(pipeline, tmp_path):
    import json
    name = pipeline.replace("Pipeline", "Scheduler")
    scheduler = getattr(diffusion, name)(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    pipe = getattr(diffusers, pipeline)(unet=tiny_unet(), scheduler=scheduler)
    pipe.scheduler = scheduler  # DDIMPipeline's __init__ rebuilds any scheduler as diffusers' DDIMScheduler
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["fastgen.diffusion.schedulers", name]
    reloaded = getattr(diffusers, pipeline).from_pretrained(tmp_path)
    if pipeline == "DDPMPipeline":  # (DDIMPipeline converts it again, as it does any scheduler)
        assert type(reloaded.scheduler) is type(scheduler)
    assert public(reloaded.scheduler.config) == public(scheduler.config)
    images = reloaded(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="np").images
    assert images.shape == (1, 8, 8, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_learned_variance_loop_matches_diffusers(variance_type):
    ours, theirs = both("DDPMScheduler", variance_type=variance_type, beta_schedule="squaredcos_cap_v2")
    results = []
    for s in (ours, theirs):
        g = torch.Generator().manual_seed(0)
        s.set_timesteps(8)
        x = torch.randn(SHAPE, generator=g)
        for t in s.timesteps:
            eps = fake_model(x, t)
            v = torch.tanh(x + t / 500.0) * 0.9  # in (-1, 1) for learned_range
            var = v if variance_type == "learned_range" else 1e-3 * (1.5 + v)
            x = s.step(torch.cat([eps, var], 1), t, x, generator=g).prev_sample
        results.append(x)
    assert_rel_close(results[0], results[1], variance_type)
    ours, theirs = both("DDPMScheduler", variance_type=variance_type, beta_schedule="squaredcos_cap_v2")
    for t in (0, 1, 437, 999):
        for vt in ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"):
            torch.testing.assert_close(ours._get_variance(t, variance_type=vt),
                                       theirs._get_variance(t, variance_type=vt), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="2 \\* sample channels"):
        ours.step(torch.zeros(SHAPE), int(ours.timesteps[0]), torch.zeros(SHAPE))


def test_exception_types_match_diffusers():
    for name in ("DDPMScheduler", "DDIMScheduler"):
        for s in both(name):
            s.set_timesteps(10)
            with pytest.raises(IndexError):  # outside the tables
                s.step(torch.zeros(SHAPE), 1000, torch.zeros(SHAPE))
    for s in both("DDPMScheduler"):
        s.set_timesteps(10)
        with pytest.raises(IndexError):  # not one of the set timesteps
            s.step(torch.zeros(SHAPE), 5, torch.zeros(SHAPE))
    for s in both("FlowMatchEulerDiscreteScheduler"):
        s.set_timesteps(4)
        with pytest.raises(IndexError):
            s.step(torch.zeros(SHAPE), torch.tensor(3.5), torch.zeros(SHAPE))


_WITHOUT_DIFFUSERS = r"""
import json, os, sys, tempfile
sys.modules["diffusers"] = None  # import diffusers -> ImportError, as when it is not installed
import pytest, torch
from fastgen import diffusion
from fastgen.diffusion import _config
assert not _config.HAVE_DIFFUSERS
out = {}
for name in ("DDPMScheduler", "DDIMScheduler", "FlowMatchEulerDiscreteScheduler"):
    cls = getattr(diffusion, name)
    s = cls(num_train_timesteps=100)
    with tempfile.TemporaryDirectory() as d:
        s.save_pretrained(os.path.join(d, "scheduler"))
        s = cls.from_pretrained(d, subfolder="scheduler")
    assert s.config.num_train_timesteps == 100 and s.config._class_name == name
    with pytest.raises(TypeError, match="read-only"):
        s.config["num_train_timesteps"] = 3
    with pytest.raises(TypeError, match="unknown arguments"):
        cls.from_config(s.config, not_an_option=1)
    assert cls in s.compatibles
    s.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    for t in s.timesteps:
        res = s.step(torch.tanh(x), t, x, generator=g)
        assert list(res.values())[0] is res.prev_sample and res[0] is res.prev_sample
        x = res.prev_sample
    out[name] = x.flatten().tolist()
print(json.dumps(out))
"""


def test_schedulers_work_without_diffusers():
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_DIFFUSERS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    without = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, values in without.items():  # the same numbers as the diffusers-backed classes
        s = getattr(diffusion, name)(num_train_timesteps=100)
        s.set_timesteps(5)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 4, 4, generator=g)
        for t in s.timesteps:
            x = s.step(torch.tanh(x), t, x, generator=g).prev_sample
        assert torch.equal(torch.tensor(values), x.flatten()), name


@pytest.mark.parametrize("with_x0", [True, False])
def test_fast_step_output_is_the_same_object_as_the_constructors(with_x0):
    """make_output skips diffusers' __post_init__ for speed; the output must not differ."""
    import pickle

    from fastgen.diffusion._config import make_output
    from fastgen.diffusion.schedulers import DDIMSchedulerOutput

    prev, x0 = torch.randn(2, 3), (torch.randn(2, 3) if with_x0 else None)
    fast = make_output(DDIMSchedulerOutput, prev_sample=prev, pred_original_sample=x0)
    slow = DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
    assert type(fast) is type(slow)
    assert list(fast.keys()) == list(slow.keys())
    assert fast.prev_sample is prev and fast.pred_original_sample is x0
    assert fast[0] is prev and fast["prev_sample"] is prev
    assert len(fast.to_tuple()) == len(slow.to_tuple()) == (2 if with_x0 else 1)
    assert all(a is b for a, b in zip(fast.to_tuple(), slow.to_tuple()))
    back = pickle.loads(pickle.dumps(fast))
    assert type(back) is type(slow) and torch.equal(back.prev_sample, prev)
