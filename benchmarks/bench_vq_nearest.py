"""vq_nearest on the issue's grid (N=65536, K in {512, 1024, 8192}, D in {8, 64, 256}): every
live fastgen backend vs eager, torch.compile, faiss-cpu (IndexFlatL2, k=1) and cdist+argmin;
then vq_quantize forward and forward+backward at N=65536, K=1024, D=64.

    python benchmarks/bench_vq_nearest.py [--device cpu|cuda] [--dtype fp32] [--out DIR]
"""
import argparse
import sys

from fastgen import bench

if __name__ == "__main__":
    parser = bench.add_arguments(argparse.ArgumentParser(description=__doc__))
    args = parser.parse_args()
    args.op = ["vq_nearest", "vq_quantize"]
    sys.exit(bench.run(args))
