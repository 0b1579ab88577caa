"""Peak extra host memory of vq_nearest: the fused CPU kernel vs the eager reference (which
materializes N x K distances). Each measurement runs in a fresh subprocess and reports the
growth of the peak RSS over the RSS after the inputs exist.

    python benchmarks/vq_memory.py [--n 262144] [--k 16384] [--d 64] [--eager-n 32768]

The eager reference at the issue's N=262144, K=16384 needs several 17 GB N x K temporaries, more
than a 24 GB machine has, so it is measured at --eager-n and its N x K part scales linearly in N.
"""
import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch, fastgen
from fastgen.ops import reference
n, k, d, provider = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
z, e = torch.randn(n, d), torch.randn(k, d)
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
base = rss_mb()
if provider == "eager":
    reference.vq_nearest(z, e)
else:
    fastgen.ops.vq_nearest(z, e, backend="cpu")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"provider": provider, "n": n, "k": k, "d": d, "peak_extra_mb": peak - base}))
"""


def measure(n, k, d, provider):
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(k), str(d), provider],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=262144)
    p.add_argument("--k", type=int, default=16384)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--eager-n", type=int, default=32768)
    a = p.parse_args()
    rows = [measure(a.n, a.k, a.d, "fastgen-cpu"), measure(a.eager_n, a.k, a.d, "fastgen-cpu"),
            measure(a.eager_n, a.k, a.d, "eager")]
    for r in rows:
        print(f"{r['provider']:<12} N={r['n']:<7} K={r['k']:<6} D={r['d']:<4} peak extra {r['peak_extra_mb']:9.1f} MB")
    eager_scaled = rows[2]["peak_extra_mb"] * a.n / a.eager_n
    print(f"eager scaled to N={a.n}: ~{eager_scaled:.0f} MB; fastgen at N={a.n}: "
          f"{rows[0]['peak_extra_mb']:.1f} MB; ratio {rows[0]['peak_extra_mb'] / eager_scaled:.4f}")
