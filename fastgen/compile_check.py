"""Compile every fastgen Triton kernel for real GPUs ahead of time, on a machine without one.

The Triton interpreter (how the test suite runs the kernels on CPU tensors) accepts things the
GPU does not: module globals inside `@jit` code, shared memory above the per-block limit, any
grid size. This module drives every Triton launcher with small CPU tensors in a sweep that
reaches each branch of its block-size choice, each autotune config and each dtype the op takes;
it intercepts each launch instead of running it, specializes it the way a CUDA launch would
(argument types, 16-byte alignment, constexprs) and compiles it with Triton's own compiler and
ptxas for the requested architectures. It checks and reports, per (kernel, config, dtype, arch):

  - compile errors;
  - shared memory against the arch's opt-in per-block limit;
  - registers, spill stores and stack frame per thread (ptxas -v);
  - the launch grid against CUDA's limits (axis 0 < 2**31, axes 1 and 2 <= 65535).

Spill budget (spill stores as ptxas -v reports them; a stack frame without spills is listed,
not counted): none at all in the fp16 / bf16 configs of the hot kernels (attention forward and
backward, decode, vq_nearest and vq_quantize, info_nce, group_norm, the diffusion steps); fp32 / fp64 configs
and the cold kernels may spill up to SPILL_BUDGET_COLD bytes per thread, and every spill is
listed in the table. Exceeding either fails the check.

Run it in a process where triton was imported without TRITON_INTERPRET=1:

    python -m fastgen.compile_check --arch 80 90 --out benchmarks/results/compile

Results: `triton_resources.csv` (one row per kernel, config, dtype and arch) and
`triton_resources.md` (the failures, the spills, the largest shared-memory users and the
compile time). Compiled kernels land in Triton's cache (~/.triton/cache), so a rerun only
compiles what changed.
"""
import argparse
import collections
import contextlib
import csv
import dataclasses
import hashlib
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from .kernels import _compat

# opt-in shared memory per block, bytes (CUDA programming guide, "Technical specifications")
SMEM_OPTIN = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
SPILL_BUDGET_COLD = 4096
HOT_KERNELS = ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel",
               "_decode_partial_kernel", "_vq_nearest_kernel", "_vq_candidates_kernel", "_vq_gather_st_kernel",
               "_vq_dz_kernel",
               "_info_nce_fwd_kernel",
               "_info_nce_bwd_kernel", "_gn_fwd_kernel", "_gn_bwd_kernel", "_denoise_step_kernel",
               "_mix_by_timestep_kernel", "_flow_step_kernel")


@dataclasses.dataclass
class Launch:
    fn: object          # the JITFunction
    args: tuple
    kwargs: dict
    grid: tuple
    case: str           # which sweep case made it

    @property
    def name(self):
        return self.fn.fn.__name__


# -- recording launches -------------------------------------------------------------------------

def _grid_of(fn, args, kwargs, grid):
    if callable(grid):
        meta = dict(zip(fn.arg_names, args))
        meta.update(kwargs)
        grid = grid(meta)
    grid = tuple(int(g) for g in grid)
    return grid + (1,) * (3 - len(grid))


@contextlib.contextmanager
def recording(sink, case_name=lambda: ""):
    """Within the block, Triton launches are appended to `sink` as `Launch`es instead of running
    (outputs of the launchers are garbage). Autotuned kernels record one launch per config.
    Works with the compiler (JITFunction) and under the interpreter (InterpretedFunction)."""
    from triton.runtime import autotuner, jit

    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    saved = [(cls, cls.run) for cls in classes] + [(autotuner.Autotuner, autotuner.Autotuner.run)]

    def run(self, *args, grid, warmup=False, **kwargs):
        fn = self if isinstance(self, jit.JITFunction) else getattr(self, "fn", self)
        sink.append(Launch(self, args, dict(kwargs), _grid_of(self, args, kwargs, grid), case_name()))

    def tuned_run(self, *args, grid, warmup=False, **kwargs):
        for config in self.configs:
            merged = dict(kwargs, **config.all_kwargs())
            self.fn.run(*args, grid=grid, warmup=warmup, **merged)

    for cls in classes:
        cls.run = run
    autotuner.Autotuner.run = tuned_run
    try:
        yield sink
    finally:
        for cls, original in saved:
            cls.run = original


# -- the sweep ---------------------------------------------------------------------------------

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOW = (torch.float16, torch.bfloat16)


def _r(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def _cases_vae():
    from .kernels import vae
    for dt in FLOATS:
        x = _r(3, 37, dtype=dt)
        yield f"gaussian_reparam_kl {dt}", lambda x=x: vae.gaussian_reparam_kl(x, x, x)
        yield (f"gaussian_reparam_kl_backward {dt}",
               lambda x=x: vae.gaussian_reparam_kl_backward(x, torch.ones(3, dtype=_compat.math_dtype(x.dtype)), x, x, x))


def _cases_flow():
    from .kernels import flow
    for dt in FLOATS:
        x = _r(2, 4, 5, 3, dtype=dt)
        g = torch.ones(2, dtype=_compat.math_dtype(dt))
        for fn_name in flow.SCALE_FNS:
            for inv in (False, True):
                yield (f"affine_coupling {fn_name} inv={inv} {dt}",
                       lambda x=x, f=fn_name, i=inv: flow.affine_coupling(x, x, x, f, 2.0, i))
                yield (f"affine_coupling_backward {fn_name} inv={inv} {dt}",
                       lambda x=x, f=fn_name, i=inv, g=g: flow.affine_coupling_backward(x, g, x, x, x, f, 2.0, i))
        p = torch.zeros(4, dtype=dt)
        for inv in (False, True):
            yield f"actnorm inv={inv} {dt}", lambda x=x, p=p, i=inv: flow.actnorm(x, p, p, i)
            yield (f"actnorm_backward inv={inv} {dt}",
                   lambda x=x, p=p, i=inv, g=g: flow.actnorm_backward(x, g, x, p, p, i))
        for c, hw in ((4, 5), (24, 16), (96, 64)):
            xc = _r(2, c, hw, hw, dtype=dt)
            eye = torch.eye(c, dtype=dt)
            zc = torch.zeros(c, dtype=dt)
            yield (f"invertible_conv1x1 C={c} {dt}",
                   lambda xc=xc, eye=eye, zc=zc: flow.invertible_conv1x1(xc, eye, eye, eye, zc + 1, zc))
        for prior in flow.PRIORS:
            yield f"flow_nll {prior} {dt}", lambda x=x, pr=prior, g=g: flow.flow_nll(x, g, pr)
            yield f"flow_nll_backward {prior} {dt}", lambda x=x, pr=prior, g=g: flow.flow_nll_backward(g, x, pr)


def _cases_gan():
    from .kernels import gan
    for dt in FLOATS:
        for act in gan.ACT_CODES:
            for shape in ((6, 5, 7), (4, 3000)):
                x = _r(*shape, dtype=dt)
                b = _r(shape[1], dtype=dt)
                yield f"bias_act {act} {shape} {dt}", lambda x=x, b=b, a=act: gan.bias_act(x, b, a)
                yield (f"bias_act_backward {act} {shape} {dt}",
                       lambda x=x, b=b, a=act: gan.bias_act_backward(x, x, b, a))
        yield f"bias_act nobias {dt}", lambda dt=dt: gan.bias_act(_r(4, 6, dtype=dt), None, "relu")
        yield (f"bias_act_backward nobias {dt}",
               lambda dt=dt: gan.bias_act_backward(_r(4, 6, dtype=dt), _r(4, 6, dtype=dt), None, "relu"))


def _cases_norm():
    from .kernels import norm
    for dt in FLOATS:
        for shape, groups in (((2, 8, 5, 5), 4), ((2, 64, 32, 32), 32), ((2, 4, 3), 2), ((2, 6, 1), 6)):
            x = _r(*shape, dtype=dt)
            w = torch.ones(shape[1], dtype=dt)
            for affine in (True, False):
                wb = w if affine else None
                yield (f"group_norm_silu {shape} affine={affine} {dt}",
                       lambda x=x, wb=wb, g=groups: norm.group_norm_silu(x, wb, wb, g))
                mt = _compat.math_dtype(dt)
                mean = torch.zeros(shape[0], groups, dtype=mt)
                yield (f"group_norm_silu_backward {shape} affine={affine} {dt}",
                       lambda x=x, wb=wb, g=groups, m=mean: norm.group_norm_silu_backward(x, x, wb, wb, m, m + 1, g))


def _cases_contrastive():
    from .kernels import contrastive
    for dt in FLOATS:
        for d in (16, 128, 200):
            z = _r(5, d, dtype=dt)
            yield f"info_nce_loss D={d} {dt}", lambda z=z: contrastive.info_nce_loss(z, z, 0.1)
            yield (f"info_nce_loss_backward D={d} {dt}",
                   lambda z=z: contrastive.info_nce_loss_backward(torch.ones(()), z, z, torch.zeros(10), 0.1))


def _cases_vq():
    from .kernels import vq
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        for d in (8, 64, 100, 200):
            z = _r(7, d, dtype=dt)
            e = _r(11, d, dtype=dt)
            yield f"vq_nearest D={d} {dt}", lambda z=z, e=e: vq.vq_nearest(z, e)
            yield f"vq_nearest cosine D={d} {dt}", lambda z=z, e=e: vq.vq_nearest(z, e, "cosine")
            if dt == torch.float32:  # the certified two-stage search (fp32 at K >= 4096)
                yield (f"vq_nearest certified D={d} {dt}",
                       lambda z=z, e=e: vq.vq_nearest_certified(*vq._prepare(z, e, "l2")))
            idx = torch.arange(7) % 11
            yield f"vq_quantize D={d} {dt}", lambda z=z, e=e: vq.vq_quantize(z, e)
            yield (f"vq_quantize_backward D={d} {dt}",
                   lambda z=z, e=e, i=idx: vq.vq_quantize_backward(z, torch.ones(()), z, e, i))
            yield (f"vq_ema_update D={d} {dt}",
                   lambda z=z, i=idx, d=d: vq.vq_ema_update(z, i, torch.ones(11), torch.zeros(11, d)))


def _cases_diffusion():
    from .kernels import diffusion
    table = torch.linspace(0.99, 0.01, 50, dtype=torch.float64)
    empty = torch.empty(0)
    for dt in FLOATS:
        x = _r(2, 3, 4, 4, dtype=dt)
        ts = torch.tensor([3, 7])
        for vel in (False, True):
            yield f"mix velocity={vel} {dt}", lambda x=x, v=vel: diffusion._mix(x, x, ts, table, v)
        for t in (torch.tensor(5), torch.tensor(5, device="meta")):  # host index / device pointer
            for ddpm in (False, True):
                for pred in diffusion.PRED:
                    for extras in (False, True):
                        kw = dict(threshold=torch.tensor([0.9]) if extras else empty,
                                  uncond=x if extras else empty, guidance_scale=2.0 if extras else 1.0,
                                  eta=0.5 if extras else 0.0, clip=extras,
                                  seed=torch.tensor(3) if extras else None)
                        yield (f"{'ddpm' if ddpm else 'ddim'}_step pred={pred} extras={extras} t={t.device} {dt}",
                               lambda x=x, t=t, d=ddpm, p=pred, kw=kw: diffusion._denoise_step(
                                   d, x, x, x if not kw["seed"] else empty, t, table, table, kw["threshold"],
                                   kw["uncond"], kw["guidance_scale"], kw["eta"], p,
                                   "fixed_small_log" if kw["clip"] else "fixed_small", kw["clip"], 1.0,
                                   kw["clip"], kw["seed"]))
            sig = torch.linspace(1, 0, 11, dtype=torch.float64)
            yield (f"flow_euler_step t={t.device} {dt}",
                   lambda x=x, t=t, s=sig: diffusion.flow_euler_step(x, x, None, t, s, None))
            yield (f"flow_euler_step guided stochastic t={t.device} {dt}",
                   lambda x=x, t=t, s=sig: diffusion.flow_euler_step(x, x, x, t, s, x, 3.0))
            yield (f"flow_heun_step t={t.device} {dt}",
                   lambda x=x, t=t, s=sig: diffusion.flow_heun_step(x, x, x, t, s))


def _cases_attention():
    from .kernels import attention
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        for d in (32, 64, 128, 256):
            q = _r(2, 2, 33, d, dtype=dt)
            kv = _r(2, 1, 40, d, dtype=dt)
            out = torch.zeros_like(q)
            lse = torch.zeros(2, 2, 33)
            kpm = torch.zeros(2, 40, dtype=torch.bool)
            seed = torch.tensor([7], dtype=torch.int64)
            for causal, mask, p in ((False, None, 0.0), (True, kpm, 0.1)):
                yield (f"flash_attention D={d} causal={causal} {dt}",
                       lambda q=q, kv=kv, c=causal, m=mask, p=p, s=seed: attention.flash_attention(
                           q, kv, kv, c, None, m, p, s))
                yield (f"flash_attention_backward D={d} causal={causal} {dt}",
                       lambda q=q, kv=kv, o=out, l=lse, c=causal, m=mask, p=p, s=seed:
                       attention.flash_attention_backward(o, torch.zeros_like(l), q, kv, kv, o, l, c, None, m, p, s))
            for lq in (1, 4, 128):
                qd = _r(2, 2, lq, d, dtype=dt)
                cache = _r(2, 1, 300, d, dtype=dt)
                yield (f"decode_attention Lq={lq} D={d} {dt}",
                       lambda qd=qd, c=cache: attention.decode_attention(qd, c, c, torch.tensor([300, 17])))


FAMILIES = {"vae": _cases_vae, "flow": _cases_flow, "gan": _cases_gan, "norm": _cases_norm,
            "contrastive": _cases_contrastive, "vq": _cases_vq, "diffusion": _cases_diffusion,
            "attention": _cases_attention}


def record_all(families=None, arch=90, pattern=None):
    """Run every sweep case (whose "family: case" name matches the regex `pattern`, if given)
    for `arch` (launchers size their blocks for it) and return the launches."""
    launches, current = [], [""]
    with _compat.target_capability((arch // 10, arch % 10)), recording(launches, lambda: current[0]):
        for fam in families or FAMILIES:
            for name, call in FAMILIES[fam]():
                current[0] = f"{fam}: {name}"
                if pattern is None or re.search(pattern, current[0]):
                    call()
    return launches


# -- compiling ---------------------------------------------------------------------------------

def _cuobjdump():
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else "cuobjdump"


def _ptxas_spills(log):
    """(spill-store bytes, stack-frame bytes) from a `ptxas -v` log."""
    spill = sum(int(v) for v in re.findall(r"(\d+) bytes spill stores", log))
    stack = max([int(v) for v in re.findall(r"(\d+) bytes stack frame", log)] or [0])
    return spill, stack


def _resources(cubin):
    """(registers, local bytes, stack bytes) of the one function in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)
    if m is None:
        return None, None, None
    return int(m.group(1)), int(m.group(3)), int(m.group(2))


def _specialize(launch, arch):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = launch.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    bound, spec, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
    return target, options, signature, constexprs, attrs


def _dtype_of(signature):
    for v in signature.values():
        if isinstance(v, str) and v.startswith("*") and v[1:] in ("fp16", "bf16", "fp32", "fp64"):
            return v[1:]
    return "-"


def _config_str(fn, constexprs, options):
    names = fn.arg_names
    parts = [f"{names[k[0]]}={v}" for k, v in sorted(constexprs.items()) if v is not None]
    parts.append(f"warps={options.num_warps}")
    parts.append(f"stages={options.num_stages}")
    return " ".join(parts)


@dataclasses.dataclass
class Result:
    kernel: str
    config: str
    dtype: str
    arch: int
    grid: tuple
    case: str
    registers: int = None
    spill_bytes: int = None
    stack_bytes: int = None
    shared_bytes: int = None
    seconds: float = 0.0
    error: str = ""
    key: str = ""
    cached: bool = False

    @property
    def hot(self):
        return self.kernel in HOT_KERNELS

    def problems(self):
        out = []
        if self.error:
            out.append(f"compile error: {self.error}")
            return out
        limit = SMEM_OPTIN.get(self.arch)
        if limit is not None and self.shared_bytes > limit:
            out.append(f"shared memory {self.shared_bytes} B > {limit} B (sm_{self.arch} opt-in limit)")
        for axis, (g, most) in enumerate(zip(self.grid, MAX_GRID)):
            if g > most:
                out.append(f"grid axis {axis} = {g} > {most}")
        if self.spill_bytes:
            budget = 0 if (self.hot and self.dtype in ("fp16", "bf16")) else SPILL_BUDGET_COLD
            if self.spill_bytes > budget:
                out.append(f"spills {self.spill_bytes} B/thread > budget {budget}")
        return out


def compile_key(launch, arch, signature, constexprs, attrs, options):
    """What determines the binary: the kernel's source and its @jit dependencies (Triton's own
    cache key), the specialization, the options, the arch and the Triton version."""
    import triton
    text = repr((launch.fn.cache_key, sorted(signature.items()), sorted(constexprs.items()),
                 sorted(attrs.items()), _portable_options(options), arch, triton.__version__))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _portable_options(options):
    """The compile options without this machine's paths: `extern_libs` names libdevice by its
    path inside the environment's site-packages, which differs per clone and venv (a clean CI
    clone would miss every key). The library itself comes with the Triton version, in the key."""
    out = []
    for name, value in sorted(options.__dict__.items()):
        if name == "extern_libs" and value:
            value = tuple((lib, os.path.basename(path)) for lib, path in value)
        out.append((name, value))
    return out


def load_cache(path):
    """{key: row} from an earlier table: the same key is the same binary, so its numbers hold."""
    if not path or not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {row["key"]: row for row in csv.DictReader(f) if row.get("key")}


def _int_or_none(v):
    return None if v in ("", "None", None) else int(v)


def compile_all(archs=(80, 90), families=None, progress=True, pattern=None, cache=None):
    """Record the sweep for each arch and compile each distinct launch; a list of Results.
    `cache` ({key: row} from load_cache) supplies the numbers of binaries compiled before."""
    import io

    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    cache = cache or {}
    results = []
    # ptxas must run for its -v log (spill stores): a private Triton cache, and the log printed
    knobs.cache.dir = tempfile.mkdtemp(prefix="fastgen-compile-check-")
    knobs.nvidia.dump_ptxas_log = True
    for arch in archs:
        launches = record_all(families, arch, pattern)
        seen = {}
        for launch in launches:
            try:
                target, options, signature, constexprs, attrs = _specialize(launch, arch)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                results.append(Result(launch.name, "?", "?", arch, launch.grid, launch.case,
                                      error=f"specialization: {type(exc).__name__}: {exc}"))
                continue
            key = (id(launch.fn), repr(sorted(signature.items())), repr(sorted(constexprs.items())),
                   repr(sorted(attrs.items())), repr(sorted(options.__dict__.items())))
            if key in seen:  # same binary: keep the largest grid for the limit check
                r = seen[key]
                r.grid = tuple(max(a, b) for a, b in zip(r.grid, launch.grid))
                continue
            r = Result(launch.name, _config_str(launch.fn, constexprs, options), _dtype_of(signature), arch,
                       launch.grid, launch.case, key=compile_key(launch, arch, signature, constexprs, attrs, options))
            seen[key] = r
            results.append(r)
            row = cache.get(r.key)
            if row is not None and not row.get("error"):
                r.registers, r.spill_bytes, r.stack_bytes, r.shared_bytes = (
                    _int_or_none(row[k]) for k in ("registers", "spill_bytes", "stack_bytes", "shared_bytes"))
                r.cached = True
                continue
            t0 = time.perf_counter()
            try:
                log = io.StringIO()
                with contextlib.redirect_stdout(log):
                    ck = triton.compile(ASTSource(launch.fn, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
                r.shared_bytes = int(ck.metadata.shared)
                r.registers, local, _ = _resources(ck.asm["cubin"])
                r.spill_bytes, r.stack_bytes = _ptxas_spills(log.getvalue())
                r.spill_bytes += local or 0
            except Exception as exc:  # noqa: BLE001
                r.error = _error_summary(exc)
            r.seconds = time.perf_counter() - t0
            if progress:
                flag = "FAIL" if r.problems() else "ok"
                print(f"[sm_{arch}] {flag:4s} {r.kernel} {r.dtype} {r.config} "
                      f"regs={r.registers} spill={r.spill_bytes} stack={r.stack_bytes} smem={r.shared_bytes} "
                      f"({r.seconds:.1f}s)",
                      flush=True)
    return results


def _error_summary(exc):
    """One line for the table: Triton's CompilationError puts the position on its first line and
    the source excerpt after it; the reason is its last line or the chained cause."""
    lines = [l.strip() for l in str(exc).strip().splitlines() if l.strip() and set(l.strip()) != {"^"}]
    parts = [f"{type(exc).__name__}: {lines[0] if lines else ''}"]
    if len(lines) > 1:
        parts.append(lines[-1])
    root = exc
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    if root is not exc:
        why = [l.strip() for l in str(root).strip().splitlines() if l.strip() and set(l.strip()) != {"^"}]
        parts.append(f"{type(root).__name__}: {why[-1] if why else ''}")
    return " ".join(parts)[:400]


def source_hash():
    """Hash of the kernel sources: the table says which code it describes."""
    h = hashlib.sha256()
    root = os.path.dirname(_compat.__file__)
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()[:12]


FIELDS = ("kernel", "config", "dtype", "arch", "registers", "spill_bytes", "stack_bytes", "shared_bytes", "grid",
          "problems", "case", "key", "error")


def write_table(results, out_dir):
    import triton
    os.makedirs(out_dir, exist_ok=True)
    rows = sorted(results, key=lambda r: (r.kernel, r.dtype, r.config, r.arch))
    with open(os.path.join(out_dir, "triton_resources.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in rows:
            w.writerow([r.kernel, r.config, r.dtype, r.arch, r.registers, r.spill_bytes, r.stack_bytes, r.shared_bytes,
                        "x".join(map(str, r.grid)), "; ".join(r.problems()), r.case, r.key, r.error])
    bad = [r for r in rows if r.problems()]
    spills = [r for r in rows if r.spill_bytes]
    lines = [
        "# Triton kernels compiled ahead of time",
        "",
        f"triton {triton.__version__}, torch {torch.__version__}, kernel sources {source_hash()}; "
        f"archs {sorted({r.arch for r in rows})}; {len(rows)} compiles "
        f"({len({(r.kernel, r.config, r.dtype) for r in rows})} distinct kernel configs), "
        f"{sum(r.seconds for r in rows):.0f} s of compile time "
        f"({sum(r.cached for r in rows)} taken from the previous table by key).",
        "Made by `python -m fastgen.compile_check` (see its docstring for the budget).",
        "",
        f"## Problems: {len(bad)}",
        "",
    ]
    lines += [f"- sm_{r.arch} {r.kernel} {r.dtype} `{r.config}`: {'; '.join(r.problems())}" for r in bad]
    lines += ["", f"## Configs that spill: {len(spills)}", ""]
    lines += [f"- sm_{r.arch} {r.kernel} {r.dtype} `{r.config}`: {r.spill_bytes} B/thread, {r.registers} regs"
              for r in spills]
    lines += ["", "## Largest shared memory per kernel (bytes)", "", "| kernel | sm_80 | sm_90 | max regs |",
              "|---|---|---|---|"]
    per = collections.defaultdict(lambda: {})
    regs = collections.defaultdict(int)
    for r in rows:
        if r.shared_bytes is not None:
            per[r.kernel][r.arch] = max(per[r.kernel].get(r.arch, 0), r.shared_bytes)
            regs[r.kernel] = max(regs[r.kernel], r.registers or 0)
    for k in sorted(per):
        lines.append(f"| {k} | {per[k].get(80, '-')} | {per[k].get(90, '-')} | {regs[k]} |")
    with open(os.path.join(out_dir, "triton_resources.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    p.add_argument("--family", nargs="+", choices=sorted(FAMILIES))
    p.add_argument("--out", default=None, help="where the table goes (default, for a full run: "
                   "benchmarks/results/compile; a --family / --filter run must name one)")
    p.add_argument("--filter", help="regex on the sweep's case names, e.g. 'D=128 .*float16'")
    p.add_argument("--cache", default=None,
                   help="an earlier triton_resources.csv whose rows are reused by key "
                        "(default: the one in --out; --cache '' compiles everything)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.out is None:
        if a.family or a.filter:
            p.error("a partial run (--family / --filter) needs --out: it would replace the full table")
        a.out = "benchmarks/results/compile"
    if _compat.INTERPRET:
        sys.exit("fastgen.compile_check: run it without TRITON_INTERPRET=1 (it compiles for real GPUs)")
    if _compat.triton is None:
        sys.exit(f"fastgen.compile_check: {_compat.TRITON_ERROR}")
    t0 = time.perf_counter()
    cache = load_cache(os.path.join(a.out, "triton_resources.csv") if a.cache is None else a.cache)
    results = compile_all(a.arch, a.family, progress=not a.quiet, pattern=a.filter, cache=cache)
    bad = write_table(results, a.out)
    fresh = sum(not r.cached for r in results)
    print(f"{len(results)} kernel configs ({fresh} compiled now, {len(results) - fresh} known by key) "
          f"in {time.perf_counter() - t0:.0f} s; {len(bad)} with problems; table in {a.out}/triton_resources.md")
    for r in bad:
        print(f"  sm_{r.arch} {r.kernel} {r.dtype} {r.config}: {'; '.join(r.problems())}  [{r.case}]")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
