"""GPT-prior sampling: KV-cache decoding (decode_attention) against recomputing the whole
sequence every token, side by side in one run, on the gpt_prior's transformer.

    python benchmarks/bench_gpt_sampling.py [--tokens 256] [--batch 8] [--device cpu] [--repeats 3] [--threads N]

Both paths draw the same tokens (same uniforms; checked), so the ratio is the cache's speedup.
Writes a CSV row per provider under benchmarks/results/<device>/gpt_sampling.csv.
"""
import argparse
import csv
import os
import time

import torch

from fastgen.bench.harness import device_name
from fastgen.models.gpt_prior import GPT


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embd", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gpt = GPT(vocab=128 + 4, n_out=128, block_size=args.tokens, n_layer=args.layers, n_head=args.heads,
              n_embd=args.embd).to(args.device).eval()
    prefix = torch.full((args.batch, 1), 128, device=args.device)
    uniforms = torch.rand(args.batch, args.tokens, generator=torch.Generator().manual_seed(1)).to(args.device)
    times, tokens = {}, {}
    for name, use_cache in (("kv_cache", True), ("recompute", False)):
        runs = []
        for _ in range(args.repeats):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens[name] = gpt.generate(prefix, args.tokens, uniforms, use_cache=use_cache)
            if args.device == "cuda":
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
        times[name] = sorted(runs)[len(runs) // 2]
    same = torch.equal(tokens["kv_cache"], tokens["recompute"])
    speedup = times["recompute"] / times["kv_cache"]
    dev = device_name(args.device)
    print(f"{dev}: {args.tokens} tokens x batch {args.batch}: kv_cache {times['kv_cache'] * 1e3:.1f} ms, "
          f"recompute {times['recompute'] * 1e3:.1f} ms -> {speedup:.1f}x; identical tokens: {same}")
    out = args.out or os.path.join("benchmarks", "results", "local", "gpt_sampling.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["provider", "tokens", "batch", "layers", "embd", "device", "time_ms", "speedup_vs_recompute",
                    "identical_tokens"])
        for name in times:
            w.writerow([name, args.tokens, args.batch, args.layers, args.embd, dev, f"{times[name] * 1e3:.2f}",
                        f"{times['recompute'] / times[name]:.2f}", same])
    if not same:
        raise SystemExit("the KV-cache path drew different tokens than recomputation")


if __name__ == "__main__":
    main()
