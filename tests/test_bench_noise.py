"""Noise handling of the bench: round-robin Timer groups with quartiles, the noisy and
incoherent flags, the busy-machine warning, --threads, the GPU path (mocked do_bench), the
roofline column, and `fastgen bench compare` on two stored runs. Tiny shapes and short budgets:
the logic is what is tested, not the machine."""
import argparse
import json
import os
import shutil
import time

import pytest
import torch

from fastgen import bench
from fastgen.bench import compare, harness, machine, timing
# the real case shrunk to one tiny shape, and the argument helper: test_bench.py's
from test_bench import OP, _args, tiny_case  # noqa: F401  (tiny_case is a fixture)

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "bench")


def test_round_robin_group_reports_quartiles_and_interleaves():
    order = []

    def make(name, seconds):
        def fn():
            order.append(name)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                pass
        return fn

    stats = timing.time_cpu_group({"fast": make("fast", 1e-4), "slow": make("slow", 1e-3)}, budget_s=0.0,
                                  block_s=0.002, min_rounds=7, max_rounds=7)
    for name, s in stats.items():
        assert s["samples"] == 7 and s["q25_ms"] <= s["time_ms"] <= s["q75_ms"]
        assert s["iqr_pct"] == pytest.approx(100 * (s["q75_ms"] - s["q25_ms"]) / s["time_ms"])
        assert "Timer" in s["timer"]
    assert stats["slow"]["time_ms"] > stats["fast"]["time_ms"]
    assert stats["fast"]["calls_per_sample"] > stats["slow"]["calls_per_sample"] >= 1
    # interleaved: after the calibration calls, one block of each per round (the order rotates:
    # AB BA AB ...), so the providers switch at least once per round, never all of one first
    timed = order[8:]  # 4 calibration calls each (Timer.timeit(1) warms up with 2 more; the sequence starts later)
    switches = sum(a != b for a, b in zip(timed, timed[1:]))
    assert switches >= 7


def test_threads_are_set_and_recorded(tiny_case, tmp_path):
    before = torch.get_num_threads()
    assert bench.run(_args(tmp_path, "--op", OP, "--providers", "fastgen-cpu", "--threads", "1",
                           "--no-plots")) == 0
    rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    timed = [r for r in rows if r["status"] == "ok"]
    assert timed and all(r["threads"] == 1 for r in timed)
    assert all(r["q25_ms"] <= r["time_ms"] <= r["q75_ms"] and r["samples"] >= timing.MIN_ROUNDS for r in timed)
    assert all(r["run_id"] and r["load_avg"] is not None for r in timed)
    assert torch.get_num_threads() == before


def test_busy_machine_warns_and_marks_rows_noisy(tiny_case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine, "load_average", lambda: 9.0)

    class Busy(machine.OthersCpu):  # other processes took 60% of the CPU during every group
        def __exit__(self, *exc):
            self.fraction = 0.6
            return False
    monkeypatch.setattr(machine, "OthersCpu", Busy)
    assert bench.run(_args(tmp_path, "--op", OP, "--providers", "fastgen-cpu", "--no-plots")) == 0
    out, err = capsys.readouterr()
    assert "WARNING: the machine is busy" in err and "load average 9.00" in err
    rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    timed = [r for r in rows if r["status"] == "ok"]
    assert all(r["noisy"] and "60% of the CPU" in r["flags"] and r["others_cpu_pct"] == 60 for r in timed)
    assert "0 trusted" in out
    table_rows = [line for line in out.splitlines() if line.startswith(OP) and " ok " in line]
    assert table_rows and all("x  ok" not in line and "noisy: " in line for line in table_rows)


def test_others_cpu_reads_proc():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc")
    with machine.OthersCpu() as o:
        time.sleep(0.15)
    assert o.fraction is None or 0.0 <= o.fraction <= 1.0


def _row(provider, mode, ms, spread=0.01, shape="8x8"):
    return {"op": "x", "shape": shape, "mode": mode, "provider": provider, "status": "ok", "time_ms": ms,
            "q25_ms": ms * (1 - spread), "q75_ms": ms * (1 + spread), "flags": "", "noisy": False}


def test_incoherent_rows_are_flagged_and_get_no_speedup():
    # the table: eager fwd 64.3 ms but fwd+bwd 1.14 ms; compile 1000x eager's fwd
    rows = [_row("eager", "fwd", 64.3), _row("eager", "fwd+bwd", 1.14), _row("fastgen-cpu", "fwd", 0.2),
            _row("fastgen-cpu", "fwd+bwd", 0.5), _row("eager", "fwd", 0.034, shape="4x4"),
            _row("compile", "fwd", 32.7, shape="4x4"), _row("fastgen-cpu", "fwd", 0.03, shape="4x4")]
    harness.flag_incoherent(rows)
    flagged = {(r["shape"], r["provider"], r["mode"]) for r in rows if "incoherent" in r["flags"]}
    assert flagged == {("8x8", "eager", "fwd"), ("8x8", "eager", "fwd+bwd"), ("4x4", "compile", "fwd")}
    # fastgen fwd 0.2 vs fwd+bwd 0.5 is coherent, but eager fwd is 321x fastgen's: flagged as an outlier
    assert "fwd+bwd 1.14 ms < fwd 64.3 ms" in rows[0]["flags"]
    for r in rows:
        r.update(op="x", dtype="float32", device="cpu", error="", iqr_pct=2.0)
    eager = {(r["shape"], r["mode"]): r for r in rows if r["provider"] == "eager"}
    for r in rows:
        harness._set_speedup(r, eager[(r["shape"], r["mode"])])
    table = harness.format_table(rows)
    compile_line, = [line for line in table.splitlines() if "compile" in line]
    assert "32.7000         -  ok" in compile_line and "NOT A RESULT: incoherent" in compile_line
    # a case may say a larger gap is real
    rows = [_row("eager", "fwd", 50.0), _row("fastgen-cpu", "fwd", 0.1)]
    assert not harness.flag_incoherent(rows, max_ratio=1000)[0]["flags"]


def test_gpu_path_times_a_group_one_way():
    calls = []

    class FakeTesting:
        @staticmethod
        def do_bench(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
            calls.append(("do_bench", fn.__name__))
            base = {"tiny": 0.01, "big": 2.0, "uncapturable": 0.02}[fn.__name__]
            return [base * 0.9, base, base * 1.1] if quantiles else base

        @staticmethod
        def do_bench_cudagraph(fn, rep=20, grad_to_none=None, quantiles=None, return_mode="mean"):
            calls.append(("cudagraph", fn.__name__))
            if fn.__name__ == "uncapturable":
                raise RuntimeError("operation not permitted when stream is capturing")
            return [0.008, 0.009, 0.010]

    def tiny():
        pass

    def big():
        pass

    def uncapturable():
        pass

    # a group with a microsecond provider: every provider replayed from a CUDA graph (a host-bound
    # provider, "big" here, must not be timed with its launch overhead next to graph-timed ones)
    stats = timing.time_gpu_group({"tiny": tiny, "big": big, "uncapturable": uncapturable}, rounds=3,
                                  testing=FakeTesting)
    assert stats["tiny"]["timer"] == "triton do_bench_cudagraph" and stats["tiny"]["time_ms"] == 0.009
    assert stats["big"]["timer"] == "triton do_bench_cudagraph" and stats["big"]["time_ms"] == 0.009
    assert "capture failed" in stats["uncapturable"]["timer"] and stats["uncapturable"]["time_ms"] == 0.02
    assert stats["uncapturable"]["iqr_pct"] == pytest.approx(20.0)
    # round-robin: the three providers alternate in the timed passes
    timed = [name for how, name in calls[3:]]
    assert timed[:3] == ["tiny", "big", "uncapturable"]
    # a group of slow ops only: do_bench for all, no capture
    calls.clear()
    stats = timing.time_gpu_group({"big": big}, rounds=3, testing=FakeTesting)
    assert stats["big"]["timer"] == "triton do_bench" and stats["big"]["time_ms"] == 2.0
    assert stats["big"]["iqr_pct"] == pytest.approx(20.0)
    assert ("cudagraph", "big") not in calls


def test_roofline_column_against_measured_ceilings(tiny_case):
    ceilings = {"copy_bytes_per_s": 10e9, "flop_per_s": 100e9}
    stats = {"time_ms": 1.0}
    inputs = {"a": torch.zeros(1000), "b": torch.zeros(1000)}
    out = harness._roofline(tiny_case, (1000,), torch.float32, "fwd", inputs, (torch.zeros(500),), stats, ceilings)
    assert out["gb_per_s"] == pytest.approx(10e3 / 1e-3 / 1e9)  # 10 kB in 1 ms
    assert out["pct_roofline"] == pytest.approx(100 * 0.01 / 10)
    assert machine.copy_bandwidth("cpu", nbytes=1 << 20) > 1e6  # loose: a loaded CI box
    assert machine.matmul_flops("cpu", n=64) > 1e4


def test_compare_two_stored_runs(tmp_path, capsys):
    old, new = os.path.join(FIXTURES, "old.jsonl"), os.path.join(FIXTURES, "new.jsonl")
    results, only_old, only_new = compare.compare(compare.load(old), compare.load(new))
    verdicts = {(r["op"], r["mode"], r["provider"]): r["verdict"] for r in results}
    assert verdicts == {
        ("bias_act", "fwd", "eager"): "same",              # 2% apart, quartiles overlap
        ("bias_act", "fwd", "fastgen-cpu"): "slower",      # 1.5x, quartiles apart
        ("bias_act", "fwd+bwd", "eager"): "noisy",         # flagged in NEW
        ("bias_act", "fwd+bwd", "fastgen-cpu"): "faster",
        ("group_norm_silu", "fwd", "eager"): "same",       # 8% apart but within the spread
    }
    assert len(only_old) == 1 and len(only_new) == 0
    assert compare.main(old, new) == 0
    assert compare.main(old, new, fail_on_regression="60%") == 0
    assert compare.main(old, new, fail_on_regression="20%") == 1
    out = capsys.readouterr()
    assert "1 slower, 1 faster, 2 within the noise, 1 noisy" in out.out
    assert "regressed by more than 20%" in out.err
    # through the CLI's argument parser
    parser = bench.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["compare", old, new, "--fail-on-regression", "20%"])
    assert bench.run(args) == 1


def test_compare_reads_the_last_run_of_an_appended_file(tmp_path):
    path = tmp_path / "results.jsonl"
    shutil.copy(os.path.join(FIXTURES, "old.jsonl"), path)
    with open(path, "a") as f, open(os.path.join(FIXTURES, "new.jsonl")) as g:
        f.write(g.read())
    rows = compare.load(path)
    assert rows[("bias_act", "fwd", "64x1024", "fastgen-cpu", "float32", "CPU (test)")]["time_ms"] == 0.09


def test_cpu_hog_is_seen_as_other_processes():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cpu_hog", os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "cpu_hog.py"))
    hog = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hog)
    procs = hog.start(n=1, seconds=5)
    try:
        time.sleep(0.2)
        with machine.OthersCpu() as o:
            time.sleep(0.5)
    finally:
        hog.stop(procs)
    assert all(not p.is_alive() for p in procs)
    # one busy core of machine.cores(): at least most of its share shows up as other processes
    assert o.fraction is not None and o.fraction > 0.6 / machine.cores()


def test_compare_on_the_stored_runs_of_this_machine():
    """The committed --quick runs (benchmarks/results/bench/cpu-amd-epyc-2core/): the loaded run
    (a busy loop per core on top) has no row that is outside the first run's spread without
    being marked noisy, so --fail-on-regression does not fire on noise."""
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "results", "bench",
                        "cpu-amd-epyc-2core")
    first, loaded = (os.path.join(root, d, "results.jsonl") for d in ("shared-load4", "shared-load5-hog"))
    results, only_old, only_new = compare.compare(compare.load(first), compare.load(loaded))
    assert len(results) > 100 and not only_old and not only_new
    assert {r["verdict"] for r in results} <= {"same", "noisy"}
    assert compare.main(first, loaded, fail_on_regression="10%") == 0


def test_a_stalling_provider_does_not_blow_the_group_budget(monkeypatch):
    """Calibrated fast, then every call stalls (a preempted thread): blocks shrink and the group
    stops at its hard cap instead of running hundreds of stalled calls per block."""
    calls = {"n": 0}

    def stalls_after_calibration():
        calls["n"] += 1
        if calls["n"] > 6:  # the warm-up and calibration calls are fast
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.004:
                pass

    monkeypatch.setattr(timing, "HARD_CAP_X", 1.0)
    t0 = time.perf_counter()
    stats = timing.time_cpu_group({"p": stalls_after_calibration}, budget_s=0.2, block_s=0.01, min_rounds=7)
    assert time.perf_counter() - t0 < 4.0  # without the shrink: 7 blocks of ~2500 stalled calls, 70 s
    s = stats["p"]
    assert s["samples"] >= timing.MIN_ROUNDS_CAPPED and s["time_ms"] > 2.0
