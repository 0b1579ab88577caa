"""The training harness with the VAE: learning, exact resume, DDP replicas, CLI errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastgen import train

CLI = [sys.executable, "-m", "fastgen"]


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def _eval_after(tmp_path, name, steps, **kw):
    return train.train("vae", kw.pop("data"), steps=steps, out=str(tmp_path / name), progress=False,
                       plot_every=0, **kw)["eval"]


def test_vae_on_moons_beats_untrained(tmp_path):
    untrained = _eval_after(tmp_path, "untrained", 0, data="moons", seed=0)
    trained = _eval_after(tmp_path, "trained", 1500, data="moons", seed=0, lr=2e-3)
    assert trained["sliced_wasserstein"] < 0.5 * untrained["sliced_wasserstein"], (trained, untrained)
    assert trained["elbo"] > untrained["elbo"] + 0.5
    assert trained["mmd_rbf"] < 0.25 * untrained["mmd_rbf"]


def test_conv_vae_on_shapes_reconstructs(tmp_path):
    opts = {"size": 16, "channels": 1}
    untrained = _eval_after(tmp_path, "untrained", 0, data="shapes", data_options=opts, batch=64)
    trained = _eval_after(tmp_path, "trained", 300, data="shapes", data_options=opts, batch=64, lr=2e-3)
    assert trained["recon_mse"] < 0.6 * untrained["recon_mse"], (trained, untrained)


def test_resume_reproduces_the_loss_curve(tmp_path):
    common = dict(batch=32, seed=3, log_every=1, plot_every=5, ckpt_every=5, progress=False)
    full = train.train("vae", "moons", steps=12, out=str(tmp_path / "full"), **common)
    train.train("vae", "moons", steps=5, out=str(tmp_path / "split"), **common)
    resumed = train.train("vae", "moons", steps=12, out=str(tmp_path / "split"), resume=True, **common)
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    assert resumed["eval"] == full["eval"]


def test_checkpoint_files_and_metrics(tmp_path):
    out = tmp_path / "run"
    train.train("vae", "moons", steps=10, out=str(out), batch=16, log_every=5, plot_every=10,
                ckpt_every=10, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final_step"] == 10 and len(metrics["history"]) == 2
    assert (out / "samples_000010.png").stat().st_size > 1000
    state = train.load_checkpoint(str(out / "checkpoint.pt"), "vae")
    assert state["step"] == 10 and state["model_config"]["latent_dim"] == 2


def test_cli_train_sample_eval_and_errors(tmp_path):
    out = tmp_path / "run"
    r = _run(CLI + ["train", "vae", "--data", "moons", "--steps", "20", "--batch", "32", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert "sliced_wasserstein" in r.stdout
    ckpt = str(out / "checkpoint.pt")
    r = _run(CLI + ["sample", "vae", "--ckpt", ckpt, "-n", "100"])
    assert r.returncode == 0, r.stderr
    assert (out / "sample_n100_seed0.png").exists() and torch.load(out / "sample_n100_seed0.pt").shape == (100, 2)
    r = _run(CLI + ["eval", "vae", "--ckpt", ckpt])
    assert r.returncode == 0 and "elbo" in json.loads(r.stdout)

    # nothing is overwritten without --force
    r = _run(CLI + ["train", "vae", "--data", "moons", "--steps", "5", "--out", str(out)])
    assert r.returncode == 2 and "--force" in r.stderr
    r = _run(CLI + ["sample", "vae", "--ckpt", ckpt, "-n", "100"])
    assert r.returncode == 2 and "--force" in r.stderr
    # bad names list the valid ones; a checkpoint of another model is refused
    r = _run(CLI + ["train", "nosuchmodel", "--data", "moons", "--out", str(tmp_path / "x")])
    assert r.returncode == 2 and "valid models: " in r.stderr and "vae" in r.stderr
    r = _run(CLI + ["train", "vae", "--data", "nosuchdata", "--out", str(tmp_path / "y")])
    assert r.returncode == 2 and "moons" in r.stderr
    state = torch.load(ckpt, weights_only=False)
    state["model"] = "gan"
    torch.save(state, tmp_path / "other.pt")
    r = _run(CLI + ["eval", "vae", "--ckpt", str(tmp_path / "other.pt")])
    assert r.returncode == 2 and "checkpoint of model 'gan', not 'vae'" in r.stderr
    state["model"], state["format"] = "vae", 99
    torch.save(state, tmp_path / "future.pt")
    r = _run(CLI + ["eval", "vae", "--ckpt", str(tmp_path / "future.pt")])
    assert r.returncode == 2 and "format 99" in r.stderr


def test_ddp_two_processes_gloo_keep_replicas_identical(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
              "-m", "fastgen", "train", "vae", "--data", "moons", "--steps", "8", "--batch", "16",
              "--device", "cpu", "--out", str(out), "--plot-every", "0"], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["world_size"] == 2
    assert metrics["replicas_identical"], metrics["parameter_digests"]


@pytest.mark.parametrize("argv,name,expected", [
    (["train", "vae", "--data", "moons", "--steps", "0"], "--steps", "integer >= 1"),
    (["train", "vae", "--data", "moons", "--steps", "-1"], "--steps", "integer >= 1"),
    (["train", "vae", "--data", "moons", "--batch", "0"], "--batch", "integer >= 1"),
    (["train", "vae", "--data", "moons", "--lr", "-0.001"], "--lr", "finite number > 0"),
    (["train", "vae", "--data", "moons", "--lr", "nan"], "--lr", "finite number > 0"),
    (["train", "vae", "--data", "moons", "--ckpt-every", "0"], "--ckpt-every", "integer >= 1"),
    (["sample", "vae", "--ckpt", "x.pt", "-n", "0"], "-n", "integer >= 1"),
])
def test_cli_rejects_out_of_range_arguments_before_any_work(argv, name, expected, tmp_path, capsys):
    from fastgen import cli

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + (["--out", str(out)] if argv[0] == "train" else []))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {name}" in err and expected in err
    assert not out.exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": -1}, "steps must be an integer >= 0"),
    ({"batch": 0}, "batch must be an integer >= 1"), ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"lr": float("inf")}, "lr must be a finite number > 0"), ({"steps": 2.5}, "steps must be an integer"),
])
def test_train_api_rejects_out_of_range_arguments(kwargs, message, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train.train("vae", "moons", out=str(out), progress=False, **kwargs)
    assert not out.exists()  # no metrics.json for an untrained model


def test_adam_is_fused_where_torch_supports_the_device_else_foreach():
    cpu = train.adam([torch.zeros(3, requires_grad=True), torch.zeros(2, 2, dtype=torch.float64)], 1e-3)
    assert cpu.defaults["fused"] and not cpu.defaults["foreach"]
    meta = train.adam([torch.zeros(3, device="meta", requires_grad=True)], 1e-3)  # no fused kernel there
    assert not meta.defaults["fused"] and meta.defaults["foreach"]
    # same update as the for-loop Adam to rounding
    p1, p2 = (torch.linspace(-1, 1, 7, dtype=torch.float64).requires_grad_() for _ in range(2))
    o1, o2 = train.adam([p1], 1e-2), torch.optim.Adam([p2], lr=1e-2, foreach=False)
    for k in range(5):
        for p, o in ((p1, o1), (p2, o2)):
            p.grad = torch.cos(p.detach() * (k + 1))
            o.step()
    torch.testing.assert_close(p1, p2, rtol=1e-12, atol=1e-12)
