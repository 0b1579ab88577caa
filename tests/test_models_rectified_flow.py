"""The rectified_flow reference model on a 2D toy: training on straight paths, sampling through
the fused flow_euler_step / flow_heun_step ops, reflow from a checkpoint through the CLI, and the
straightness metric."""
import os

import pytest
import torch
from conftest import require_backend

import fastgen
from fastgen import cli, diffusion, train
from fastgen.data import make
from fastgen.models import DataSpec, get_model
from fastgen.models.rectified_flow import TIME_SCALE

# small nets, 2000 held-out points and short Euler grids keep evaluate() ~1 s
SMALL = dict(hidden=64, depth=2, sample_steps=20, straightness_steps=20, eval_steps=[1, 2, 20])


@pytest.fixture(autouse=True)
def one_thread():
    # the nets are tiny: on a shared 2-core machine intra-op threads only contend (~100x slower)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(**options):
    return get_model("rectified_flow")(DataSpec.of(make("moons", n=256)), **{**SMALL, **options})


def _train(out, steps, **options):
    return train.train("rectified_flow", "moons", steps=steps, out=str(out), progress=False, plot_every=0,
                       lr=2e-3, seed=0, model_options={**SMALL, **options})["eval"]


def test_trained_flow_beats_untrained_and_reflow_through_the_cli_straightens_it(tmp_path, capsys):
    untrained = _train(tmp_path / "untrained", 0)
    rf1 = _train(tmp_path / "rf1", 600)
    assert rf1["sliced_wasserstein"] < 0.4 * untrained["sliced_wasserstein"], (rf1, untrained)
    assert rf1["mmd_rbf"] < 0.25 * untrained["mmd_rbf"], (rf1, untrained)
    # a 1-rectified flow is curved: one Euler step lands far from the data, many steps do not
    assert rf1["sliced_wasserstein_euler_1"] > 2 * rf1["sliced_wasserstein_euler_20"], rf1

    teacher = str(tmp_path / "rf1" / train.CHECKPOINT_NAME)
    rc = cli.main(["train", "rectified_flow", "--data", "moons", "--steps", "300", "--lr", "1e-3",
                   "--out", str(tmp_path / "rf2"), "--plot-every", "0", "--model-opt", f"reflow_from={teacher}",
                   "--model-opt", "reflow_pairs=4000", "--model-opt", "reflow_steps=20"]
                  + [a for k, v in SMALL.items() if k not in ("hidden", "depth")
                     for a in ("--model-opt", f"{k}={v}")])
    assert rc == 0, capsys.readouterr().err
    ckpt = str(tmp_path / "rf2" / train.CHECKPOINT_NAME)
    state = train.load_checkpoint(ckpt, "rectified_flow")
    assert state["model_config"]["reflowed_from"] == teacher and state["model_config"]["reflow_from"] is None
    assert state["model_config"]["hidden"] == 64  # the teacher's architecture (reflow_init)
    # --resume rebuilds the couplings from the teacher (same seed: the same couplings) and goes on
    rc = cli.main(["train", "rectified_flow", "--data", "moons", "--steps", "320", "--out", str(tmp_path / "rf2"),
                   "--resume", "--plot-every", "0"] + [a for k, v in state["run_config"]["model_options"].items()
                                                       for a in ("--model-opt", f"{k}={v}")])
    assert rc == 0, capsys.readouterr().err
    resumed = train.load_checkpoint(ckpt, "rectified_flow")
    assert resumed["step"] == 320
    assert torch.equal(resumed["model_state"]["reflow_sample"], state["model_state"]["reflow_sample"])

    # the reflowed checkpoint holds its couplings: it reloads and evaluates without its teacher
    os.remove(teacher)
    rf2 = train.evaluate("rectified_flow", ckpt)
    assert rf2["straightness"] < 0.1 * rf1["straightness"], (rf2, rf1)
    assert rf2["sliced_wasserstein_euler_1"] < 0.3 * rf1["sliced_wasserstein_euler_1"], (rf2, rf1)
    assert rf2["sliced_wasserstein_euler_20"] < 0.4 * untrained["sliced_wasserstein"], (rf2, untrained)
    # and the couplings it trained on are the teacher's ODE: 20 Euler steps from the stored noise
    model = train.model_from_checkpoint(state)
    assert bool(model.reflow_ready) and model.reflow_noise.shape == (4000, 2)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_fused_sampling_equals_a_plain_pytorch_loop(solver, backend):
    for op in ("flow_euler_step", "flow_heun_step"):
        require_backend(op, "cpu", backend)
    torch.manual_seed(0)
    model = _model().eval()
    z = torch.randn(333, 2, generator=torch.Generator().manual_seed(1))
    steps = 7
    with fastgen.use_backend(backend):
        got = model.sample(333, noise=z, solver=solver, steps=steps)
        # the same draw through a generator is the same noise
        drawn = model.sample(333, generator=torch.Generator().manual_seed(1), solver=solver, steps=steps)
    assert torch.equal(drawn, got)

    sigmas = torch.linspace(1, 0, steps + 1)
    x = z.clone()
    with torch.no_grad():
        for i in range(steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            v = model.net(x, s * TIME_SCALE)
            pred = x + (s_next - s) * v
            if solver == "heun":
                pred = x + (s_next - s) * 0.5 * (v + model.net(pred, s_next * TIME_SCALE))
            x = pred
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


def test_euler_sampling_matches_flow_match_euler_scheduler_convention():
    # sigma = 1 is noise, the velocity is noise - data: the diffusers-compatible scheduler, given
    # the same uniform sigmas and a model fed t = sigma * 1000, takes exactly the model's steps
    torch.manual_seed(0)
    model = _model().eval()
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    steps = 5
    sched = diffusion.FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=[1 - i / steps for i in range(steps)])
    x = z.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(model.net(x, t), t, x).prev_sample
    torch.testing.assert_close(model.sample(64, noise=z, solver="euler", steps=steps), x, rtol=1e-5, atol=1e-5)


def test_straightness_is_zero_for_a_straight_flow_and_one_euler_step_is_exact():
    model = _model().eval()
    c = torch.tensor([1.5, -0.5])
    # the exact velocity field of a point mass at c: v(x, sigma) = (x - c) / sigma, straight paths
    model.velocity = lambda x, sigma: (x - c) / torch.as_tensor(sigma).clamp_min(1e-6)
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    assert model.straightness(z, steps=10) < 1e-8
    torch.testing.assert_close(model.integrate(z, 1), c.expand(100, 2), rtol=0, atol=1e-5)
    # a curved field is not straight
    model.velocity = lambda x, sigma: torch.stack([x[:, 1], -x[:, 0]], 1) * 3
    assert model.straightness(z, steps=10) > 1.0


def test_bad_options_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="solver must be one of"):
        _model(solver="rk4")
    with pytest.raises(ValueError, match="reflow_solver must be one of"):
        _model(reflow_solver="midpoint")
    with pytest.raises(ValueError, match="sample_steps must be a positive int"):
        _model(sample_steps=0)
    with pytest.raises(ValueError, match="eval_steps must be a non-empty list"):
        _model(eval_steps=[])
    with pytest.raises(ValueError, match="eval_steps entry must be a positive int"):
        _model(eval_steps=[1, 2.5])
    with pytest.raises(ValueError, match="reflow_pairs must be a positive int"):
        _model(reflow_pairs=-3)
    with pytest.raises(FileNotFoundError, match="reflow_from: no checkpoint at .*train the flow to reflow first"):
        _model(reflow_from=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="reflow_from must be the path"):
        _model(reflow_from=3)
    ddpm = tmp_path / "ddpm"
    train.train("ddpm", "moons", steps=1, out=str(ddpm), progress=False, plot_every=0,
                model_options=dict(hidden=16, depth=1, sample_steps=2))
    with pytest.raises(ValueError, match="is a checkpoint of model 'ddpm', not 'rectified_flow'"):
        _model(reflow_from=str(ddpm / train.CHECKPOINT_NAME))
    rf = tmp_path / "rf"
    train.train("rectified_flow", "moons", steps=1, out=str(rf), progress=False, plot_every=0,
                model_options=dict(SMALL, eval_steps=[1]))
    with pytest.raises(ValueError, match="hidden/depth must match the teacher's"):
        _model(reflow_from=str(rf / train.CHECKPOINT_NAME), hidden=32)
    # a reflow model without couplings (reflowed_from alone, no checkpoint loaded) refuses to train
    with pytest.raises(RuntimeError, match="has no couplings"):
        _model(reflowed_from="somewhere.pt")(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="steps must be a positive int"):
        _model().integrate(torch.zeros(3, 2), 0)
    # the CLI reports a bad option in one line
    assert cli.main(["train", "rectified_flow", "--data", "moons", "--steps", "1", "--out", str(tmp_path / "x"),
                     "--model-opt", "solver=rk4"]) == 2
