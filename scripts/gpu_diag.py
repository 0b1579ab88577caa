"""GPU diagnostics of 2026-12-04 (benchmarks/results/nvidia-h200-20261204b/diag.txt): which
bad-input case segfaults the CUDA entry points, alone and after which other case, through the
public op and the raw `_native` op, each in a fresh process; then the Triton flash_attention
dK/dV kernel at d=128 on candidate tiles: identical calls bit-identical or not, error against
the fp32 reference, and the backward's time at 4x16x1024x128.

    python scripts/gpu_diag.py           # on the GPU machine, after `pip install -e .`; $OUT/diag.txt
    DIAG_DEV=cpu python scripts/gpu_diag.py   # the bad-input part only, on CPU tensors
"""
import os, subprocess, sys, time
sys.path.insert(0, "tests")
import torch

OUT = os.environ.get("OUT", "/tmp")
lines = []
def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    lines.append(s)
    with open(os.path.join(OUT, "diag.txt"), "a") as f:
        f.write(s + "\n")

CASE = r'''
import sys, faulthandler
faulthandler.enable()
sys.path.insert(0, "tests")
import torch, fastgen
from test_op_contract import _bad_cases, _clone, _run, _arg_names
name, which, mode = sys.argv[1], [int(i) for i in sys.argv[2].split(",")], sys.argv[3]
import os
cases = _bad_cases(name, os.environ.get("DIAG_DEV", "cuda"))
for i in which:
    what, args, _ = cases[i]
    print("case", i, what, flush=True)
    try:
        if mode == "raw":
            op = getattr(torch.ops.fastgen, name + "_native")
            op(*_clone(args))
        elif mode == "rawfull":
            from fastgen.ops import REGISTRY
            r = REGISTRY[name]
            a = tuple(_clone(args)) + tuple(r.op.defaults[len(args):]) if hasattr(r.op, "defaults") else _clone(args)
            getattr(torch.ops.fastgen, name + "_native")(*a)
        else:
            _run(name, _clone(args), "cuda" if os.environ.get("DIAG_DEV", "cuda") == "cuda" else "cpu")
    except Exception as e:
        print("  raised", type(e).__name__, str(e)[:200], flush=True)
    else:
        print("  returned", flush=True)
torch.cuda.synchronize() if torch.cuda.is_available() else None
print("done")
'''

def sub(args, timeout=60):
    p = subprocess.run([sys.executable, "-c", CASE] + args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout.strip().splitlines(), p.stderr.strip().splitlines()

log("## bad-input crash")
from concurrent.futures import ThreadPoolExecutor
jobs = [(name, which, mode) for name in ["bias_act", "actnorm", "affine_coupling", "group_norm_silu"]
        for which, mode in [("0,1,2", "py"), ("2", "py"), ("0,2", "py"), ("1,2", "py"), ("2", "raw"), ("1,2", "raw"), ("0,2", "raw")]]
def one(j):
    try:
        return j, sub(list(j))
    except Exception as e:
        return j, (None, [repr(e)], [])
with ThreadPoolExecutor(14) as ex:
    for (name, which, mode), (rc, out, err) in ex.map(one, jobs):
        log(f"{name} cases {which} {mode}: rc={rc} | " + " / ".join(out[-4:]))
        if rc != 0:
            for l in err[-14:]:
                log("    err:", l)
import shutil
if shutil.which("gdb"):
    log("## gdb")
    p = subprocess.run(["gdb", "-batch", "-iex", "set auto-load safe-path /", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c", CASE, "bias_act", "0,1,2", "py"],
                       capture_output=True, text=True, timeout=120)
    for l in p.stdout.splitlines()[-40:]:
        log("   ", l)
else:
    log("no gdb")

if os.environ.get("DIAG_DEV", "cuda") != "cuda":
    sys.exit(0)
log("## flash attention dk/dv tiles, d=128")
import fastgen
from fastgen.ops import reference
from fastgen.kernels import attention as K
from test_ops_attention import _inputs, _padding
orig = K._TILES["dkdv", "mma"][128]
cands = [orig, (32, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2), (32, 64, 8, 1)]
shapes = [((3, 2, 2, 65, 65, 128), False, True), ((2, 4, 2, 130, 97, 128), True, True), ((1, 2, 1, 33, 200, 96), False, True)]
def grads(q, k, v, causal, kpm, backend, g_out):
    out, lse = fastgen.ops.flash_attention(q, k, v, causal, None, kpm, backend=backend)
    return torch.autograd.grad(out, (q, k, v), g_out)
for dt in (torch.float16, torch.bfloat16):
    refs = {}
    for shape, causal, pad in shapes:
        q, k, v = _inputs(shape, dt, "cuda")
        kpm = _padding(shape[0], shape[4], "cuda") if pad else None
        g_out = torch.randn(shape[:2] + (shape[3], shape[5]), generator=torch.Generator().manual_seed(1)).to("cuda", dt)
        q32, k32, v32 = [t.detach().float().requires_grad_() for t in (q, k, v)]
        refs[shape] = (q, k, v, kpm, g_out, grads(q32, k32, v32, causal, kpm, "reference", g_out.float()))
    for c in (cands if dt == torch.float16 else cands[:2]):
        K._TILES["dkdv", "mma"][128] = c
        res = []
        try:
            for shape, causal, pad in shapes:
                q, k, v, kpm, g_out, ref = refs[shape]
                runs = [grads(q, k, v, causal, kpm, "triton", g_out) for _ in range(4)]
                det = all(torch.equal(r[1], runs[0][1]) and torch.equal(r[2], runs[0][2]) for r in runs)
                err = max(float((a.float() - b).abs().max()) for a, b in zip(runs[0], ref))
                res.append(f"{'det' if det else 'NONDET'} {err:.3g}")
            # speed: a big case
            q, k, v = [torch.randn(4, 16, 1024, 128, device="cuda", dtype=dt, requires_grad=True) for _ in range(3)]
            out, lse = fastgen.ops.flash_attention(q, k, v, False, None, None, backend="triton")
            go = torch.randn_like(out)
            from triton.testing import do_bench
            ms = do_bench(lambda: torch.autograd.grad(out, (q, k, v), go, retain_graph=True), warmup=5, rep=40)
            res.append(f"bwd 4x16x1024x128 {ms:.3f} ms")
        except Exception as e:
            res.append(f"ERROR {type(e).__name__}: {str(e)[:150]}")
        log(str(dt), c, " | ".join(res))
K._TILES["dkdv", "mma"][128] = orig
log("diag done")
