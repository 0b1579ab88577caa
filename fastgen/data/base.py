"""The dataset object, the registry of dataset builders, option checking and seed derivation.

Every random draw in fastgen.data goes through an explicit `torch.Generator` whose seed is
derived (by a stable hash) from the dataset name, what is being drawn (a fixed split, a stream
step, an epoch shuffle) and the user's seed, so nothing depends on or disturbs the global RNG.
"""
import hashlib
import math
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
        from .loaders import make

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
