"""Benchmark harness: providers checked against the reference, then timed side by side.

A `Case` names an op, its shapes and how to build inputs. Providers are `eager` (the plain-
PyTorch reference), `compile` (torch.compile of the reference), every fastgen backend that is
live on the device, and any peers the case adds (faiss, diffusers, SDPA, ...). Every provider's
result is checked against eager before it is timed; a mismatch is reported as FAILED.
"""
import csv
import datetime
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


@dataclass
class Case:
    """One op's benchmark.

    make_inputs(shape, dtype, device, requires_grad) -> dict of named tensors
    reference(**inputs) -> tuple of outputs (eager; also compiled for `compile`)
    fastgen(backend, **inputs) -> tuple of outputs
    grad_inputs: names of the inputs the fwd+bwd mode differentiates
    peers: {name: factory(device) -> callable(**inputs) -> outputs, or a str saying why not}
    check(actual, expected, dtype, what): raises AssertionError on a mismatch
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


CASES = {}


def register_case(case: Case) -> Case:
    CASES[case.op] = case
    return case


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _default_check(actual, expected, dtype, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        testing.assert_close(a, e, dtype=dtype, name=f"{what}[{i}]")


def providers_for(case, device):
    """{name: callable(**inputs) -> outputs or None}, and {name: why skipped}."""
    live, skipped = {"eager": lambda **kw: _as_tuple(case.reference(**kw))}, {}
    compiled = torch.compile(case.reference)
    live["compile"] = lambda **kw: _as_tuple(compiled(**kw))
    op = fastgen.ops.REGISTRY[case.op]
    for backend in FASTGEN_BACKENDS:
        why = op.unavailable(backend, device)
        if why is None and backend == "triton" and device == "cpu":
            why = "Triton interpreter: correct but not meant to be timed"
        if why is None:
            live[f"fastgen-{backend}"] = (lambda b: lambda **kw: _as_tuple(case.fastgen(b, **kw)))(backend)
        else:
            skipped[f"fastgen-{backend}"] = why
    for name, factory in case.peers.items():
        fn = factory(device)
        if isinstance(fn, str):
            skipped[name] = fn
        else:
            live[name] = (lambda f: lambda **kw: _as_tuple(f(**kw)))(fn)
    return live, skipped


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


def time_ms(fn, device):
    """Median milliseconds per call: triton.testing.do_bench on GPU; on CPU a warmed-up median
    of repeats covering at least ~0.3 s."""
    if device == "cuda" and _compat.triton is not None:
        return float(_compat.triton.testing.do_bench(fn, return_mode="median"))
    for _ in range(3):
        fn()
    times, spent = [], 0.0
    while len(times) < 7 or (spent < 0.3 and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return statistics.median(times) * 1e3


def git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_case(case, *, device, dtype, quick, modes, provider_filter=None, progress=None):
    """Check and time every provider on every shape and mode. Returns result rows."""
    live, skipped = providers_for(case, device)
    if provider_filter:
        live = {k: v for k, v in live.items() if k in provider_filter or k == "eager"}
    rows = []
    meta = {"op": case.op, "dtype": str(dtype).replace("torch.", ""), "device": device_name(device),
            "torch": torch.__version__, "triton": _compat.TRITON_VERSION or "none",
            "commit": git_commit(), "timestamp": datetime.datetime.now().isoformat(timespec="seconds")}
    for shape in (case.quick_shapes if quick else case.shapes):
        for mode in (m for m in case.modes if m in modes):
            inputs = case.make_inputs(shape, dtype, device, requires_grad=(mode == "fwd+bwd"))
            grad_outputs = ()
            if mode == "fwd+bwd":  # fixed random output gradients, one per float output
                gen = torch.Generator(device).manual_seed(1)
                grad_outputs = tuple(torch.randn(o.shape, generator=gen, device=device, dtype=o.dtype)
                                     if o.is_floating_point() else None for o in live["eager"](**inputs))
            expected = _step(live["eager"], inputs, mode, case.grad_inputs, grad_outputs)
            eager_ms = None
            for name, fn in live.items():
                call = (lambda f: lambda: _step(f, inputs, mode, case.grad_inputs, grad_outputs))(fn)
                row = dict(meta, mode=mode, provider=name, shape="x".join(map(str, shape)))
                try:
                    (case.check or _default_check)(call(), expected, dtype, f"{name} {mode}")
                except AssertionError as exc:
                    row.update(status="FAILED", time_ms=None, speedup_vs_eager=None, error=str(exc)[:500])
                else:
                    ms = time_ms(call, device)
                    if name == "eager":
                        eager_ms = ms
                    row.update(status="ok", time_ms=ms,
                               speedup_vs_eager=(eager_ms / ms) if eager_ms else None, error="")
                rows.append(row)
                if progress is not None:
                    progress.update(1)
    for name, why in skipped.items():
        rows.append(dict(meta, mode="-", provider=name, shape="-", status="skipped", time_ms=None,
                         speedup_vs_eager=None, error=why))
    return rows


def format_table(rows):
    lines = []
    header = f"{'op':<22} {'mode':<8} {'shape':<14} {'provider':<16} {'ms':>10} {'vs eager':>9}  status"
    lines.append(header)
    lines.append("-" * len(header))
    for r in rows:
        ms = f"{r['time_ms']:.4f}" if r["time_ms"] is not None else "-"
        sp = f"{r['speedup_vs_eager']:.2f}x" if r["speedup_vs_eager"] is not None else "-"
        note = r["status"] + (f" ({r['error'].splitlines()[0][:80]})" if r["error"] else "")
        lines.append(f"{r['op']:<22} {r['mode']:<8} {r['shape']:<14} {r['provider']:<16} {ms:>10} {sp:>9}  {note}")
    return "\n".join(lines)


FIELDS = ["op", "mode", "provider", "shape", "dtype", "device", "time_ms", "speedup_vs_eager",
          "status", "error", "torch", "triton", "commit", "timestamp"]


def write_results(rows, out):
    """Append rows to <out>/results.csv and results.jsonl; one PNG per op. Returns the paths."""
    os.makedirs(out, exist_ok=True)
    csv_path, json_path = os.path.join(out, "results.csv"), os.path.join(out, "results.jsonl")
    new = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)
    with open(json_path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    paths = [csv_path, json_path]
    for op in sorted({r["op"] for r in rows}):
        paths.append(plot_op([r for r in rows if r["op"] == op], os.path.join(out, f"{op}.png")))
    return paths


def plot_op(rows, path):
    """Grouped bars: speedup vs eager per provider, one group per (shape, mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r["status"] == "ok"]
    groups = list(dict.fromkeys((r["shape"], r["mode"]) for r in timed))
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    width = 0.8 / max(1, len(providers))
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(groups) + 2), 4), dpi=100)
    for i, p in enumerate(providers):
        vals = [next((r["speedup_vs_eager"] for r in timed if (r["shape"], r["mode"]) == g
                      and r["provider"] == p), 0) for g in groups]
        bars = ax.bar([k + i * width for k in range(len(groups))], vals, width, label=p)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))])
    ax.set_xticklabels([f"{s}\n{m}" for s, m in groups], fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_ylabel("speedup vs eager (higher is better)")
    dev = rows[0]["device"] if rows else ""
    ax.set_title(f"{rows[0]['op'] if rows else ''} [{rows[0]['dtype'] if rows else ''}] on {dev}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
