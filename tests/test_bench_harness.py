"""The benchmark harness: providers are checked before they are timed, results are written."""
import argparse
import csv
import json

import torch

from fastgen import bench
from fastgen.bench import harness


def _args(tmp_path, *extra):
    parser = bench.add_arguments(argparse.ArgumentParser())
    return parser.parse_args(["--quick", "--device", "cpu", "--out", str(tmp_path), *extra])


def test_quick_run_writes_rows_and_plot(tmp_path, capsys):
    code = bench.run(_args(tmp_path, "--op", "gaussian_reparam_kl", "--providers", "fastgen-cpu"))
    assert code == 0
    table = capsys.readouterr().out
    assert "fastgen-cpu" in table and "vs eager" in table
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    timed = [r for r in rows if r["status"] == "ok"]
    assert {(r["provider"], r["mode"]) for r in timed} >= {("eager", "fwd"), ("fastgen-cpu", "fwd+bwd")}
    for r in timed:
        assert float(r["time_ms"]) > 0 and float(r["speedup_vs_eager"]) > 0
        assert r["device"].startswith("CPU") and r["torch"] == torch.__version__ and r["commit"]
    assert len(open(tmp_path / "results.jsonl").read().splitlines()) == len(rows)
    assert json.loads(open(tmp_path / "results.jsonl").readline())["op"] == "gaussian_reparam_kl"
    assert (tmp_path / "gaussian_reparam_kl.png").stat().st_size > 1000


def test_wrong_provider_is_reported_failed_and_not_timed(tmp_path, monkeypatch):
    case = bench.CASES["gaussian_reparam_kl"]

    def off_by_one(device):
        return lambda mu, logvar, eps: tuple(t + 1 for t in case.reference(mu, logvar, eps))

    monkeypatch.setitem(case.peers, "broken-peer", off_by_one)
    monkeypatch.setitem(case.peers, "missing-peer", lambda device: "not installed")
    rows = harness.run_case(case, device="cpu", dtype=torch.float32, quick=True, modes=("fwd",),
                            provider_filter={"broken-peer", "missing-peer"})
    broken = [r for r in rows if r["provider"] == "broken-peer"]
    assert broken and all(r["status"] == "FAILED" and r["time_ms"] is None for r in broken)
    assert "differ" in broken[0]["error"]
    missing = [r for r in rows if r["provider"] == "missing-peer"]
    assert missing[0]["status"] == "skipped" and missing[0]["error"] == "not installed"


def test_unknown_op_is_named():
    import pytest

    with pytest.raises(SystemExit, match="unknown op 'nope'; valid: gaussian_reparam_kl"):
        bench.run(_args("/tmp", "--op", "nope"))
