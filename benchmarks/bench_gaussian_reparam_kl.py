"""gaussian_reparam_kl at full size (2**22 elements): every live fastgen backend vs eager and
torch.compile, forward and forward+backward. Writes CSV / JSONL / PNG to --out.

    python benchmarks/bench_gaussian_reparam_kl.py [--device cpu|cuda] [--dtype fp32] [--out DIR]
"""
import argparse
import sys

from fastgen import bench

if __name__ == "__main__":
    parser = bench.add_arguments(argparse.ArgumentParser(description=__doc__))
    args = parser.parse_args()
    args.op = ["gaussian_reparam_kl"]
    sys.exit(bench.run(args))
