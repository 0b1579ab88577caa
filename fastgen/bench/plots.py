"""Plots of bench rows: one PNG per op (speedup vs eager per provider, error bars from the
quartiles), and one summary PNG (every op at its headline shape). Noisy or incoherent rows are
drawn hatched and pale: a reader sees which bars not to believe."""
from .rows import trusted


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errors(rows):
    """Asymmetric error bars (below, above) of the speedups from the quartiles of both rows."""
    lo, hi = [], []
    for r in rows:
        s = r.get("speedup_vs_eager") or 0
        lo.append(max(0.0, s - (r.get("speedup_lo") or s)))
        hi.append(max(0.0, (r.get("speedup_hi") or s) - s))
    return [lo, hi]


def plot_op(rows, path):
    """Grouped bars of one op: speedup vs eager per provider, one group per (shape, mode),
    error bars from the interquartile ranges (eager's and the provider's)."""
    plt = _pyplot()
    timed = [r for r in rows if r.get("status") == "ok" and r.get("speedup_vs_eager")]
    by_key = {(r["shape"], r["mode"], r["provider"]): r for r in timed}
    groups = list(dict.fromkeys((r["shape"], r["mode"]) for r in timed))
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    width = 0.8 / max(1, len(providers))
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(groups) + 2), 4), dpi=100)
    for i, provider in enumerate(providers):
        xs, cells = [], []
        for k, g in enumerate(groups):
            if g + (provider,) in by_key:
                xs.append(k + i * width)
                cells.append(by_key[g + (provider,)])
        if not cells:
            continue
        values = [c["speedup_vs_eager"] for c in cells]
        bars = ax.bar(xs, values, width, label=provider, yerr=_errors(cells), capsize=2,
                      error_kw={"lw": 0.8})
        for bar, c in zip(bars, cells):
            if not trusted(c):
                bar.set_hatch("//")
                bar.set_alpha(0.4)
        ax.bar_label(bars, labels=[f"{v:.1f}" + ("" if trusted(c) else "?") for v, c in zip(values, cells)],
                     fontsize=7)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))])
    ax.set_xticklabels([f"{shape}\n{mode}" for shape, mode in groups], fontsize=8)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    speedups = [r["speedup_vs_eager"] for r in timed]
    if speedups and max(speedups) / min(speedups) > 30:  # a few huge bars would flatten the rest
        ax.set_yscale("log")
    ax.set_ylabel("speedup vs eager (higher is better)")
    first = rows[0] if rows else {"op": "", "dtype": "", "device": ""}
    ax.set_title(f"{first['op']} [{first['dtype']}] on {first['device']}\n(error bars: IQR; hatched: noisy or"
                 f" incoherent, not a result)", fontsize=8)
    if providers:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def headline_rows(rows, providers=None):
    """Per op: the rows of its first shape (its headline), fastgen and compile providers."""
    out = []
    for op in dict.fromkeys(r["op"] for r in rows):
        timed = [r for r in rows if r["op"] == op and r.get("status") == "ok" and r.get("speedup_vs_eager")]
        if not timed:
            continue
        shape = timed[0]["shape"]
        for r in timed:
            keep = r["provider"].startswith("fastgen-") or r["provider"] == "compile" if providers is None \
                else r["provider"] in providers
            if r["shape"] == shape and keep:
                out.append(r)
    return out


def plot_summary(rows, path, providers=None):
    """One horizontal bar per (op, mode, provider) at each op's headline shape: speedup vs eager
    on a log axis, IQR error bars, hatched where noisy or incoherent."""
    plt = _pyplot()
    cells = headline_rows(rows, providers)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(cells) + 1.2)), dpi=100)
    colors = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = []
    for y, c in enumerate(cells):
        color = colors.setdefault(c["provider"], palette[len(colors) % len(palette)])
        bar = ax.barh(y, c["speedup_vs_eager"], color=color,
                      xerr=_errors([c]), capsize=2,
                      label=c["provider"] if c["provider"] not in labels else None)
        labels.append(c["provider"])
        if not trusted(c):
            bar[0].set_hatch("//")
            bar[0].set_alpha(0.4)
        ax.text(c["speedup_vs_eager"], y, f" {c['speedup_vs_eager']:.2f}x" + ("" if trusted(c) else "?"),
                va="center", fontsize=6)
    ax.set_yticks(range(len(cells)))
    ax.set_yticklabels([f"{c['op']} {c['mode']} {c['shape']}" for c in cells], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("speedup vs eager (log; > 1 is faster)")
    device = cells[0]["device"] if cells else ""
    ax.set_title(f"fastgen vs eager at each op's headline shape, {device}\n(bars: IQR; hatched: noisy or "
                 f"incoherent)", fontsize=8)
    if cells:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
