"""Peak extra host memory of info_nce_loss forward + backward: the blockwise CPU kernel vs the
eager loss (which materializes the 2N x 2N similarities, its masked copy, log-softmax and their
gradients). Each measurement runs in a fresh subprocess and reports the growth of the peak RSS
over the RSS once the inputs exist.

    python benchmarks/info_nce_memory.py [--n 4096] [--d 128]
"""
import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch, fastgen
from fastgen.ops import reference
n, d, provider = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
z1, z2 = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
base = rss_mb()
t0 = time.perf_counter()
if provider == "eager":
    loss = reference.info_nce_loss(z1, z2, 0.5)[0]
else:
    loss = fastgen.ops.info_nce_loss(z1, z2, 0.5, backend="cpu")
loss.backward()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"provider": provider, "n": n, "d": d, "peak_extra_mb": peak - base, "seconds": seconds}))
"""


def measure(n, d, provider):
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(d), provider],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=128)
    a = p.parse_args()
    rows = [measure(a.n, a.d, "fastgen-cpu"), measure(a.n, a.d, "eager")]
    for r in rows:
        print(f"{r['provider']:<12} N={r['n']:<6} D={r['d']:<4} peak extra {r['peak_extra_mb']:8.1f} MB "
              f"(one cold fwd+bwd: {r['seconds']:.2f} s)")
    print(f"ratio fastgen / eager: {rows[0]['peak_extra_mb'] / rows[1]['peak_extra_mb']:.4f}")
