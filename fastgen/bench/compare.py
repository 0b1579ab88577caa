"""`fastgen bench compare OLD NEW`: two runs' results.jsonl, row by row.

Rows are matched on (op, mode, shape, provider, dtype, device name); where a file holds several
runs (results.jsonl is appended to), the last row of each key wins. Per row: the time ratio
NEW / OLD (> 1 is slower) and a verdict:
  slower / faster   the medians moved apart by more than MIN_CHANGE and the interquartile ranges
                    of the two measurements do not overlap: outside the noise of both runs;
  same              within the noise (the quartile ranges overlap, or under MIN_CHANGE);
  noisy             either row is flagged noisy or incoherent: no verdict is drawn from it.
`--fail-on-regression X` exits 1 when a row is `slower` by more than X percent.
"""
import json
import math
import sys

from .rows import unreliable

MIN_CHANGE = 0.03  # below 3% no verdict: medians of separate runs drift by that much on a quiet box
KEY = ("op", "mode", "shape", "provider", "dtype", "device")


def load(path):
    """{key: row} of the timed rows of a results.jsonl (the last row per key wins)."""
    rows = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"fastgen bench compare: {path}:{n}: not JSON ({exc})")
            if r.get("status") == "ok" and r.get("time_ms"):
                rows[tuple(r.get(k) for k in KEY)] = r
    return rows


def verdict(old, new, min_change=MIN_CHANGE):
    """(ratio new/old, verdict) for two rows of the same key."""
    ratio = new["time_ms"] / old["time_ms"]
    if unreliable(old) or unreliable(new):
        return ratio, "noisy"
    o25, o75 = old.get("q25_ms") or old["time_ms"], old.get("q75_ms") or old["time_ms"]
    n25, n75 = new.get("q25_ms") or new["time_ms"], new.get("q75_ms") or new["time_ms"]
    if ratio > 1 + min_change and n25 > o75:
        return ratio, "slower"
    if ratio < 1 / (1 + min_change) and n75 < o25:
        return ratio, "faster"
    return ratio, "same"


def compare(old_rows, new_rows, min_change=MIN_CHANGE):
    """List of dicts (key fields, old_ms, new_ms, ratio, verdict) for keys in both runs, and the
    keys only in one of them."""
    out = []
    for key in old_rows.keys() & new_rows.keys():
        old, new = old_rows[key], new_rows[key]
        ratio, v = verdict(old, new, min_change)
        out.append(dict(zip(KEY, key), old_ms=old["time_ms"], new_ms=new["time_ms"],
                        old_iqr_pct=old.get("iqr_pct"), new_iqr_pct=new.get("iqr_pct"), ratio=ratio, verdict=v))
    out.sort(key=lambda r: (r["op"], r["shape"], r["mode"], r["provider"]))
    only_old = sorted(old_rows.keys() - new_rows.keys())
    only_new = sorted(new_rows.keys() - old_rows.keys())
    return out, only_old, only_new


def summary(results):
    counts = {v: sum(r["verdict"] == v for r in results) for v in ("slower", "faster", "same", "noisy")}
    solid = [r["ratio"] for r in results if r["verdict"] != "noisy"]
    geo = math.exp(sum(math.log(x) for x in solid) / len(solid)) if solid else None
    return counts, geo


def format_comparison(results, only_old=(), only_new=()):
    header = f"{'op':<20} {'mode':<8} {'shape':<16} {'provider':<17} {'old ms':>10} {'new ms':>10} {'new/old':>8}  verdict"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r['op']:<20} {r['mode']:<8} {r['shape']:<16} {r['provider']:<17} {r['old_ms']:>10.4f} "
                     f"{r['new_ms']:>10.4f} {r['ratio']:>7.3f}x  {r['verdict']}")
    counts, geo = summary(results)
    lines.append("")
    lines.append(f"{len(results)} rows compared: {counts['slower']} slower, {counts['faster']} faster, "
                 f"{counts['same']} within the noise, {counts['noisy']} noisy (no verdict)"
                 + (f"; geometric mean new/old of the others {geo:.3f}" if geo else ""))
    if only_old or only_new:
        lines.append(f"{len(only_old)} rows only in OLD, {len(only_new)} only in NEW (not compared)")
    return "\n".join(lines)


def _percent(text):
    try:
        return float(str(text).rstrip("%"))
    except ValueError:
        raise SystemExit(f"fastgen bench compare: --fail-on-regression takes a percentage, got {text!r}")


def main(old_path, new_path, fail_on_regression=None, min_change=MIN_CHANGE, out=None):
    """Print the comparison; returns the exit code (1: a row slower than the allowed regression)."""
    results, only_old, only_new = compare(load(old_path), load(new_path), min_change)
    print(format_comparison(results, only_old, only_new), file=out or sys.stdout)
    if not results:
        print("fastgen bench compare: no rows in common", file=sys.stderr)
        return 2
    if fail_on_regression is not None:
        pct = _percent(fail_on_regression)
        limit = 1 + pct / 100
        bad = [r for r in results if r["verdict"] == "slower" and r["ratio"] > limit]
        if bad:
            print(f"fastgen bench compare: {len(bad)} row(s) regressed by more than {pct:g}%: "
                  + "; ".join(f"{r['op']} {r['mode']} {r['shape']} {r['provider']} {r['ratio']:.2f}x" for r in bad),
                  file=sys.stderr)
            return 1
    return 0
