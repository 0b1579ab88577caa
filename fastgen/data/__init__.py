"""Procedural datasets, generated on the fly and deterministic by seed (no downloads), and
loaders for your own images / arrays behind the same interface.

    import fastgen.data as fd
    ds = fd.make("shapes", n=1000, seed=0, size=32, channels=3)   # FastgenDataset
    x, y = ds[0]                                                  # x [3, 32, 32], y int64
    it = fd.stream("moons", 256, seed=0, rank=0, world_size=1)    # endless fresh batches
    it = fd.batches(ds, 64, seed=0)                               # endless shuffled batches

Datasets (name: kind, x shape, labels; options with defaults):

    moons, circles, 8gaussians, checkerboard, swissroll, pinwheel
        points2d, (2,), moon / circle / mode / arm, else 0; no options
    shapes          image, (channels, size, size) in [0, 1], shape 0..3 (circle, square,
                    triangle, cross); size=16, channels=3
    binary          binary, (size*size,) in {0, 1}, the shapes as masks, shape 0..3; size=8
    bars            binary, (size*size,) bars-and-stripes, 0 = horizontal, 1 = vertical; size=4
    action_streams  sequence, (length, feature_dim), per-frame y [length], 0 = background;
                    length=64, feature_dim=32, num_classes=4, noise=1.0, min_len=4, max_len=20
    folder          image, your images (class subfolders -> labels); path, size=32, channels=3,
                    test_fraction=0.1
    npz             from the file's x (N, ...) and optional y; path, kind=None, test_fraction=0.1

Default sizes of make(): 10000 items (toys, shapes, binary, bars), 512 (action_streams), all
(folder, npz). All randomness comes from explicit torch.Generator objects seeded from
(name, what is drawn, seed, ...); the global RNG is never used or changed.
"""
from .base import DATASETS, KINDS, SPLITS, DatasetBuilder, FastgenDataset, derive_seed, get_builder
from . import toys, shapes, streams, user  # noqa: F401  (register the datasets)
from .loaders import batches, make, stream

__all__ = ["DATASETS", "KINDS", "SPLITS", "DatasetBuilder", "FastgenDataset", "batches",
           "derive_seed", "get_builder", "make", "stream"]
