"""Benchmark harness: providers checked against the reference, then timed side by side.

A `Case` names an op, its shapes and how to build inputs. Providers are `eager` (the plain-
PyTorch reference), `compile` (torch.compile of the reference), every fastgen backend that is
live on the device, and any peers the case adds (faiss, diffusers, SDPA, ...). Every provider's
result is checked against eager before it is timed; a mismatch (or an exception) is reported as
FAILED and the provider is not timed.

The providers of one (shape, mode) are timed as a group, round-robin (fastgen/bench/timing.py),
so they share whatever noise the machine has. Each row carries its median, quartiles and IQR,
the share of the CPU other processes took while the group ran, and flags:
  noisy       the IQR is above NOISY_IQR_PCT of the median, or other processes used more than
              machine.OTHERS_BUSY_THRESHOLD of the CPU during the group;
  incoherent  fwd+bwd faster than fwd (beyond both spreads), or a provider more than
              `Case.max_ratio` (default 100x) slower than the fastest provider of its group.
Flagged rows keep their numbers in the CSV/JSONL, but the table shows no speedup for them.
"""
import contextlib
import csv
import datetime
import functools
import json
import logging
import math
import os
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

import fastgen
from fastgen import testing
from fastgen._info import device_name
from fastgen.kernels import _compat

from . import machine, timing
from .rows import trusted

MODES = ("fwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FASTGEN_BACKENDS = ("cpu", "triton", "cuda")
FIELDS = ["op", "mode", "provider", "shape", "dtype", "device", "time_ms", "q25_ms", "q75_ms", "iqr_pct",
          "samples", "calls_per_sample", "timer", "speedup_vs_eager", "speedup_lo", "speedup_hi",
          "noisy", "flags", "others_cpu_pct", "load_avg", "threads", "gb_per_s", "gflop_per_s",
          "pct_roofline", "status", "error", "note", "check_s", "timing_s", "torch", "triton", "commit", "timestamp", "run_id"]
# A row whose interquartile range is above this percentage of its median is `noisy`: torch's
# own Measurement warns at the same point (IQR > 10% of the median). A steady measurement of
# blocks of ~10 ms stays well under it; a disturbed one (a preempted OpenMP thread, a stray
# compile worker) spreads its blocks over tens of percent.
NOISY_IQR_PCT = 10.0
# A provider this many times slower than the fastest provider of its group is incoherent, unless
# the case says the gap is real (Case.max_ratio, with a reason).
MAX_RATIO = 100.0


@dataclass
class Case:
    """One op's benchmark.

    make_inputs(shape, dtype, device, requires_grad) -> dict of named tensors
    reference(**inputs) -> outputs (eager; also what `compile` compiles)
    fastgen(backend, **inputs) -> outputs; None for a case with no fastgen op (a user's case)
    grad_inputs: names of the inputs the fwd+bwd mode differentiates
    peers: {name: factory(device) -> callable(**inputs) -> outputs, or a str saying why not}
    check(actual, expected, dtype, what): raises AssertionError on a mismatch (default:
        fastgen.testing.assert_close on every output, and every gradient in fwd+bwd)
    registry_op: the registered op whose backends decide the fastgen providers, when the case
        benchmarks a composite built on it (default: `op`)
    gpu_shapes: shapes to run on CUDA instead of `shapes` (sizes only a GPU handles in time)
    compile_reference: what `compile` compiles, when the reference itself cannot compile
        without host syncs (same math, checked against the reference like every provider)
    compile_note: why the compile baseline still has a graph break, if it has one
    flops(shape, mode) -> floating-point operations of one call (None: memory-bound, bytes only)
    bytes_moved(shape, dtype, mode, inputs, outputs) -> bytes one call must move at least
        (default: every input and output once, and the gradients in fwd+bwd)
    max_ratio: how many times slower than the group's fastest a provider may be before the row
        is flagged incoherent (raise it, with a reason, where the gap is real)
    """
    op: str
    shapes: list
    make_inputs: Callable
    reference: Callable
    quick_shapes: list = None
    fastgen: Callable = None
    grad_inputs: tuple = ()
    peers: dict = field(default_factory=dict)
    check: Callable = None
    modes: tuple = MODES
    registry_op: str = None
    gpu_shapes: list = None
    compile_reference: Callable = None
    compile_note: str = ""
    flops: Callable = None
    bytes_moved: Callable = None
    max_ratio: float = MAX_RATIO


CASES = {}


def register_case(case: Case) -> Case:
    CASES[case.op] = case
    return case


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _returning_tuple(fn):
    return lambda **inputs: _as_tuple(fn(**inputs))


def _default_check(actual, expected, dtype, what):
    if len(actual) != len(expected):
        raise AssertionError(f"{what}: {len(actual)} outputs, the reference has {len(expected)}")
    for i, (a, e) in enumerate(zip(actual, expected)):
        testing.assert_close(a, e, dtype=dtype, name=f"{what}[{i}]")


def _compiled(fn):
    """torch.compile of `fn` for one shape. A fresh dynamo cache per shape keeps every graph
    static: otherwise the second shape triggers an automatic-dynamic recompile (slower, shape-
    generic kernels) and a case with many shapes runs into the recompile limit (eager fallback)."""
    torch.compiler.reset()
    return _returning_tuple(torch.compile(fn, dynamic=False))


def _fastgen_op(case):
    return fastgen.ops.REGISTRY.get(case.registry_op or case.op) if case.fastgen is not None else None


def providers_for(case, device, wanted=None):
    """({name: callable(**inputs) -> tuple of outputs}, {name: why skipped}) for `device`.
    Call once per shape: it starts a fresh torch.compile of the reference (unless `wanted`, a
    set of names, leaves `compile` out: importing torch._dynamo alone takes seconds)."""
    live = {"eager": _returning_tuple(case.reference)}
    if wanted is None or "compile" in wanted:
        live["compile"] = _compiled(case.compile_reference or case.reference)
    skipped = {}
    op = _fastgen_op(case)
    for backend in FASTGEN_BACKENDS if case.fastgen is not None else ():
        why = op.unavailable(backend, device) if op is not None else None
        if why is None and backend == "triton" and device == "cpu":
            why = "Triton interpreter: correct but not meant to be timed"
        if why is None and op is None and backend != {"cpu": "cpu", "cuda": "cuda"}.get(device):
            why = f"not a registered op: only fastgen-{'cuda' if device == 'cuda' else 'cpu'} runs here"
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
    fastgen_names = {f"fastgen-{b}" for b in FASTGEN_BACKENDS} if case.fastgen is not None else set()
    return {"eager", "compile", *fastgen_names, *case.peers}


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


class _TorchLogCapture(logging.Handler):
    """Collects torch._dynamo / torch._inductor log records and Python warnings while a
    provider is first called (compiled), instead of letting them flood the terminal."""
    LOGGERS = ("torch._dynamo", "torch._inductor", "torch.fx.experimental.symbolic_shapes")

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage().strip().splitlines()[0][:200] if record.getMessage().strip() else "")

    @contextlib.contextmanager
    def capture(self):
        loggers = [logging.getLogger(n) for n in self.LOGGERS]
        saved = [(lg.propagate, list(lg.handlers)) for lg in loggers]
        for lg in loggers:
            lg.propagate = False
            lg.handlers = [self]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield self
            finally:
                for lg, (propagate, handlers) in zip(loggers, saved):
                    lg.propagate, lg.handlers = propagate, handlers
                self.messages += [str(w.message).splitlines()[0][:200] for w in caught]


def _graph_break_count():
    from torch._dynamo.utils import counters
    return sum(counters["graph_break"].values())


def _compile_note(case, log, breaks):
    parts = []
    if breaks:
        parts.append(f"{breaks} graph break(s)")
    backend_failures = [m for m in log.messages if "Backend compiler" in m or "backend compiler" in m]
    if backend_failures:
        parts.append(f"inductor fell back to eager: {backend_failures[0][:120]}")
    if parts and case.compile_note:
        parts.append(case.compile_note)
    return "; ".join(parts)


def _default_bytes(shape, dtype, mode, inputs, outputs):
    tensors = [t for t in inputs.values() if isinstance(t, torch.Tensor)] + \
              [t for t in outputs if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _roofline(case, shape, dtype, mode, inputs, outputs, stats, ceilings):
    """GB/s, GFLOP/s and % of the measured ceiling (the larger of the memory and compute
    fractions) of one timed row. Small shapes that stay in cache can exceed 100% of the
    DRAM copy bandwidth: the column is against memory, not cache."""
    seconds = stats["time_ms"] / 1e3
    nbytes = (case.bytes_moved or _default_bytes)(shape, dtype, mode, inputs, outputs)
    flops = case.flops(shape, mode) if case.flops is not None else None
    out = {"gb_per_s": nbytes / seconds / 1e9 if seconds > 0 else None,
           "gflop_per_s": flops / seconds / 1e9 if flops and seconds > 0 else None}
    fractions = []
    if ceilings.get("copy_bytes_per_s") and out["gb_per_s"] is not None:
        fractions.append(out["gb_per_s"] * 1e9 / ceilings["copy_bytes_per_s"])
    if ceilings.get("flop_per_s") and out["gflop_per_s"] is not None:
        fractions.append(out["gflop_per_s"] * 1e9 / ceilings["flop_per_s"])
    out["pct_roofline"] = 100 * max(fractions) if fractions else None
    return out


def run_case(case, *, device, dtype, quick, modes, provider_filter=None, progress=None, threads=None,
             ceilings=None, run_meta=None, budget_s=None):
    """Check, then time, every provider on every shape and mode of `case`. Returns result rows
    (one per provider, shape and mode; one per skipped provider). `provider_filter`: names to run
    besides eager (None: all live). `progress`: a tqdm bar, advanced once per provider run.
    `ceilings`: {"copy_bytes_per_s", "flop_per_s"} for the roofline column (None: no column)."""
    meta = {"op": case.op, "dtype": str(dtype).replace("torch.", ""), "device": device_name(device),
            "torch": torch.__version__, "triton": _compat.TRITON_VERSION or "none",
            "commit": git_commit(), "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
            "threads": threads or torch.get_num_threads(), "load_avg": machine.load_average()}
    meta.update(run_meta or {})
    case_modes = [m for m in case.modes if m in modes]
    rows, skipped = [], {}
    shapes = (case.quick_shapes or case.shapes) if quick else (
        case.gpu_shapes if device == "cuda" and case.gpu_shapes else case.shapes)
    budget_s = budget_s or (timing.QUICK_GROUP_BUDGET_S if quick else timing.GROUP_BUDGET_S)
    for shape in shapes:
        live, skipped = providers_for(case, device, provider_filter)
        if provider_filter is not None:
            live = {k: v for k, v in live.items() if k == "eager" or k in provider_filter}
            skipped = {k: v for k, v in skipped.items() if k in provider_filter}
        if progress is not None:
            progress.total = (progress.total or 0) + len(case_modes) * len(live)
            progress.refresh()
        for mode in case_modes:
            rows += _run_shape_mode(case, live, shape, mode, device, dtype, meta, progress, threads,
                                    ceilings or {}, budget_s)
    flag_incoherent(rows, case.max_ratio)
    for name, why in skipped.items():
        rows.append(dict(meta, mode="-", provider=name, shape="-", status="skipped", time_ms=None,
                         speedup_vs_eager=None, error=why, noisy=False, flags=""))
    return rows


def _run_shape_mode(case, live, shape, mode, device, dtype, meta, progress, threads, ceilings, budget_s):
    inputs = case.make_inputs(shape, dtype, device, requires_grad=(mode == "fwd+bwd"))
    grad_outputs = _fixed_grad_outputs(live["eager"](**inputs), device) if mode == "fwd+bwd" else ()
    expected = _step(live["eager"], inputs, mode, case.grad_inputs, grad_outputs)
    check = case.check or _default_check
    shape_name = "x".join(map(str, shape))
    rows, calls = {}, {}
    for name, fn in live.items():  # check every provider first (this also compiles `compile`)
        if progress is not None:
            progress.set_postfix_str(f"{shape_name} {mode} {name} (check)", refresh=True)
        call = functools.partial(_step, fn, inputs, mode, case.grad_inputs, grad_outputs)
        row = dict(meta, mode=mode, provider=name, shape=shape_name, note="", flags="", noisy=False)
        log = _TorchLogCapture()
        breaks_before = _graph_break_count() if name == "compile" else 0
        t0 = time.perf_counter()
        try:
            with log.capture():
                actual = call()
            check(actual, expected, dtype, f"{name} {mode}")
        except Exception as exc:  # a wrong result, or a provider that cannot run: not timed
            error = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
            row.update(status="FAILED", time_ms=None, speedup_vs_eager=None, error=error[:500])
        else:
            row.update(status="ok", error="")
            calls[name] = call
        row["check_s"] = round(time.perf_counter() - t0, 3)  # the first call: compiles `compile`
        if name == "compile":
            row["note"] = _compile_note(case, log, _graph_break_count() - breaks_before)
        rows[name] = row
    if progress is not None:
        progress.set_postfix_str(f"{shape_name} {mode} timing {len(calls)} providers", refresh=True)
    if calls:
        t0 = time.perf_counter()
        with machine.OthersCpu() as others:
            if device == "cuda":
                stats = timing.time_gpu_group(calls)
            else:
                stats = timing.time_cpu_group(calls, threads=threads, budget_s=budget_s)
        timing_s = round(time.perf_counter() - t0, 3)
        for name, s in stats.items():
            row = rows[name]
            row.update(s, timing_s=timing_s)
            row["others_cpu_pct"] = None if others.fraction is None else round(100 * others.fraction, 1)
            flags = []
            if s["iqr_pct"] > NOISY_IQR_PCT:
                flags.append(f"noisy: IQR {s['iqr_pct']:.0f}% of the median")
            if others.fraction is not None and others.fraction > machine.OTHERS_BUSY_THRESHOLD and device != "cuda":
                flags.append(f"noisy: other processes took {others.fraction:.0%} of the CPU meanwhile")
            row["noisy"] = bool(flags)
            row["flags"] = "; ".join(flags)
            row.update(_roofline(case, shape, dtype, mode, inputs, expected, s, ceilings))
    eager = rows.get("eager")
    for row in rows.values():
        _set_speedup(row, eager)
    if progress is not None:
        progress.update(len(rows))
    return list(rows.values())


def _set_speedup(row, eager):
    ok = row.get("status") == "ok" and eager is not None and eager.get("status") == "ok"
    if not ok or not row.get("time_ms"):
        row.update(speedup_vs_eager=None, speedup_lo=None, speedup_hi=None)
        return
    row["speedup_vs_eager"] = eager["time_ms"] / row["time_ms"]
    row["speedup_lo"] = eager["q25_ms"] / row["q75_ms"] if row["q75_ms"] else None
    row["speedup_hi"] = eager["q75_ms"] / row["q25_ms"] if row["q25_ms"] else None


def _add_flag(row, flag):
    row["flags"] = "; ".join(f for f in (row.get("flags"), flag) if f)


def flag_incoherent(rows, max_ratio=MAX_RATIO):
    """Flag rows that contradict the other rows of their case (in place): fwd+bwd faster than
    the same provider's fwd beyond both spreads, or a provider more than `max_ratio` times slower
    than the fastest of its (shape, mode) group. Flags start with "incoherent"."""
    timed = [r for r in rows if r.get("status") == "ok" and r.get("time_ms")]
    by_key = {(r["shape"], r["provider"], r["mode"]): r for r in timed}
    for (shape, provider, mode), r in by_key.items():
        if mode != "fwd+bwd":
            continue
        fwd = by_key.get((shape, provider, "fwd"))
        if fwd is not None and r.get("q75_ms", r["time_ms"]) < fwd.get("q25_ms", fwd["time_ms"]):
            msg = f"incoherent: fwd+bwd {r['time_ms']:.4g} ms < fwd {fwd['time_ms']:.4g} ms"
            _add_flag(r, msg)
            _add_flag(fwd, msg)
    groups = {}
    for r in timed:
        groups.setdefault((r["shape"], r["mode"]), []).append(r)
    for group in groups.values():
        fastest = min(r["time_ms"] for r in group)
        for r in group:
            if r["time_ms"] > max_ratio * fastest:
                _add_flag(r, f"incoherent: {r['time_ms'] / fastest:.0f}x the group's fastest (limit {max_ratio:g}x)")
    return rows


def format_table(rows):
    """A terminal table: median time, speedup vs eager, status (the correctness check), IQR and
    % of roofline per provider. A noisy or incoherent row shows no speedup ("-") and says why
    after its status; skipped and FAILED rows say why. (benchmarks/gpu_check.sh parses the
    first seven columns: keep them.)"""
    header = (f"{'op':<20} {'mode':<8} {'shape':<16} {'provider':<17} {'ms':>10} {'vs eager':>9}  {'status':<7} "
              f"{'IQR':>5} {'%roof':>6}  notes")
    lines = [header, "-" * len(header)]
    eager_ok = {(r["shape"], r["mode"]): trusted(r) for r in rows if r["provider"] == "eager"}
    for r in rows:
        ms = "-" if r.get("time_ms") is None else f"{r['time_ms']:.4f}"
        iqr = "-" if r.get("iqr_pct") is None else f"{r['iqr_pct']:.0f}%"
        speedup = "-"
        if r.get("speedup_vs_eager") is not None and trusted(r) and eager_ok.get((r["shape"], r["mode"]), False):
            speedup = f"{r['speedup_vs_eager']:.2f}x"
        roof = "-" if r.get("pct_roofline") is None else f"{r['pct_roofline']:.0f}"
        notes = []
        if r.get("flags"):
            notes.append(("NOT A RESULT: " if "incoherent" in r["flags"] else "") + r["flags"])
        elif r.get("status") == "ok" and not eager_ok.get((r["shape"], r["mode"]), True):
            notes.append("no speedup: the eager baseline is noisy or incoherent")
        if r.get("error"):
            notes.append(r["error"].splitlines()[0][:100])
        if r.get("note"):
            notes.append(f"[{r['note'][:120]}]")
        lines.append(f"{r['op']:<20} {r['mode']:<8} {r['shape']:<16} {r['provider']:<17} {ms:>10} {speedup:>9}  "
                     f"{r['status']:<7} {iqr:>5} {roof:>6}  {'; '.join(notes)}")
    return "\n".join(lines)


def _jsonable(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_results(rows, out, plots=True):
    """Append rows to <out>/results.csv and <out>/results.jsonl, and draw <out>/<op>.png for
    each op in `rows` and <out>/summary.png. Returns the paths written."""
    from . import plots as plotting

    os.makedirs(out, exist_ok=True)
    csv_path, json_path = os.path.join(out, "results.csv"), os.path.join(out, "results.jsonl")
    new = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
    if not new:
        with open(csv_path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != FIELDS:  # an older format: start a fresh file beside it
            os.replace(csv_path, csv_path + ".old")
            new = True
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
    with open(json_path, "a") as f:
        for r in rows:
            f.write(json.dumps({k: _jsonable(r.get(k)) for k in FIELDS}) + "\n")
    paths = [csv_path, json_path]
    if plots:
        for op in dict.fromkeys(r["op"] for r in rows):
            paths.append(plotting.plot_op([r for r in rows if r["op"] == op], os.path.join(out, f"{op}.png")))
        paths.append(plotting.plot_summary(rows, os.path.join(out, "summary.png")))
    return paths


def plot_op(rows, path):  # kept for callers of the old name
    from . import plots as plotting
    return plotting.plot_op(rows, path)


def time_ms(fn, device, **kw):
    """Median milliseconds per call of one callable (the group timer with one provider)."""
    group = timing.time_gpu_group if device == "cuda" else timing.time_cpu_group
    return group({"fn": fn}, **kw)["fn"]["time_ms"]
