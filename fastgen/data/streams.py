"""Synthetic per-frame feature streams for online action detection.

Each item is a window of `length` frames cut from an endless stream that alternates background
(label 0, 2..16 frames) and actions (label 1..num_classes, min_len..max_len frames, class
uniform). A window may start or end inside an action. Frame features, float32 [length, feature_dim]:

    x_t = P[c] + 0.5 * Q[c] * cos(pi * progress_t) + noise * N(0, I)

where c is the frame's label, P[c] a class pattern (entries N(0, 0.4^2); the background's is
half as strong), Q[c] a class-specific drift from an action's start to its end (zero for
background), and progress_t in [0, 1] the position inside the action. At the default noise a
single frame is ambiguous (nearest class mean: ~70% of frames right); context helps. P and Q depend only on (feature_dim, num_classes), so
every split, seed and stream shares them. Labels: int64 [length].
"""
import functools
import math

import torch

from .base import DatasetBuilder, check_float, check_int, derive_seed, register

DEFAULT_N = 512
MIN_GAP, MAX_GAP = 2, 16  # background segment lengths
PATTERN_SCALE = 0.4       # std of the class patterns: single frames are ambiguous at noise 1


@functools.lru_cache(maxsize=32)
def class_patterns(feature_dim, num_classes):
    """(P, Q), each [num_classes + 1, feature_dim]; row 0 is the background."""
    g = torch.Generator().manual_seed(derive_seed("action_streams/patterns", feature_dim, num_classes))
    p = PATTERN_SCALE * torch.randn(num_classes + 1, feature_dim, generator=g)
    q = PATTERN_SCALE * torch.randn(num_classes + 1, feature_dim, generator=g)
    p[0] *= 0.5
    q[0] = 0
    return p, q


def segment_labels(count, length, num_classes, min_len, max_len, g):
    """(labels [count, length] int64, progress [count, length] float32 in [0, 1])."""
    pairs = math.ceil((length + MAX_GAP + max_len) / (MIN_GAP + min_len)) + 1
    gaps = torch.randint(MIN_GAP, MAX_GAP + 1, (count, pairs), generator=g)
    lens = torch.randint(min_len, max_len + 1, (count, pairs), generator=g)
    cls = torch.randint(1, num_classes + 1, (count, pairs), generator=g)
    starts = torch.cumsum(gaps + lens, 1) - lens  # each action begins after its gap
    offset = (torch.rand(count, generator=g) * (gaps[:, 0] + lens[:, 0])).long()
    starts = starts - offset[:, None]  # the window opens anywhere in the first gap or action
    t = torch.arange(length).expand(count, length).contiguous()
    j = (torch.searchsorted(starts.contiguous(), t, right=True) - 1).clamp_(min=0)
    s, n = starts.gather(1, j), lens.gather(1, j)
    inside = (t >= s) & (t < s + n)
    labels = torch.where(inside, cls.gather(1, j), torch.zeros_like(t))
    progress = torch.where(inside, (t - s).float() / (n - 1).clamp(min=1).float(), torch.zeros(()))
    return labels, progress


def action_streams(count, g, opts):
    T, F, K = opts["length"], opts["feature_dim"], opts["num_classes"]
    y, progress = segment_labels(count, T, K, opts["min_len"], opts["max_len"], g)
    p, q = class_patterns(F, K)
    x = p[y] + (0.5 * torch.cos(math.pi * progress))[..., None] * q[y]
    x = x + float(opts["noise"]) * torch.randn(count, T, F, generator=g)
    return x, y


def _check(opts):
    name = "action_streams"
    check_int(opts, "length", 1, None, name)
    check_int(opts, "feature_dim", 1, None, name)
    check_int(opts, "num_classes", 1, None, name)
    check_int(opts, "min_len", 1, None, name)
    check_int(opts, "max_len", opts["min_len"], None, name)
    check_float(opts, "noise", 0.0, None, name)


register(DatasetBuilder(
    name="action_streams", kind="sequence",
    options={"length": 64, "feature_dim": 32, "num_classes": 4, "noise": 1.0, "min_len": 4, "max_len": 20},
    default_n=DEFAULT_N,
    doc="windows of per-frame features for online action detection: x float32 [length, feature_dim], "
        "y int64 [length], 0 = background, 1..num_classes = actions",
    generate=action_streams,
    info=lambda opts: (opts["num_classes"] + 1,
                       ("background",) + tuple(f"action {k}" for k in range(1, opts["num_classes"] + 1))),
    check=_check,
    option_docs={"length": "frames per item", "feature_dim": "features per frame",
                 "num_classes": "action classes (labels 1..num_classes; 0 is background)",
                 "noise": "std of the per-frame Gaussian noise",
                 "min_len": "shortest action, frames", "max_len": "longest action, frames"}))
