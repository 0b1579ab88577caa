"""What a first GPU call would hit, checked without a GPU: every Triton kernel compiled for sm_80
and sm_90 (fastgen.compile_check), launch grids within CUDA's limits, backend choice by dtype,
the fp32 precision rule, decode lengths past the cache, and the GPU tile table run under the
interpreter. The tests that need a GPU (device guard, CUDA-graph capture, offsets past 2**31)
carry the `gpu` mark."""
import os
import subprocess
import sys

import pytest
import torch

import fastgen
from fastgen import compile_check
from fastgen.kernels import _compat
from fastgen.kernels import attention as triton_attention
from fastgen.kernels import flow as triton_flow
from fastgen.ops import reference
from fastgen.testing import assert_close

from conftest import require_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(ROOT, "benchmarks", "results", "compile", "triton_resources.csv")


def test_every_triton_kernel_compiles_for_sm80_and_sm90(tmp_path):
    """The whole sweep through Triton's real compiler and ptxas. Binaries whose key (kernel
    source and dependencies, specialization, options, arch, Triton version) is in the committed
    table are taken from it; anything new or changed is compiled here."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    cmd = [sys.executable, "-m", "fastgen.compile_check", "--arch", "80", "90", "--out", str(tmp_path),
           "--cache", TABLE, "--quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0, f"compile check failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    rows = (tmp_path / "triton_resources.csv").read_text().splitlines()
    assert len(rows) > 300, "the sweep reached too few kernel configs"


def _launches(fn, arch=90):
    sink = []
    with _compat.target_capability((arch // 10, arch % 10)), compile_check.recording(sink):
        fn()
    assert sink, "nothing was launched"
    return sink


def _assert_grids_fit(launches):
    for launch in launches:
        for axis, (g, most) in enumerate(zip(launch.grid, compile_check.MAX_GRID)):
            assert g <= most, f"{launch.name}: grid axis {axis} = {g} > {most}"


@pytest.mark.parametrize("arch", [80, 90])
def test_attention_grids_for_70000_heads(arch, monkeypatch):
    """B * H = 70000 is past grid axis 1's 65535; the launchers' grids must still fit (computed
    with the GPU tile table, nothing launched)."""
    monkeypatch.setattr(triton_attention, "GPU_TILES_UNDER_INTERPRETER", True)
    q = torch.empty(7000, 10, 3, 16)
    kv = torch.empty(7000, 10, 5, 16)
    lse = torch.empty(7000, 10, 3)
    launches = _launches(lambda: triton_attention.flash_attention(q, kv, kv), arch)
    launches += _launches(lambda: triton_attention.flash_attention_backward(q, lse, q, kv, kv, q, lse), arch)
    launches += _launches(lambda: triton_attention.decode_attention(
        q, kv, kv, torch.full((7000,), 5, dtype=torch.int64)), arch)
    assert {launch.name for launch in launches} >= {"_attn_fwd_kernel", "_attn_bwd_dkdv_kernel",
                                                    "_attn_bwd_dq_kernel", "_decode_partial_kernel"}
    _assert_grids_fit(launches)


def test_invertible_conv1x1_grid_for_2048_squared_images():
    x = torch.empty(2, 4, 2048, 2048)
    eye = torch.eye(4)
    launches = _launches(lambda: triton_flow.invertible_conv1x1(x, eye, eye, eye, torch.ones(4), torch.zeros(4)))
    _assert_grids_fit(launches)


@pytest.mark.parametrize("op_name", ["vq_nearest", "flash_attention", "decode_attention"])
def test_auto_skips_triton_for_dtypes_it_does_not_take(op_name):
    """fp64 attention / VQ on CUDA tensors under `auto`: not Triton (which raises for fp64)."""
    op = fastgen.ops.REGISTRY[op_name]
    fp64 = torch.zeros(2, 2, dtype=torch.float64)
    fp32 = torch.zeros(2, 2)
    assert op._key("cuda", "auto", (fp64, fp64)) == ("cuda", "auto", "dtype")
    assert op._key("cuda", "auto", (fp32, fp32)) == ("cuda", "auto")
    assert op._key("cuda", "triton", (fp64,)) == ("cuda", "triton"), "a named backend is not second-guessed"
    assert op._key("cpu", "auto", (fp64,)) == ("cpu", "auto")
    with _no_triton_warning():
        kernel = op._select("cuda", "auto", "dtype")
    assert getattr(kernel, "__wrapped__", None) is not op.triton and kernel is not op.triton
    assert kernel in (op.reference, op._implementation("cuda") if op.native_qualname else None)


class _no_triton_warning:
    """The dtype-based skip is a choice, not a fallback: whatever warning comes must not blame
    Triton."""

    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert not any("triton" in str(r.message) for r in self.records), [str(r.message) for r in self.records]


def test_fp32_dot_precision_follows_torch():
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert _compat.fp32_dot_ieee()
        torch.set_float32_matmul_precision("high")
        assert not _compat.fp32_dot_ieee()
    finally:
        torch.set_float32_matmul_precision(saved)
    assert _compat.fp32_dot_ieee() == (saved == "highest")


@pytest.mark.parametrize("device_backend", [("cpu", "reference"), ("cpu", "cpu"), ("cpu", "triton"),
                                            pytest.param(("cuda", "triton"), marks=pytest.mark.gpu),
                                            pytest.param(("cuda", "cuda"), marks=pytest.mark.gpu)],
                         ids=lambda p: "-".join(p))
def test_decode_lengths_past_the_cache(device_backend):
    """cache_seqlens beyond the cache length: an error for host tensors; on a GPU (not read on
    the host: a sync) keys past the cache do not exist, queries keep their positions
    (bottom-right aligned), the same on every backend (the Triton kernel read past the cache
    before)."""
    device, backend = device_backend
    require_backend("decode_attention", device, backend)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 2, 4, 32, generator=g).to(device)
    k = torch.randn(3, 1, 70, 32, generator=g).to(device)
    v = torch.randn(3, 1, 70, 32, generator=g).to(device)
    lens = torch.tensor([70, 75, 400], device=device)
    if device == "cpu":
        with pytest.raises(ValueError, match=r"cache_seqlens must be in \[0, 71\), got 400"):
            fastgen.ops.decode_attention(q, k, v, lens, backend=backend)
        return
    out = fastgen.ops.decode_attention(q, k, v, lens, backend=backend)
    ref = reference.decode_attention(q, k, v, lens)
    assert_close(out, ref, dtype=torch.float32, backend=backend)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("d", [40, 100, 200])
def test_gpu_attention_tiles_under_the_interpreter(d, monkeypatch):
    """The interpreter normally runs big tiles (programs are its cost); the GPU's tile table
    (16- and 32-row tiles, multi-block decode queries) must give the same results."""
    require_backend("flash_attention", "cpu", "triton")
    monkeypatch.setattr(triton_attention, "GPU_TILES_UNDER_INTERPRETER", True)
    g = torch.Generator().manual_seed(d)
    q, k, v = (torch.randn(1, 2, n, d, generator=g, dtype=torch.float64).float().requires_grad_()
               for n in (37, 29, 29))
    kpm = torch.zeros(1, 29, dtype=torch.bool)
    kpm[0, :3] = True
    out, lse = fastgen.ops.flash_attention(q, k, v, True, None, kpm, backend="triton")
    out_ref, _ = reference.flash_attention(q, k, v, True, None, kpm)
    assert_close(out, out_ref, dtype=torch.float32, backend="triton", name="out")
    go = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k, v), go)
    grads_ref = torch.autograd.grad(out_ref, (q, k, v), go)
    for name, a, b in zip("qkv", grads, grads_ref):
        assert_close(a, b, dtype=torch.float32, backend="triton", name=f"d{name}")
    lens = torch.tensor([29])
    qd = q.detach()[:, :, :20]
    assert_close(fastgen.ops.decode_attention(qd, k.detach(), v.detach(), lens, backend="triton"),
                 reference.decode_attention(qd, k.detach(), v.detach(), lens), dtype=torch.float32,
                 backend="triton", name="decode")


# -- on a GPU ---------------------------------------------------------------------------------

@pytest.mark.gpu
def test_triton_launch_runs_on_the_tensors_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    x = torch.randn(4, 8, 5, device="cuda:1")
    b = torch.randn(8, device="cuda:1")
    with torch.cuda.device(0):
        out = fastgen.ops.bias_act(x, b, "gelu", backend="triton")
    assert out.device == x.device
    assert_close(out, reference.bias_act(x, b, "gelu"), dtype=torch.float32, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_bias_act_is_cuda_graph_capturable(backend):
    require_backend("bias_act", "cuda", backend)
    x = torch.randn(8, 16, 4, 4, device="cuda")
    b = torch.randn(16, device="cuda")
    out = fastgen.ops.bias_act(x, b, "leaky_relu", 0.1, 1.5, backend=backend)  # compile, warm up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fastgen.ops.bias_act(x, b, "leaky_relu", 0.1, 1.5, backend=backend)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, reference.bias_act(x, b, "leaky_relu", 0.1, 1.5), dtype=torch.float32, backend=backend)


@pytest.mark.gpu
@pytest.mark.slow
def test_group_norm_group_past_2_31_elements():
    """One group of 2**31 + 4096 fp16 elements (4 GB): int64 offsets in the Triton kernels."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2 ** 30:
        pytest.skip("needs 24 GB of free GPU memory")
    hw = (2 ** 31 + 4096) // 2
    x = torch.randn(1, 2, hw, device="cuda", dtype=torch.float16)
    y, mean, rstd = torch.ops.fastgen.group_norm_silu(x, None, None, 1, 1e-5, False, backend="triton")
    ref = x.float().mean()
    assert_close(mean.reshape(()), ref, dtype=torch.float32, backend="triton", name="mean")
    tail = y[0, 1, -4096:].float()
    expected = ((x[0, 1, -4096:].float() - mean.reshape(())) * rstd.reshape(()))
    assert_close(tail, expected, dtype=torch.float16, backend="triton", name="last elements")
