"""GAN and WGAN on 2D points and (DCGAN-style) on `shapes` images: training beats the untrained
generator in sliced-Wasserstein distance to the data; WGAN-GP's penalty differentiates through
bias_act's double backward."""
import os

import pytest
import torch

import fastgen
from fastgen import cli, train
from fastgen.models import DataSpec, get_model
from fastgen.models.gan import BiasActConv, minibatch_std
from fastgen.nn import GroupNormSiLU

SPEC = DataSpec("8gaussians", "points2d", (2,), 8)
IMAGES = DataSpec("shapes", "image", (3, 16, 16), 4)


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: on this shared 2-core machine a second intra-op thread made the
    training tests 2-15x slower (WGAN-GP 100 steps: 2.7-4.2 s on 1 thread, 17-61 s on 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# WGAN-GP with its default gp_weight on points (1; 10 kept the samples swinging around the modes,
# docs/gan_ops.md): seeds 0, 1, 2 end at 0.07, 0.10, 0.11 of the untrained distance.
@pytest.mark.parametrize("name,opts,lr", [("gan", {}, 1e-3),
                                          ("wgan", {"mode": "gp"}, 3e-4),
                                          pytest.param("wgan", {"mode": "clip"}, 5e-4, marks=pytest.mark.slow)])
def test_training_beats_untrained_sliced_wasserstein(tmp_path, name, opts, lr):
    common = dict(batch=256, seed=0, progress=False, plot_every=0, lr=lr, model_options=opts)
    untrained = train.train(name, "8gaussians", steps=0, out=str(tmp_path / "u"), **common)["eval"]
    result = train.train(name, "8gaussians", steps=600, out=str(tmp_path / "t"), log_every=200, **common)
    trained = result["eval"]
    assert trained["sliced_wasserstein"] < 0.3 * untrained["sliced_wasserstein"], (trained, untrained)
    if name == "wgan":  # the two distance estimates are logged side by side
        assert all("critic_w1" in r and "sliced_w" in r for r in result["history"])


def test_dcgan_on_shapes_beats_untrained_and_samples_an_image_grid(tmp_path):
    # 300 steps at batch 64 (seeds 0, 1, 2 end at 0.45, 0.54, 0.41 of the untrained distance)
    common = dict(batch=64, seed=0, progress=False, plot_every=0, lr=1e-3)
    untrained = train.train("gan", "shapes", steps=0, out=str(tmp_path / "u"), **common)["eval"]
    trained = train.train("gan", "shapes", steps=300, out=str(tmp_path / "t"), log_every=100, **common)["eval"]
    assert trained["sliced_wasserstein"] < 0.6 * untrained["sliced_wasserstein"], (trained, untrained)
    png = tmp_path / "grid.png"
    assert cli.main(["sample", "gan", "--ckpt", str(tmp_path / "t" / "checkpoint.pt"), "-n", "16",
                     "--out", str(png)]) == 0
    samples = torch.load(str(tmp_path / "grid.pt"))
    assert samples.shape == (16, 3, 16, 16) and 0 <= samples.min() and samples.max() <= 1
    assert os.path.getsize(png) > 1000


@pytest.mark.parametrize("name", ["gan", "wgan"])
@pytest.mark.parametrize("size", [8, 16, 32])
def test_image_networks_shapes_and_fused_layers(name, size):
    torch.manual_seed(0)
    spec = DataSpec("shapes", "image", (1 if size == 8 else 3, size, size), 4)
    model = get_model(name)(spec, width=16)
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, *spec.shape) and 0 <= x.min() and x.max() <= 1
    assert model.critic(x).shape == (5, 1)
    assert any(isinstance(m, BiasActConv) for m in model.critic.modules())
    assert any(isinstance(m, GroupNormSiLU) for m in model.generator.modules())
    # the generator's latents differ, so do its images
    assert (x[0] - x[1]).abs().max() > 1e-4


def test_minibatch_std_sees_a_collapsed_batch():
    h = torch.randn(8, 4, 4, 4)
    out = minibatch_std(h)
    assert out.shape == (8, 5, 4, 4)
    torch.testing.assert_close(out[:, 4], h.std(0, unbiased=False).mean().expand(8, 4, 4))
    same = h[:1].repeat(8, 1, 1, 1).requires_grad_(True)  # no spread: ~0, and a finite gradient
    s = minibatch_std(same)[:, 4]
    assert float(s.detach().max()) <= 1e-4 + 1e-9
    (g,) = torch.autograd.grad(s.sum(), same)
    assert torch.isfinite(g).all()
    assert float(minibatch_std(h[:1])[:, 4].max()) <= 1e-4 + 1e-9  # one sample: no spread


@pytest.mark.parametrize("spec", [SPEC, IMAGES], ids=["points", "images"])
def test_wgan_gp_penalty_reaches_the_critic_and_matches_the_reference_backend(spec):
    torch.manual_seed(0)
    model = get_model("wgan")(spec, mode="gp")
    if spec.kind == "image":
        real, fake = torch.rand(8, *spec.shape), torch.rand(8, *spec.shape) * 0.5
    else:
        real, fake = torch.randn(64, 2) * 2, torch.randn(64, 2)
    results = {}
    for backend in ("cpu", "reference"):
        if fastgen.ops.REGISTRY["bias_act"].unavailable(backend, "cpu"):
            pytest.skip(f"{backend} backend not available")
        with fastgen.use_backend(backend):
            torch.manual_seed(1)
            gp = model.gradient_penalty(real, fake)
            grads = torch.autograd.grad(gp, list(model.critic.parameters()), allow_unused=True,
                                        materialize_grads=True)
        results[backend] = (gp, grads)
    torch.testing.assert_close(results["cpu"][0], results["reference"][0])
    for a, e in zip(results["cpu"][1], results["reference"][1]):
        torch.testing.assert_close(a, e)
    assert sum(float(g.abs().sum()) for g in results["cpu"][1]) > 0


def test_wgan_clip_keeps_critic_weights_in_range(tmp_path):
    result = train.train("wgan", "8gaussians", steps=3, out=str(tmp_path / "c"), batch=64, seed=0, progress=False,
                         plot_every=0, lr=5e-4, model_options={"mode": "clip", "clip": 0.02}, log_every=1)
    assert len(result["history"]) == 3


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be 'gp' or 'clip'"):
        get_model("wgan")(SPEC, mode="spectral")


def test_image_options_are_checked():
    with pytest.raises(ValueError, match="image side must be 4 \\* 2\\*\\*k"):
        get_model("gan")(DataSpec("shapes", "image", (3, 12, 12), 4))
    with pytest.raises(ValueError, match="width must be a positive multiple of 8"):
        get_model("gan")(IMAGES, width=12)
    with pytest.raises(ValueError, match="hidden do not apply to image data"):
        get_model("wgan")(IMAGES, hidden=64)
    with pytest.raises(ValueError, match="width do not apply to points2d data"):
        get_model("gan")(SPEC, width=16)
    with pytest.raises(ValueError, match="does not support binary data"):
        get_model("gan")(DataSpec("bars", "binary", (16,), 2))
    with pytest.raises(ValueError, match="critic_batch must be 'slice' or 'full'"):
        get_model("wgan")(SPEC, critic_batch="half")
    with pytest.raises(ValueError, match="n_critic must be an integer >= 1"):
        get_model("wgan")(SPEC, n_critic=0)


def test_wgan_gp_weight_default_depends_on_the_data():
    assert get_model("wgan")(SPEC).gp_weight == 1.0
    assert get_model("wgan")(IMAGES).gp_weight == 10.0
    assert get_model("wgan")(SPEC, gp_weight=10.0).config["gp_weight"] == 10.0


def test_wgan_trains_on_images_with_the_whole_batch_per_critic_step(tmp_path):
    result = train.train("wgan", "shapes", steps=2, out=str(tmp_path / "w"), batch=8, seed=0, progress=False,
                         plot_every=0, lr=1e-4, model_options={"critic_batch": "full", "width": 8}, log_every=1,
                         data_options={"size": 8})
    assert all({"critic_w1", "sliced_w", "gp"} <= set(r) for r in result["history"])
    assert result["eval"]["sliced_wasserstein"] > 0
