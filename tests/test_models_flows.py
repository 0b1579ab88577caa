"""Flow models (nice, realnvp, glow) on the training harness: short fixed-seed runs beat the
untrained model (and, for realnvp on moons, a Gaussian fit of the data), and every model is
invertible end to end."""
import pytest
import torch

import fastgen.data as fd
from fastgen import train
from fastgen.models import DataSpec, get_model
from fastgen.testing import assert_close


def _run(tmp_path, model, data, steps, data_options=None, model_options=None, batch=64):
    common = dict(data_options=data_options or {}, model_options=model_options or {}, batch=batch,
                  seed=0, progress=False, plot_every=0, log_every=10)
    untrained = train.train(model, data, steps=0, out=str(tmp_path / "u"), **common)["eval"]
    trained = train.train(model, data, steps=steps, out=str(tmp_path / "t"), **common)["eval"]
    return untrained, trained


def test_realnvp_on_moons_beats_a_gaussian_fit(tmp_path):
    untrained, trained = _run(tmp_path, "realnvp", "moons", 200, {"n": 2000})
    assert trained["nll"] < trained["gaussian_fit_nll"] - 0.1, trained
    assert trained["nll"] < untrained["nll"]
    assert trained["sliced_wasserstein"] < untrained["sliced_wasserstein"]


def test_nice_on_moons_learns(tmp_path):
    untrained, trained = _run(tmp_path, "nice", "moons", 150, {"n": 2000})
    assert trained["nll"] < untrained["nll"] - 0.1, (untrained, trained)


def test_nice_on_binary_learns(tmp_path):
    untrained, trained = _run(tmp_path, "nice", "binary", 40, {"n": 512}, {"hidden": 64})
    assert trained["bits_per_dim"] < untrained["bits_per_dim"] - 0.05, (untrained, trained)


@pytest.mark.parametrize("model", ["realnvp", "glow"])
def test_image_flows_learn_on_shapes(tmp_path, model):
    opts = {"hidden": 16} if model == "realnvp" else {"hidden": 16, "steps": 2}
    untrained, trained = _run(tmp_path, model, "shapes", 40, {"size": 16, "n": 256}, opts, batch=32)
    assert trained["bits_per_dim"] < 0.7 * untrained["bits_per_dim"], (untrained, trained)
    if model == "glow":
        assert {"sliced_wasserstein_t0.7", "sliced_wasserstein_t1"} <= set(trained)


@pytest.mark.parametrize("name,data,shape", [
    ("nice", "binary", (64,)), ("nice", "points2d", (2,)), ("realnvp", "points2d", (2,)),
    ("realnvp", "image", (3, 8, 8)), ("glow", "image", (3, 16, 16)), ("glow", "image", (1, 32, 32))])
def test_models_are_invertible_and_sample(name, data, shape):
    torch.manual_seed(0)
    model = get_model(name)(DataSpec("x", data, shape, 1), hidden=8)
    x = torch.rand((6,) + shape) if data != "binary" else torch.bernoulli(torch.full((6,) + shape, 0.5))
    if data == "image":
        x = torch.round(x * 255) / 255
    model.train()
    model(x)  # ActNorm's data-dependent init
    with torch.no_grad():
        for p in model.parameters():  # leave the identity-at-init regime
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    assert_close(model.reconstruct(x), x, atol=1e-4, rtol=1e-4, name=f"{name} reconstruct")
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5,) + shape and torch.isfinite(s).all()
    if data in ("image", "binary"):
        assert s.min() >= 0 and s.max() <= 1


def test_model_config_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        get_model("glow")(DataSpec("x", "image", (3, 6, 6), 1), levels=2)
    with pytest.raises(ValueError, match="even size"):
        get_model("nice")(DataSpec("x", "binary", (9,), 1))
    with pytest.raises(ValueError, match="does not support points2d"):
        get_model("glow")(DataSpec("x", "points2d", (2,), 1))
