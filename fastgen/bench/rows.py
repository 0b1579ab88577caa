"""Which benchmark rows may be believed: one rule for the table, the plots and `bench compare`.

A row is unreliable when it is flagged noisy (its IQR, or other processes' share of the CPU, is
too high) or incoherent (it contradicts the other rows of its case); trusted when it is also a
correct (`ok`) result."""


def unreliable(row):
    return bool(row.get("noisy")) or "incoherent" in (row.get("flags") or "")


def trusted(row):
    """A timed row the table may print a speedup for: ok, not noisy, not incoherent."""
    return row.get("status") == "ok" and not unreliable(row)
