"""The small UNet (fastgen/models/unet.py) and the ddpm model on images: shapes, time
conditioning, gradients, parity of the fused ops with the reference backend, a short training
run on shapes that beats both the untrained net and a structure-blind denoiser, DDPM and DDIM
sampling of one checkpoint, and errors."""
import os

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen import train
from fastgen.data import make
from fastgen.models import DataSpec, get_model
from fastgen.models.unet import UNet
from fastgen.testing import assert_close

from conftest import require_backend


def _unet(seed=0, **kw):
    """A tiny UNet with a random (not zero) output conv, so every path shows in the output."""
    torch.manual_seed(seed)
    kw = {"width": 8, "channel_mults": (1, 2, 2), "groups": 4, **kw}
    net = UNet(3, **kw)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    return net


@pytest.mark.parametrize("size", [(16, 16), (13, 11), (7, 9), (1, 1)])
def test_unet_keeps_the_image_shape_on_odd_sizes(size):
    net = _unet()
    x = torch.randn(2, 3, *size)
    out = net(x, torch.tensor([3, 900]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    other = UNet(3, out_channels=5, width=8, channel_mults=(1, 2), num_res_blocks=2, attn_heads=2, groups=4)
    assert other(x, 7).shape == (2, 5) + size


def test_unet_untrained_output_is_zero():
    # zero-initialised output conv (as in DDPM): the untrained net predicts eps = 0
    net = UNet(1, width=8, channel_mults=(1, 2), groups=4)
    assert torch.equal(net(torch.randn(3, 1, 8, 8), 10), torch.zeros(3, 1, 8, 8))


def test_unet_uses_the_timestep_per_sample():
    net = _unet().eval()
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 250, 999])
    batched = net(x, t)
    for i in range(3):  # a (B,) t conditions each sample on its own timestep ...
        assert_close(batched[i:i + 1], net(x[i:i + 1], int(t[i])), name=f"sample {i}")
        # ... and the same image at another timestep gives another output
        assert (net(x[i:i + 1], int(t[i]) + 100) - batched[i:i + 1]).abs().max() > 1e-3
    # a 0-d tensor and a Python int broadcast over the batch alike
    assert torch.equal(net(x, torch.tensor(42)), net(x, 42))


def test_unet_gradients_reach_every_parameter():
    net = _unet()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    net(x, torch.tensor([5, 600])).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def _forward_backward(net, x, t):
    x = x.clone().requires_grad_(True)
    net.zero_grad(set_to_none=True)
    out = net(x, t)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_unet_fused_ops_match_the_reference_backend(backend):
    """The same weights through the fused kernels (GroupNorm+SiLU, flash attention) and through
    fastgen's plain-PyTorch reference ops: same output, same gradients."""
    for op in ("group_norm_silu", "flash_attention"):
        require_backend(op, "cpu", backend)
    # small enough for the Triton interpreter; odd sizes, two levels, two heads
    net = _unet(attn_heads=2, channel_mults=(1, 2))
    x, t = torch.randn(2, 3, 5, 7), torch.tensor([1, 700])
    with fastgen.use_backend("reference"):
        ref = _forward_backward(net, x, t)
    with fastgen.use_backend(backend):
        got = _forward_backward(net, x, t)
    assert_close(got[0], ref[0], name="output")
    assert_close(got[1], ref[1], name="d input")
    for name in ref[2]:
        assert_close(got[2][name], ref[2][name], name=f"d {name}")


def test_unet_matches_plain_torch_modules():
    """GroupNormSiLU + fastgen SDPA are drop-ins: swapping them for torch's GroupNorm + SiLU and
    torch's SDPA leaves the output unchanged."""
    net = _unet(attn_heads=2).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 400])
    fused = net(x, t)
    import fastgen.models.unet as unet_mod

    def plain_norm(m):
        return lambda h: (F.silu if m.act else (lambda y: y))(F.group_norm(h, m.num_groups, m.weight, m.bias, m.eps))

    for m in net.modules():
        if isinstance(m, fastgen.nn.GroupNormSiLU):
            m.forward = plain_norm(m)
    old = unet_mod.scaled_dot_product_attention
    unet_mod.scaled_dot_product_attention = F.scaled_dot_product_attention
    try:
        plain = net(x, t)
    finally:
        unet_mod.scaled_dot_product_attention = old
    assert_close(fused, plain, name="fused vs torch modules")


def test_unet_compiles_fullgraph():
    net = _unet(channel_mults=(1, 2)).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 400])
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x, t), net(x, t), name="compiled")


def test_unet_rejects_bad_input():
    net = _unet()
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\)"):
        net(torch.randn(2, 1, 8, 8), 0)
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\)"):
        net(torch.randn(3, 8, 8), 0)
    with pytest.raises(ValueError, match="t must be a number"):
        net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(3, channel_mults=())
    with pytest.raises(ValueError, match="attn_heads"):
        UNet(3, width=8, channel_mults=(1, 3), attn_heads=5)
    with pytest.raises(ValueError, match="width must be an int"):
        UNet(3, width=0)
    with pytest.raises(ValueError, match="dropout"):
        UNet(3, dropout=1.5)


# -- the ddpm model on images -------------------------------------------------------------------

TINY = dict(width=16, channel_mults=(1, 2), num_res_blocks=1, sample_steps=10, eval_samples=64,
            num_train_timesteps=200)
SHAPES8 = dict(size=8, channels=3)


def test_ddpm_picks_the_unet_for_images_and_the_mlp_for_points():
    shapes = DataSpec.of(make("shapes", n=8, size=8))
    assert isinstance(get_model("ddpm")(shapes, **TINY).net, UNet)
    mlp = get_model("ddpm")(shapes, arch="mlp", hidden=32, depth=1, sample_steps=5)
    assert not isinstance(mlp.net, UNet)
    x = make("shapes", n=4, size=8).x
    loss, _ = mlp(x)
    assert torch.isfinite(loss)
    assert mlp.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 3, 8, 8)
    assert not isinstance(get_model("ddpm")(DataSpec.of(make("moons", n=8))).net, UNet)
    with pytest.raises(ValueError, match="arch='unet' needs image data"):
        get_model("ddpm")(DataSpec.of(make("moons", n=8)), arch="unet")
    with pytest.raises(ValueError, match="arch must be one of"):
        get_model("ddpm")(shapes, arch="transformer")
    with pytest.raises(ValueError, match="eval_samples"):
        get_model("ddpm")(shapes, eval_samples=1)


@pytest.fixture(scope="module")
def trained_shapes(tmp_path_factory):
    """A tiny UNet DDPM trained for 40 steps on 8x8 shapes, and the untrained one's eval.
    Measured (seed 0): denoise_mse 1.006 -> 0.338 (structure-blind denoiser 0.485),
    sliced_wasserstein 0.267 -> 0.123, pixel_stats_sw 0.193 -> 0.099."""
    out = tmp_path_factory.mktemp("ddpm_shapes")
    kw = dict(batch=32, lr=2e-3, seed=0, progress=False, plot_every=0, data_options=SHAPES8, model_options=TINY)
    untrained = train.train("ddpm", "shapes", steps=0, out=str(out / "untrained"), **kw)["eval"]
    trained = train.train("ddpm", "shapes", steps=40, out=str(out / "trained"), **kw)["eval"]
    return str(out / "trained" / train.CHECKPOINT_NAME), untrained, trained


def test_ddpm_unet_training_beats_untrained_and_a_structure_blind_denoiser(trained_shapes):
    ckpt, untrained, trained = trained_shapes
    # zero output conv: the untrained net predicts eps = 0, whose loss is E[eps^2] = 1
    assert abs(untrained["denoise_mse"] - 1.0) < 0.05, untrained
    assert trained["denoise_mse"] < 0.4 * untrained["denoise_mse"], (trained, untrained)
    # sqrt(1 - abar_t) x_t is the best denoiser that treats each pixel as independent unit noise
    # around a zero-mean image: beating it needs what the net learned about the images
    model = train.model_from_checkpoint(train.load_checkpoint(ckpt))
    abar = model.train_scheduler.alphas_cumprod
    model.net.forward = lambda x, t: (1 - abar[t]).sqrt().reshape(-1, 1, 1, 1) * x
    # the held-out images and noise the eval used (train.train's test split, seed 0)
    blind = model.heldout_denoising_loss(make("shapes", split="test", **SHAPES8).x[:TINY["eval_samples"]])
    assert trained["denoise_mse"] < 0.8 * blind, (trained, blind)
    assert trained["sliced_wasserstein"] < 0.7 * untrained["sliced_wasserstein"], (trained, untrained)
    assert trained["pixel_stats_sw"] < 0.7 * untrained["pixel_stats_sw"], (trained, untrained)


def test_ddpm_unet_checkpoint_samples_with_ddpm_and_ddim(trained_shapes, tmp_path):
    ckpt = trained_shapes[0]
    model = train.model_from_checkpoint(train.load_checkpoint(ckpt))

    def draw(seed, **kw):
        return model.sample(6, generator=torch.Generator().manual_seed(seed), **kw)

    ddpm = draw(1)
    ddim = draw(1, sampler="ddim", steps=10, eta=0.0)
    for x in (ddpm, ddim):
        assert x.shape == (6, 3, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(ddim, draw(1, sampler="ddim", steps=10, eta=0.0))  # deterministic given x_T
    assert not torch.equal(ddim, draw(2, sampler="ddim", steps=10, eta=0.0))
    assert not torch.equal(ddim, ddpm)
    # DDIM (eta 0, 10 steps) of the checkpoint against DDIM of the untrained net (seed 0:
    # sliced-Wasserstein 0.192 vs 0.371; deterministic DDIM of a barely trained net is worse
    # than its DDPM sampling, 0.123, so it is compared with its own untrained baseline)
    holdout = make("shapes", split="test", **SHAPES8)
    torch.manual_seed(0)
    untrained = get_model("ddpm")(DataSpec.of(holdout), **{**TINY, "sampler": "ddim"}).eval()
    model.config["sampler"] = "ddim"
    ddim_metrics, ddim_untrained = (m.evaluate(holdout, generator=torch.Generator().manual_seed(0))
                                    for m in (model, untrained))
    assert ddim_metrics["sliced_wasserstein"] < 0.7 * ddim_untrained["sliced_wasserstein"], (ddim_metrics,
                                                                                           ddim_untrained)
    # `fastgen sample ddpm` writes an image grid and the image tensor
    png, samples = train.sample("ddpm", ckpt, n=9, out=str(tmp_path / "grid.png"))
    assert os.path.getsize(png) > 0 and samples.shape == (9, 3, 8, 8)
    assert torch.load(str(tmp_path / "grid.pt")).shape == (9, 3, 8, 8)
