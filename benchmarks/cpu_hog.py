"""A CPU hog for the loaded benchmark run: one busy-loop process per core (or -n N), for
--seconds (default: until killed / Ctrl-C), or around a command:

    python benchmarks/cpu_hog.py -- python -m fastgen bench --quick --out benchmarks/results/bench/loaded

starts the hogs, runs the command, stops the hogs (whatever the command's exit), and exits with
the command's status.
"""
import argparse
import multiprocessing
import os
import subprocess
import sys
import time


def _spin(stop_at):
    x = 0
    while stop_at is None or time.monotonic() < stop_at:
        for _ in range(100_000):
            x += 1


def start(n=None, seconds=None):
    """Start `n` busy-loop processes (default: one per core); returns them."""
    n = n or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (n or os.cpu_count())
    stop_at = None if seconds is None else time.monotonic() + seconds
    procs = [multiprocessing.Process(target=_spin, args=(stop_at,), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=None, help="busy loops (default: one per core)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long (no command)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command to run while the hogs spin")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    procs = start(args.n, None if command else args.seconds)
    print(f"cpu_hog: {len(procs)} busy loops: pids {' '.join(str(p.pid) for p in procs)}", file=sys.stderr, flush=True)
    try:
        if command:
            return subprocess.call(command)
        for p in procs:
            p.join()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        stop(procs)
        print("cpu_hog: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
