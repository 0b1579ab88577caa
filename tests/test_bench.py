"""The benchmark harness: providers are checked before they are timed, results are written, and a
wrong provider fails the run. Quick shapes, CPU, no torch.compile (each inductor compile costs
10-30 s on a small CPU)."""
import argparse
import csv
import json

import pytest
import torch

from fastgen import bench
from fastgen.bench import harness

OP = "gaussian_reparam_kl"


def _args(out, *extra):
    parser = bench.add_arguments(argparse.ArgumentParser())
    return parser.parse_args(["--quick", "--device", "cpu", "--out", str(out), *extra])


@pytest.fixture
def tiny_case(monkeypatch):
    """The real case, shrunk to one tiny shape; its peers dict can take injected providers."""
    case = bench.CASES[OP]
    monkeypatch.setattr(case, "quick_shapes", [(3, 37)])
    monkeypatch.setattr(case, "peers", dict(case.peers))
    monkeypatch.setattr(harness.timing, "QUICK_GROUP_BUDGET_S", 0.05)  # the logic, not the machine
    monkeypatch.setattr(harness.timing, "BLOCK_S", 0.001)
    return case


def test_quick_run_writes_rows_table_and_plot(tiny_case, tmp_path, capsys):
    assert bench.run(_args(tmp_path, "--op", OP, "--providers", "fastgen-cpu")) == 0
    table = capsys.readouterr().out
    assert "vs eager" in table and "fastgen-cpu" in table

    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert set(rows[0]) == set(harness.FIELDS)
    timed = {(r["provider"], r["mode"]) for r in rows if r["status"] == "ok"}
    assert timed == {(p, m) for p in ("eager", "fastgen-cpu") for m in ("fwd", "fwd+bwd")}
    for r in rows:
        assert r["op"] == OP and r["dtype"] == "float32" and r["device"].startswith("CPU")
        assert r["torch"] == torch.__version__ and r["triton"] and r["commit"] and r["timestamp"]
        if r["status"] == "ok":
            assert r["shape"] == "3x37" and float(r["time_ms"]) > 0 and float(r["speedup_vs_eager"]) > 0

    records = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert len(records) == len(rows) and set(records[0]) == set(harness.FIELDS)
    assert (tmp_path / f"{OP}.png").stat().st_size > 1000

    # A second run appends rows, without a second header.
    assert bench.run(_args(tmp_path, "--op", OP, "--providers", "fastgen-cpu", "--mode", "fwd")) == 0
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) > len(rows)


def test_triton_on_cpu_is_skipped_with_a_reason(tiny_case):
    # The test suite runs with TRITON_INTERPRET=1: live, but not worth timing.
    rows = harness.run_case(tiny_case, device="cpu", dtype=torch.float32, quick=True, modes=("fwd",),
                            provider_filter={"fastgen-triton"})
    triton_row, = [r for r in rows if r["provider"] == "fastgen-triton"]
    assert triton_row["status"] == "skipped" and "Triton" in triton_row["error"]


def test_wrong_or_crashing_provider_fails_the_run(tiny_case, tmp_path, capsys):
    def off_by_one(device):
        return lambda mu, logvar, eps: tuple(t + 1 for t in tiny_case.reference(mu, logvar, eps))

    def crashing(device):
        def run(mu, logvar, eps):
            raise RuntimeError("kernel exploded")
        return run

    tiny_case.peers.update({"off-by-one": off_by_one, "crashing": crashing,
                            "missing": lambda device: "not installed"})
    code = bench.run(_args(tmp_path, "--op", OP, "--providers", "off-by-one,crashing,missing"))
    assert code == 1
    assert "FAILED" in capsys.readouterr().err

    rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    by_provider = lambda name: [r for r in rows if r["provider"] == name]  # noqa: E731
    for r in by_provider("off-by-one") + by_provider("crashing"):
        assert r["status"] == "FAILED" and r["time_ms"] is None and r["speedup_vs_eager"] is None
    assert "differ" in by_provider("off-by-one")[0]["error"]
    assert "kernel exploded" in by_provider("crashing")[0]["error"]
    assert [(r["status"], r["error"]) for r in by_provider("missing")] == [("skipped", "not installed")]
    assert all(r["status"] == "ok" for r in by_provider("eager"))


def test_gradients_are_checked_in_fwd_bwd(tiny_case):
    def wrong_grad(device):
        # Right forward values, but the KL's gradient is dropped (detached).
        def run(mu, logvar, eps):
            z, kl = tiny_case.reference(mu, logvar, eps)
            return z, kl.detach().requires_grad_()
        return run

    tiny_case.peers["wrong-grad"] = wrong_grad
    rows = harness.run_case(tiny_case, device="cpu", dtype=torch.float32, quick=True, modes=harness.MODES,
                            provider_filter={"wrong-grad"})
    status = {r["mode"]: r["status"] for r in rows if r["provider"] == "wrong-grad"}
    assert status == {"fwd": "ok", "fwd+bwd": "FAILED"}


@pytest.mark.parametrize("extra, message", [
    (("--op", "nope"), f"unknown op 'nope'; valid: .*{OP}"),
    (("--op", OP, "--providers", "fastgen-cpu,nope"), "unknown provider 'nope'; valid: .*compile"),
])
def test_bad_arguments_are_named(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        bench.run(_args(tmp_path, *extra))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    args = _args(tmp_path)
    args.device = "cuda"
    with pytest.raises(SystemExit, match="no GPU is visible"):
        bench.run(args)
