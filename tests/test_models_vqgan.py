"""VQGAN stage 1: learning, the adaptive GAN weight, the disc_start warm-up, code grids, and the
harness's two-optimizer path (exact resume, DDP replicas)."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import fastgen.data as fd
from fastgen import train
from fastgen.models import DataSpec, get_model
from fastgen.models.vqgan import adaptive_disc_weight, decode_indices, encode_indices

SMALL = {"ch": 16, "disc_ndf": 16}       # a quarter of the default compute; same structure


def _model(size=16, **kw):
    torch.manual_seed(0)
    spec = DataSpec("shapes", "image", (3, size, size), 4)
    return get_model("vqgan")(spec, **{**SMALL, **kw})


def _batch(n=8, size=16):
    return fd.make("shapes", n=n, seed=1, size=size).x


def test_training_beats_untrained_reconstruction(tmp_path):
    common = dict(data_options={"size": 16}, batch=32, seed=0, progress=False, plot_every=0)
    # the discriminator joins for the last 100 steps: the GAN phase must not undo the learning
    opts = {**SMALL, "disc_start": 200}
    untrained = train.train("vqgan", "shapes", steps=0, out=str(tmp_path / "u"), model_options=opts,
                            **common)["eval"]
    result = train.train("vqgan", "shapes", steps=300, out=str(tmp_path / "t"), model_options=opts,
                         log_every=50, **common)
    trained = result["eval"]
    assert trained["recon_mse"] < 0.5 * untrained["recon_mse"], (trained, untrained)
    assert trained["codes_used"] + trained["dead_codes"] == trained["codebook_size"] == 128
    assert 1.0 < trained["perplexity"] <= trained["codes_used"]
    gan_rows = [r for r in result["history"] if r["step"] > 200]
    assert gan_rows and all(r["d_weight"] > 0 and r["d_loss"] > 0 for r in gan_rows)


def test_adaptive_weight_matches_hand_computation():
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    a, b, c = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, -1.0]), torch.tensor([3.0, 0.0, -4.0])
    rec = ((w * a - b) ** 2).sum()      # d/dw = 2 a (w a - b)
    g = (w * c).sum() + 7.0             # d/dw = c, |c| = 5
    got = adaptive_disc_weight(rec, g, w, disc_weight=0.8)
    rec_grad = 2 * a * (w.detach() * a - b)
    expected = 0.8 * rec_grad.norm() / (5.0 + 1e-4)
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad
    # a generator loss that does not move the last layer: the ratio is clamped at 1e4
    flat = adaptive_disc_weight(1e3 * rec, (w * 0).sum(), w, disc_weight=1.0)
    assert float(flat) == 1e4


def test_model_uses_the_decoders_last_layer_for_the_weight():
    model = _model(disc_start=0)
    x = _batch()
    ref = copy.deepcopy(model)
    z_q, _, _ = ref.encode(x)
    x_rec = ref.decode(z_q)
    rec = (2 * x - 1 - x_rec).abs().mean()
    g = -ref.discriminator(x_rec).mean()
    last = ref.decoder.conv_out.weight
    rec_grad, = torch.autograd.grad(rec, last, retain_graph=True)
    g_grad, = torch.autograd.grad(g, last)
    expected = 0.8 * rec_grad.norm() / (g_grad.norm() + 1e-4)
    _, logs = model.training_step(x, None, model.configure_optimizers(1e-3), step=0)
    torch.testing.assert_close(logs["d_weight"], expected)


def test_discriminator_waits_for_disc_start():
    model = _model(disc_start=3)
    opt_ae, opt_disc = optimizers = model.configure_optimizers(1e-3)
    calls = []
    model.discriminator.register_forward_hook(lambda *args: calls.append(1))
    disc_before = copy.deepcopy(model.discriminator.state_dict())
    enc_before = model.encoder.net[0].weight.detach().clone()
    x = _batch()
    for step in range(3):
        loss, logs = model.training_step(x, None, optimizers, step)
        assert float(logs["d_weight"]) == 0.0 and float(logs["d_loss"]) == 0.0
        # before disc_start the step is the plain autoencoder loss
        torch.testing.assert_close(loss, logs["rec_l1"] + logs["quant_loss"])
    assert not calls and not opt_disc.state
    assert all(torch.equal(v, model.discriminator.state_dict()[k]) for k, v in disc_before.items())
    assert not torch.equal(enc_before, model.encoder.net[0].weight)
    assert all(p.grad is None for p in model.discriminator.parameters())

    _, logs = model.training_step(x, None, optimizers, 3)
    assert len(calls) == 3                       # fake for G; real and fake for D
    assert float(logs["d_weight"]) > 0 and float(logs["d_loss"]) > 0
    assert len(opt_disc.state) == len(list(model.discriminator.parameters()))
    assert any(not torch.equal(v, model.discriminator.state_dict()[k]) for k, v in disc_before.items())


@pytest.mark.parametrize("size,grid", [(16, 4), (32, 8)])
def test_code_grids_round_trip(size, grid):
    model = _model(size=size, n_e=64, e_dim=16).eval()
    x = _batch(5, size)
    idx = encode_indices(model, x)
    assert idx.shape == (5, grid, grid) and idx.dtype == torch.long
    assert 0 <= int(idx.min()) and int(idx.max()) < 64
    images = decode_indices(model, idx)
    assert images.shape == x.shape and 0 <= float(images.min()) and float(images.max()) <= 1
    torch.testing.assert_close(images, model.reconstruct(x))
    # decoding the codes and encoding again gives a grid of the same shape
    assert encode_indices(model, images).shape == idx.shape
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 3, size, size)


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        _model(size=18)
    with pytest.raises(ValueError, match="too small for disc_layers=3"):
        _model(size=16, disc_layers=3)
    with pytest.raises(ValueError, match="does not support points2d"):
        get_model("vqgan")(DataSpec("moons", "points2d", (2,), 2))


def test_resume_with_two_optimizers_reproduces_the_loss_curve(tmp_path):
    common = dict(data_options={"size": 16}, batch=16, seed=3, log_every=1, plot_every=5, ckpt_every=5,
                  progress=False, model_options={**SMALL, "n_e": 32, "disc_start": 2})
    full = train.train("vqgan", "shapes", steps=12, out=str(tmp_path / "full"), **common)
    train.train("vqgan", "shapes", steps=5, out=str(tmp_path / "split"), **common)
    state = train.load_checkpoint(str(tmp_path / "split" / "checkpoint.pt"), "vqgan")
    assert isinstance(state["optimizer_state"], list) and len(state["optimizer_state"]) == 2
    assert all(sd["state"] for sd in state["optimizer_state"])   # both have stepped by step 5
    resumed = train.train("vqgan", "shapes", steps=12, out=str(tmp_path / "split"), resume=True, **common)
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    assert [r["d_loss"] for r in resumed["history"]] == [r["d_loss"] for r in full["history"]]
    assert resumed["eval"] == full["eval"]


def test_single_optimizer_checkpoints_keep_their_format(tmp_path):
    train.train("vae", "moons", steps=2, out=str(tmp_path / "vae"), batch=8, plot_every=0, progress=False)
    state = train.load_checkpoint(str(tmp_path / "vae" / "checkpoint.pt"), "vae")
    assert isinstance(state["optimizer_state"], dict)
    opts = [torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])] * 2
    with pytest.raises(ValueError, match="1 optimizer state"):
        train.load_optimizer_states(opts, state)


def test_cli_ddp_two_processes_keep_replicas_identical(tmp_path):
    """Two gloo ranks through the CLI: the model steps itself, the harness averages gradients."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29523",
         "-m", "fastgen", "train", "vqgan", "--data", "shapes", "--data-opt", "size=16", "--steps", "4",
         "--batch", "8", "--device", "cpu", "--out", str(out), "--plot-every", "0", "--log-every", "1",
         "--model-opt", "ch=16", "--model-opt", "disc_ndf=16", "--model-opt", "disc_start=2"],
        capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["world_size"] == 2
    assert metrics["replicas_identical"], metrics["parameter_digests"]
    assert metrics["history"][-1]["d_loss"] > 0
