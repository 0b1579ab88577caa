"""What the first GPU run failed and the CPU cannot reproduce (H200, torch 2.11, Triton 3.6;
benchmarks/results/nvidia-h200-20261204/README.md), set up so the next GPU run says more:

- the CUDA actnorm bad-input test killed its xdist worker with a segfault. Here each op's bad
  input cases run in a process of their own, printing each case before calling it, so a crash
  names the case instead of only the worker;
- Triton's flash_attention backward gave a wrong dk in one fp16 head-dim-128 case with key
  padding, at the GPU tiles, while the interpreter gets the same case right at the same tiles.
  Here that case runs several times (a race gives different dk on identical calls, a miscompile
  the same wrong one), and at 4 and 8 warps for the dk/dv kernel.
"""
import os
import subprocess
import sys

import pytest
import torch

import fastgen
from fastgen.ops import REGISTRY

from conftest import require_backend
from test_ops_attention import _compare, _inputs, _padding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BAD_INPUTS = r"""
import sys
sys.path.insert(0, "tests")
import torch
from test_op_contract import _bad_cases, _clone, _run
name, backend = sys.argv[1], sys.argv[2]
for what, args, _ in _bad_cases(name, "cuda"):
    print("case:", what, flush=True)
    try:
        _run(name, _clone(args), backend)
    except (TypeError, ValueError) as e:
        print("  raised", type(e).__name__ + ":", str(e)[:160], flush=True)
    else:
        print("  returned without an error", flush=True)
torch.cuda.synchronize()
print("all cases ran")
"""


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if op.native_qualname))
def test_cuda_bad_inputs_in_their_own_process(name):
    """The process survives every bad-input case of the op on the CUDA backend (the contract
    suite checks the messages; this names the case that crashes, if one does)."""
    require_backend(name, "cuda", "cuda")
    proc = subprocess.run([sys.executable, "-c", _BAD_INPUTS, name, "cuda"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "all cases ran" in proc.stdout, (
        f"exit {proc.returncode} (a negative one is the signal)\n{proc.stdout}\n{proc.stderr[-2000:]}")


@pytest.mark.gpu
@pytest.mark.parametrize("warps", [4, 8])
def test_triton_attention_backward_fp16_d128_keypad(monkeypatch, warps):
    require_backend("flash_attention", "cuda", "triton")
    from fastgen.kernels import attention as kernels
    bm, bn, _, stages = kernels._TILES["dkdv", "mma"][128]
    monkeypatch.setitem(kernels._TILES[("dkdv", "mma")], 128, (bm, bn, warps, stages))
    shape = (3, 2, 2, 65, 65, 128)
    q, k, v = _inputs(shape, torch.float16, "cuda")
    kpm = _padding(shape[0], shape[4], "cuda")
    g = torch.Generator().manual_seed(1)
    g_out = torch.randn(shape[:2] + (shape[3], shape[5]), generator=g).to("cuda", torch.float16)
    dks = []
    for _ in range(5):
        out, lse = fastgen.ops.flash_attention(q, k, v, False, None, kpm, backend="triton")
        dks.append(torch.autograd.grad(out, k, g_out)[0])
    differ = [i for i, dk in enumerate(dks) if not torch.equal(dk, dks[0])]
    assert not differ, f"dk differs between identical calls {differ}: a race in the dk/dv kernel"
    _compare("cuda", "triton", torch.float16, q, k, v, False, kpm)
