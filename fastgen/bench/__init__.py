"""`fastgen bench`: every registered case, checked then timed against eager and torch.compile.

    fastgen bench --quick                      # every op at small sizes (under 3 minutes on 2 CPU cores)
    fastgen bench --op gaussian_reparam_kl --device cuda --dtype bf16 --mode fwd+bwd
    fastgen bench --plugin my_kernels.py --op bias_act     # your providers / cases, see plugin.py
    fastgen bench compare OLD/results.jsonl NEW/results.jsonl --fail-on-regression 5%

A later op adds a `Case` in fastgen/bench/cases.py with `register_case`; peers (faiss, SDPA,
diffusers, ...) are entries of `Case.peers`: name -> factory(device) returning a callable taking
the case's inputs, or a string saying why the peer cannot run here. Users add providers and
cases with `fastgen.bench.provider` / `fastgen.bench.case` (fastgen/bench/plugin.py).
"""
import argparse
import datetime
import os
import sys
import time

import torch

from . import cases  # noqa: F401  (registers the cases)
from . import machine
from .harness import (CASES, DTYPES, MODES, Case, format_table, provider_names, register_case,
                      run_case, trusted, write_results)
from .plugin import case, load_plugin, provider

__all__ = ["CASES", "Case", "add_arguments", "case", "provider", "register_case", "run", "run_case"]

DEFAULT_OUT = os.path.join("benchmarks", "results", "local")


def add_arguments(parser: argparse.ArgumentParser):
    """Add the `fastgen bench` options to `parser`; returns it."""
    parser.add_argument("action", nargs="?", choices=("run", "compare"), default="run",
                        help="run (default) the benchmark, or compare two runs' results.jsonl")
    parser.add_argument("files", nargs="*", metavar="OLD NEW", help="compare: two results.jsonl files")
    parser.add_argument("--quick", action="store_true", help="small sizes (under 3 minutes on 2 CPU cores)")
    parser.add_argument("--op", action="append", metavar="NAME",
                        help=f"op(s) to run, repeatable or comma-separated (default all: {', '.join(sorted(CASES))})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda if a GPU is visible, else cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--mode", choices=MODES + ("all",), default="all")
    parser.add_argument("--providers", metavar="NAMES", default=None,
                        help="comma-separated providers to run besides eager, e.g. fastgen-cpu,compile "
                             "(default: every live one)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads for the run (recorded in every row; default: torch's)")
    parser.add_argument("--plugin", action="append", metavar="MODULE", default=[],
                        help="import a module (name or .py path) that adds providers/cases with "
                             "fastgen.bench.provider / fastgen.bench.case; repeatable")
    parser.add_argument("--no-plots", action="store_true", help="write CSV/JSONL only")
    parser.add_argument("--fail-on-regression", metavar="X%", default=None,
                        help="compare: exit 1 when a row is slower than OLD by more than X%% beyond the noise")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    return parser


def _split(values):
    return [n.strip() for value in values for n in value.split(",") if n.strip()]


def _selected_cases(op_args):
    names = _split(op_args or []) or sorted(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"fastgen bench: unknown op {unknown[0]!r}; valid: {', '.join(sorted(CASES))}")
    return [CASES[n] for n in dict.fromkeys(names)]


def _selected_providers(providers_arg, cases):
    if not providers_arg:
        return None
    wanted = set(_split([providers_arg]))
    known = set().union(*(provider_names(c) for c in cases))
    unknown = sorted(wanted - known)
    if unknown:
        raise SystemExit(f"fastgen bench: unknown provider {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    return wanted


def _selected_device(device_arg):
    device = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fastgen bench: --device cuda, but no GPU is visible to torch "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    return device


def _machine_header(device, dtype):
    """Print what the machine is doing and the roofline ceilings; returns (facts, ceilings)."""
    facts, warnings = machine.busy_report()
    ceilings = {"copy_bytes_per_s": machine.copy_bandwidth(device), "flop_per_s": machine.matmul_flops(device, dtype)}
    load = "n/a" if facts["load_avg"] is None else f"{facts['load_avg']:.2f}"
    others = "n/a" if facts["others_cpu"] is None else f"{facts['others_cpu']:.0%}"
    print(f"fastgen bench: {device}, {facts['cores']} cores, {facts['threads']} torch threads; load average {load}, "
          f"other processes {others} of the CPU, calibration loop spread {facts['calibration_spread']:.2f}x; "
          f"measured ceilings: copy {ceilings['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
          f"matmul {ceilings['flop_per_s'] / 1e9:.0f} GFLOP/s", flush=True)
    if warnings and device == "cpu":
        print("fastgen bench: WARNING: the machine is busy (" + "; ".join(warnings) + "): CPU timings will be "
              "noisy. Rows measured while other processes took the CPU are marked noisy; rerun on a quiet "
              "machine for numbers to keep (--threads 1 at least avoids multi-threaded ops stalling at their "
              "OpenMP barriers while a core is taken away).", file=sys.stderr, flush=True)
    return facts, ceilings


def run(args) -> int:
    """Run the benchmark described by `args` (parsed with add_arguments's options), or compare
    two runs (`args.action == "compare"`). Prints a table per op and writes rows + plots to
    args.out. Returns the exit code: 1 if any provider FAILED its check against the reference
    (or raised), else 0."""
    if getattr(args, "action", "run") == "compare":
        from . import compare
        if len(args.files) != 2:
            raise SystemExit("fastgen bench compare: give two results.jsonl files, OLD and NEW")
        return compare.main(*args.files, fail_on_regression=args.fail_on_regression)
    if getattr(args, "files", None):
        raise SystemExit(f"fastgen bench: unexpected arguments {args.files}")
    for spec in getattr(args, "plugin", None) or []:
        load_plugin(spec)
    device = _selected_device(args.device)
    cases = _selected_cases(args.op)
    wanted = _selected_providers(getattr(args, "providers", None), cases)
    modes = MODES if args.mode == "all" else (args.mode,)
    threads = getattr(args, "threads", None)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(args, device, cases, wanted, modes, threads or saved_threads)
    finally:
        torch.set_num_threads(saved_threads)


def _run(args, device, cases, wanted, modes, threads):
    from tqdm.auto import tqdm

    started = time.perf_counter()
    facts, ceilings = _machine_header(device, DTYPES[args.dtype])
    run_meta = {"run_id": datetime.datetime.now().strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"}
    rows = []
    with tqdm(total=0, desc="bench", unit="run", dynamic_ncols=True) as bar:
        for case in cases:
            bar.set_description(case.op)
            case_rows = run_case(case, device=device, dtype=DTYPES[args.dtype], quick=args.quick,
                                 modes=modes, provider_filter=wanted, progress=bar, threads=threads,
                                 ceilings=ceilings, run_meta=run_meta)
            bar.write(format_table(case_rows) + "\n")
            rows += case_rows
    paths = write_results(rows, args.out, plots=not getattr(args, "no_plots", False))
    timed = [r for r in rows if r["status"] == "ok"]
    noisy = [r for r in timed if r.get("noisy")]
    incoherent = [r for r in timed if "incoherent" in (r.get("flags") or "")]
    check_s = sum(r.get("check_s") or 0 for r in rows)
    timing_s = sum({(r["op"], r["shape"], r["mode"]): r.get("timing_s") or 0 for r in timed}.values())
    print(f"{len(timed)} rows timed in {time.perf_counter() - started:.0f} s ({check_s:.0f} s checking and "
          f"compiling, {timing_s:.0f} s timing): {sum(map(trusted, timed))}"
          f" trusted, {len(noisy)} noisy, {len(incoherent)} incoherent (threads {threads}, load average at start "
          f"{facts['load_avg'] if facts['load_avg'] is None else round(facts['load_avg'], 2)})")
    print("results: " + ", ".join(paths))
    failed = [f"{r['op']} {r['mode']} {r['shape']} {r['provider']}" for r in rows if r["status"] == "FAILED"]
    if failed:
        print(f"fastgen bench: {len(failed)} provider run(s) FAILED: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0
