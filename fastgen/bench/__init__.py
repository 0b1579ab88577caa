"""`fastgen bench`: every registered case, checked then timed against eager and torch.compile.

    fastgen bench --quick                      # all ops, small sizes, a few minutes on a laptop CPU
    fastgen bench --op gaussian_reparam_kl --device cuda --dtype bf16
"""
import argparse
import os

import torch

from . import cases  # noqa: F401  (registers the cases)
from .harness import CASES, DTYPES, MODES, Case, format_table, register_case, run_case, write_results

__all__ = ["CASES", "Case", "add_arguments", "register_case", "run", "run_case"]

DEFAULT_OUT = os.path.join("benchmarks", "results", "local")


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes on a CPU)")
    parser.add_argument("--op", action="append", metavar="NAME",
                        help=f"op(s) to run (repeatable or comma-separated); default all: {', '.join(sorted(CASES))}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--mode", choices=MODES + ("all",), default="all")
    parser.add_argument("--providers", default=None,
                        help="comma-separated providers to time besides eager (default: all live)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    return parser


def _selected_ops(op_args):
    names = [n.strip() for arg in (op_args or []) for n in arg.split(",") if n.strip()] or sorted(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"fastgen bench: unknown op {unknown[0]!r}; valid: {', '.join(sorted(CASES))}")
    return names


def run(args) -> int:
    """Run the benchmark described by parsed `args`; returns the exit code (1 if a provider
    disagreed with the reference)."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fastgen bench: --device cuda but no GPU is visible")
    ops = _selected_ops(args.op)
    modes = MODES if args.mode == "all" else (args.mode,)
    wanted = set(args.providers.split(",")) if args.providers else None
    from tqdm.auto import tqdm

    rows = []
    with tqdm(total=None, desc="bench", unit="run", leave=False) as bar:
        for name in ops:
            bar.set_description(name)
            rows += run_case(CASES[name], device=device, dtype=DTYPES[args.dtype], quick=args.quick,
                             modes=modes, provider_filter=wanted, progress=bar)
    print(format_table(rows))
    paths = write_results(rows, args.out)
    print("results: " + ", ".join(paths))
    return 1 if any(r["status"] == "FAILED" for r in rows) else 0
