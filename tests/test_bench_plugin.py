"""The README's plugin example, executed: a user provider for an existing case and a new case get
the same correctness check, timing, rows and plots as fastgen's own (tiny budget: the logic)."""
import argparse
import json
import os
import re

import pytest

from fastgen import bench
from fastgen.bench import harness, timing

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_example():
    text = open(README).read()
    m = re.search(r"<!-- bench-plugin-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert m, "the README lost its plugin example"
    return m.group(1)


@pytest.fixture
def plugin_file(tmp_path, monkeypatch):
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 10
    path = tmp_path / "my_kernels.py"
    path.write_text(code)
    monkeypatch.setattr(harness, "CASES", harness.CASES)  # restored below
    case = bench.CASES["bias_act"]
    monkeypatch.setattr(case, "peers", dict(case.peers))
    monkeypatch.setattr(case, "quick_shapes", [(4, 16)])
    monkeypatch.setattr(timing, "QUICK_GROUP_BUDGET_S", 0.05)
    monkeypatch.setattr(timing, "BLOCK_S", 0.001)
    yield path
    bench.CASES.pop("softplus", None)


def test_readme_plugin_example_runs(plugin_file, tmp_path):
    out = tmp_path / "out"
    args = bench.add_arguments(argparse.ArgumentParser()).parse_args(
        ["--quick", "--device", "cpu", "--plugin", str(plugin_file), "--op", "bias_act,softplus",
         "--providers", "my-bias-act", "--out", str(out)])
    bench.CASES.pop("softplus", None)
    # the example's case has a big shape; shrink it once the plugin registered it
    real_load = bench.load_plugin

    def load_and_shrink(spec):
        module = real_load(spec)
        bench.CASES["softplus"].quick_shapes = [(8, 16)]
        return module
    bench_module = __import__("fastgen.bench", fromlist=["load_plugin"])
    bench_module.load_plugin = load_and_shrink
    try:
        assert bench.run(args) == 0
    finally:
        bench_module.load_plugin = real_load
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    ran = {(r["op"], r["provider"], r["mode"]): r for r in rows if r["status"] == "ok"}
    assert {("bias_act", "my-bias-act", "fwd"), ("bias_act", "my-bias-act", "fwd+bwd"),
            ("softplus", "eager", "fwd"), ("softplus", "eager", "fwd+bwd")} <= set(ran)
    assert ran[("bias_act", "my-bias-act", "fwd")]["time_ms"] > 0
    assert (out / "bias_act.png").exists() and (out / "softplus.png").exists() and (out / "summary.png").exists()


def test_wrong_user_provider_fails_its_check(monkeypatch, tmp_path):
    case = bench.CASES["bias_act"]
    monkeypatch.setattr(case, "peers", dict(case.peers))
    monkeypatch.setattr(case, "quick_shapes", [(4, 16)])

    @bench.provider("bias_act", "wrong", devices=("cpu",))
    def wrong(x, bias):
        return x

    rows = harness.run_case(case, device="cpu", dtype=__import__("torch").float32, quick=True, modes=("fwd",),
                            provider_filter={"wrong"}, budget_s=0.01)
    assert [r["status"] for r in rows if r["provider"] == "wrong"] == ["FAILED"]
    with pytest.raises(KeyError, match="no case 'nope'"):
        bench.provider("nope")
    with pytest.raises(ValueError, match="already a case"):
        bench.case("bias_act", shapes=[(1,)], make_inputs=None, reference=None)
