"""The DDPM reference model on a 2D toy: training through the fused add_noise, sampling with
DDPM and DDIM (fused steps) from one checkpoint."""
import pytest
import torch

from fastgen import train
from fastgen.data import make
from fastgen.models import DataSpec, get_model


def _train(tmp_path, name, steps, **model_options):
    return train.train("ddpm", "moons", steps=steps, out=str(tmp_path / name), progress=False, plot_every=0,
                       lr=2e-3, seed=0, model_options=dict(sample_steps=20, **model_options))["eval"]


def test_ddpm_on_moons_beats_untrained_with_both_samplers(tmp_path):
    untrained = _train(tmp_path, "untrained", 0)
    trained = _train(tmp_path, "trained", 800)
    assert trained["sliced_wasserstein"] < 0.5 * untrained["sliced_wasserstein"], (trained, untrained)
    assert trained["mmd_rbf"] < 0.25 * untrained["mmd_rbf"], (trained, untrained)
    # the same checkpoint sampled with deterministic DDIM in 20 steps
    model = train.model_from_checkpoint(train.load_checkpoint(str(tmp_path / "trained" / train.CHECKPOINT_NAME)))
    model.config["sampler"] = "ddim"
    ddim = model.evaluate(make("moons", n=2000, split="test"), generator=torch.Generator().manual_seed(0))
    assert ddim["sliced_wasserstein"] < 0.5 * untrained["sliced_wasserstein"], (ddim, untrained)


def test_ddpm_sampling_is_seeded_and_shaped():
    data = make("moons", n=256)
    model = get_model("ddpm")(DataSpec.of(data), hidden=32, depth=1, num_train_timesteps=50, sample_steps=5)
    a = model.sample(7, generator=torch.Generator().manual_seed(3))
    b = model.sample(7, generator=torch.Generator().manual_seed(3))
    assert a.shape == (7,) + tuple(data.shape) and torch.equal(a, b)
    d = model.sample(7, generator=torch.Generator().manual_seed(3), sampler="ddim", eta=0.0)
    assert d.shape == a.shape and not torch.equal(a, d)
    with pytest.raises(ValueError, match="sampler must be"):
        get_model("ddpm")(DataSpec.of(data), sampler="euler")
