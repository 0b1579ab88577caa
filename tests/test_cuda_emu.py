"""The CUDA C++ kernels on the CPU execution model (csrc/emu/, backend "cuda_emu").

The per-backend tests of every op family run cuda_emu through the `device_backend` matrix of
conftest.py. This file adds what the matrix does not cover by itself: the tensor-core (WMMA)
attention forward on its exact paths, the FMA attention kernels, decode with per-sequence
lengths, the Philox dropout mask bit for bit, every user of block_sum under the race mode, and
that each of the 28 kernels in csrc/cuda/ ran at least once.
"""
import glob
import os
import re

import pytest
import torch

import fastgen
from fastgen import _ext
from fastgen.ops import reference
from fastgen.testing import assert_close

from conftest import require_backend

pytestmark = pytest.mark.cuda_emu
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = "cuda_emu"


def _require(op="flash_attention"):
    require_backend(op, "cpu", EMU)


def launches():
    """{kernel name: launches so far in this process} of the model."""
    text = torch.ops.fastgen_emu.emu_kernel_launches()
    return {name: int(n) for name, n in (line.split() for line in text.splitlines())}


def _ran(name, before):
    return launches().get(name, 0) > before.get(name, 0)


def _rand(shape, dtype, seed, offset=0):
    """randn with a storage offset of `offset` elements (offset 1: rows not 16-byte aligned)."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    flat = torch.randn(n + offset, generator=g).to(dtype)
    return flat[offset:].view(shape)


def _attention_case(dtype, d, causal=False, padded=False, gqa=False, dropout=0.0, unaligned=False, lq=70, lk=83):
    b, h = 2, 4
    hkv = 2 if gqa else h
    off = 1 if unaligned else 0
    q = _rand((b, h, lq, d), dtype, 1, off)
    k = _rand((b, hkv, lk, d), dtype, 2, off)
    v = _rand((b, hkv, lk, d), dtype, 3, off)
    kpm = None
    if padded:
        kpm = torch.zeros(b, lk, dtype=torch.bool)
        kpm[0, -17:] = True
        kpm[1, 3:9] = True
    return q, k, v, dict(causal=causal, key_padding_mask=kpm, dropout_p=dropout, seed=1234 if dropout else None)


WMMA_CASES = {
    "plain": {},
    "causal": dict(causal=True),
    "padded": dict(padded=True),
    "gqa-causal-padded": dict(gqa=True, causal=True, padded=True),
    "dropout-causal-gqa": dict(dropout=0.2, causal=True, gqa=True),
    "unaligned": dict(unaligned=True),
    "unaligned-causal-dropout": dict(unaligned=True, causal=True, dropout=0.25),
}
# head dim 64 runs every case, 128 three of them (test time)
WMMA_PARAMS = [(64, c) for c in WMMA_CASES] + [(128, c) for c in ("plain", "gqa-causal-padded",
                                                                  "unaligned-causal-dropout")]


@pytest.mark.parametrize("d,case", WMMA_PARAMS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_wmma_attention_forward(dtype, d, case):
    """fp16 / bf16 at head dims 64 and 128 take attention_mma.cuh's tensor-core kernel (the model
    says compute capability 8.0); Lq = 70 and Lk = 83 leave partial query and key tiles."""
    _require()
    kw = WMMA_CASES[case]
    q, k, v, opts = _attention_case(dtype, d, **kw)
    before = launches()
    out, lse = fastgen.ops.flash_attention(q, k, v, **opts, backend=EMU)
    assert _ran("attn_fwd_mma_kernel", before), "the WMMA kernel did not run"
    assert not _ran("attn_fwd_kernel", before)
    ref_out, ref_lse = fastgen.ops.flash_attention(q, k, v, **opts, backend="reference")
    assert_close(out, ref_out, backend=EMU, name=f"out {case}")
    assert_close(lse, ref_lse, dtype=torch.float32, backend=EMU, name=f"lse {case}",
                 rtol=1e-3 if dtype == torch.bfloat16 else 1e-4, atol=1e-3 if dtype == torch.bfloat16 else 1e-4)


def test_wmma_attention_fully_masked_rows():
    """Rows that see no key (every key padded) get output 0 and lse -inf, as the reference."""
    _require()
    q, k, v, opts = _attention_case(torch.float16, 64, padded=True)
    opts["key_padding_mask"][1] = True
    out, lse = fastgen.ops.flash_attention(q, k, v, **opts, backend=EMU)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert bool((lse[1] == float("-inf")).all())
    ref_out, _ = fastgen.ops.flash_attention(q, k, v, **opts, backend="reference")
    assert_close(out[0], ref_out[0], backend=EMU)


@pytest.mark.parametrize("dtype,d", [(torch.float32, 45), (torch.float64, 64), (torch.float16, 40),
                                     (torch.bfloat16, 96)], ids=str)
def test_fma_attention_forward_backward(dtype, d):
    """The one-warp-per-row kernels: forward, dK/dV and dQ (any dtype; fp16/bf16 at head dims
    other than 64 / 128), with GQA, causal, padding and dropout."""
    _require()
    q, k, v, opts = _attention_case(dtype, d, causal=True, padded=True, gqa=True, dropout=0.2, lq=37, lk=29)
    grads = {}
    before = launches()
    for backend in (EMU, "reference"):
        qq, kk, vv = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        out, lse = fastgen.ops.flash_attention(qq, kk, vv, **opts, backend=backend)
        go = _rand(out.shape, dtype, 9)
        gl = _rand(lse.shape, lse.dtype, 10)
        torch.autograd.backward((out, lse), (go, gl))
        grads[backend] = (out.detach(), lse.detach(), qq.grad, kk.grad, vv.grad)
    for name in ("attn_fwd_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel"):
        assert _ran(name, before), name
    assert not _ran("attn_fwd_mma_kernel", before)
    tol = {torch.float16: dict(rtol=2e-2, atol=2e-2), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}.get(dtype, {})
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), grads[EMU], grads["reference"]):
        assert_close(got, want, backend=EMU, name=name, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_decode_per_sequence_lengths(dtype):
    """decode_attention: sequence b holds cache_seqlens[b] keys; its Lq newest queries are the
    last positions (bottom-right causal). Lengths 0 (no key: output 0), 1, partial and full."""
    _require("decode_attention")
    b, h, hkv, lmax, d, lq = 4, 4, 2, 23, 40, 3
    q = _rand((b, h, lq, d), dtype, 4)
    kc, vc = _rand((b, hkv, lmax, d), dtype, 5), _rand((b, hkv, lmax, d), dtype, 6)
    lens = torch.tensor([0, 1, 11, lmax], dtype=torch.int32)
    before = launches()
    out = fastgen.ops.decode_attention(q, kc, vc, lens, backend=EMU)
    assert _ran("attn_fwd_kernel", before)
    ref = fastgen.ops.decode_attention(q, kc, vc, lens, backend="reference")
    assert_close(out, ref, backend=EMU)


@pytest.mark.parametrize("dtype,d", [(torch.float32, 32), (torch.float16, 64), (torch.bfloat16, 64)], ids=str)
def test_dropout_mask_bit_identical(dtype, d):
    """The Philox keep mask of both attention kernels (FMA for fp32, WMMA for fp16 / bf16 at 64)
    is exactly the reference's: with q = 0 every probability is 1/Lk, and v = identity makes
    out[i, j] = keep(i, j) / (Lk (1 - p)): nonzero exactly where (b, h, i, j) is kept."""
    _require()
    b, h, lq, lk, p, seed = 2, 3, 67, d, 0.4, 987654321
    q = torch.zeros(b, h, lq, d, dtype=dtype)
    k = torch.zeros(b, h, lk, d, dtype=dtype)
    v = torch.eye(lk, d, dtype=dtype).expand(b, h, lk, d).contiguous()
    out, _ = fastgen.ops.flash_attention(q, k, v, dropout_p=p, seed=seed, backend=EMU)
    keep = reference.attention_dropout_keep((b, h, lq, lk), p, torch.tensor([seed]), "cpu")
    assert torch.equal(out != 0, keep)


# -- race mode: every block_sum user, and the shared-memory kernels -----------------------------

def _block_sum_users():
    """(name, emu-vs-reference check) of every kernel that calls block_sum / block_max
    (csrc/cuda/reduce.cuh) and of the other kernels with shared memory."""
    ops = fastgen.ops
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731

    def fwd_bwd(fn, inputs, kwargs=None):
        kwargs = kwargs or {}
        res = {}
        for backend in (EMU, "reference"):
            xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
            outs = fn(*xs, **kwargs, backend=backend)
            outs = outs if isinstance(outs, tuple) else (outs,)
            outs = [o for o in outs if o.is_floating_point()]
            ws = [torch.randn(o.shape, generator=torch.Generator().manual_seed(7)) .to(o.dtype) for o in outs]
            torch.autograd.backward(outs, ws)
            res[backend] = [o.detach() for o in outs] + [x.grad for x in xs if x.grad is not None]
        for i, (a, e) in enumerate(zip(res[EMU], res["reference"])):
            assert_close(a, e, backend=EMU, name=f"{fn.__name__} result {i}")

    x4 = r(3, 5, 7, 9)
    return {
        # vae.cu: reparam_kl_forward_kernel (block_sum)
        "gaussian_reparam_kl": lambda: fwd_bwd(ops.gaussian_reparam_kl, [r(3, 9001), r(3, 9001), r(3, 9001)]),
        # flow.cu: coupling_forward_kernel, prior_terms_kernel (block_sum)
        "affine_coupling": lambda: fwd_bwd(ops.affine_coupling, [r(4, 300), r(4, 300), r(4, 300)]),
        "flow_nll": lambda: fwd_bwd(ops.flow_nll, [r(3, 2, 50), r(3)]),
        # flow.cu: actnorm_channel_sums_kernel (two block_sums back to back)
        "actnorm": lambda: fwd_bwd(ops.actnorm, [x4, r(5), r(5)]),
        # gan.cu: bias_act_backward_kernel's per-plane path (block_sum)
        "bias_act": lambda: fwd_bwd(ops.bias_act, [x4, r(5)]),
        # norm.cu: group_norm forward (block_sum + broadcast) and backward (two block_sums)
        "group_norm_silu": lambda: fwd_bwd(ops.group_norm_silu, [r(2, 6, 5, 7), r(6), r(6)], dict(num_groups=3)),
        # contrastive.cu: info_nce_lse_kernel (block_max, block_sum), info_nce_weights_kernel
        "info_nce_loss": lambda: fwd_bwd(ops.info_nce_loss, [r(37, 16), r(37, 16)]),
        # vq.cu: vq_nearest_kernel (shared tiles), vq_segment_kernel (shared partials)
        "vq": lambda: _vq_check(r),
        # attention_mma.cuh: dynamic shared memory, WMMA stores, __syncwarp
        "attention_mma": lambda: _mma_check(),
    }


def _vq_check(r):
    z, e = r(70, 19), r(65, 19)
    (idx_emu, dist_emu), (idx_ref, dist_ref) = (fastgen.ops.vq_nearest(z, e, backend=b) for b in (EMU, "reference"))
    assert torch.equal(idx_emu, idx_ref)
    assert_close(dist_emu, dist_ref, backend=EMU, name="vq_nearest distances")
    idx = torch.randint(0, 65, (70,), generator=torch.Generator().manual_seed(3))
    for a, b in zip(fastgen.ops.vq_code_sums(z, idx, 65, backend=EMU),
                    fastgen.ops.vq_code_sums(z, idx, 65, backend="reference")):
        assert_close(a.double(), b.double(), backend=EMU, name="vq_code_sums")


def _mma_check():
    q, k, v, opts = _attention_case(torch.float16, 64, causal=True, padded=True, dropout=0.1)
    out, lse = fastgen.ops.flash_attention(q, k, v, **opts, backend=EMU)
    ref_out, ref_lse = fastgen.ops.flash_attention(q, k, v, **opts, backend="reference")
    assert_close(out, ref_out, backend=EMU, name="mma out")
    assert_close(lse, ref_lse, backend=EMU, name="mma lse", rtol=1e-4, atol=1e-4)


USERS = ["gaussian_reparam_kl", "affine_coupling", "flow_nll", "actnorm", "bias_act", "group_norm_silu",
         "info_nce_loss", "vq", "attention_mma"]


@pytest.mark.parametrize("race", [False, True], ids=["plain", "race"])
@pytest.mark.parametrize("user", USERS)
def test_shared_memory_users(monkeypatch, user, race):
    """Every kernel with a block reduction or shared memory, forward and backward, against the
    reference; in race mode (FASTGEN_CUDA_EMU_RACE=1: thread order shuffled between barriers,
    shared memory NaN at block start) a missing barrier shows up here."""
    _require("gaussian_reparam_kl")
    if race:
        monkeypatch.setenv("FASTGEN_CUDA_EMU_RACE", "1")
        monkeypatch.setenv("FASTGEN_CUDA_EMU_SEED", "12345")
    _block_sum_users()[user]()


# -- coverage -------------------------------------------------------------------------------------

def kernels_in_source():
    """The __global__ functions of csrc/cuda/ (their names)."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu*")):
        src = open(path).read()
        for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(", src):
            names.add(m.group(1))
    return names


def test_every_cuda_kernel_runs():
    """Each of the 28 kernels of csrc/cuda/ executes under the model (a small call of every op
    with its backward, on the dtypes and paths that pick each kernel)."""
    _require("gaussian_reparam_kl")
    expected = kernels_in_source()
    assert len(expected) == 28, sorted(expected)
    ops = fastgen.ops
    for user in USERS:
        _block_sum_users()[user]()
    r = torch.randn
    # attention: FMA forward + backward, decode (the WMMA forward ran above)
    q = r(1, 2, 5, 8, requires_grad=True)
    out, lse = ops.flash_attention(q, q, q, backend=EMU)
    out.sum().backward()
    ops.decode_attention(r(1, 2, 1, 8), r(1, 2, 4, 8), r(1, 2, 4, 8), torch.tensor([3]), backend=EMU)
    # gan: bias_act forward + row-wise backward
    x = r(6, 5, requires_grad=True)
    ops.bias_act(x, r(5, requires_grad=True), backend=EMU).sum().backward()
    # flows: coupling backward, actnorm elementwise, prior grad: ran in the users above
    # vq: quantize (gather + straight-through, dz), EMA update
    z, e = r(9, 4, requires_grad=True), r(6, 4, requires_grad=True)
    zq, loss, idx = ops.vq_quantize(z, e, backend=EMU)
    (zq.sum() + loss).backward()
    ops.vq_ema_update(z.detach(), idx, torch.ones(6), r(6, 4), backend=EMU)
    # vq_nearest's certified search (codebook facts, WMMA candidates, re-rank): auto from D 32, K 1024
    ops.vq_nearest(r(3, 32), r(1024, 32), backend=EMU)
    # diffusion: add_noise / get_velocity (mix), DDPM / DDIM (denoise, in-kernel Philox noise), flow steps
    ac = torch.linspace(0.999, 0.98, 50).cumprod(0)
    s = r(2, 33)
    ops.add_noise(s, r(2, 33), torch.tensor([3, 7]), ac, backend=EMU)
    ops.get_velocity(s, r(2, 33), torch.tensor([3, 7]), ac, backend=EMU)
    ops.ddpm_step(s, s, 20, ac, ac, seed=5, backend=EMU)
    ops.ddim_step(s, s, 20, ac, ac, backend=EMU)
    sigmas = torch.linspace(1, 0, 11)
    ops.flow_euler_step(s, s, 3, sigmas, backend=EMU)
    ops.flow_heun_step(s, s, s, 3, sigmas, backend=EMU)
    ran = set(launches())
    missing = expected - ran
    assert not missing, f"kernels that never ran under the model: {sorted(missing)}"


def test_emu_backend_listed():
    """fastgen info lists cuda_emu per op; a CUDA tensor or a missing build says why."""
    status = fastgen.ops.REGISTRY["flash_attention"].status()
    assert "cuda_emu" in status
    live, note = status["cuda_emu"]
    assert live == (_ext.EMU is not None), note
    assert fastgen.ops.REGISTRY["flash_attention"].unavailable(EMU, "cuda") == \
        "the cuda_emu backend runs cpu tensors only"
