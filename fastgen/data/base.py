"""The dataset object, the registry of dataset builders, option checking and seed derivation.

Every random draw in fastgen.data goes through an explicit `torch.Generator` whose seed is
derived (by a stable hash) from the dataset name, what is being drawn (a fixed split, a stream
step, an epoch shuffle) and the user's seed, so nothing depends on or disturbs the global RNG.
"""
import hashlib
import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from ..errors import BadOption

KINDS = ("points2d", "image", "binary", "sequence")
SPLITS = ("train", "test")
DATASETS = {}
_REQUIRED = object()  # default of an option that has none (e.g. `path`)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints / strings; stable across runs, processes and platforms."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts) -> torch.Generator:
    """A fresh CPU generator seeded by `derive_seed(*parts)`."""
    return torch.Generator().manual_seed(derive_seed(*parts))


class FastgenDataset(Dataset):
    """A fixed set of n items, all in memory: `x` [n, *shape] float32 and `y` int64 ([n], or
    [n, T] for sequences). `dataset[i]` is `(x[i], y[i])`.

    name: the dataset's name; kind: "points2d" | "image" | "binary" | "sequence" (npz files may
    also give "vector"); shape: shape of one x; num_classes: classes in y (sequences: including
    background 0); class_names: one name per class; options: the dataset options it was built with;
    split, seed: which split and seed it is."""

    def __init__(self, name, kind, x, y, num_classes, *, class_names=None, options=None,
                 split="train", seed=0):
        if x.dtype != torch.float32:
            raise TypeError(f"{name}: x must be float32, got {x.dtype}")
        if y.dtype != torch.int64:
            raise TypeError(f"{name}: y must be int64, got {y.dtype}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}: x has {x.shape[0]} items but y has {y.shape[0]}")
        self.name = name
        self.kind = kind
        self.x = x
        self.y = y
        self.shape = tuple(x.shape[1:])
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names) if class_names is not None else tuple(
            str(i) for i in range(self.num_classes))
        self.options = dict(options or {})
        self.split = split
        self.seed = seed

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __repr__(self):
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (f"FastgenDataset({self.name!r}, n={len(self)}, kind={self.kind!r}, shape={self.shape}, "
                f"num_classes={self.num_classes}, split={self.split!r}, seed={self.seed}{opts})")


@dataclass
class DatasetBuilder:
    """One entry of `DATASETS`. Calling it is `fastgen.data.make(name, ...)`.

    Procedural datasets have `generate(count, generator, opts) -> (x, y)`: fresh items each call.
    Fixed datasets (the user's own files) have `load(opts) -> dict(x=, y=, kind=, num_classes=,
    class_names=)`; make() splits and subsamples them, stream() samples from their train split.
    `info(opts) -> (num_classes, class_names)` describes labels of procedural ones. `check(opts)`
    raises ValueError on bad option values."""
    name: str
    kind: Optional[str]            # None: decided by the data (npz)
    options: dict                  # option -> default (`_REQUIRED` when it has none)
    default_n: Optional[int]       # None: all items (fixed datasets)
    doc: str = ""
    generate: Optional[Callable] = None
    info: Optional[Callable] = None
    load: Optional[Callable] = None
    check: Optional[Callable] = None
    option_docs: dict = field(default_factory=dict)

    @property
    def procedural(self) -> bool:
        return self.generate is not None

    def resolve(self, kwargs) -> dict:
        """kwargs -> every option with defaults filled in; TypeError for unknown or missing ones."""
        unknown = [k for k in kwargs if k not in self.options]
        if unknown:
            valid = ", ".join(sorted(self.options)) or "(none)"
            raise BadOption(f"dataset {self.name!r} got unknown option {unknown[0]!r}; "
                            f"valid options: {valid}")
        opts = {k: kwargs.get(k, default) for k, default in self.options.items()}
        missing = [k for k, v in opts.items() if v is _REQUIRED]
        if missing:
            raise BadOption(f"dataset {self.name!r} needs the option {missing[0]!r} "
                            f"(e.g. {missing[0]}=...)")
        if self.check is not None:
            self.check(opts)
        return opts

    def __call__(self, *, n=None, seed=0, split="train", **kwargs):
        return make(self.name, n=n, seed=seed, split=split, **kwargs)

    def __repr__(self):
        opts = ", ".join(f"{k}={'<required>' if v is _REQUIRED else repr(v)}" for k, v in self.options.items())
        return f"<dataset {self.name!r} ({self.kind or 'from file'}) options: {opts or 'none'}>"


def register(builder: DatasetBuilder) -> DatasetBuilder:
    if builder.name in DATASETS:
        raise ValueError(f"dataset {builder.name!r} registered twice")
    DATASETS[builder.name] = builder
    return builder


def get_builder(name) -> DatasetBuilder:
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(DATASETS))}") from None


# -- option value checks ---------------------------------------------------------------------

def check_int(opts, key, lo, hi=None, dataset=""):
    v = opts[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"dataset {dataset!r}: option {key} must be an int {rng}, got {v!r}")


def check_choice(opts, key, choices, dataset=""):
    if opts[key] not in choices:
        raise ValueError(f"dataset {dataset!r}: option {key} must be one of "
                         f"{', '.join(map(repr, choices))}, got {opts[key]!r}")


def check_float(opts, key, lo, hi=None, dataset="", lo_open=False, hi_open=False):
    v = opts[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        lb, hb = ("(" if lo_open else "["), (")" if hi_open else "]")
        rng = f"in {lb}{lo}, {hi}{hb}" if hi is not None else (f"> {lo}" if lo_open else f">= {lo}")
        raise ValueError(f"dataset {dataset!r}: option {key} must be a number {rng}, got {v!r}")


# -- make(): a fixed split -----------------------------------------------------------------------

CHUNK = 4096  # procedural items generated per call inside make() (bounds peak memory)


def _int(value, what, lo):
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {value!r}") from None
    if v < lo:
        raise ValueError(f"{what} must be >= {lo}, got {v}")
    return v


def _generate(builder, count, g, opts):
    x, y = builder.generate(count, g, opts)
    return x.to(torch.float32).contiguous(), y.to(torch.int64).contiguous()


def _fixed_split(name, num_items, test_fraction, split):
    """Indices of `split` in a loaded dataset: a fixed share (the same for every seed) is test."""
    if num_items < 2 or test_fraction == 0:
        return torch.arange(num_items)
    n_test = min(max(1, round(num_items * test_fraction)), num_items - 1)
    perm = torch.randperm(num_items, generator=generator(name, "split", num_items))
    return perm[:n_test].sort().values if split == "test" else perm[n_test:].sort().values


def make(name, *, n=None, seed=0, split="train", **kwargs) -> FastgenDataset:
    """A fixed split of dataset `name` with `n` items (default: the dataset's default_n, e.g.
    10000 for toys / shapes / binary / bars, 512 for action_streams; all items of the split for
    folder / npz). Same (name, n, seed, split, options) -> identical data; "train" and "test"
    draw from different seeds. kwargs are the dataset's options (see DATASETS[name].options).

    For folder / npz the data is loaded, a fixed `test_fraction` held out as "test", and the
    split's items returned in an order shuffled by `seed` (`n` takes the first n of them)."""
    builder = get_builder(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    seed = _int(seed, "seed", -(1 << 62))
    opts = builder.resolve(kwargs)
    if n is not None:
        n = _int(n, "n", 0)
    if builder.procedural:
        n = builder.default_n if n is None else n
        g = generator(name, "make", split, seed)
        parts = [_generate(builder, min(CHUNK, n - i), g, opts) for i in range(0, max(n, 1), CHUNK)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        num_classes, class_names = builder.info(opts)
        kind = builder.kind
    else:
        loaded = builder.load(opts)
        idx = _fixed_split(name, loaded["x"].shape[0], opts["test_fraction"], split)
        idx = idx[torch.randperm(len(idx), generator=generator(name, "make", split, seed))]
        if n is not None:
            if n > len(idx):
                raise ValueError(f"dataset {name!r}: asked for n={n} items but the {split} split of "
                                 f"{opts['path']} has only {len(idx)}")
            idx = idx[:n]
        x, y = loaded["x"][idx].contiguous(), loaded["y"][idx].contiguous()
        num_classes, class_names, kind = loaded["num_classes"], loaded["class_names"], loaded["kind"]
    return FastgenDataset(name, kind, x, y, num_classes, class_names=class_names, options=opts,
                          split=split, seed=seed)
