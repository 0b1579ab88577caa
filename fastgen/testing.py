"""Test helpers shared by fastgen's suite and by anyone testing a kernel against its reference:
one per-dtype tolerance table and an assertion that explains a mismatch."""
import torch

# (rtol, atol) by the dtype of the op's inputs. Kernels compute in fp32 (fp64 for fp64), so the
# budget is the input dtype's rounding of the outputs plus a few ulps of exp and reordered sums.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def tolerance(dtype: torch.dtype):
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"fastgen.testing: no tolerance for {dtype}; known: {list(TOLERANCES)}") from None


def assert_close(actual, expected, *, dtype=None, backend=None, name="output", rtol=None, atol=None,
                 worst=5):
    """Assert `actual` matches `expected` elementwise within the tolerance of `dtype` (default:
    expected's dtype). NaNs must sit in the same places, infinities must match exactly. On failure
    the message names the backend, shows the worst mismatches and where NaN/inf appeared."""
    where = f"{name}" + (f" [backend={backend}]" if backend else "")
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise AssertionError(f"{where}: expected tensors, got {type(actual).__name__} and {type(expected).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{where}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{where}: dtype {actual.dtype} != expected {expected.dtype}")
    d_rtol, d_atol = tolerance(dtype or expected.dtype)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    a_nan, e_nan = a.isnan(), e.isnan()
    a_inf, e_inf = a.isinf(), e.isinf()
    finite = ~(a_nan | e_nan | a_inf | e_inf)
    err = torch.zeros_like(a)
    err[finite] = (a[finite] - e[finite]).abs() - (atol + rtol * e[finite].abs())
    bad = (err > 0) | (a_nan != e_nan) | ((a_inf | e_inf) & (a != e) & ~(a_nan | e_nan))
    if not bool(bad.any()):
        return
    lines = [f"{where}: {int(bad.sum())} of {a.numel()} elements differ "
             f"(shape {tuple(a.shape)}, {dtype or expected.dtype}, rtol={rtol:g}, atol={atol:g})"]
    score = torch.where(bad, torch.where(finite, err, torch.full_like(err, float("inf"))),
                        torch.full_like(err, -float("inf")))
    for flat in score.flatten().argsort(descending=True)[:worst].tolist():
        if not bool(bad.flatten()[flat]):
            break
        idx = tuple(torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
        idx = tuple(int(i) for i in idx)
        av, ev = a.flatten()[flat].item(), e.flatten()[flat].item()
        lines.append(f"  at {idx}: actual {av!r}, expected {ev!r}, |diff| {abs(av - ev):.3g}")
    for label, mask in (("NaN in actual only", a_nan & ~e_nan), ("NaN in expected only", e_nan & ~a_nan),
                        ("inf mismatch", (a_inf | e_inf) & (a != e) & ~(a_nan | e_nan))):
        if bool(mask.any()):
            pos = [tuple(int(i) for i in p) for p in mask.nonzero()[:worst].tolist()]
            lines.append(f"  {label}: {int(mask.sum())} positions, first {pos}")
    raise AssertionError("\n".join(lines))
