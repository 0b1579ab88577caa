"""The ptxas resource table of the CUDA C++ kernels (scripts/cuda_resources.py): read from the
built extension with cuobjdump, no GPU needed. Fails when a hot kernel (attention, vq_nearest,
the diffusion steps, group_norm) has a stack frame or local memory."""
import csv
import os
import subprocess
import sys

import pytest

from fastgen import _ext

from conftest import require_cuda_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "cuda_resources.py")


def test_hot_cuda_kernels_do_not_spill(tmp_path):
    require_cuda_build("the CUDA resource table")
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import cuda_resources
    finally:
        sys.path.pop(0)
    if cuda_resources.find_cuobjdump() is None:
        if os.environ.get("FASTGEN_TEST_REQUIRE_CUDA_BUILD") == "1":
            pytest.fail("no cuobjdump (Triton's wheel ships one; or put the CUDA toolkit on PATH)")
        pytest.skip("no cuobjdump (Triton's wheel ships one; or put the CUDA toolkit on PATH)")
    out = tmp_path / "cuda_resources.csv"
    r = subprocess.run([sys.executable, SCRIPT, "--so", _ext.NATIVE.__file__, "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    # every arch the extension holds SASS for, and every hot kernel family, is in the table
    sass = {"sm_" + entry.split("+")[0].replace(".", "") for entry in (_ext.CUDA_ARCHS or "").split(";") if entry}
    assert {row["arch"] for row in rows} == sass
    kernels = {row["kernel"] for row in rows}
    for family in ("attn_fwd_kernel", "attn_fwd_mma_kernel", "attn_bwd_dq_kernel", "attn_bwd_dkdv_kernel",
                   "vq_nearest_kernel", "vq_candidates_kernel", "vq_rerank_kernel",
                   "denoise_kernel", "flow_kernel", "mix_kernel",
                   "group_norm_forward_kernel", "group_norm_backward_kernel"):
        assert any(f"::{family}<" in k for k in kernels), family
    hot = [row for row in rows if cuda_resources.is_hot(row["kernel"])]
    allowed = cuda_resources.STACK_ALLOWED
    assert hot and all(int(row["stack_bytes"]) <= allowed.get((row["kernel"], row["arch"]), 0)
                       and row["local_bytes"] == "0" for row in hot)
    assert len(allowed) <= 1, "every exception is one (kernel, arch) row with its reason"
    assert "max registers" in r.stdout


def test_hot_set_and_parser():
    """The hot-kernel patterns and the cuobjdump parser, on a fixed sample (no build needed)."""
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import cuda_resources
    finally:
        sys.path.pop(0)
    sample = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]
identifier = /x/csrc/cuda/diffusion.cu

Resource usage:
 Common:
  GLOBAL:0
 Function _Z1kv:
  REG:26 STACK:32 SHARED:0 LOCAL:0 CONSTANT[0]:508 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    assert cuda_resources.parse(sample)[0][1:6] == ["sm_90", 26, 32, 0, 0]
    assert cuda_resources.short_name(
        "void fastgen::(anonymous namespace)::denoise_kernel<float, float, true, 2>(float const*, long)") \
        == "fastgen::denoise_kernel<float, float, true, 2>"
    for name, hot in (("fastgen::denoise_kernel<float, float, true, 2>", True),
                      ("fastgen::mma_attention::attn_fwd_mma_kernel<__half, 64>", True),
                      ("fastgen::group_norm_backward_kernel<true, float, float>", True),
                      ("fastgen::vq_nearest_kernel<float>", True),
                      ("fastgen::flow_kernel<float, float>", True),
                      ("fastgen::coupling_forward_kernel<0, false, double, double>", False),
                      ("fastgen::vq_segment_kernel<float, float, float, 0>", False),
                      ("fastgen::prior_grad_kernel<0, float, float>", False)):
        assert cuda_resources.is_hot(name) is hot, name
