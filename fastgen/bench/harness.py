"""Benchmark harness: providers checked against the reference, then timed side by side.

A `Case` names an op, its shapes and how to build inputs. Providers are `eager` (the plain-
PyTorch reference), `compile` (torch.compile of the reference), every fastgen backend that is
live on the device, and any peers the case adds (faiss, diffusers, SDPA, ...). Every provider's
result is checked against eager before it is timed; a mismatch (or an exception) is reported as
FAILED and the provider is not timed.
"""
import csv
import datetime
import functools
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

import fastgen
from fastgen import testing
from fastgen._info import device_name
from fastgen.kernels import _compat

MODES = ("fwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FASTGEN_BACKENDS = ("cpu", "triton", "cuda")
FIELDS = ["op", "mode", "provider", "shape", "dtype", "device", "time_ms", "speedup_vs_eager",
          "status", "error", "torch", "triton", "commit", "timestamp"]


@dataclass
class Case:
    """One op's benchmark.

    make_inputs(shape, dtype, device, requires_grad) -> dict of named tensors
    reference(**inputs) -> outputs (eager; also what `compile` compiles)
    fastgen(backend, **inputs) -> outputs
    grad_inputs: names of the inputs the fwd+bwd mode differentiates
    peers: {name: factory(device) -> callable(**inputs) -> outputs, or a str saying why not}
    check(actual, expected, dtype, what): raises AssertionError on a mismatch (default:
        fastgen.testing.assert_close on every output, and every gradient in fwd+bwd)
    registry_op: the registered op whose backends decide the fastgen providers, when the case
        benchmarks a composite built on it (default: `op`)
    gpu_shapes: shapes to run on CUDA instead of `shapes` (sizes only a GPU handles in time)
    """
    op: str
    shapes: list
    quick_shapes: list
    make_inputs: Callable
    reference: Callable
    fastgen: Callable
    grad_inputs: tuple = ()
    peers: dict = field(default_factory=dict)
    check: Callable = None
    modes: tuple = MODES
    registry_op: str = None
    gpu_shapes: list = None


CASES = {}


def register_case(case: Case) -> Case:
    CASES[case.op] = case
    return case


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _returning_tuple(fn):
    return lambda **inputs: _as_tuple(fn(**inputs))


def _default_check(actual, expected, dtype, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        testing.assert_close(a, e, dtype=dtype, name=f"{what}[{i}]")


def _compiled(fn):
    """torch.compile of `fn` for one shape. A fresh dynamo cache per shape keeps every graph
    static: otherwise the second shape triggers an automatic-dynamic recompile (slower, shape-
    generic kernels) and a case with many shapes runs into the recompile limit (eager fallback)."""
    torch.compiler.reset()
    return _returning_tuple(torch.compile(fn, dynamic=False))


def providers_for(case, device):
    """({name: callable(**inputs) -> tuple of outputs}, {name: why skipped}) for `device`.
    Call once per shape: it starts a fresh torch.compile of the reference."""
    live = {"eager": _returning_tuple(case.reference), "compile": _compiled(case.reference)}
    skipped = {}
    op = fastgen.ops.REGISTRY[case.registry_op or case.op]
    for backend in FASTGEN_BACKENDS:
        why = op.unavailable(backend, device)
        if why is None and backend == "triton" and device == "cpu":
            why = "Triton interpreter: correct but not meant to be timed"
        if why is None:
            live[f"fastgen-{backend}"] = _returning_tuple(functools.partial(case.fastgen, backend))
        else:
            skipped[f"fastgen-{backend}"] = why
    for name, factory in case.peers.items():
        fn = factory(device)
        if isinstance(fn, str):
            skipped[name] = fn
        else:
            live[name] = _returning_tuple(fn)
    return live, skipped


def provider_names(case):
    """Every provider name a case knows, live or not on this machine."""
    return {"eager", "compile", *(f"fastgen-{b}" for b in FASTGEN_BACKENDS), *case.peers}


def _step(fn, inputs, mode, grad_inputs, grad_outputs):
    """The work timed for one call: forward, or forward + gradients of the grad inputs."""
    if mode == "fwd":
        with torch.no_grad():
            return fn(**inputs)
    outputs = fn(**inputs)
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[n] for n in grad_inputs],
                                [g for _, g in pairs])
    return tuple(o.detach() for o in outputs) + tuple(grads)


def _fixed_grad_outputs(outputs, device):
    """One fixed random gradient per float output (None for index outputs)."""
    gen = torch.Generator(device).manual_seed(1)
    return tuple(torch.randn(o.shape, generator=gen, device=device, dtype=o.dtype)
                 if o.is_floating_point() else None for o in outputs)


def time_ms(fn, device, *, min_repeats=7, min_seconds=0.3, max_repeats=200):
    """Median milliseconds per call of `fn`. GPU: triton.testing.do_bench. CPU: three warm-up
    calls, then repeats until both `min_repeats` and `min_seconds` are reached (a median over
    ~0.3 s shrugs off a stray scheduler hiccup), capped at `max_repeats`."""
    if device == "cuda" and _compat.triton is not None:
        return float(_compat.triton.testing.do_bench(fn, return_mode="median"))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    times = []
    while len(times) < min_repeats or (sum(times) < min_seconds and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


@functools.lru_cache(maxsize=None)
def git_commit():
    """Short commit of the checkout fastgen runs from, or "unknown" (an installed wheel)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def run_case(case, *, device, dtype, quick, modes, provider_filter=None, progress=None):
    """Check, then time, every provider on every shape and mode of `case`. Returns result rows
    (one per provider, shape and mode; one per skipped provider). `provider_filter`: names to run
    besides eager (None: all live). `progress`: a tqdm bar, advanced once per provider run."""
    meta = {"op": case.op, "dtype": str(dtype).replace("torch.", ""), "device": device_name(device),
            "torch": torch.__version__, "triton": _compat.TRITON_VERSION or "none",
            "commit": git_commit(), "timestamp": datetime.datetime.now().isoformat(timespec="seconds")}
    case_modes = [m for m in case.modes if m in modes]
    rows, skipped = [], {}
    shapes = case.quick_shapes if quick else (case.gpu_shapes if device == "cuda" and case.gpu_shapes else
                                              case.shapes)
    for shape in shapes:
        live, skipped = providers_for(case, device)
        if provider_filter is not None:
            live = {k: v for k, v in live.items() if k == "eager" or k in provider_filter}
            skipped = {k: v for k, v in skipped.items() if k in provider_filter}
        if progress is not None:
            progress.total = (progress.total or 0) + len(case_modes) * len(live)
            progress.refresh()
        for mode in case_modes:
            rows += _run_shape_mode(case, live, shape, mode, device, dtype, meta, progress)
    for name, why in skipped.items():
        rows.append(dict(meta, mode="-", provider=name, shape="-", status="skipped", time_ms=None,
                         speedup_vs_eager=None, error=why))
    return rows


def _run_shape_mode(case, live, shape, mode, device, dtype, meta, progress):
    inputs = case.make_inputs(shape, dtype, device, requires_grad=(mode == "fwd+bwd"))
    grad_outputs = _fixed_grad_outputs(live["eager"](**inputs), device) if mode == "fwd+bwd" else ()
    expected = _step(live["eager"], inputs, mode, case.grad_inputs, grad_outputs)
    check = case.check or _default_check
    shape_name = "x".join(map(str, shape))
    rows, eager_ms = [], None
    for name, fn in live.items():  # eager first: it sets the speedup baseline
        if progress is not None:
            progress.set_postfix_str(f"{shape_name} {mode} {name}", refresh=True)
        call = functools.partial(_step, fn, inputs, mode, case.grad_inputs, grad_outputs)
        row = dict(meta, mode=mode, provider=name, shape=shape_name)
        try:
            check(call(), expected, dtype, f"{name} {mode}")  # also compiles `compile`
            ms = time_ms(call, device)
        except Exception as exc:  # a wrong result, or a provider that cannot run: not timed
            error = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
            row.update(status="FAILED", time_ms=None, speedup_vs_eager=None, error=error[:500])
        else:
            eager_ms = ms if name == "eager" else eager_ms
            row.update(status="ok", time_ms=ms, speedup_vs_eager=eager_ms / ms if eager_ms else None,
                       error="")
        rows.append(row)
        if progress is not None:
            progress.update(1)
    return rows


def format_table(rows):
    """A terminal table: time and speedup vs eager per provider; skipped and FAILED say why."""
    header = f"{'op':<22} {'mode':<8} {'shape':<14} {'provider':<16} {'ms':>10} {'vs eager':>9}  status"
    lines = [header, "-" * len(header)]
    for r in rows:
        ms = f"{r['time_ms']:.4f}" if r["time_ms"] is not None else "-"
        speedup = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] is not None else "-"
        note = r["status"] + (f" ({r['error'].splitlines()[0][:100]})" if r["error"] else "")
        lines.append(f"{r['op']:<22} {r['mode']:<8} {r['shape']:<14} {r['provider']:<16} "
                     f"{ms:>10} {speedup:>9}  {note}")
    return "\n".join(lines)


def write_results(rows, out):
    """Append rows to <out>/results.csv and <out>/results.jsonl, and draw <out>/<op>.png for
    each op in `rows`. Returns the paths written."""
    os.makedirs(out, exist_ok=True)
    csv_path, json_path = os.path.join(out, "results.csv"), os.path.join(out, "results.jsonl")
    new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    with open(json_path, "a") as f:
        for r in rows:
            f.write(json.dumps({k: r.get(k) for k in FIELDS}) + "\n")
    paths = [csv_path, json_path]
    for op in dict.fromkeys(r["op"] for r in rows):
        paths.append(plot_op([r for r in rows if r["op"] == op], os.path.join(out, f"{op}.png")))
    return paths


def plot_op(rows, path):
    """Grouped bars of one op: speedup vs eager per provider, one group per (shape, mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r["status"] == "ok"]
    speedup = {(r["shape"], r["mode"], r["provider"]): r["speedup_vs_eager"] for r in timed}
    groups = list(dict.fromkeys((r["shape"], r["mode"]) for r in timed))
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    width = 0.8 / max(1, len(providers))
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(groups) + 2), 4), dpi=100)
    for i, provider in enumerate(providers):
        values = [speedup.get(g + (provider,), 0) for g in groups]  # 0: FAILED in that group
        bars = ax.bar([k + i * width for k in range(len(groups))], values, width, label=provider)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))])
    ax.set_xticklabels([f"{shape}\n{mode}" for shape, mode in groups], fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    speedups = [r["speedup_vs_eager"] for r in timed if r["speedup_vs_eager"]]
    if speedups and max(speedups) / min(speedups) > 30:  # a few huge bars would flatten the rest
        ax.set_yscale("log")
    ax.set_ylabel("speedup vs eager (higher is better)")
    first = rows[0] if rows else {"op": "", "dtype": "", "device": ""}
    ax.set_title(f"{first['op']} [{first['dtype']}] on {first['device']}", fontsize=9)
    if providers:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
