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


def test_ddpm_philox_case_checks_noise_by_distribution(monkeypatch):
    """In-kernel noise vs randn + fused step vs diffusers: the same-stream provider must match the
    reference, the others must add N(0, std^2) noise; a provider adding no noise must fail."""
    pytest.importorskip("diffusers")
    from fastgen.bench import cases

    case = bench.CASES["ddpm_step_philox"]
    monkeypatch.setattr(case, "quick_shapes", [(2, 4, 32, 32)])
    monkeypatch.setattr(harness, "time_ms", lambda fn, device, **kw: 1.0)
    rows = harness.run_case(case, device="cpu", dtype=torch.float32, quick=True, modes=harness.MODES,
                            provider_filter={"fastgen-cpu", "randn+fused-step", "diffusers"})
    ran = {r["provider"]: r for r in rows if r["status"] != "skipped"}
    assert {"eager", "randn+fused-step", "diffusers"} <= set(ran), rows
    for r in ran.values():
        assert r["status"] == "ok", r
    inputs = case.make_inputs((2, 4, 32, 32), torch.float32, "cpu", False)
    expected = case.reference(**inputs)
    noiseless = torch.ops.fastgen.ddpm_step(inputs["model_output"], inputs["sample"], torch.empty(0),
                                            torch.tensor(cases._DIFFUSION_T), *cases._diffusion_tables("cpu")[1],
                                            torch.empty(0), torch.empty(0))
    with pytest.raises(AssertionError, match="differs from N"):
        case.check(noiseless, expected, torch.float32, "no noise")
