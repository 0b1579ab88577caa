"""The diffusion benchmark cases: every provider (the fused op, diffusers' scheduler step, fastgen's
scheduler step) must agree with the reference before it is timed. Tiny shapes, no torch.compile."""
import pytest
import torch

from fastgen import bench
from fastgen.bench import harness


@pytest.mark.parametrize("op", ["ddim_step", "ddpm_step", "add_noise", "flow_euler_step"])
def test_diffusion_case_providers_agree(monkeypatch, op):
    pytest.importorskip("diffusers")
    case = bench.CASES[op]
    monkeypatch.setattr(case, "quick_shapes", [(2, 3, 5, 4)])
    monkeypatch.setattr(harness, "time_ms", lambda fn, device, **kw: 1.0)  # checking, not timing
    rows = harness.run_case(case, device="cpu", dtype=torch.float32, quick=True, modes=harness.MODES,
                            provider_filter={"fastgen-cpu", "diffusers", "fastgen-scheduler"})
    ran = {r["provider"]: r for r in rows if r["status"] != "skipped"}
    assert {"eager", "diffusers", "fastgen-scheduler"} <= set(ran), rows
    for r in ran.values():
        assert r["status"] == "ok", r
