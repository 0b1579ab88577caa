"""`fastgen bench`: every registered case, checked then timed against eager and torch.compile.

    fastgen bench --quick                      # every op at small sizes (about a minute on a CPU)
    fastgen bench --op gaussian_reparam_kl --device cuda --dtype bf16 --mode fwd+bwd

A later op adds a `Case` in fastgen/bench/cases.py with `register_case`; peers (faiss, SDPA,
diffusers, ...) are entries of `Case.peers`: name -> factory(device) returning a callable taking
the case's inputs, or a string saying why the peer cannot run here.
"""
import argparse
import os
import sys
import time

import torch

from . import cases  # noqa: F401  (registers the cases)
from .harness import (CASES, DTYPES, MODES, Case, format_table, provider_names, register_case,
                      run_case, write_results)

__all__ = ["CASES", "Case", "add_arguments", "register_case", "run", "run_case"]

DEFAULT_OUT = os.path.join("benchmarks", "results", "local")


def add_arguments(parser: argparse.ArgumentParser):
    """Add the `fastgen bench` options to `parser`; returns it."""
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute per op on a CPU)")
    parser.add_argument("--op", action="append", metavar="NAME",
                        help=f"op(s) to run, repeatable or comma-separated (default all: {', '.join(sorted(CASES))})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda if a GPU is visible, else cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--mode", choices=MODES + ("all",), default="all")
    parser.add_argument("--providers", metavar="NAMES", default=None,
                        help="comma-separated providers to run besides eager, e.g. fastgen-cpu,compile "
                             "(default: every live one)")
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


def _cpu_busy_fraction(seconds=0.25):
    """Fraction of the machine's CPU time other processes use right now (we sleep meanwhile),
    from /proc/stat; None where that is unavailable. Unlike the load average it does not lag."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user .. steal
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def _warn_if_cpu_busy():
    # Two processes fighting over the same cores can make an op 10-50x slower (OpenMP threads
    # spin waiting for each other), so CPU timings from a busy machine are not worth keeping.
    busy = _cpu_busy_fraction()
    if busy is not None and busy > 0.25:
        print(f"fastgen bench: warning: other processes are using {busy:.0%} of the CPU; "
              f"CPU timings will be noisy", file=sys.stderr)


def run(args) -> int:
    """Run the benchmark described by `args` (parsed with add_arguments's options). Prints a
    table per op and writes rows + plots to args.out. Returns the exit code: 1 if any provider
    FAILED its check against the reference (or raised), else 0."""
    device = _selected_device(args.device)
    cases = _selected_cases(args.op)
    wanted = _selected_providers(getattr(args, "providers", None), cases)
    modes = MODES if args.mode == "all" else (args.mode,)
    if device == "cpu":
        _warn_if_cpu_busy()
    from tqdm.auto import tqdm

    rows = []
    with tqdm(total=0, desc="bench", unit="run", dynamic_ncols=True) as bar:
        for case in cases:
            bar.set_description(case.op)
            case_rows = run_case(case, device=device, dtype=DTYPES[args.dtype], quick=args.quick,
                                 modes=modes, provider_filter=wanted, progress=bar)
            bar.write(format_table(case_rows) + "\n")
            rows += case_rows
    paths = write_results(rows, args.out)
    print("results: " + ", ".join(paths))
    failed = [f"{r['op']} {r['mode']} {r['shape']} {r['provider']}" for r in rows if r["status"] == "FAILED"]
    if failed:
        print(f"fastgen bench: {len(failed)} provider run(s) FAILED: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0
